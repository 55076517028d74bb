"""Heat maps from chosen heads (hrv/maps) on the real ComfyUI with tiny random models: the recorder leaves sampling
bit for bit alone, reads exactly the heads asked for, matches a plain float64 implementation on SD1.x and SDXL,
recovers a planted mask from the planted heads (and the all-heads map does not), and the render node reads it out."""
import math

import pytest
import torch
import torch.nn.functional as F
from harness.comfy_models import tokenizer_clip
from harness.tiny_pipeline import tiny_sd1_model, tiny_sd1_pipeline, tiny_sdxl_model

from hrv.attention import attach_request, install_core
from hrv.comfy_host import import_pack
from hrv.format.hrv_file import HRV, load
from hrv.format.layout import cross_attention_modules, known_layout
from hrv.maps import (
    FEATURE,
    RECORDER,
    MapRequest,
    MapWord,
    head_weights,
    top_heads,
    top_k_count,
)
from hrv.maps.render import word_masks
from hrv.maps.request import HeadSelection

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEXT = "a photo of a rose-colored car parked by the sea"


@pytest.fixture(scope="module")
def pack():
    return import_pack()


@pytest.fixture(scope="module")
def sd1_hrv(pack, official_dir):
    return pack.hrv.format.hrv_file.load(f"{official_dir}/sd1_official.safetensors")


@pytest.fixture(scope="module")
def pipeline():
    return tiny_sd1_pipeline(0)


def sample(model, positive, negative, batch=1, size=8, steps=2, cfg=5.0, sampler="euler", seed=1):
    import comfy.sample
    latent = torch.zeros(batch, 4, size, size)
    noise = torch.randn(batch, 4, size, size, generator=torch.Generator().manual_seed(seed))
    return comfy.sample.sample(model, noise, steps, cfg, sampler, "normal", positive, negative, latent,
                               disable_pbar=True, seed=seed)


def clip_text_encode(clip, text):
    import nodes as comfy_nodes
    return comfy_nodes.CLIPTextEncode().encode(clip, text)[0]


def map_of(conditioning):
    return conditioning[0][1]["hrv_requests"][FEATURE]


def test_nodes_are_registered_with_tooltips_everywhere(pack):
    categories = {"HRVAttentionMap": "HRV/maps", "HRVAttentionMapRender": "HRV/maps", "HRVDiagnose": "HRV/maps",
                  "HRVAttendAndExcite": "HRV/sampling"}
    for node_id, category in categories.items():
        cls = pack.NODE_CLASS_MAPPINGS[node_id]
        assert cls.CATEGORY == category and cls.DESCRIPTION and pack.NODE_DISPLAY_NAME_MAPPINGS[node_id].startswith("HRV ")
        assert len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES) and all(cls.OUTPUT_TOOLTIPS)
        spec = cls.INPUT_TYPES()
        inputs = {**spec["required"], **spec.get("optional", {})}
        assert all(len(s) > 1 and s[1].get("tooltip") for s in inputs.values()), node_id


# --- head selection --------------------------------------------------------------------------------------------

