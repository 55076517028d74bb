"""The steering text encoders on the real ComfyUI: what they encode, what they put on the conditioning,
what the sampler then does with it (tiny random SD1 model and CLIP), and their errors."""
import copy
from types import SimpleNamespace

import pytest
import torch

from harness.comfy_models import model_patcher
from harness.tiny_pipeline import tiny_sd1_pipeline, tiny_sdxl_clip
from hrv.comfy_host import import_pack
from hrv.format.layout import known_layout

TEXT = "a photo of a [rose-colored:Color-Plants] car parked by the [sea:Nature Scenes:0.5]"
CLEAN = "a photo of a rose-colored car parked by the sea"
ROSE, SEA = (5, 6, 7), (12,)   # start, a, photo, of, a, rose, -, colored, car, parked, by, the, sea


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
def pipeline():
    return tiny_sd1_pipeline(0)


def clip_text_encode(clip, text):
    import nodes as comfy_nodes
    return comfy_nodes.CLIPTextEncode().encode(clip, text)[0]


def text_encode(nodes, model, clip, hrv, text, preset="auto", weights=(1.0, 1.0, 1.0, 0.0), start=0.0, end=1.0):
    return nodes.HRVTextEncode().encode(model, clip, hrv, text, preset, *weights, start, end)


def the_request(conditioning):
    from hrv.attention import requests_of
    (request,) = [requests_of(entry[1])["steer"] for entry in conditioning]
    return request


def test_registered_with_tooltips_everywhere(pack):
    for node_id in ("HRVTextEncode", "HRVConceptStrengthen", "HRVConceptAdjust", "HRVOrderedWeakening"):
        cls = pack.NODE_CLASS_MAPPINGS[node_id]
        assert cls.CATEGORY == "HRV/steering" and cls.DESCRIPTION
        assert cls.RETURN_TYPES == ("MODEL", "CONDITIONING") and len(cls.OUTPUT_TOOLTIPS) == 2
        assert pack.NODE_DISPLAY_NAME_MAPPINGS[node_id].startswith("HRV ")
        spec = cls.INPUT_TYPES()["required"]
        assert list(spec)[:4] == ["model", "clip", "hrv", "text"] and "prompt" not in spec
        assert spec["text"][1]["multiline"] and spec["text"][1]["dynamicPrompts"]
        assert all(opts.get("tooltip") for _, opts in spec.values())
        for name in (n for n in spec if "concept" in n):
            assert len(spec[name][0]) >= 34 and "Geo-locations" in spec[name][0]


@pytest.mark.parametrize("text, clean", [
    (TEXT, CLEAN),
    ("a ([red:Color] car:1.3), \\[sketch\\], (shiny:0.8)", "a (red car:1.3), [sketch], (shiny:0.8)"),
    ("a [glass:Material] vase, " + "tiny stars, " * 40 + "a [golden:Color:2] crown",
     "a glass vase, " + "tiny stars, " * 40 + "a golden crown"),
])
def test_conditioning_is_clip_text_encode_of_the_clean_text_bit_for_bit(nodes, pipeline, sd1_hrv, text, clean):
    model, clip = pipeline
    _, conditioning = text_encode(nodes, model, clip, sd1_hrv, text)
    plain = clip_text_encode(clip, clean)
    assert len(conditioning) == len(plain) == 1
    assert torch.equal(conditioning[0][0], plain[0][0])
    assert torch.equal(conditioning[0][1]["pooled_output"], plain[0][1]["pooled_output"])
    assert the_request(conditioning).context_length == plain[0][0].shape[1]


def test_marks_become_per_head_factors_at_their_word_positions(nodes, pipeline, sd1_hrv):
    model, clip = pipeline
    _, conditioning = text_encode(nodes, model, clip, sd1_hrv, TEXT)
    request = the_request(conditioning)
    m = sd1_hrv.matrix
    color, plants, scenes = (m[sd1_hrv.concepts.index(c)] for c in ("Color", "Plants", "Nature Scenes"))
    (rose, sea) = request.terms
    assert rose.positions == ROSE and sea.positions == SEA
    assert torch.allclose(rose.factors, color - plants + 1.0)                # paper: d - u + 1 on SD1
    assert torch.allclose(sea.factors, 1.0 + 0.5 * (scenes - 1.0))          # strength 0.5 of HRV[c][h]
    _, custom = text_encode(nodes, model, clip, sd1_hrv, TEXT, "custom", (2.0, 1.0, 0.0, 9.0))
    assert torch.allclose(the_request(custom).terms[0].factors, 2 * color.clamp(max=9) - plants.clamp(max=9))


