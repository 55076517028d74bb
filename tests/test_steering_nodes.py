"""The steering nodes on a real ComfyUI ModelPatcher around a tiny random SD1 UNet."""
import copy
from types import SimpleNamespace

import pytest
import torch

from hrv.comfy_host import import_pack
from hrv.format.layout import known_layout
from harness.comfy_models import model_patcher, tokenizer_clip

PROMPT = "a photo of a (rose-colored:1.1) car parked by the sea"
TARGET = "rose-colored"
POSITIONS = (5, 6, 7)  # start, a, photo, of, a, rose, -, colored


@pytest.fixture(scope="module")
def pack():
    return import_pack()


@pytest.fixture(scope="module")
def nodes(pack):
    return pack.nodes.steering_nodes


@pytest.fixture(scope="module")
def sd1_hrv(pack, official_dir):
    return pack.hrv.format.hrv_file.load(f"{official_dir}/sd1_official.safetensors")


@pytest.fixture(scope="module")
def sdxl_hrv(pack, official_dir):
    return pack.hrv.format.hrv_file.load(f"{official_dir}/sdxl_official.safetensors")


@pytest.fixture(scope="module")
def model():
    return model_patcher("sd1", "tiny")


@pytest.fixture(scope="module")
def clip():
    return tokenizer_clip("sd1")


def inputs(seed=0, same_context=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 8, 8, generator=g)
    context = torch.randn(2, 77, 768, generator=g) * 2
    if same_context:
        context[1] = context[0]
    return x, context


def run(m, sigma=5.0, chunks=(0, 1), seed=0, same_context=False):
    """One UNet call the way calc_cond_batch makes it: the patcher's transformer_options plus batch facts."""
    x, context = inputs(seed, same_context)
    transformer_options = {**m.model_options["transformer_options"], "cond_or_uncond": list(chunks),
                           "sigmas": torch.tensor([sigma])}
    with torch.no_grad():
        return m.model.apply_model(x, torch.full((2,), sigma), c_crossattn=context,
                                   transformer_options=transformer_options)


def strengthen(nodes, m, clip, hrv, concept="Color", strength=1.0, start=0.0, end=1.0, target=TARGET):
    return nodes.HRVConceptStrengthen().apply(m, clip, hrv, PROMPT, target, concept, strength, start, end)[0]


def adjust(nodes, m, clip, hrv, start=0.0, end=1.0):
    return nodes.HRVConceptAdjust().apply(m, clip, hrv, PROMPT, TARGET, "Color", "Vehicles", 1.0, 1.0, 1.0, 0.0,
                                          start, end)[0]


def weights_fingerprint(m):
    return [p.detach().clone() for p in m.model.parameters()][::7]


def recorders(base):
    """A clone of base whose 16 attn2 blocks record the value tensor they are given, then attend normally."""
    import comfy.ldm.modules.attention as attention
    seen = {}
    m = base.clone()
    for b in known_layout("sd1").blocks:
        def record(q, k, v, extra_options, key=b.key):
            seen[key] = v
            return attention.optimized_attention(q, k, v, extra_options["n_heads"])
        m.set_model_attn2_replace(record, *b.key)
    return m, seen


def applied_factors(seen, position):
    """Per-head factor the steering put on `position`, read off cond (row 0) vs identical uncond (row 1) values."""
    found = []
    for b in known_layout("sd1").blocks:
        v = seen[b.key].double()
        cond, uncond = v[0, position].view(8, -1), v[1, position].view(8, -1)
        found.append((cond * uncond).sum(-1) / (uncond * uncond).sum(-1))
    return torch.cat(found).float()


def test_registered_with_tooltips_everywhere(pack):
    for node_id in ("HRVConceptStrengthen", "HRVConceptAdjust", "HRVOrderedWeakening"):
        cls = pack.NODE_CLASS_MAPPINGS[node_id]
        assert cls.CATEGORY == "HRV/steering" and cls.DESCRIPTION and cls.RETURN_TYPES == ("MODEL",)
        assert len(cls.OUTPUT_TOOLTIPS) == 1 and pack.NODE_DISPLAY_NAME_MAPPINGS[node_id].startswith("HRV ")
        spec = cls.INPUT_TYPES()["required"]
        assert all(opts.get("tooltip") for _, opts in spec.values())
        concept_inputs = [name for name in spec if "concept" in name]
        assert concept_inputs and all(len(spec[n][0]) == 34 for n in concept_inputs)
        for name in list(spec)[:5]:
            assert name in ("model", "clip", "hrv", "prompt", "target")


