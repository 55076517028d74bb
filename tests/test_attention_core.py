"""The attention core and its steering processor, called the way ComfyUI calls an attn2 replacement.

Steering scales value rows; the tests compare with the definition: softmax(QK^T/sqrt(d)) materialised in
float64, the marked token columns scaled per head on the rows of the marked conditioning, times V.
"""
import math
import uuid

import pytest
import torch

from hrv.attention import COND_KEY, CORE_KEY, attach_request, fused_attention, install_core, requests_of
from hrv.attention.core import make_core_fn
from hrv.attention.run import RunState
from hrv.format.hrv_file import load
from hrv.format.layout import known_layout
from hrv.steering.processor import STEERING, SteeringRuntimeError
from hrv.steering.request import FEATURE, SteerRequest, SteerTerm


def kernels():
    import comfy.ldm.modules.attention as attention
    return {"basic": attention.attention_basic, "sub_quad": attention.attention_sub_quad,
            "split": attention.attention_split, "pytorch": attention.attention_pytorch}


def explicit_reference(q, k, v, heads, scale_rows):
    """scale_rows: {batch row: {token: float64 [heads]}} applied to the post-softmax columns."""
    b, n, c = q.shape
    d = c // heads
    qh, kh, vh = (t.double().view(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))   # [B, H, N|T, d]
    attn = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(d), dim=-1)               # [B, H, N, T]
    scale = torch.ones(b, heads, k.shape[1], dtype=torch.float64)
    for row, tokens in scale_rows.items():
        for token, s in tokens.items():
            scale[row, :, token] *= s.double()
    out = (attn * scale[:, :, None, :]) @ vh
    return out.transpose(1, 2).reshape(b, n, c)


def qkv(batch, queries, heads, dim_head, context=77, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch, n, heads * dim_head, generator=g).to(dtype) for n in (queries, context, context))


class FakeSampling:
    """percent_to_sigma of a model whose sigma falls linearly from 10 (percent 0) to 0 (percent 1)."""
    def percent_to_sigma(self, percent):
        return 10.0 * (1.0 - percent)


def run_with(requests_by_uuid: dict, keys=(), lengths=None):
    conds = {"positive": [{"uuid": u, COND_KEY: {FEATURE: r}, "cross_attn": torch.zeros(1, (lengths or {}).get(u, 77), 1)}
                          for u, r in requests_by_uuid.items()]}
    return RunState({FEATURE: STEERING}, conds, FakeSampling(), {}, keys)


def extra(run, heads, dim_head, uuids, sigma=5.0):
    return {"n_heads": heads, "dim_head": dim_head, "uuids": list(uuids), "sigmas": torch.tensor([sigma]),
            "attn_precision": None, CORE_KEY: run}


def request(layout, terms, start=0.0, end=1.0, context=77):
    return SteerRequest(layout, tuple(SteerTerm(tuple(p), s, f"term{i}") for i, (p, s) in enumerate(terms)),
                        context, start, end)


@pytest.fixture(scope="module")
def sd1_hrv(official_dir):
    return load(f"{official_dir}/sd1_official.safetensors")


@pytest.fixture(scope="module")
def sdxl_hrv(official_dir):
    return load(f"{official_dir}/sdxl_official.safetensors")


@pytest.mark.parametrize("kernel", ["basic", "sub_quad", "split", "pytorch"])
def test_sd1_steering_equals_scaled_attention_columns_with_every_kernel(sd1_hrv, kernel):
    s_all = sd1_hrv.row("Color") - sd1_hrv.row("Material") + 1
    key = ("input", 1, 0)
    s = s_all[:8]  # input.1.0 holds columns 0..7
    positions = (5, 6, 7)
    cond, uncond = uuid.uuid4(), uuid.uuid4()
    run = run_with({cond: request(sd1_hrv.layout, [(positions, s_all)])})
    inner = fused_attention(kernels()[kernel])
    fn = make_core_fn(key, inner, "default")
    q, k, v = qkv(2, 1024, 8, 40)
    out = fn(q, k, v, extra(run, 8, 40, [uncond, cond]))
    expected = explicit_reference(q, k, v, 8, {1: {p: s for p in positions}})
    assert (out.double() - expected).abs().max().item() <= 1e-5
    assert torch.equal(out[0], inner(q, k, v, {"n_heads": 8})[0])  # the other conditioning's chunk, bit for bit


@pytest.mark.parametrize("key, first_column, heads, queries",
                         [(("input", 4, 0), 0, 10, 1024), (("input", 7, 3), 40 + 3 * 20, 20, 256)])