def test_sdxl_auto_preset_is_the_authors_setting(nodes, sdxl_hrv):
    model = model_patcher("sdxl", "tiny", device="meta")
    clip = tiny_sdxl_clip()
    steered_model, conditioning = text_encode(nodes, model, clip, sdxl_hrv, "a [rose-colored:Color-Plants] dress")
    m = sdxl_hrv.matrix
    d, u = m[sdxl_hrv.concepts.index("Color")], m[sdxl_hrv.concepts.index("Plants")]
    term = the_request(conditioning).terms[0]
    assert term.positions == (2, 3, 4) and torch.allclose(term.factors, 2 * d.clamp(max=9) - u.clamp(max=9))
    replaced = steered_model.model_options["transformer_options"]["patches_replace"]["attn2"]
    assert set(replaced) == {b.key for b in known_layout("sdxl").blocks}
    assert "patches_replace" not in model.model_options["transformer_options"]


def test_target_nodes_steer_whole_words_and_star_means_every_word(nodes, pipeline, sd1_hrv):
    model, clip = pipeline
    text = "a rose beside a rose-colored vase, roses everywhere"
    _, conditioning = nodes.HRVConceptStrengthen().encode(model, clip, sd1_hrv, text, "rose", "Plants", 1.0, 0.0, 1.0)
    term = the_request(conditioning).terms[0]
    assert term.positions == (2,)       # not inside rose-colored, not roses
    assert torch.allclose(term.factors, sd1_hrv.matrix[sd1_hrv.concepts.index("Plants")])
    _, conditioning = nodes.HRVOrderedWeakening().encode(model, clip, sd1_hrv, "photo of a dog", "*", "Animals",
                                                         "MoRHF", 11, -2.0, 0.0, 1.0)
    term = the_request(conditioning).terms[0]
    assert term.positions == (1, 2, 3, 4)
    row = sd1_hrv.matrix[sd1_hrv.concepts.index("Animals")]
    top = sorted(range(128), key=lambda h: (-float(row[h]), h))[:11]
    assert set(torch.nonzero(term.factors == -2.0).flatten().tolist()) == set(top)
    assert torch.equal(term.factors[[h for h in range(128) if h not in top]], torch.ones(117))


def recorder(base):
    """A clone whose 16 attn2 blocks record the value tensor they receive (installed before the HRV node)."""
    import comfy.ldm.modules.attention as attention
    seen = {}
    m = base.clone()
    for b in known_layout("sd1").blocks:
        def record(q, k, v, extra_options, key=b.key):
            seen[key] = (v, list(extra_options["cond_or_uncond"]))
            return attention.optimized_attention(q, k, v, extra_options["n_heads"])
        m.set_model_attn2_replace(record, *b.key)
    return m, seen


def test_sampler_scales_the_marked_rows_of_the_marked_conditioning_only(nodes, pipeline, sd1_hrv):
    import comfy.sample
    model, clip = pipeline
    base, seen = recorder(model)
    steered, positive = text_encode(nodes, base, clip, sd1_hrv, TEXT)
    negative = clip_text_encode(clip, CLEAN)       # the same context: its v rows are the unsteered reference
    latent = torch.zeros(1, 4, 8, 8)
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    comfy.sample.sample(steered, noise, 1, 5.0, "euler", "normal", positive, negative, latent, disable_pbar=True, seed=1)
    request = the_request(positive)
    for b in known_layout("sd1").blocks:
        v, chunks = seen[b.key]
        pos, neg = (v[chunks.index(i)].double().view(77, 8, -1) for i in (0, 1))   # v [2, 77, 8*d], one row per chunk
        factors = (pos * neg).sum(-1) / (neg ** 2).sum(-1)
        expected = torch.ones(77, 8, dtype=torch.float64)
        for term in request.terms:
            expected[list(term.positions)] = term.factors[b.columns].double()
        assert torch.allclose(factors, expected, atol=1e-5), b.key