def test_each_node_puts_its_factors_on_exactly_the_target_tokens(nodes, model, clip, sd1_hrv):
    from hrv.steering.factors import adjust as adjust_factors, ordered_weakening, strengthen as strengthen_factors
    base, seen = recorders(model)
    cases = [
        (nodes.HRVConceptStrengthen().apply(base, clip, sd1_hrv, PROMPT, TARGET, "Color", 0.7, 0.0, 1.0)[0],
         strengthen_factors(sd1_hrv.row("Color"), 0.7)),
        (nodes.HRVConceptAdjust().apply(base, clip, sd1_hrv, PROMPT, TARGET, "Color", "Vehicles",
                                        2.0, 1.0, 0.0, 9.0, 0.0, 1.0)[0],
         adjust_factors(sd1_hrv.row("Color"), sd1_hrv.row("Vehicles"), 2, 1, 0, clamp=9)),
        (nodes.HRVOrderedWeakening().apply(base, clip, sd1_hrv, PROMPT, TARGET, "Color", "LeRHF", 20, -2.0, 0.0, 1.0)[0],
         ordered_weakening(sd1_hrv.row("Color"), 20, most_relevant_first=False)),
    ]
    for steered, expected in cases:
        run(steered, same_context=True)
        for p in POSITIONS:
            assert torch.allclose(applied_factors(seen, p), expected, rtol=1e-5, atol=1e-5)
        for p in (0, 4, 8, 30):  # start token, other words, padding
            assert torch.allclose(applied_factors(seen, p), torch.ones(128), rtol=1e-6, atol=1e-6)


def test_original_model_is_never_mutated(nodes, model, clip, sd1_hrv):
    options_before = copy.deepcopy(model.model_options)
    weights_before = weights_fingerprint(model)
    plain_before = run(model)
    steered = adjust(nodes, model, clip, sd1_hrv)
    assert steered is not model and steered.model is model.model
    steered_out = run(steered)
    assert (steered_out[0] - plain_before[0]).abs().max() > 1e-4
    assert model.model_options == options_before
    assert "patches_replace" not in model.model_options["transformer_options"]
    assert all(torch.equal(a, b) for a, b in zip(weights_fingerprint(model), weights_before))
    assert torch.equal(run(model), plain_before)
    replaced = steered.model_options["transformer_options"]["patches_replace"]["attn2"]
    assert set(replaced) == {b.key for b in known_layout("sd1").blocks}


def test_only_the_cond_chunk_changes(nodes, model, clip, sd1_hrv):
    steered = strengthen(nodes, model, clip, sd1_hrv, strength=3.0)
    for chunks in ((0, 1), (1, 0)):
        plain, out = run(model, chunks=chunks), run(steered, chunks=chunks)
        cond, uncond = chunks.index(0), chunks.index(1)
        assert torch.equal(out[uncond], plain[uncond])
        assert (out[cond] - plain[cond]).abs().max() > 1e-4
    assert torch.equal(run(steered, chunks=(1, 1)), run(model, chunks=(1, 1)))


def test_only_inside_the_sigma_range(nodes, model, clip, sd1_hrv):
    sampling = model.get_model_object("model_sampling")
    mid = float(sampling.percent_to_sigma(0.5))
    late_only = strengthen(nodes, model, clip, sd1_hrv, strength=3.0, start=0.5, end=1.0)
    early_only = strengthen(nodes, model, clip, sd1_hrv, strength=3.0, start=0.0, end=0.5)
    high, low = mid * 4, mid / 4
    assert torch.equal(run(late_only, sigma=high), run(model, sigma=high))
    assert not torch.equal(run(late_only, sigma=low), run(model, sigma=low))
    assert torch.equal(run(early_only, sigma=low), run(model, sigma=low))
    assert not torch.equal(run(early_only, sigma=high), run(model, sigma=high))


def test_two_nodes_in_series_multiply(nodes, model, clip, sd1_hrv):
    from hrv.steering.factors import adjust as adjust_factors, strengthen as strengthen_factors
    first = strengthen(nodes, model, clip, sd1_hrv, concept="Material", strength=0.5)
    both = adjust(nodes, first, clip, sd1_hrv)
    product = strengthen_factors(sd1_hrv.row("Material"), 0.5) * adjust_factors(sd1_hrv.row("Color"), sd1_hrv.row("Vehicles"))
    one = nodes.steer(model, clip, sd1_hrv, PROMPT, TARGET, product, 0.0, 1.0)
    a, b = run(both), run(one)
    assert (a - b).abs().max().item() <= 1e-5 * max(1.0, b.abs().max().item())
    assert (a - run(first)).abs().max() > 1e-4
    assert len(first.model_options["transformer_options"]["patches_replace"]["attn2"]) == 16