def test_sdxl_shapes(sdxl_hrv, key, first_column, heads, queries):
    s_all = 2 * sdxl_hrv.row("Animals").clamp(max=9) - sdxl_hrv.row("Color").clamp(max=9)
    assert sdxl_hrv.layout.block(key).first_column == first_column
    s = s_all[first_column:first_column + heads]
    cond = uuid.uuid4()
    run = run_with({cond: request(sdxl_hrv.layout, [((2, 40), s_all)])})
    fn = make_core_fn(key, fused_attention(kernels()["pytorch"]), "default")
    q, k, v = qkv(2, queries, heads, 64, seed=1)
    out = fn(q, k, v, extra(run, heads, 64, [cond, uuid.uuid4()]))
    expected = explicit_reference(q, k, v, heads, {0: {2: s, 40: s}})
    assert (out.double() - expected).abs().max().item() <= 1e-5


def test_chunks_follow_uuids_not_positions_and_words_sharing_a_token_multiply():
    layout = known_layout("sd1")
    a, b, plain = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    s1, s2, s3 = (torch.linspace(-2, 3, 128) + i for i in range(3))
    run = run_with({a: request(layout, [((1,), s1), ((1, 2), s2)]), b: request(layout, [((4,), s3)])})
    fn = make_core_fn(("input", 1, 0), fused_attention(kernels()["basic"]), "default")
    q, k, v = qkv(6, 64, 8, 4, seed=2)     # chunks (b, plain, a) x 2 images each
    out = fn(q, k, v, extra(run, 8, 4, [b, plain, a]))
    h = slice(0, 8)
    expected = explicit_reference(q, k, v, 8, {0: {4: s3[h]}, 1: {4: s3[h]}, 4: {1: s1[h] * s2[h], 2: s2[h]},
                                               5: {1: s1[h] * s2[h], 2: s2[h]}})
    assert (out.double() - expected).abs().max().item() <= 1e-5
    plain_out = fused_attention(kernels()["basic"])(q, k, v, {"n_heads": 8})
    assert torch.equal(out[2:4], plain_out[2:4])
    # Chunk.index is the chunk's number in the call (it indexes cond_or_uncond), not its rank among requesting chunks.
    assert [(c.index, c.rows) for c in run.chunks_for([plain, b, a], 6)[0][1]] == [(1, slice(2, 4)), (2, slice(4, 6))]


def test_repeated_context_is_steered_with_the_conditionings_own_period():
    # ComfyUI repeats a 77-token conditioning to the length of a longer one batched with it (cond_cat).
    layout = known_layout("sd1")
    s = torch.linspace(0.25, 4.0, 128)
    short, long = uuid.uuid4(), uuid.uuid4()
    run = run_with({short: request(layout, [((3, 4), s)])}, lengths={short: 77})
    fn = make_core_fn(("input", 1, 0), fused_attention(kernels()["basic"]), "default")
    q, k, v = qkv(1, 128, 8, 4, seed=3)
    alone = fn(q, k, v, extra(run, 8, 4, [short]))
    q2 = torch.cat([q, q])
    k2, v2 = torch.cat([k.repeat(1, 2, 1)] * 2), torch.cat([v.repeat(1, 2, 1)] * 2)
    batched = fn(q2, k2, v2, extra(run, 8, 4, [short, long]))
    assert (batched[0] - alone[0]).abs().max().item() <= 1e-5
    with pytest.raises(SteeringRuntimeError, match="not a multiple"):
        fn(q, k[:, :50], v[:, :50], extra(run_with({short: request(layout, [((3,), s)])}), 8, 4, [short]))


def test_sigma_gate_runs_on_the_device_and_only_gates_its_own_request():
    layout = known_layout("sd1")
    gated, always = uuid.uuid4(), uuid.uuid4()
    seen = []
    s = torch.full((128,), 3.0)
    # FakeSampling: percent 0.2 -> sigma 8, percent 0.6 -> sigma 4
    run = run_with({gated: request(layout, [((1,), s)], start=0.2, end=0.6), always: request(layout, [((1,), s)])})
    fn = make_core_fn(("input", 1, 0), lambda q, k, v, e: seen.append(v) or v, "default")
    q, k, v = qkv(2, 4, 8, 2)
    for sigma in (9.0, 8.0, 5.0, 4.0, 3.0):
        fn(q, k, v, extra(run, 8, 2, [gated, always], sigma=sigma))
    active = [not torch.equal(out[0, 1], v[0, 1]) for out in seen]
    assert active == [False, True, True, True, False]
    assert all(torch.equal(out[1, 1], v[1, 1] * 3) for out in seen)