def test_top_k_picks_exactly_the_expected_heads_ties_by_head_order():
    g = torch.Generator().manual_seed(0)
    for num_heads in (128, 1300):
        row = torch.randint(0, 6, (num_heads,), generator=g).float()      # many ties
        for k in (1, 7, num_heads // 4, num_heads):
            expected = sorted(range(num_heads), key=lambda h: (-float(row[h]), h))[:k]
            assert top_heads(row, k).tolist() == expected
            weights = head_weights("top_k", row, num_heads, k)
            assert torch.nonzero(weights).flatten().tolist() == sorted(expected) and weights.sum() == k
    assert top_k_count(0.25, 128) == 32 and top_k_count(0.25, 1300) == 325 and top_k_count(0.001, 128) == 1
    assert top_k_count(1, 128) == 1 and top_k_count(40, 1300) == 40
    for bad in (0, -1, 129, 2.5, float("nan")):
        with pytest.raises(ValueError, match="top_k"):
            top_k_count(bad, 128)
    row = torch.arange(128.0)
    assert torch.equal(head_weights("hrv_weighted", row, 128), row) and torch.equal(head_weights("all", None, 128), torch.ones(128))
    with pytest.raises(ValueError, match="no votes"):
        head_weights("top_k", torch.zeros(128), 128, 3)


# --- sampling is unchanged --------------------------------------------------------------------------------------

@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m"])
def test_recorder_is_bit_identical_to_unpatched_sampling(pack, pipeline, sd1_hrv, sampler):
    model, clip = pipeline
    node = pack.nodes.map_nodes.HRVAttentionMap()
    mapped, positive = node.encode(model, clip, sd1_hrv, TEXT, "rose-colored, car", "Color", "top_k", 0.25, 0.0, 1.0)
    mapped, negative = node.encode(mapped, clip, sd1_hrv, "blurry photo", "blurry", "auto", "hrv_weighted", 0.25, 0.3, 1.0)
    plain = sample(model, clip_text_encode(clip, TEXT), clip_text_encode(clip, "blurry photo"), batch=2, sampler=sampler)
    recorded = sample(mapped, positive, negative, batch=2, sampler=sampler)
    assert torch.equal(recorded, plain)
    pos, neg = map_of(positive).holder.find(recorded), map_of(negative).holder.find(recorded)
    assert pos.batch == neg.batch == 2 and pos.latent_hw == (8, 8) and pos.words == ["rose-colored", "car"]
    assert sum(h.numel() for h, _ in pos.maps.values()) == 32     # fixed concept: only its top 32 heads recorded
    assert sum(h.numel() for h, _ in neg.maps.values()) == 128    # auto: every head apart
    with pytest.raises(ValueError, match="recorded for 32 heads only"):
        pos.latent_maps(torch.ones(128))
    assert pos.latent_maps().shape == (2, 2, 8, 8) and neg.latent_maps().shape == (2, 1, 8, 8)
    steps_recorded = {int(c) for c in pos.calls[pos.calls > 0]}
    assert steps_recorded == {2} and set(neg.calls.tolist()) == {1}           # the gate skips the first step
    assert (pos.calls > 0).sum() == 32                                          # only the top 32 heads were computed


def test_maps_follow_the_conditioning_not_the_batch_position(pack, pipeline, sd1_hrv):
    model, clip = pipeline
    mapped, negative = pack.nodes.map_nodes.HRVAttentionMap().encode(model, clip, sd1_hrv, TEXT, "sea", "Color",
                                                                      "all", 0.25, 0.0, 1.0)
    out = sample(mapped, clip_text_encode(clip, "a cat"), negative, batch=2)
    recorded = map_of(negative).holder.find(out)
    assert recorded.batch == 2 and (recorded.calls == 2).all()
    assert not torch.equal(recorded.latent_maps()[0], recorded.latent_maps()[1])   # every image its own map


# --- the method against a plain implementation -------------------------------------------------------------------

def capturing(model, arch):
    """A clone whose attn2 calls record (key, q, k, extra_options) before the fused attention runs."""
    from comfy.ldm.modules import attention
    calls = []
    m = model.clone()
    for block in known_layout(arch).blocks:
        def record(q, k, v, extra_options, key=block.key):
            calls.append((key, q.clone(), k.clone(), dict(extra_options)))
            return attention.optimized_attention(q, k, v, extra_options["n_heads"])
        m.set_model_attn2_replace(record, *block.key)
    return m, calls


def plain_word_map(calls, layout, weights, positions, latent_hw):
    """sum over calls and heads of w_h * bicubic(mean over the word's tokens of softmax(q_h k_h^T / sqrt(d))), float64,
    for the rows of the conditional chunk (cond_or_uncond 0)."""
    total = None
    for key, q, k, options in calls:
        block = layout.block(key)
        chunks = options["cond_or_uncond"]
        per = q.shape[0] // len(chunks)
        rows = slice(chunks.index(0) * per, (chunks.index(0) + 1) * per)
        h_l, w_l = options["activations_shape"][2:]
        heads = block.num_heads
        d = q.shape[2] // heads
        for h in range(heads):
            w = float(weights[block.first_column + h])
            if w == 0:
                continue
            qh = q[rows, :, h * d:(h + 1) * d].double()
            kh = k[rows, :, h * d:(h + 1) * d].double()
            attention = torch.softmax(qh @ kh.transpose(1, 2) / math.sqrt(d), dim=-1)
            word = attention[:, :, list(positions)].mean(-1).reshape(-1, 1, h_l, w_l)
            if (h_l, w_l) != tuple(latent_hw):
                word = F.interpolate(word, size=tuple(latent_hw), mode="bicubic", align_corners=False)
            total = w * word if total is None else total + w * word
    return total[:, 0]


@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
def test_hrv_weighted_and_top_k_maps_equal_a_plain_implementation(arch, official_dir):
    hrv = load(f"{official_dir}/{arch}_official.safetensors")
    assert hrv.layout.num_heads == {"sd1": 128, "sdxl": 1300}[arch]
    model = tiny_sd1_model(0) if arch == "sd1" else tiny_sdxl_model(0)
    clip = tokenizer_clip(arch)
    dim = {"sd1": 768, "sdxl": 256}[arch]
    g = torch.Generator().manual_seed(3)
    extra = {} if arch == "sd1" else {"pooled_output": torch.randn(1, 1280, generator=g)}
    positive = [[torch.randn(1, 77, dim, generator=g), dict(extra)]]
    negative = [[torch.randn(1, 77, dim, generator=g), dict(extra)]]
    from hrv.maps.encode import locate_words
    (word,), length = locate_words(clip, TEXT, "rose-colored")
    color = hrv.concept_index("Color")
    for mode in ("hrv_weighted", "top_k"):
        selection = HeadSelection(mode, hrv.matrix, tuple(hrv.concepts), color, top_k_count(0.25, hrv.num_heads))
        request = MapRequest(hrv.layout, (word,), selection, length)
        captured, calls = capturing(model, arch)
        out = sample(install_core(captured, [RECORDER]), attach_request(positive, FEATURE, request), negative,
                     batch=1, size=8)
        recorded = request.holder.find(out)
        expected = plain_word_map(calls, hrv.layout, request.record_weights, word.positions, (8, 8))
        got = recorded.latent_maps()[:, 0].double()
        assert len(calls) == 2 * len(hrv.layout.blocks)
        assert torch.allclose(got, expected, rtol=1e-4, atol=1e-6 * float(expected.abs().max())), mode
    assert torch.equal(request.record_weights, head_weights("top_k", hrv.matrix[color], hrv.num_heads,
                                                             top_k_count(0.25, hrv.num_heads)))


# --- a planted mask ------------------------------------------------------------------------------------------------

PLANTED_TOKEN = 5
LOGIT = 12.0


def mask_at(h, w):
    """The planted region at a layer's grid, by cell centres: rows 1/4..3/4, columns 1/8..5/8 of the image."""
    y = (torch.arange(h) + 0.5) / h
    x = (torch.arange(w) + 0.5) / w
    return ((y >= 0.25) & (y < 0.75))[:, None] & ((x >= 0.125) & (x < 0.625))[None, :]


def planting(model, chosen: set, context_vector: torch.Tensor):
    """attn2_patch on every transformer: queries made so that the chosen heads attend to the planted token inside the
    planted region (logit +12, -12 outside) and every other head does the opposite."""
    unet = model.get_model_object("diffusion_model")
    modules = cross_attention_modules(unet)
    layout = known_layout("sd1")
    m = model.clone()
    cache = {}

    def patch(n, context, value, extra_options):
        key = (extra_options["block"][0], extra_options["block"][1], extra_options["block_index"])
        _, _, h, w = extra_options["activations_shape"]
        if key not in cache:
            attn2, block = modules[key], layout.block(key)
            heads, inner = block.num_heads, attn2.to_q.weight.shape[0]
            d = inner // heads
            with torch.no_grad():
                k_token = attn2.to_k(context_vector.to(attn2.to_k.weight.dtype)).double().view(heads, d)
            base = k_token / (k_token ** 2).sum(-1, keepdim=True) * LOGIT * math.sqrt(d)        # logit +12 per head
            sign = torch.tensor([1.0 if block.first_column + j in chosen else -1.0 for j in range(heads)],
                                dtype=torch.float64)
            inside = (base * sign[:, None]).reshape(inner)
            q = torch.where(mask_at(h, w).reshape(-1, 1), inside, -inside)                   # [h*w, inner]
            cache[key] = torch.linalg.solve(attn2.to_q.weight.double(), q.T).T.to(n.dtype)    # to_q(n) = q
        return cache[key].expand(n.shape[0], -1, -1), context, value

    m.set_model_attn2_patch(patch)
    return m


def iou(a, b):
    return float((a & b).sum()) / float((a | b).sum())


def test_top_k_recovers_a_planted_mask_and_all_heads_do_not():
    layout = known_layout("sd1")
    fine = [b for b in layout.blocks if b.key in {("input", 1, 0), ("input", 2, 0), ("output", 9, 0),
                                                   ("output", 10, 0), ("output", 11, 0)}]
    chosen = sorted(c for b in fine for c in range(b.first_column, b.first_column + 8))[:32]
    row = torch.zeros(128)
    row[chosen] = 4.0
    hrv = HRV(matrix=torch.stack([torch.ones(128), row]), layout=layout, concepts=["Other", "Planted"])
    g = torch.Generator().manual_seed(5)
    vector = torch.randn(768, generator=g)
    context = torch.zeros(1, 77, 768)
    context[0, PLANTED_TOKEN] = vector
    model = planting(tiny_sd1_model(0), set(chosen), vector)
    word = MapWord("thing", (PLANTED_TOKEN,))
    truth = mask_at(128, 128)
    results = {}
    for mode, concept in (("top_k", 1), ("all", None), ("top_k", None)):
        request = MapRequest(layout, (word,), HeadSelection(mode, hrv.matrix, tuple(hrv.concepts), concept,
                                                            top_k_count(0.25, 128)), 77)
        out = sample(install_core(model, [RECORDER]), attach_request([[context, {}]], FEATURE, request),
                     [[torch.zeros(1, 77, 768), {}]], size=16, steps=2)
        recorded = request.holder.find(out)
        results[(mode, concept)] = recorded
        mask = word_masks(recorded.latent_maps(), (128, 128), 0.4)[0, 0] > 0
        results[mode, concept, "iou"] = iou(mask, truth)
    assert results["top_k", 1, "iou"] >= 0.9
    assert results["all", None, "iou"] <= 0.3
    # The per-head record (concept auto) read with the planted top-k heads or with all heads gives those maps. Here
    # the other heads attend to the token over the larger area, so auto itself picks 'Other' (its definition).
    per_head = results[("top_k", None)]
    assert per_head.word_concepts() == [0]
    for weights, fixed in ((head_weights("top_k", row, 128, 32), results[("top_k", 1)]),
                           (torch.ones(128), results[("all", None)])):
        assert torch.allclose(per_head.latent_maps(weights), fixed.latent_maps(), rtol=1e-5, atol=1e-5)


# --- the render node --------------------------------------------------------------------------------------------

def test_render_node_masks_overlay_and_errors(pack, pipeline, sd1_hrv):
    model, clip = pipeline
    nodes = pack.nodes.map_nodes
    mapped, positive = nodes.HRVAttentionMap().encode(model, clip, sd1_hrv, TEXT, "car, sea", "Vehicles", "top_k",
                                                      16, 0.0, 1.0)
    render = nodes.HRVAttentionMapRender()
    with pytest.raises(ValueError, match="no maps were recorded"):
        render.render(positive, torch.rand(2, 64, 64, 3), 0.4, "")
    negative = clip_text_encode(clip, "")
    first = sample(mapped, positive, negative, batch=2, seed=1)
    second = sample(mapped, positive, negative, batch=2, seed=2)
    images = torch.rand(2, 64, 64, 3)
    masks, overlay, info = render.render(positive, images, 0.4, "", {"samples": first})
    assert masks.shape == (4, 64, 64) and overlay.shape == (4, 64, 64, 3)
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    assert info.splitlines() == ["car: top 16 of 128 heads of Vehicles", "sea: top 16 of 128 heads of Vehicles"]
    recorded = map_of(positive).holder.find(first)
    expected = word_masks(recorded.latent_maps(), (64, 64), 0.4)            # [B, words, H, W] -> word-major
    assert torch.equal(masks, expected.transpose(0, 1).reshape(4, 64, 64))
    later = map_of(positive).holder.find(second)
    assert later is not recorded and map_of(positive).holder.find(None) is later
    soft, _, _ = render.render(positive, images, 0.0, "sea", {"samples": first})
    assert soft.shape == (2, 64, 64) and 0 < float(soft.mean()) < 1
    assert torch.equal(soft, word_masks(recorded.latent_maps(), (64, 64), 0.0)[:, 1])
    with pytest.raises(ValueError, match="'dog' was not mapped; mapped words: car, sea"):
        render.render(positive, images, 0.4, "dog")
    with pytest.raises(ValueError, match="3 images but the recorded run sampled 2"):
        render.render(positive, torch.rand(3, 64, 64, 3), 0.4, "")
    with pytest.raises(ValueError, match="carries no map request"):
        render.render(negative, images, 0.4, "")


def test_map_node_errors_name_the_fix(pack, pipeline, sd1_hrv):
    model, clip = pipeline
    node = pack.nodes.map_nodes.HRVAttentionMap()
    with pytest.raises(ValueError, match="'tulip' is not a word of the prompt"):
        node.encode(model, clip, sd1_hrv, TEXT, "car, tulip", "auto", "top_k", 0.25, 0.0, 1.0)
    with pytest.raises(ValueError, match="top_k 200 is read as a number of heads"):
        node.encode(model, clip, sd1_hrv, TEXT, "car", "Color", "top_k", 200, 0.0, 1.0)
    with pytest.raises(ValueError, match="concept 'Colour' is not in this HRV"):
        node.encode(model, clip, sd1_hrv, TEXT, "car", "Colour", "top_k", 0.25, 0.0, 1.0)
    with pytest.raises(ValueError, match="start_percent"):
        node.encode(model, clip, sd1_hrv, TEXT, "car", "Color", "top_k", 0.25, 0.5, 0.5)


def test_long_prompts_map_words_past_77_tokens(pack, pipeline, sd1_hrv):
    model, clip = pipeline
    text = "a glass vase, " + "tiny stars, " * 40 + "a golden crown"
    mapped, positive = pack.nodes.map_nodes.HRVAttentionMap().encode(model, clip, sd1_hrv, text, "crown", "Color",
                                                                      "all", 0.25, 0.0, 1.0)
    request = map_of(positive)
    assert request.context_length == 154 and request.words[0].positions[0] > 77
    out = sample(mapped, positive, clip_text_encode(clip, ""), size=8)
    assert torch.isfinite(request.holder.find(out).latent_maps()).all()


def test_a_recording_call_reads_nothing_on_the_host_and_runs_few_ops(official_dir):
    """Per call, once the run's plan exists: the chosen heads' q and k, one scaled product, the softmax and one
    accumulating product; no value read on the host (no GPU sync), no host-to-device copy."""
    import uuid

    from harness.oplog import OpLog

    from hrv.attention import CORE_KEY, COND_KEY
    from hrv.attention.core import make_core_fn
    from hrv.attention.run import RunState
    from hrv.maps.encode import map_request

    hrv = load(f"{official_dir}/sd1_official.safetensors")
    request = map_request(tokenizer_clip("sd1"), hrv, TEXT, "rose-colored", "Color", "top_k", 0.25)
    cond, plain = uuid.uuid4(), uuid.uuid4()
    run = RunState({FEATURE: RECORDER}, {"positive": [{"uuid": cond, COND_KEY: {FEATURE: request},
                                                       "cross_attn": torch.zeros(1, 77, 1)}]})
    fn = make_core_fn(("input", 1, 0), lambda q, k, v, e: v, "default")
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(2, 16, 32, generator=g), torch.randn(2, 77, 32, generator=g), torch.randn(2, 77, 32, generator=g)
    options = {"n_heads": 8, "dim_head": 4, "uuids": [cond, plain], "sigmas": torch.tensor([5.0]), CORE_KEY: run,
               "attn_precision": None, "original_shape": [2, 4, 4, 4]}
    fn(q, k, v, options)
    with OpLog() as log:
        fn(q, k, v, options)
    assert not log.host_reads_or_copies(), log.ops
    assert log.work() == ["aten.index_select", "aten.index_select", "aten.mul", "aten.bmm", "aten._softmax",
                          "aten.addmm_"], log.ops