def test_other_packs_attn2_replacement_still_runs(nodes, model, clip, sd1_hrv):
    import comfy.ldm.modules.attention as attention
    calls = []

    def other_pack(q, k, v, extra_options):
        calls.append((extra_options["block"], extra_options.get("block_index")))
        return attention.optimized_attention(q, k, v, extra_options["n_heads"]) * 0.5

    pre = model.clone()
    pre.set_model_attn2_replace(other_pack, "input", 1, 0)   # per transformer
    pre.set_model_attn2_replace(other_pack, "output", 3)     # per block: our per-transformer key must not shadow it
    pre_options = copy.deepcopy(pre.model_options)
    steered = strengthen(nodes, pre, clip, sd1_hrv, strength=2.0)
    out = run(steered)
    assert sorted(calls) == [(("input", 1), 0), (("output", 3), 0)]
    calls.clear()
    pre_out = run(pre)
    assert len(calls) == 2 and torch.equal(out[1], pre_out[1]) and not torch.equal(out[0], pre_out[0])
    assert pre.model_options == pre_options


def test_sampler_end_to_end_and_unpatched_rerun_is_bit_identical(nodes, model, clip, sd1_hrv):
    import comfy.sample
    g = torch.Generator().manual_seed(3)
    positive = [[torch.randn(1, 77, 768, generator=g) * 2, {}]]
    negative = [[torch.randn(1, 154, 768, generator=g), {}]]  # longer negative: cond is repeated to 154 tokens
    latent, noise = torch.zeros(1, 4, 8, 8), torch.randn(1, 4, 8, 8, generator=g)

    def sample(m):
        return comfy.sample.sample(m, noise, 2, 6.0, "euler", "normal", positive, negative, latent,
                                   disable_pbar=True, seed=3)

    before = sample(model)
    steered = sample(adjust(nodes, model, clip, sd1_hrv, start=0.0, end=0.6))
    after = sample(model)
    assert torch.equal(before, after)
    assert (steered - before).abs().max() > 1e-4


def test_sdxl_model_gets_all_70_blocks(nodes, sdxl_hrv):
    m = model_patcher("sdxl", "tiny", device="meta")
    steered = nodes.HRVConceptAdjust().apply(m, tokenizer_clip("sdxl"), sdxl_hrv, "a rose-colored dress", TARGET,
                                             "Color", "Plants", 2.0, 1.0, 0.0, 9.0, 0.0, 1.0)[0]
    replaced = steered.model_options["transformer_options"]["patches_replace"]["attn2"]
    assert set(replaced) == {b.key for b in known_layout("sdxl").blocks}
    assert "patches_replace" not in m.model_options["transformer_options"]


def test_clear_errors(pack, nodes, model, clip, sd1_hrv, sdxl_hrv):
    node = nodes.HRVConceptStrengthen()
    with pytest.raises(ValueError, match="made for sdxl .* load the HRV made for your checkpoint"):
        node.apply(model, clip, sdxl_hrv, PROMPT, TARGET, "Color", 1.0, 0.0, 1.0)
    custom = pack.hrv.format.hrv_file.HRV(matrix=torch.ones(2, 128), layout=sd1_hrv.layout, concepts=["Texture", "Shape"])
    with pytest.raises(ValueError, match="concept 'Color' is not in this HRV; pick one of: Texture, Shape"):
        node.apply(model, clip, custom, PROMPT, TARGET, "Color", 1.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="'tulip' is not in the prompt"):
        node.apply(model, clip, sd1_hrv, PROMPT, "car, tulip", "Color", 1.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="start_percent"):
        node.apply(model, clip, sd1_hrv, PROMPT, TARGET, "Color", 1.0, 0.6, 0.6)
    with pytest.raises(ValueError, match="connect the HRV output of HRV Loader"):
        node.apply(model, clip, "sd1_official", PROMPT, TARGET, "Color", 1.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="between 0 and 128"):
        nodes.HRVOrderedWeakening().apply(model, clip, sd1_hrv, PROMPT, TARGET, "Color", "MoRHF", 200, -2.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="no UNet cross-attention"):
        node.apply(SimpleNamespace(model=SimpleNamespace(diffusion_model=torch.nn.Linear(2, 2))), clip, sd1_hrv,
                   PROMPT, TARGET, "Color", 1.0, 0.0, 1.0)
    assert "patches_replace" not in model.model_options["transformer_options"]