def test_plan_is_built_once_per_request_and_layout_across_runs(monkeypatch):
    """The rows and factors are built on the host once and kept on the request: a second sampling run (a new
    RunState, new uuids) of the same conditioning only looks them up; another dtype gets its own."""
    import hrv.steering.processor as processor
    calls = []
    real = processor.build_chunk_plan
    monkeypatch.setattr(processor, "build_chunk_plan", lambda *a, **kw: calls.append(a) or real(*a, **kw))
    layout = known_layout("sd1")
    steer = request(layout, [((1,), torch.full((128,), 2.0))])
    fn = make_core_fn(("input", 1, 0), lambda q, k, v, e: v, "default")
    q, k, v = qkv(1, 8, 8, 2)
    for _ in range(2):
        cond = uuid.uuid4()
        run = run_with({cond: steer})
        for _ in range(5):
            out = fn(q, k, v, extra(run, 8, 2, [cond]))
        assert torch.equal(out[0, 1], v[0, 1] * 2)
        run.finish()
    assert len(calls) == 1
    out = fn(q, k.half(), v.half(), extra(run_with({cond: steer}), 8, 2, [cond]))
    assert len(calls) == 2 and out.dtype == torch.float16 and torch.equal(out[0, 1], v.half()[0, 1] * 2)
    assert torch.equal(out[0, 0], v.half()[0, 0])
    assert steer == request(layout, [((1,), steer.terms[0].factors)]), "the cache is not part of the request's value"


def test_head_count_mismatch_is_a_clear_error():
    cond = uuid.uuid4()
    run = run_with({cond: request(known_layout("sd1"), [((1,), torch.ones(128))])})
    fn = make_core_fn(("input", 1, 0), lambda q, k, v, e: v, "default")
    q, k, v = qkv(1, 8, 10, 4)
    with pytest.raises(SteeringRuntimeError, match="another architecture"):
        fn(q, k, v, extra(run, 10, 4, [cond]))


def test_without_a_run_or_inside_another_core_the_core_passes_through():
    cond = uuid.uuid4()
    run = run_with({cond: request(known_layout("sd1"), [((1,), torch.full((128,), 5.0))])})
    seen = []
    fn = make_core_fn(("input", 1, 0), lambda q, k, v, e: seen.append(v) or v, "default")
    q, k, v = qkv(1, 8, 8, 2)
    fn(q, k, v, {"n_heads": 8, "uuids": [cond]})                      # outside sampling: no RunState
    nested = extra(run, 8, 2, [cond])
    nested["hrv_core_active"] = True
    fn(q, k, v, nested)
    assert all(x is v for x in seen)
    outer = make_core_fn(("input", 1, 0), fn, "transformer")          # a core wrapping a core steers once
    out = outer(q, k, v, extra(run, 8, 2, [cond]))
    assert torch.equal(out[0, 1], v[0, 1] * 5)


def test_attach_request_copies_and_keeps_other_features():
    cond = [[torch.zeros(1, 77, 8), {"pooled_output": None}]]
    a = attach_request(cond, "steer", "r1")
    b = attach_request(a, "vote", True)
    assert COND_KEY not in cond[0][1]
    assert dict(requests_of(a[0][1])) == {"steer": "r1"} and dict(requests_of(b[0][1])) == {"steer": "r1", "vote": True}
    assert b[0][0] is cond[0][0]


def test_install_covers_every_transformer_chains_and_is_idempotent():
    from harness.comfy_models import model_patcher
    model = model_patcher("sd1", "tiny")
    other_calls = []

    def other_pack(q, k, v, extra_options):
        other_calls.append(1)
        return v

    before = model.clone()
    before.set_model_attn2_replace(other_pack, "input", 1, 0)
    once = install_core(before)
    twice = install_core(once)
    attn2 = twice.model_options["transformer_options"]["patches_replace"]["attn2"]
    assert set(attn2) == {b.key for b in known_layout("sd1").blocks}
    assert attn2[("input", 1, 0)] is once.model_options["transformer_options"]["patches_replace"]["attn2"][("input", 1, 0)]
    assert attn2[("input", 1, 0)].hrv_inner is other_pack
    assert CORE_KEY not in model.model_options["transformer_options"]
    assert "attn2" not in model.model_options["transformer_options"].get("patches_replace", {})
    q, k, v = qkv(1, 4, 8, 2)
    attn2[("input", 1, 0)](q, k, v, {"n_heads": 8})
    assert other_calls == [1]


