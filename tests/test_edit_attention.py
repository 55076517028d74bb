"""P2P(-HRV) on fused attention against Prompt-to-Prompt written out with explicit attention maps.

The reference below materialises softmax(Q K^T / sqrt(d)) per head for the source and the target of every pair, builds
the target's map column by column as P2P does (carried columns: the source's columns through the alignment's
weights; own columns: the target's; every column times its per-head factor), and multiplies by the target's values.
The processor must give the same output without materialising a map (float32, 1e-5).
"""
import math
import uuid

import pytest
import torch

from hrv.attention import COND_KEY, CORE_KEY, fused_attention
from hrv.attention.core import make_core_fn
from hrv.attention.run import RunState
from hrv.edit import fused
from hrv.edit.align import Alignment
from hrv.edit.processor import BLEND_KEY, EDIT, EditRuntimeError
from hrv.edit.request import FEATURE, EditRequest, LocalBlend
from hrv.edit.sampling import blend_mask
from hrv.format.layout import known_layout

KEY = ("input", 7, 0)            # SD1: 8 heads, columns 32..39 of an HRV row
HEADS, DIM = 8, 4
SCHEDULE = torch.tensor([10.0, 7.0, 4.0, 1.0, 0.0])     # 4 steps: cross_replace 0.8 -> steps 0, 1, 2


def kernel():
    import comfy.ldm.modules.attention as attention
    return fused_attention(attention.attention_basic)


def request(alignment, context, scales=(), cross=0.8, self_=0.5, blend=None, self_keys=(KEY,)):
    return EditRequest(known_layout("sd1"), alignment, context, cross, self_, frozenset(self_keys), tuple(scales), blend)


def run_for(requests: dict):
    conds = {"positive": [{"uuid": u, COND_KEY: {FEATURE: r}, "cross_attn": torch.zeros(1, r.context_length, 1)}
                          for u, r in requests.items()]}
    return RunState({FEATURE: EDIT}, conds)


def options(run, uuids, cond_or_uncond, sigma):
    return {"n_heads": HEADS, "dim_head": DIM, "uuids": list(uuids), "cond_or_uncond": list(cond_or_uncond),
            "sigmas": torch.tensor([sigma]), "sample_sigmas": SCHEDULE, "attn_precision": None, CORE_KEY: run,
            "original_shape": [4, 4, 16, 16]}


def randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def heads_of(x):
    return x.double().view(x.shape[0], HEADS, DIM).transpose(0, 1)                 # [H, L, d]


def softmax_map(q, k):
    return torch.softmax(heads_of(q) @ heads_of(k).transpose(-1, -2) / math.sqrt(DIM), dim=-1)   # [H, N, L]


def p2p_target(q_s, k_s, q_t, k_t, v_t, alignment, column_factors):
    """P2P's edited target output for one pair, loop by loop. Inputs are one row each, over each prompt's own context."""
    a_s, a_t = softmax_map(q_s, k_s), softmax_map(q_t, k_t)
    vh = heads_of(v_t)
    out = torch.zeros(HEADS, q_t.shape[0], DIM, dtype=torch.float64)
    carried = alignment.carried()
    for h in range(HEADS):
        edited_map = torch.zeros(q_t.shape[0], alignment.target_length, dtype=torch.float64)
        for t in range(alignment.target_length):
            if t in alignment.own:
                column = a_t[h, :, t]
            else:
                column = torch.zeros(q_t.shape[0], dtype=torch.float64)
                for s, w in carried.get(t, ()):
                    column = column + w * a_s[h, :, s]
            edited_map[:, t] = column * column_factors.get(t, torch.ones(HEADS))[h].double()
        out[h] = edited_map @ vh[h]
    return out.transpose(0, 1).reshape(q_t.shape[0], HEADS * DIM)


def plain(q, k, v):
    a = softmax_map(q, k)
    return (a @ heads_of(v)).transpose(0, 1).reshape(q.shape[0], HEADS * DIM)


# Replace with a 1 -> 3 token swap at source position 2 (weights 1/3), the tail shifted by two, the last two target
# positions unpaired; refine with a new target token at 2 and the rest shifted by one.
REPLACE = Alignment("replace", 12, 12, tuple(sorted([(0, 0, 1.0), (1, 1, 1.0)] + [(t, 2, 1 / 3) for t in (2, 3, 4)]
                                                    + [(t, t - 2, 1.0) for t in range(5, 12)])), (), (2, 3, 4))
SWAP = Alignment("replace", 12, 12, tuple((t, t, 1.0) for t in range(12)), (), (2,))     # same token count: identity
REFINE = Alignment("refine", 12, 12, tuple([(0, 0, 1.0), (1, 1, 1.0)] + [(t, t - 1, 1.0) for t in range(3, 12)]),
                   (2,), (2,))


