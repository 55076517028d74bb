"""The value-scaling attn2 patch equals scaling the attention map's token column per head."""
import math

import pytest
import torch

import hrv.steering.attention_patch as ap
from hrv.steering.attention_patch import (SigmaGate, SteeringRuntimeError, default_inner, existing_replacement,
                                 factors_by_block, make_attn2_replacements, make_steering_fn)
from hrv.format.hrv_file import load
from hrv.format.layout import known_layout
from hrv.steering.factors import adjust


def kernels():
    import comfy.ldm.modules.attention as attention
    return {"basic": attention.attention_basic, "sub_quad": attention.attention_sub_quad,
            "split": attention.attention_split, "pytorch": attention.attention_pytorch}


def explicit_reference(q, k, v, heads, s, positions, cond_rows):
    """softmax(QK^T / sqrt(d)) materialised in float64, token columns scaled per head on cond rows, times V."""
    b, n, c = q.shape
    d = c // heads
    qh, kh, vh = (t.double().view(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))   # [B, H, N|T, d]
    attn = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(d), dim=-1)               # [B, H, N, T]
    scale = torch.ones(b, heads, k.shape[1], dtype=torch.float64)
    for row in cond_rows:
        scale[row][:, list(positions)] = s.double()[:, None]
    out = (attn * scale[:, :, None, :]) @ vh                                             # [B, H, N, d]
    return out.transpose(1, 2).reshape(b, n, c)


def extra(heads, dim_head, chunks=(1, 0), sigma=5.0):
    return {"n_heads": heads, "dim_head": dim_head, "cond_or_uncond": list(chunks), "sigmas": torch.tensor([sigma]),
            "attn_precision": None, "block": ("input", 1), "block_index": 0}


def qkv(batch, queries, heads, dim_head, context=77, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, queries, heads * dim_head, generator=g),
            torch.randn(batch, context, heads * dim_head, generator=g),
            torch.randn(batch, context, heads * dim_head, generator=g))


@pytest.fixture(scope="module")
def sd1_hrv(official_dir):
    return load(f"{official_dir}/sd1_official.safetensors")


@pytest.fixture(scope="module")
def sdxl_hrv(official_dir):
    return load(f"{official_dir}/sdxl_official.safetensors")


@pytest.mark.parametrize("kernel", ["basic", "sub_quad", "split", "pytorch"])
def test_sd1_equivalence_with_every_comfy_kernel(sd1_hrv, kernel):
    s_all = adjust(sd1_hrv.row("Color"), sd1_hrv.row("Material"))
    key = ("input", 1, 0)
    s = factors_by_block(sd1_hrv.layout, s_all)[key]
    assert s.shape == (8,) and s.abs().max() > 2
    positions = (5, 6, 7)
    q, k, v = qkv(2, 4096, 8, 40)
    inner = default_inner(kernels()[kernel])
    fn = make_steering_fn(s, positions, 77, None, inner)
    out = fn(q, k, v, extra(8, 40, chunks=(1, 0)))
    expected = explicit_reference(q, k, v, 8, s, positions, cond_rows=[1])
    assert (out.double() - expected).abs().max().item() <= 1e-5
    # The uncond half is the plain kernel's output, bit for bit.
    assert torch.equal(out[0], inner(q, k, v, extra(8, 40))[0])


@pytest.mark.parametrize("key, heads, queries", [(("input", 4, 0), 10, 4096), (("input", 7, 3), 20, 1024)])
def test_sdxl_equivalence(sdxl_hrv, key, heads, queries):
    s_all = adjust(sdxl_hrv.row("Animals"), sdxl_hrv.row("Color"), 2, 1, 0, clamp=9)
    s = factors_by_block(sdxl_hrv.layout, s_all)[key]
    assert s.shape == (heads,)
    positions = (2, 40)
    q, k, v = qkv(2, queries, heads, 64, seed=1)
    fn = make_steering_fn(s, positions, 77, None, default_inner(kernels()["pytorch"]))
    out = fn(q, k, v, extra(heads, 64, chunks=(0, 1)))
    expected = explicit_reference(q, k, v, heads, s, positions, cond_rows=[0])
    assert (out.double() - expected).abs().max().item() <= 1e-5


def test_batch_of_several_images_per_chunk_changes_only_cond_rows():
    s = torch.tensor([3.0, -2.0, 0.5, 1.0])
    q, k, v = qkv(6, 64, 4, 16, seed=2)  # chunks (cond, uncond, cond) x 2 images
    fn = make_steering_fn(s, (1,), 77, None, default_inner(kernels()["basic"]))
    out = fn(q, k, v, extra(4, 16, chunks=(0, 1, 0)))
    expected = explicit_reference(q, k, v, 4, s, (1,), cond_rows=[0, 1, 4, 5])
    assert (out.double() - expected).abs().max().item() <= 1e-5
    plain = default_inner(kernels()["basic"])(q, k, v, extra(4, 16))
    assert torch.equal(out[2:4], plain[2:4])
    assert not torch.allclose(out[0:2], plain[0:2])


def test_repeated_context_is_steered_at_every_repetition():
    # ComfyUI repeats a 77-token cond to 154 tokens when the negative prompt is longer; that repeat
    # leaves plain attention unchanged, and must leave steered attention unchanged too.
    s = torch.tensor([4.0, 0.25, -1.0, 2.0])
    q, k, v = qkv(1, 256, 4, 16, seed=3)
    fn = make_steering_fn(s, (3, 4), 77, None, default_inner(kernels()["basic"]))
    single = fn(q, k, v, extra(4, 16, chunks=(0,)))
    repeated = fn(q, k.repeat(1, 2, 1), v.repeat(1, 2, 1), extra(4, 16, chunks=(0,)))
    assert (single - repeated).abs().max().item() <= 1e-5
    with pytest.raises(SteeringRuntimeError, match="same prompt"):
        fn(q, k[:, :50], v[:, :50], extra(4, 16, chunks=(0,)))