class SelfAttentionProbe:
    """A processor with every optional hook: asks for attn1 of two transformers, swaps q/k of its chunk's rows
    in self-attention, and adds a term computed with call.attention to the cross-attention output."""
    feature = "probe"

    def __init__(self, keys):
        self.keys, self.seen = keys, []

    def self_attention_keys(self, diffusion_model):
        return self.keys

    def process(self, call, q, k, v, chunks):
        self.seen.append(("attn2", call.key))
        rows = chunks[0].rows
        call.state["extra"] = call.attention(q[rows], k[rows], torch.zeros_like(v[rows]) + 1.0)
        return q, k, v

    def process_self(self, call, q, k, v, chunks):
        assert call.self_attention
        self.seen.append(("attn1", call.key))
        rows = chunks[0].rows
        return q.flip(0) if rows == slice(0, q.shape[0]) else q, k, v

    def process_output(self, call, out, chunks):
        if call.self_attention:
            return out
        out = out.clone()
        out[chunks[0].rows] += call.state["extra"]
        return out


def test_self_attention_hooks_install_chain_and_run_only_where_asked():
    from harness.comfy_models import model_patcher
    model = model_patcher("sd1", "tiny")
    probe = SelfAttentionProbe([("input", 7, 0), ("middle", 0, 0)])
    other_calls = []

    def other_attn1(q, k, v, extra_options):
        other_calls.append(1)
        return v

    before = model.clone()
    before.set_model_attn1_replace(other_attn1, "middle", 0, 0)
    plain = install_core(before)
    assert plain.model_options["transformer_options"]["patches_replace"]["attn1"] == {("middle", 0, 0): other_attn1}
    m = install_core(plain, [probe])
    again = install_core(m)
    attn1 = again.model_options["transformer_options"]["patches_replace"]["attn1"]
    assert set(attn1) == {("input", 7, 0), ("middle", 0, 0)}
    assert attn1[("middle", 0, 0)].hrv_inner is other_attn1
    assert attn1[("input", 7, 0)] is m.model_options["transformer_options"]["patches_replace"]["attn1"][("input", 7, 0)]
    assert "attn1" not in model.model_options["transformer_options"].get("patches_replace", {})

    cond = uuid.uuid4()
    run = RunState({"probe": probe}, {"positive": [{"uuid": cond, COND_KEY: {"probe": True}}]}, FakeSampling())
    q, k, v = qkv(2, 16, 8, 4, context=16, seed=4)
    options = extra(run, 8, 4, [cond])
    out1 = attn1[("input", 7, 0)](q, k, v, dict(options))
    expected1 = fused_attention(kernels()["basic"])(q.flip(0), k, v, {"n_heads": 8})
    assert (out1 - expected1).abs().max().item() <= 1e-5
    attn1[("middle", 0, 0)](q, k, v, dict(options))
    assert other_calls == [1]
    q2, k2, v2 = qkv(2, 16, 8, 4, seed=5)
    attn2 = again.model_options["transformer_options"]["patches_replace"]["attn2"][("input", 1, 0)]
    out2 = attn2(q2, k2, v2, dict(options))
    plain_out = fused_attention(kernels()["basic"])(q2, k2, v2, {"n_heads": 8})
    assert (out2 - (plain_out + 1.0)).abs().max().item() <= 1e-5        # attention rows sum to one: the term adds 1
    assert probe.seen == [("attn1", ("input", 7, 0)), ("attn1", ("middle", 0, 0)), ("attn2", ("input", 1, 0))]


def test_a_steered_call_reads_nothing_on_the_host_and_runs_two_ops():
    """Once a run has its plan, a steered attention call adds a copy of v and one scatter: no value read on the host
    (no aten._local_scalar_dense: no GPU sync) and no host-to-device copy (the plan's tensors are made once)."""
    from harness.oplog import OpLog
    layout = known_layout("sd1")
    cond, plain = uuid.uuid4(), uuid.uuid4()
    run = run_with({cond: request(layout, [((1, 2), torch.linspace(0.5, 2.0, 128))], start=0.2)})
    fn = make_core_fn(("input", 1, 0), lambda q, k, v, e: v, "default")
    q, k, v = qkv(2, 8, 8, 2)
    options = extra(run, 8, 2, [cond, plain])
    fn(q, k, v, options)                                          # builds the plan and this UNet call's gate
    with OpLog() as log:
        fn(q, k, v, options)
    assert not log.host_reads_or_copies(), log.ops
    # gated request: where + ones_like pick the factors on the device; then the copy and the scatter
    assert log.work() == ["aten.ones_like", "aten.where", "aten.clone", "aten.scatter_reduce_"], log.ops
    always = run_with({cond: request(layout, [((1, 2), torch.linspace(0.5, 2.0, 128))])})
    options = extra(always, 8, 2, [cond, plain])
    fn(q, k, v, options)
    with OpLog() as log:
        fn(q, k, v, options)
    assert log.work() == ["aten.clone", "aten.scatter_reduce_"], log.ops