@pytest.mark.parametrize("alignment, context", [(SWAP, 12), (REPLACE, 12), (REFINE, 12), (REFINE, 24)])
def test_fused_edit_equals_explicit_p2p_maps(alignment, context):
    hrv_row = torch.rand(128, generator=torch.Generator().manual_seed(7)) * 3
    scales = [(p, hrv_row) for p in alignment.edited] + [(6, torch.full((128,), 1.7))]     # HRV + a reweighted word
    edit, other = uuid.uuid4(), uuid.uuid4()
    run = run_for({edit: request(alignment, context, scales)})
    fn = make_core_fn(KEY, kernel(), "default")
    queries, pairs = 9, 2
    # the call's chunks: (uncond, edit conditioning); the edit chunk holds (source, target) x 2 pairs
    q = randn(2 * 2 * pairs, queries, HEADS * DIM, seed=1)
    k_own = randn(2, 12, HEADS * DIM, seed=2)            # one period of the source's and the target's keys
    v_own = randn(2, 12, HEADS * DIM, seed=3)
    reps = context // 12
    k = torch.cat([randn(2 * pairs, context, HEADS * DIM, seed=4), k_own.repeat(pairs, reps, 1)])
    v = torch.cat([randn(2 * pairs, context, HEADS * DIM, seed=5), v_own.repeat(pairs, reps, 1)])
    out = fn(q, k, v, options(run, [other, edit], [1, 0], sigma=7.0))
    factors = {p: f[32:40] for p, f in request(alignment, context, scales).scales}
    for pair in range(pairs):
        s, t = 2 * pairs + 2 * pair, 2 * pairs + 2 * pair + 1
        expected_t = p2p_target(q[s], k_own[0], q[t], k_own[1], v_own[1], alignment, factors)
        assert (out[t].double() - expected_t).abs().max().item() <= 1e-5
        assert (out[s].double() - plain(q[s], k_own[0], v_own[0])).abs().max().item() <= 1e-5
    assert torch.equal(out[:2 * pairs], kernel()(q[:2 * pairs], k[:2 * pairs], v[:2 * pairs], {"n_heads": HEADS}))


def test_identity_alignment_gives_the_source_row_bit_for_bit_and_the_window_closes():
    ident = Alignment("refine", 12, 12, tuple((t, t, 1.0) for t in range(12)), (), ())
    edit = uuid.uuid4()
    run = run_for({edit: request(ident, 12)})
    fn = make_core_fn(KEY, kernel(), "default")
    q = randn(2, 9, HEADS * DIM, seed=1)
    k = randn(1, 12, HEADS * DIM, seed=2).repeat(2, 1, 1)
    v = randn(1, 12, HEADS * DIM, seed=3).repeat(2, 1, 1)
    out = fn(q, k, v, options(run, [edit], [0], sigma=4.0))              # step 2 < int(0.8 * 4): target = source
    assert torch.equal(out[1], out[0])
    late = fn(q, k, v, options(run, [edit], [0], sigma=1.0))             # step 3: the target attends on its own
    assert torch.equal(late, kernel()(q, k, v, {"n_heads": HEADS}))
    # The edit follows its conditioning, not the batch position: wired as the negative (cond_or_uncond 1) and batched
    # behind a plain conditioning, its pair is edited just the same and the plain chunk is not.
    plain_uuid = uuid.uuid4()
    q4, k4, v4 = torch.cat([q, q.flip(0)]), torch.cat([k, k]), torch.cat([v, v])
    mixed = fn(q4, k4, v4, options(run, [plain_uuid, edit], [0, 1], sigma=4.0))
    assert torch.equal(mixed[:2], kernel()(q4[:2], k4[:2], v4[:2], {"n_heads": HEADS}))
    assert torch.equal(mixed[3], mixed[2])
    assert not torch.equal(mixed[3], kernel()(q4[3:], k4[3:], v4[3:], {"n_heads": HEADS})[0])


def test_self_attention_takes_the_sources_map_in_its_window_and_layers():
    ident = Alignment("replace", 12, 12, tuple((t, t, 1.0) for t in range(12)), (), ())
    edit = uuid.uuid4()
    run = run_for({edit: request(ident, 12, self_=0.5)})            # int(0.5 * 4) = 2 steps
    fn = make_core_fn(KEY, kernel(), "default", self_attention=True)
    q, k, v = (randn(4, 16, HEADS * DIM, seed=i) for i in (1, 2, 3))
    out = fn(q, k, v, options(run, [edit], [0], sigma=7.0))
    for s, t in ((0, 1), (2, 3)):
        expected = (softmax_map(q[s], k[s]) @ heads_of(v[t])).transpose(0, 1).reshape(16, -1)
        assert (out[t].double() - expected).abs().max().item() <= 1e-5
        assert (out[s].double() - plain(q[s], k[s], v[s])).abs().max().item() <= 1e-5
    assert torch.equal(fn(q, k, v, options(run, [edit], [0], sigma=4.0)), kernel()(q, k, v, {"n_heads": HEADS}))
    other_layer = make_core_fn(("input", 8, 0), kernel(), "default", self_attention=True)
    assert torch.equal(other_layer(q, k, v, options(run, [edit], [0], sigma=7.0)), kernel()(q, k, v, {"n_heads": HEADS}))