def test_chained_fns_multiply_and_outer_runs_the_inner():
    s1, s2 = torch.tensor([2.0, 0.5, -1.0, 1.5]), torch.tensor([1.5, 3.0, 2.0, -0.5])
    base = default_inner(kernels()["basic"])
    q, k, v = qkv(2, 128, 4, 16, seed=4)
    chained = make_steering_fn(s2, (6,), 77, None, make_steering_fn(s1, (6,), 77, None, base))
    product = make_steering_fn(s1 * s2, (6,), 77, None, base)
    e = extra(4, 16)
    assert (chained(q, k, v, e) - product(q, k, v, e)).abs().max().item() <= 1e-6


def test_uncond_only_batch_and_closed_gate_pass_v_through_untouched():
    seen = []

    def recording_inner(q, k, v, extra_options):
        seen.append(v)
        return v

    s = torch.tensor([2.0, 2.0])
    q, k, v = qkv(1, 8, 2, 4)
    gate = SigmaGate(sigma_start=10.0, sigma_end=1.0)
    fn = make_steering_fn(s, (1,), 77, gate, recording_inner)
    fn(q, k, v, extra(2, 4, chunks=(1,)))
    fn(q, k, v, extra(2, 4, chunks=(0,), sigma=0.5))
    fn(q, k, v, extra(2, 4, chunks=(0,), sigma=11.0))
    assert all(x is v for x in seen)
    fn(q, k, v, extra(2, 4, chunks=(0,), sigma=10.0))
    fn(q, k, v, extra(2, 4, chunks=(0,), sigma=1.0))
    assert seen[-1] is not v and torch.equal(seen[-1][0, 1], v[0, 1] * 2) and torch.equal(seen[-1][0, 0], v[0, 0])


def test_gate_decides_once_per_step_tensor():
    gate = SigmaGate(5.0, 1.0)
    sigmas = torch.tensor([3.0])
    assert gate.active(sigmas)
    sigmas.fill_(9.0)  # same object: the cached decision for this step stands
    assert gate.active(sigmas)
    assert not gate.active(torch.tensor([9.0]))
    assert gate.active(None)


def test_multiplier_is_built_once_per_device_dtype_and_shape(monkeypatch):
    calls = []
    real = ap._value_multiplier
    monkeypatch.setattr(ap, "_value_multiplier", lambda *a, **kw: calls.append(a) or real(*a, **kw))
    fn = make_steering_fn(torch.tensor([2.0, 3.0]), (1,), 77, None, lambda q, k, v, e: v)
    q, k, v = qkv(2, 8, 2, 4)
    for _ in range(5):
        fn(q, k, v, extra(2, 4))
    assert len(calls) == 1
    fn(q, k.half(), v.half(), extra(2, 4))
    fn(q, k.repeat(1, 2, 1), v.repeat(1, 2, 1), extra(2, 4))
    assert len(calls) == 3
    out = fn(q, k.half(), v.half(), extra(2, 4))
    per_channel = torch.tensor([2.0] * 4 + [3.0] * 4, dtype=torch.float16)  # head h owns channels h*4 .. h*4+3
    assert out.dtype == torch.float16 and torch.equal(out[1, 1], v.half()[1, 1] * per_channel)
    assert torch.equal(out[1, 0], v.half()[1, 0])


def test_head_count_mismatch_is_a_clear_error():
    fn = make_steering_fn(torch.ones(8), (1,), 77, None, lambda q, k, v, e: v)
    q, k, v = qkv(2, 8, 10, 4)
    with pytest.raises(SteeringRuntimeError, match="another architecture"):
        fn(q, k, v, extra(10, 4))


def test_replacements_cover_every_block_and_chain_existing():
    layout = known_layout("sd1")
    factors = factors_by_block(layout, torch.linspace(0.5, 2.0, 128))
    assert [f.numel() for f in factors.values()] == [8] * 16
    marker_calls = []

    def other_pack(q, k, v, extra_options):
        marker_calls.append(extra_options["block"])
        return v

    existing = {("input", 1, 0): other_pack, ("output", 3): other_pack}
    assert existing_replacement(existing, ("output", 3, 0)) is other_pack
    assert existing_replacement(existing, ("output", 4, 0)) is None
    default = lambda q, k, v, e: torch.zeros(1)  # noqa: E731
    fns = make_attn2_replacements(factors, (1,), 77, default, existing, sigma_range=(10.0, 0.0))
    assert set(fns) == {b.key for b in layout.blocks}
    q, k, v = qkv(2, 4, 8, 2)
    fns[("input", 1, 0)](q, k, v, extra(8, 2))
    fns[("output", 3, 0)](q, k, v, extra(8, 2))
    assert torch.equal(fns[("middle", 0, 0)](q, k, v, extra(8, 2)), torch.zeros(1))
    assert len(marker_calls) == 2
    with pytest.raises(ValueError, match="outside the 77-token prompt"):
        make_attn2_replacements(factors, (77,), 77, default)
    with pytest.raises(ValueError, match="expected 128 head factors"):
        factors_by_block(layout, torch.ones(1300))