def test_original_model_is_never_mutated(nodes, pipeline, sd1_hrv):
    model, clip = pipeline
    options_before = copy.deepcopy(model.model_options)
    steered, _ = text_encode(nodes, model, clip, sd1_hrv, TEXT)
    again, _ = nodes.HRVConceptAdjust().encode(steered, clip, sd1_hrv, CLEAN, "car", "Vehicles", "Color",
                                               1.0, 1.0, 1.0, 0.0, 0.0, 1.0)
    assert steered is not model and steered.model is model.model
    assert model.model_options == options_before
    first = steered.model_options["transformer_options"]["patches_replace"]["attn2"]
    second = again.model_options["transformer_options"]["patches_replace"]["attn2"]
    assert len(first) == 16 and all(second[k] is first[k] for k in first)     # installing twice is a no-op


def test_concept_dropdowns_list_the_concepts_of_every_visible_hrv(pack, nodes, sd1_hrv, tmp_path, monkeypatch):
    folders = pack.nodes.hrv_folders
    custom = pack.hrv.format.hrv_file.HRV(matrix=torch.ones(2, 128), layout=sd1_hrv.layout, concepts=["Softness", "Color"])
    pack.hrv.format.hrv_file.save(custom, str(tmp_path / "mine.safetensors"))
    (tmp_path / "broken.safetensors").write_bytes(b"nonsense")
    monkeypatch.setattr(folders, "hrv_filenames", lambda: ["mine.safetensors", "broken.safetensors"])
    monkeypatch.setattr(folders, "hrv_path", lambda name: str(tmp_path / name))
    choices = nodes.HRVConceptStrengthen.INPUT_TYPES()["required"]["concept"][0]
    assert choices[:34] == pack.hrv.format.concepts.default_concept_names() and choices[34:] == ["Softness"]


def test_clear_errors(pack, nodes, pipeline, sd1_hrv, sdxl_hrv):
    model, clip = pipeline
    strengthen = nodes.HRVConceptStrengthen()
    with pytest.raises(ValueError, match="made for sdxl .* load the HRV made for your checkpoint"):
        strengthen.encode(model, clip, sdxl_hrv, CLEAN, "car", "Color", 1.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="HRV Text Encode: the mark \\[car:Colour\\] names the concept 'Colour'.*Its concepts: Animals"):
        text_encode(nodes, model, clip, sd1_hrv, "a [car:Colour]")
    votes = torch.ones(2, 128)
    votes[1] = 0
    unvoted = pack.hrv.format.hrv_file.HRV(matrix=votes, layout=sd1_hrv.layout, concepts=["Texture", "Shape"])
    with pytest.raises(ValueError, match="'Shape' got no votes .* build the HRV with more prompts"):
        text_encode(nodes, model, clip, unvoted, "a [car:Shape]")
    with pytest.raises(ValueError, match="concept 'Color' is not in this HRV; pick one of: Texture, Shape"):
        strengthen.encode(model, clip, unvoted, CLEAN, "car", "Color", 1.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="'tulip' is not a word of the prompt"):
        strengthen.encode(model, clip, sd1_hrv, CLEAN, "car, tulip", "Color", 1.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="'rose' is not a word of the prompt"):
        strengthen.encode(model, clip, sd1_hrv, CLEAN, "rose", "Color", 1.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="start_percent"):
        strengthen.encode(model, clip, sd1_hrv, CLEAN, "car", "Color", 1.0, 0.6, 0.6)
    with pytest.raises(ValueError, match="connect the HRV output of HRV Loader"):
        strengthen.encode(model, clip, "sd1_official", CLEAN, "car", "Color", 1.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="between 0 and 128"):
        nodes.HRVOrderedWeakening().encode(model, clip, sd1_hrv, CLEAN, "*", "Color", "MoRHF", 200, -2.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="part of a longer word"):
        text_encode(nodes, model, clip, sd1_hrv, "a super[man:People] cape")
    no_unet = SimpleNamespace(get_model_object=lambda name: torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="no UNet cross-attention"):
        strengthen.encode(no_unet, clip, sd1_hrv, CLEAN, "car", "Color", 1.0, 0.0, 1.0)
    assert "patches_replace" not in model.model_options["transformer_options"]
