"""Steering through ComfyUI's real samplers and guiders, on a tiny random SD1 model and CLIP (CPU).

Every test records the value rows v that each cross-attention call receives (tests/harness/attn_recorder.py:
a per-transformer attn2 replacement installed BEFORE the HRV node, so the attention core wraps it and it sees v
after steering) in a steered run and in the same graph run with the model the HRV node was given (the
reference: plain to_v of each conditioning's context). v depends on the context only, never on the latent, so
the two runs see the same v call by call except where steering applies. The expectation is computed here from
the HRV matrix (strengthen [w:C]: HRV[C][h]; adjust [w:D-U] with preset auto on SD1: HRV[D][h] - HRV[U][h] + 1),
repeated over each head's dim_head channels, on the marked words' token positions found with the tokenizer:
the chunks of a marked conditioning carry exactly ref * factor at those rows, every other row and every other
chunk is bit-identical to the reference.

What the guiders put in one UNet call (transformer_options["uuids"], one per chunk; ComfyUI 0.3.75, seen here):
KSampler / CFGGuider: [negative, positive], cond_or_uncond [1, 0]. DualCFGGuider (regular and nested):
[positive, middle, negative], [2, 1, 0]. PerpNegGuider: [empty, negative, positive], [2, 1, 0]. SAG: the CFG
call, then a call over the negative alone with cond_or_uncond [0]: calc_cond_batch numbers the cond lists of each
call from 0, so cond_or_uncond does not say cond or uncond, and only (cond_or_uncond, uuid) names a chunk.
ConditioningSetArea: the area chunks run in calls of their own (smaller latent), together with copies of the
negative that ComfyUI makes for each area and that carry the area entry's uuid (and dict) with the negative's
context; they are never steered.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import pytest
import torch

from hrv.comfy_host import import_pack
from harness.attn_recorder import (SD1_CROSS_ATTENTION, SD1_HEADS, AttnRecorder, name_conditioning, sd1_columns)
from harness.tiny_pipeline import tiny_sd1_pipeline

END_TOKEN = 49407          # SD1's end-of-text token, also its padding
STEPS = 2
LATENT = (1, 4, 16, 16)    # SAG needs the middle block's attention map to be at least 2x2


@dataclass
class Prompt:
    name: str
    conditioning: list
    context: torch.Tensor          # [L, 768]: its cross-attention context
    terms: tuple = ()              # ((positions, factors [128]), ...): the steering its chunks must carry


# --- fixtures ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pack():
    return import_pack()


@pytest.fixture(scope="module")
def N(pack):
    return pack.nodes.steering_nodes


@pytest.fixture(scope="module")
def hrv(pack, official_dir):
    return pack.hrv.format.hrv_file.load(f"{official_dir}/sd1_official.safetensors")


@pytest.fixture(scope="module")
def pipeline(one_torch_thread):
    return tiny_sd1_pipeline(0)


@pytest.fixture(scope="module")
def model(pipeline):
    return pipeline[0]


@pytest.fixture(scope="module")
def clip(pipeline):
    return pipeline[1]


@pytest.fixture
def rec():
    return AttnRecorder()


# --- expectations, computed without the pack's helpers ---------------------------------------------------

def row(hrv, concept):
    return hrv.matrix[list(hrv.concepts).index(concept)].to(torch.float32)


def strengthen(hrv, concept):
    return row(hrv, concept)


def adjust_auto_sd1(hrv, desired, undesired):
    return row(hrv, desired) - row(hrv, undesired) + 1


def _tokens(clip, text):
    return [t for t, *_ in clip.tokenize(text)["l"][0]]


def word_positions(clip, text, word):
    """Context positions of `word`'s tokens in the encoded `text` (it must occur exactly once)."""
    prompt = _tokens(clip, text)
    prompt = prompt[:prompt.index(END_TOKEN, 1)]
    alone = _tokens(clip, word)
    alone = alone[1:alone.index(END_TOKEN, 1)]
    found = [i for i in range(len(prompt)) if prompt[i:i + len(alone)] == alone]
    assert len(found) == 1, (text, word, found)
    return tuple(range(found[0], found[0] + len(alone)))