def test_odd_rows_are_a_clear_error():
    ident = Alignment("replace", 12, 12, tuple((t, t, 1.0) for t in range(12)), (), ())
    edit = uuid.uuid4()
    run = run_for({edit: request(ident, 12)})
    fn = make_core_fn(KEY, kernel(), "default")
    q, k, v = randn(3, 9, HEADS * DIM, seed=1), randn(3, 12, HEADS * DIM, seed=2), randn(3, 12, HEADS * DIM, seed=3)
    with pytest.raises(EditRuntimeError, match="needs pairs .* LATENT output of HRV Prompt Edit"):
        fn(q, k, v, options(run, [edit], [0], sigma=7.0))


def test_local_blend_maps_are_the_words_columns_of_the_maps_the_rows_use():
    blend = LocalBlend((2,), (2, 3), frozenset({KEY}))
    edit = uuid.uuid4()
    scales = [(2, torch.linspace(0.5, 2.0, 128))]
    run = run_for({edit: request(REFINE, 12, scales, blend=blend)})
    fn = make_core_fn(KEY, kernel(), "default")
    q = randn(2, 16, HEADS * DIM, seed=1)         # 16 queries: the 4x4 maps of a 16x16 latent a quarter across
    k, v = randn(2, 12, HEADS * DIM, seed=2), randn(2, 12, HEADS * DIM, seed=3)
    for sigma, active in ((7.0, True), (1.0, False)):
        run.cache.pop(BLEND_KEY, None)
        fn(q, k, v, options(run, [edit], [0], sigma=sigma))
        (entry,) = run.cache[BLEND_KEY].values()
        a_s, a_t = softmax_map(q[0], k[0]), softmax_map(q[1], k[1])
        expected_s = a_s[:, :, 2].mean(0)
        if active:     # target 2 is new (own column, scaled); target 3 carries source 2
            factors = scales[0][1][32:40].double()
            expected_t = (a_t[:, :, 2] * factors[:, None] + a_s[:, :, 2]).mean(0)
        else:
            expected_t = (a_t[:, :, 2] + a_t[:, :, 3]).mean(0)
        assert entry.layers == 1 and entry.shape == (4, 4)
        assert (entry.total[0, 0].double() - expected_s).abs().max().item() <= 1e-5
        assert (entry.total[0, 1].double() - expected_t).abs().max().item() <= 1e-5


def test_blend_mask_is_p2ps():
    maps = torch.zeros(1, 2, 16)
    maps[0, 0, 5] = 1.0           # source word at (1, 1) of a 4x4 map
    maps[0, 1, 15] = 0.2          # target word at (3, 3), weak but its own maximum
    mask = blend_mask(maps, 1, (4, 4), (8, 8), 0.3)
    expected = torch.zeros(4, 4)
    expected[0:3, 0:3] = 1        # the 3x3 max-pool around (1, 1)
    expected[2:4, 2:4] = 1        # and around (3, 3)
    assert torch.equal(mask[0, 0], expected.repeat_interleave(2, 0).repeat_interleave(2, 1))


def test_fold_and_keep_values():
    v = randn(1, 4, 2, seed=0)
    folded = fused.fold_values(v, torch.tensor([0, 1, 2, 3]), torch.tensor([0, 2, 2, 1]), torch.tensor([1.0, 0.5, 0.5, 2.0]), 3)
    assert torch.allclose(folded[0], torch.stack([v[0, 0], 2 * v[0, 3], 0.5 * (v[0, 1] + v[0, 2])]))
    kept = fused.keep_values(v, torch.tensor([1]))
    assert torch.equal(kept[0, 1], v[0, 1]) and not kept[0, [0, 2, 3]].any()


def test_plans_are_built_once_per_request_and_layout_across_runs(monkeypatch):
    """A second sampling run (new RunState, new uuids) of the same edit conditioning reuses the index tensors kept
    on its request; the output is the same."""
    import hrv.edit.processor as processor
    built = []
    real = processor._Plan
    monkeypatch.setattr(processor, "_Plan", lambda *a, **kw: built.append(a[0].key) or real(*a, **kw))
    ident = Alignment("replace", 12, 12, tuple((t, t, 1.0) for t in range(12)), (), ())
    edit_request = request(ident, 12, [(2, torch.linspace(0.5, 2.0, 128))])
    fn = make_core_fn(KEY, kernel(), "default")
    q, k, v = randn(2, 9, HEADS * DIM, seed=1), randn(2, 12, HEADS * DIM, seed=2), randn(2, 12, HEADS * DIM, seed=3)
    outs = []
    for _ in range(2):
        edit = uuid.uuid4()
        run = run_for({edit: edit_request})
        outs.append(fn(q, k, v, options(run, [edit], [0], sigma=7.0)))
        run.finish()
    assert built == [KEY] and torch.equal(outs[0], outs[1])