def clean_text(text):
    return re.sub(r"\[([^:\]]+):[^\]]+\]", r"\1", text)


def hrv_encode(N, model, clip, hrv, name, text, expected):
    """HRV Text Encode with preset auto; expected = [(word, factors [128])]. Returns (model, Prompt)."""
    m, cond = N.HRVTextEncode().encode(model, clip, hrv, text, "auto", 1.0, 1.0, 1.0, 0.0, 0.0, 1.0)
    clean = clean_text(text)
    terms = tuple((word_positions(clip, clean, w), f) for w, f in expected)
    return m, Prompt(name, name_conditioning(cond, name), cond[0][0][0], terms)


def clip_encode(N, clip, name, text):
    """What CLIP Text Encode gives, as a Prompt without steering."""
    cond = N.encode_text(clip, text)
    return Prompt(name, name_conditioning(cond, name), cond[0][0][0])


def attn2_of(unet, key):
    block, index, transformer = key
    container = {"input": lambda: unet.input_blocks[index], "middle": lambda: unet.middle_block,
                 "output": lambda: unet.output_blocks[index]}[block]()
    spatial = next(m for m in container if hasattr(m, "transformer_blocks"))
    return spatial.transformer_blocks[transformer].attn2


def expected_chunk(ref, prompt, key):
    """ref [b, L, C] with the prompt's steered rows multiplied by its per-head factors."""
    out = ref.clone()
    _, length, channels = ref.shape
    period = prompt.context.shape[0]
    dim_head = channels // SD1_HEADS
    for positions, factors in prompt.terms:
        per_channel = factors[sd1_columns(key)].repeat_interleave(dim_head)
        for repeat in range(length // period):
            for p in positions:
                out[:, repeat * period + p] = ref[:, repeat * period + p] * per_channel
    return out


@dataclass
class UNetCall:
    names: tuple
    cond_or_uncond: tuple
    steered: tuple       # names of the chunks that carried steering


def check(steered_calls, ref_calls, prompts, unet, unsteered_keys=()):
    """Asserts the steered run's v against the reference run's, call by call; returns one UNetCall per UNet call."""
    prompts = {p.name: p for p in prompts}
    assert steered_calls and len(steered_calls) == len(ref_calls)
    keys = [c.key for c in steered_calls]
    assert {k: keys.count(k) for k in set(keys)} == {k: len(keys) // 16 for k in SD1_CROSS_ATTENTION}, \
        "every UNet call reaches the recorder on each of the 16 cross-attention transformers"
    unet_calls = []
    for s, r in zip(steered_calls, ref_calls):
        assert (s.key, s.names, s.cond_or_uncond, s.source, s.v.shape) == (r.key, r.names, r.cond_or_uncond, r.source, r.v.shape)
        assert len(s.uuids) == len(s.names) and None not in s.names, s.names
        attn2 = attn2_of(unet, s.key)
        steered = []
        for i, name in enumerate(s.names):
            prompt, ref = prompts[name], r.chunk(i)
            period = prompt.context.shape[0]
            assert ref.shape[1] % period == 0
            with torch.no_grad():  # the chunk is this conditioning's (repeated as cond_cat does)
                plain = attn2.to_v(prompt.context.repeat(ref.shape[1] // period, 1))
            assert torch.allclose(ref, plain.expand_as(ref), rtol=1e-4, atol=1e-5), (s.key, name)
            if prompt.terms and s.key not in unsteered_keys:
                expected = expected_chunk(ref, prompt, s.key)
                assert not torch.equal(expected, ref)
                steered.append(name)
            else:
                expected = ref
            assert torch.equal(s.chunk(i), expected), f"{s.key} chunk {i} ({name}) of {s.names}"
        if s.key == SD1_CROSS_ATTENTION[0]:
            unet_calls.append(UNetCall(s.names, s.cond_or_uncond, tuple(steered)))
    return unet_calls


def steered_names(unet_calls):
    return {n for c in unet_calls for n in c.steered}


def run_both(rec, graph, steered_model, base):
    """graph(model) with the HRV model, then with the model the HRV node was given: (steered calls, reference calls)."""
    out = graph(steered_model)
    steered = rec.take()
    ref_out = graph(base)
    return steered, rec.take(), out, ref_out


# --- samplers as the nodes run them ------------------------------------------------------------------------

def ksampler(model, positive, negative, latent=None, steps=STEPS, cfg=5.0, denoise=1.0, seed=0):
    import nodes
    latent = torch.zeros(LATENT) if latent is None else latent
    return nodes.KSampler().sample(model, seed, steps, cfg, "euler", "normal", positive, negative,
                                   {"samples": latent}, denoise=denoise)[0]["samples"]


def custom_advanced(guider, model, latent=None, steps=STEPS, seed=0):
    from comfy_extras import nodes_custom_sampler as cs
    latent = torch.zeros(LATENT) if latent is None else latent
    noise = cs.RandomNoise.execute(seed)[0]
    sampler = cs.KSamplerSelect.execute("euler")[0]
    sigmas = cs.BasicScheduler.execute(model, "normal", steps, 1.0)[0]
    return cs.SamplerCustomAdvanced.execute(noise, guider, sampler, sigmas, {"samples": latent})[0]["samples"]


ROSE = "A [rose-colored:Color-Plants] vase on a table"


def rose(N, base, clip, hrv, name="pos"):
    return hrv_encode(N, base, clip, hrv, name, ROSE, [("rose-colored", adjust_auto_sd1(hrv, "Color", "Plants"))])


# --- samplers and guiders ------------------------------------------------------------------------------------

def test_ksampler_steers_the_positive_only(N, model, clip, hrv, rec, caplog):
    base = rec.install(model)
    m, pos = rose(N, base, clip, hrv)
    neg = clip_encode(N, clip, "neg", "blurry, ugly")
    with caplog.at_level(logging.WARNING, logger="hrv.attention"):
        s, r, out, ref_out = run_both(rec, lambda mm: ksampler(mm, pos.conditioning, neg.conditioning), m, base)
    assert not [x for x in caplog.records if x.name.startswith("hrv") and x.levelno >= logging.WARNING]
    calls = check(s, r, [pos, neg], model.model.diffusion_model)
    assert len(calls) == STEPS and steered_names(calls) == {"pos"}
    # CFG batches uncond and cond in one call: [negative, positive], cond_or_uncond [1, 0].
    assert all((c.names, c.cond_or_uncond) == (("neg", "pos"), (1, 0)) for c in calls)
    assert (out - ref_out).abs().max() > 1e-4


def test_custom_advanced_with_cfg_guider(N, model, clip, hrv, rec):
    from comfy_extras.nodes_custom_sampler import CFGGuider
    base = rec.install(model)
    m, pos = rose(N, base, clip, hrv)
    neg = clip_encode(N, clip, "neg", "blurry, ugly")

    def graph(mm):
        return custom_advanced(CFGGuider.execute(mm, pos.conditioning, neg.conditioning, 5.0)[0], mm)
    s, r, out, ref_out = run_both(rec, graph, m, base)
    calls = check(s, r, [pos, neg], model.model.diffusion_model)
    assert len(calls) == STEPS and steered_names(calls) == {"pos"}
    assert all(sorted(c.names) == ["neg", "pos"] for c in calls)
    assert (out - ref_out).abs().max() > 1e-4


@pytest.mark.parametrize("style", ["regular", "nested"])
def test_dual_cfg_guider_steers_its_positive_not_middle_or_negative(N, model, clip, hrv, rec, style):
    from comfy_extras.nodes_custom_sampler import DualCFGGuider
    base = rec.install(model)
    m, pos = rose(N, base, clip, hrv)
    middle = clip_encode(N, clip, "middle", "a vase on a table")
    neg = clip_encode(N, clip, "neg", "blurry, ugly")

    def graph(mm):
        guider = DualCFGGuider.execute(mm, pos.conditioning, middle.conditioning, neg.conditioning, 3.0, 4.0, style)[0]
        return custom_advanced(guider, mm)
    s, r, _, _ = run_both(rec, graph, m, base)
    calls = check(s, r, [pos, middle, neg], model.model.diffusion_model)
    assert steered_names(calls) == {"pos"}
    assert all(sorted(c.names) == ["middle", "neg", "pos"] for c in calls)


def test_dual_cfg_guider_steers_a_marked_middle(N, model, clip, hrv, rec):
    """A conditioning is steered wherever it goes, also as DualCFG's middle (which ComfyUI retypes as negative)."""
    from comfy_extras.nodes_custom_sampler import DualCFGGuider
    base = rec.install(model)
    pos = clip_encode(N, clip, "pos", "A rose-colored vase on a table")
    m, middle = rose(N, base, clip, hrv, name="middle")
    neg = clip_encode(N, clip, "neg", "blurry, ugly")

    def graph(mm):
        return custom_advanced(DualCFGGuider.execute(mm, pos.conditioning, middle.conditioning, neg.conditioning,
                                                     3.0, 4.0, "regular")[0], mm)
    s, r, _, _ = run_both(rec, graph, m, base)
    assert steered_names(check(s, r, [pos, middle, neg], model.model.diffusion_model)) == {"middle"}


def test_perpneg_guider_never_steers_the_empty_prompt(N, model, clip, hrv, rec):
    from comfy_extras.nodes_perpneg import PerpNegGuider
    base = rec.install(model)
    m, pos = rose(N, base, clip, hrv)
    neg = clip_encode(N, clip, "neg", "roses, flowers")
    empty = clip_encode(N, clip, "empty", "")

    def graph(mm):
        guider = PerpNegGuider.execute(mm, pos.conditioning, neg.conditioning, empty.conditioning, 5.0, 1.0)[0]
        return custom_advanced(guider, mm)
    s, r, out, ref_out = run_both(rec, graph, m, base)
    calls = check(s, r, [pos, neg, empty], model.model.diffusion_model)
    assert steered_names(calls) == {"pos"}
    assert all(sorted(c.names) == ["empty", "neg", "pos"] for c in calls)
    assert (out - ref_out).abs().max() > 1e-4


@pytest.mark.parametrize("negative_marked", [False, True])
def test_sag_extra_pass_over_the_negative(N, model, clip, hrv, rec, negative_marked):
    """SAG reruns the negative alone on a blurred latent (cond_or_uncond [0]). It is steered only as the negative
    is: never for a plain negative; with the negative's own factors when the negative carries marks."""
    from comfy_extras.nodes_sag import SelfAttentionGuidance
    base = rec.install(model)
    m, pos = rose(N, base, clip, hrv)
    if negative_marked:
        m, neg = hrv_encode(N, m, clip, hrv, "neg", "a [blurry:Image Style] photo",
                            [("blurry", strengthen(hrv, "Image Style"))])
    else:
        neg = clip_encode(N, clip, "neg", "a blurry photo")

    def graph(mm):
        return ksampler(SelfAttentionGuidance.execute(mm, 0.8, 2.0)[0], pos.conditioning, neg.conditioning)
    s, r, out, ref_out = run_both(rec, graph, m, base)
    calls = check(s, r, [pos, neg], model.model.diffusion_model)
    sag_passes = [c for c in calls if c.names == ("neg",)]
    assert len(sag_passes) == STEPS and all(c.cond_or_uncond == (0,) for c in sag_passes)
    assert len([c for c in calls if c.names == ("neg", "pos")]) == STEPS
    assert all(c.steered == (("neg",) if negative_marked else ()) for c in sag_passes)
    assert steered_names(calls) == ({"pos", "neg"} if negative_marked else {"pos"})
    assert (out - ref_out).abs().max() > 1e-4


# --- conditioning nodes ----------------------------------------------------------------------------------------

def test_combine_steers_each_marked_entry_at_its_own_positions(N, model, clip, hrv, rec):
    import nodes
    base = rec.install(model)
    m, a = rose(N, base, clip, hrv, name="a")
    b = clip_encode(N, clip, "b", "a rose-colored vase, oil painting")
    m, c = hrv_encode(N, m, clip, hrv, "c", "an old photo of a [golden:Material] crown on a [wooden:Texture] table",
                      [("golden", strengthen(hrv, "Material")), ("wooden", strengthen(hrv, "Texture"))])
    assert a.terms[0][0] != c.terms[0][0]
    neg = clip_encode(N, clip, "neg", "blurry")
    combine = nodes.ConditioningCombine().combine
    positive = combine(combine(a.conditioning, b.conditioning)[0], c.conditioning)[0]
    s, r, _, _ = run_both(rec, lambda mm: ksampler(mm, positive, neg.conditioning), m, base)
    calls = check(s, r, [a, b, c, neg], model.model.diffusion_model)
    assert steered_names(calls) == {"a", "c"}
    assert all(sorted(x.names) == ["a", "b", "c", "neg"] for x in calls)


@pytest.mark.parametrize("negative_marked", [False, True])
def test_set_area_is_steered_only_when_marked(N, model, clip, hrv, rec, negative_marked):
    """Area chunks are steered as their conditioning is. ComfyUI runs each area with a copy of the negative that
    carries the area entry's uuid and dict: those copies hold the negative's context and get the negative's steering
    (none for a plain negative), never the area prompt's."""
    import nodes
    base = rec.install(model)
    m, a = rose(N, base, clip, hrv, name="a")
    b = clip_encode(N, clip, "b", "a rose-colored vase on a table")
    if negative_marked:
        m, neg = hrv_encode(N, m, clip, hrv, "neg", "a [blurry:Image Style] photo", [("blurry", strengthen(hrv, "Image Style"))])
    else:
        neg = clip_encode(N, clip, "neg", "blurry")
    area = nodes.ConditioningSetArea().append
    positive = nodes.ConditioningCombine().combine(area(a.conditioning, 64, 64, 0, 0, 1.0)[0],
                                                   area(b.conditioning, 64, 64, 64, 64, 1.0)[0])[0]
    s, r, _, _ = run_both(rec, lambda mm: ksampler(mm, positive, neg.conditioning), m, base)
    calls = check(s, r, [a, b, neg], model.model.diffusion_model)
    assert steered_names(calls) == ({"a", "neg"} if negative_marked else {"a"})
    # The 8x8 area chunks run together with the negative's copies for their areas, apart from the full-size negative.
    assert sorted(sorted(x.names) for x in calls[:2]) == [["a", "b", "neg", "neg"], ["neg"]]
    area_call = next(x for x in calls if len(x.names) == 4)
    assert sorted(area_call.steered) == (["a", "neg", "neg"] if negative_marked else ["a"])


def test_concat_steers_conditioning_to_at_its_own_positions_only(N, model, clip, hrv, rec):
    """ConditioningConcat keeps conditioning_to's dict: a marked conditioning_to is steered at its own positions
    (the first 77 tokens), never in the appended part; a marked conditioning_from brings no steering."""
    import nodes
    base = rec.install(model)
    m, a = rose(N, base, clip, hrv, name="a")
    b = clip_encode(N, clip, "b", "a rose-colored vase on a table")
    neg = clip_encode(N, clip, "neg", "blurry")
    concat = nodes.ConditioningConcat().concat
    ab_cond = name_conditioning(concat(a.conditioning, b.conditioning)[0], "ab")
    ba_cond = name_conditioning(concat(b.conditioning, a.conditioning)[0], "ba")
    ab = Prompt("ab", ab_cond, torch.cat([a.context, b.context]), a.terms)
    ba = Prompt("ba", ba_cond, torch.cat([b.context, a.context]))
    assert ab.context.shape[0] == 154
    for positive, name in ((ab, "ab"), (ba, "ba")):
        s, r, _, _ = run_both(rec, lambda mm: ksampler(mm, positive.conditioning, neg.conditioning), m, base)
        calls = check(s, r, [positive, neg], model.model.diffusion_model)
        assert steered_names(calls) == ({"ab"} if name == "ab" else set())
        assert all(sorted(x.names) == sorted([name, "neg"]) for x in calls)   # neg repeated to 154 tokens
        assert s[0].v.shape[1] == 154


def test_latent_batch_of_three(N, model, clip, hrv, rec):
    base = rec.install(model)
    m, pos = rose(N, base, clip, hrv)
    neg = clip_encode(N, clip, "neg", "blurry")
    latent = torch.zeros(3, *LATENT[1:])
    s, r, out, ref_out = run_both(rec, lambda mm: ksampler(mm, pos.conditioning, neg.conditioning, latent), m, base)
    assert s[0].v.shape[0] == 6
    calls = check(s, r, [pos, neg], model.model.diffusion_model)
    assert steered_names(calls) == {"pos"}
    assert all((out[i] - ref_out[i]).abs().max() > 1e-4 for i in range(3))


def test_img2img_at_denoise_half(N, model, clip, hrv, rec):
    base = rec.install(model)
    m, pos = rose(N, base, clip, hrv)
    neg = clip_encode(N, clip, "neg", "blurry")
    latent = torch.randn(LATENT, generator=torch.Generator().manual_seed(3))

    def graph(mm):
        return ksampler(mm, pos.conditioning, neg.conditioning, latent, steps=2, denoise=0.5)
    s, r, out, ref_out = run_both(rec, graph, m, base)
    calls = check(s, r, [pos, neg], model.model.diffusion_model)
    assert len(calls) == 2 and steered_names(calls) == {"pos"}
    sigma_max = float(model.get_model_object("model_sampling").sigma_max)
    assert s[0].sigma < 0.5 * sigma_max, "denoise 0.5 starts half way down the schedule"
    assert (out - ref_out).abs().max() > 1e-4


def test_two_text_encoders_steer_positive_and_negative_each_with_its_own_factors(N, model, clip, hrv, rec):
    base = rec.install(model)
    m1, pos = hrv_encode(N, base, clip, hrv, "pos", "a [golden:Material] crown on a table",
                         [("golden", strengthen(hrv, "Material"))])
    m2, neg = hrv_encode(N, m1, clip, hrv, "neg", "a [blurry:Image Style-Lighting Conditions] dark photo",
                         [("blurry", adjust_auto_sd1(hrv, "Image Style", "Lighting Conditions"))])
    assert m2.model_options["transformer_options"]["patches_replace"]["attn2"] == \
        m1.model_options["transformer_options"]["patches_replace"]["attn2"], "the second node keeps the first's core"
    s, r, _, _ = run_both(rec, lambda mm: ksampler(mm, pos.conditioning, neg.conditioning), m2, base)
    calls = check(s, r, [pos, neg], model.model.diffusion_model)
    assert steered_names(calls) == {"pos", "neg"}


def test_a_marked_negative_alone_is_steered(N, model, clip, hrv, rec):
    base = rec.install(model)
    pos = clip_encode(N, clip, "pos", "A rose-colored vase on a table")
    m, neg = hrv_encode(N, base, clip, hrv, "neg", "a [blurry:Image Style] photo", [("blurry", strengthen(hrv, "Image Style"))])
    s, r, out, ref_out = run_both(rec, lambda mm: ksampler(mm, pos.conditioning, neg.conditioning), m, base)
    assert steered_names(check(s, r, [pos, neg], model.model.diffusion_model)) == {"neg"}
    assert (out - ref_out).abs().max() > 1e-4


def test_unpatched_sampling_is_bit_identical_before_and_after_steered_runs(N, model, clip, hrv):
    from comfy_extras.nodes_custom_sampler import CFGGuider
    from comfy_extras.nodes_sag import SelfAttentionGuidance
    plain_pos = N.encode_text(clip, "A rose-colored vase on a table")
    neg = N.encode_text(clip, "blurry")
    options_before = repr(model.model_options)
    before = ksampler(model, plain_pos, neg)
    before_guider = custom_advanced(CFGGuider.execute(model, plain_pos, neg, 5.0)[0], model)

    m, pos = N.HRVTextEncode().encode(model, clip, hrv, ROSE, "auto", 1.0, 1.0, 1.0, 0.0, 0.0, 1.0)
    assert torch.equal(pos[0][0], plain_pos[0][0])
    steered = ksampler(m, pos, neg)
    assert (steered - before).abs().max() > 1e-4
    custom_advanced(CFGGuider.execute(m, pos, neg, 5.0)[0], m)
    ksampler(SelfAttentionGuidance.execute(m, 0.8, 2.0)[0], pos, neg)

    assert repr(model.model_options) == options_before
    assert torch.equal(ksampler(model, plain_pos, neg), before)
    assert torch.equal(custom_advanced(CFGGuider.execute(model, plain_pos, neg, 5.0)[0], model), before_guider)
    # The marked conditioning on a model without the HRV attention samples as CLIP Text Encode's.
    assert torch.equal(ksampler(model, pos, neg), before)


# --- chaining with other attention patches -------------------------------------------------------------------

SHADOWED = (("input", 4, 0), ("output", 5, 0))


def test_per_transformer_patch_after_hrv_warns_once_per_run(N, model, clip, hrv, rec, caplog):
    """An IPAdapter-style patch installed after the HRV node replaces the core on its transformers: steering is
    skipped there (the patch gets plain v), applied elsewhere, and the core logs one warning naming the fix."""
    base = rec.install(model)
    m, pos = rose(N, base, clip, hrv)
    neg = clip_encode(N, clip, "neg", "blurry")

    def ipadapter_style(mm):
        out = mm.clone()
        for key in SHADOWED:
            out.set_model_attn2_replace(rec.attention("transformer", key), *key)
        return out
    with caplog.at_level(logging.WARNING, logger="hrv.attention"):
        s, r, _, _ = run_both(rec, lambda mm: ksampler(ipadapter_style(mm), pos.conditioning, neg.conditioning), m, base)
    calls = check(s, r, [pos, neg], model.model.diffusion_model, unsteered_keys=SHADOWED)
    assert steered_names(calls) == {"pos"}
    warnings = [x for x in caplog.records if x.name == "hrv.attention" and x.levelno >= logging.WARNING]
    assert len(warnings) == 1, [w.getMessage() for w in warnings]
    message = warnings[0].getMessage()
    assert "2 cross-attention layer(s)" in message and "input.4.0" in message and "output.5.0" in message
    assert "Put the HRV node after that node" in message

    # The fix: the same patch installed before the HRV node runs inside the core, and steering applies everywhere.
    caplog.clear()
    m_fixed, pos_fixed = rose(N, ipadapter_style(base), clip, hrv)
    with caplog.at_level(logging.WARNING, logger="hrv.attention"):
        s, r, _, _ = run_both(rec, lambda mm: ksampler(mm, pos_fixed.conditioning, neg.conditioning),
                              m_fixed, ipadapter_style(base))
    check(s, r, [pos_fixed, neg], model.model.diffusion_model)
    assert not [x for x in caplog.records if x.name == "hrv.attention"]


def test_per_block_patch_after_hrv_runs_as_the_inner_attention(N, model, clip, hrv, rec, caplog):
    """A per-block attn2 replacement ((block, id) key; ComfyUI's set_model_attn2_replace without transformer_index)
    installed after the HRV node: ComfyUI would prefer the core's per-transformer key and skip it, so the core
    calls it as its inner attention; it gets steered v."""
    key = ("input", 4, 0)
    base = rec.install(model, keys=[k for k in SD1_CROSS_ATTENTION if k != key])
    m, pos = rose(N, base, clip, hrv)
    neg = clip_encode(N, clip, "neg", "blurry")

    def per_block(mm):
        out = mm.clone()
        out.set_model_attn2_replace(rec.attention("block"), key[0], key[1])
        assert (key[0], key[1]) in out.model_options["transformer_options"]["patches_replace"]["attn2"]
        return out
    with caplog.at_level(logging.WARNING, logger="hrv.attention"):
        s, r, _, _ = run_both(rec, lambda mm: ksampler(per_block(mm), pos.conditioning, neg.conditioning), m, base)
    assert {c.source for c in s if c.key == key} == {"block"}
    calls = check(s, r, [pos, neg], model.model.diffusion_model)
    assert steered_names(calls) == {"pos"}
    assert not [x for x in caplog.records if x.name == "hrv.attention"]
