"""HRV Prompt Edit on the real ComfyUI: its outputs, the pair's shared noise with every sampler, P2P-HRV against plain
P2P, the source row against the source sampled alone, SDXL, local blend, and its errors. Tiny random SD1/SDXL models,
8x8 latents, 2-3 steps."""
import pytest
import torch

from harness.tiny_pipeline import tiny_sd1_clip, tiny_sd1_pipeline
from hrv.comfy_host import import_pack

SAMPLERS = ("euler", "euler_ancestral", "dpmpp_2m", "dpmpp_sde", "dpmpp_2m_sde", "ddim", "uni_pc")
SEED, STEPS, CFG = 3, 3, 5.0


@pytest.fixture(scope="module")
def pack():
    return import_pack()


@pytest.fixture(scope="module")
def node(pack):
    return pack.nodes.edit_nodes.HRVPromptEdit()


@pytest.fixture(scope="module")
def sd1_hrv(pack, official_dir):
    return pack.hrv.format.hrv_file.load(f"{official_dir}/sd1_official.safetensors")


@pytest.fixture(scope="module")
def pipeline(one_torch_thread):
    return tiny_sd1_pipeline(0)


def encode(clip, text):
    import nodes as comfy_nodes
    return comfy_nodes.CLIPTextEncode().encode(clip, text)[0]


def ksampler(model, positive, negative, latent, sampler="euler", steps=STEPS, seed=SEED):
    """ComfyUI's own KSampler node, as the user's graph runs it."""
    import nodes as comfy_nodes
    return comfy_nodes.KSampler().sample(model, seed, steps, CFG, sampler, "normal", positive, negative, latent)[0]["samples"]


def edit(node, pipeline, hrv, source, target, concept="Color", strength=1.0, cross=0.8, self_replace=-1.0,
         mode="replace", pairs=1, **optional):
    model, clip = pipeline
    return node.edit(model, clip, hrv, source, target, concept, strength, cross, self_replace, mode, 64, 64, pairs,
                     **optional)


def test_registered_with_tooltips_everywhere(pack):
    cls = pack.NODE_CLASS_MAPPINGS["HRVPromptEdit"]
    assert pack.NODE_DISPLAY_NAME_MAPPINGS["HRVPromptEdit"] == "HRV Prompt Edit"
    assert cls.CATEGORY == "HRV/edit" and cls.DESCRIPTION and cls.RETURN_TYPES == ("MODEL", "CONDITIONING", "LATENT")
    assert len(cls.OUTPUT_TOOLTIPS) == 3
    spec = cls.INPUT_TYPES()
    inputs = {**spec["required"], **spec["optional"]}
    assert all(opts.get("tooltip") for _, opts in inputs.values())
    assert inputs["concept"][0][0] == "none" and "Color" in inputs["concept"][0]
    assert inputs["cross_replace"][1]["default"] == 0.8 and inputs["self_replace"][1]["default"] == -1.0


def test_outputs_are_the_two_prompts_and_a_latent_pair(node, pipeline, sd1_hrv):
    model, clip = pipeline
    edited, conditioning, latent = edit(node, pipeline, sd1_hrv, "a blue car", "a (red:1.2) car", pairs=2)
    source, target = encode(clip, "a blue car"), encode(clip, "a (red:1.2) car")
    assert len(conditioning) == 1 and conditioning[0][0].shape[0] == 2
    assert torch.equal(conditioning[0][0][0], source[0][0][0]) and torch.equal(conditioning[0][0][1], target[0][0][0])
    assert torch.equal(conditioning[0][1]["pooled_output"], torch.cat([source[0][1]["pooled_output"],
                                                                       target[0][1]["pooled_output"]]))
    assert latent["samples"].shape == (4, 4, 8, 8) and latent["batch_index"] == [0, 0, 1, 1]
    assert edited is not model and "patches_replace" not in model.model_options["transformer_options"]
    replaced = edited.model_options["transformer_options"]["patches_replace"]
    assert len(replaced["attn2"]) == 16
    assert set(replaced["attn1"]) == {("input", 7, 0), ("input", 8, 0), ("middle", 0, 0), ("output", 3, 0),
                                      ("output", 4, 0), ("output", 5, 0)}       # SD1's 16x16 and 8x8 layers


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_identical_prompts_give_identical_rows_bit_for_bit(node, pipeline, sd1_hrv, sampler):
    model, clip = pipeline
    negative = encode(clip, "")
    for mode in ("replace", "refine"):
        edited, positive, latent = edit(node, pipeline, sd1_hrv, "a blue car", "a blue car", mode=mode)
        out = ksampler(edited, positive, negative, latent, sampler)
        assert torch.equal(out[0], out[1]), mode


def test_pairs_share_noise_even_from_a_plain_latent_and_the_wrapper_is_what_shares_it(node, pipeline, sd1_hrv):
    import comfy.patcher_extension
    model, clip = pipeline
    negative = encode(clip, "")
    edited, positive, latent = edit(node, pipeline, sd1_hrv, "a blue car", "a blue car", pairs=2)
    out = ksampler(edited, positive, negative, latent, "euler_ancestral")
    assert torch.equal(out[0], out[1]) and torch.equal(out[2], out[3]) and not torch.equal(out[0], out[2])
    plain_latent = {"samples": torch.zeros(2, 4, 8, 8)}                 # Empty Latent Image of batch 2
    out = ksampler(edited, positive, negative, plain_latent, "dpmpp_2m_sde")
    assert torch.equal(out[0], out[1])
    unshared = edited.clone()
    unshared.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.SAMPLER_SAMPLE, "hrv_edit")
    out = ksampler(unshared, positive, negative, latent, "euler_ancestral")
    assert not torch.equal(out[0], out[1])          # the same initial noise, different noise at each step


def test_hrv_strength_zero_is_plain_p2p_and_one_changes_only_the_target(node, pipeline, sd1_hrv):
    model, clip = pipeline
    negative = encode(clip, "")
    runs = {}
    for name, concept, strength in (("plain", "none", 1.0), ("zero", "Color", 0.0), ("hrv", "Color", 1.0)):
        edited, positive, latent = edit(node, pipeline, sd1_hrv, "a blue car", "a red car", concept, strength,
                                        self_replace=0.9)
        runs[name] = ksampler(edited, positive, negative, latent, "euler_ancestral")
    assert torch.equal(runs["zero"], runs["plain"])
    assert torch.equal(runs["hrv"][0], runs["plain"][0]) and not torch.equal(runs["hrv"][1], runs["plain"][1])
    # the authors' variant: the edited word keeps its own map (then strength 0 is not plain P2P)
    edited, positive, latent = edit(node, pipeline, sd1_hrv, "a blue car", "a red car", "Color", 0.0, self_replace=0.9,
                                    edited_word_map="own map (authors' code)")
    own = ksampler(edited, positive, negative, latent, "euler_ancestral")
    assert torch.equal(own[0], runs["plain"][0]) and not torch.equal(own[1], runs["plain"][1])


@pytest.fixture(scope="module")
def float64_pipeline(one_torch_thread):
    """The tiny SD1 model computing in float64. The random model's latents reach ~200, where float32 rounding alone
    makes a row of batch 2 differ from the same row sampled in batch 1 by ~3e-4 (plain ComfyUI, no HRV); in float64
    the batch size leaves no trace, so any difference would be the edit leaking into the source row."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models
    from scripts.demo.unets import init_random_, unet_config
    config = comfy.supported_models.SD15(unet_config("sd1", "tiny"))
    config.set_inference_dtype(torch.float64, None)
    base = config.get_model({})
    init_random_(base.diffusion_model, 0)
    base.eval()
    model = comfy.model_patcher.ModelPatcher(base, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())
    return model, tiny_sd1_clip(1)


@pytest.mark.parametrize("sampler", ["euler", "euler_ancestral", "dpmpp_sde", "uni_pc"])
def test_the_source_row_is_the_source_sampled_alone(node, float64_pipeline, sd1_hrv, sampler):
    model, clip = float64_pipeline
    negative = encode(clip, "")
    long_target = "a red car, " + "tiny stars, " * 40          # two 77-token chunks against the source's one
    for target, mode in (("a red car", "replace"), (long_target, "refine")):
        edited, positive, latent = edit(node, float64_pipeline, sd1_hrv, "a blue car", target, mode=mode)
        pair = ksampler(edited, positive, negative, latent, sampler)
        alone = ksampler(model, encode(clip, "a blue car"), negative, {"samples": torch.zeros(1, 4, 8, 8)}, sampler)
        assert (pair[0] - alone[0]).abs().max().item() <= 1e-4, mode
        assert (pair[1] - alone[0]).abs().max().item() > 1e-2


def test_local_blend_keeps_the_source_outside_the_words(node, pipeline, sd1_hrv):
    model, clip = pipeline
    negative = encode(clip, "")
    free, positive, latent = edit(node, pipeline, sd1_hrv, "a blue car", "a red car")
    unblended = ksampler(free, positive, negative, latent)
    nothing, positive, latent = edit(node, pipeline, sd1_hrv, "a blue car", "a red car", local_blend_words="car",
                                     local_blend_threshold=1.0)      # no region reaches the threshold: all source
    out = ksampler(nothing, positive, negative, latent)
    assert torch.equal(out[1], out[0])
    everything, positive, latent = edit(node, pipeline, sd1_hrv, "a blue car", "a red car", local_blend_words="car, red",
                                        local_blend_threshold=0.0)
    out = ksampler(everything, positive, negative, latent)
    assert torch.allclose(out, unblended, rtol=1e-4, atol=1e-3)
    some, positive, latent = edit(node, pipeline, sd1_hrv, "a blue car", "a red car", local_blend_words="blue, red")
    out = ksampler(some, positive, negative, latent)
    assert torch.equal(out[0], unblended[0]) and not torch.equal(out[1], unblended[1])


class FakeSDXLClip:
    """SDXL's real tokenizer with an embedding table of the tiny SDXL UNet's context width (256) and a 1280-wide
    pooled output: enough to drive HRV Prompt Edit on the SDXL layout without SDXL's text encoders."""

    def __init__(self):
        from harness.comfy_models import tokenizer_clip
        self.inner = tokenizer_clip("sdxl")
        g = torch.Generator().manual_seed(5)
        self.table = torch.randn(49408, 256, generator=g) * 0.5

    def tokenize(self, text, **kwargs):
        return self.inner.tokenize(text, **kwargs)

    def encode_from_tokens_scheduled(self, tokens):
        ids = torch.tensor([[t[0] for t in chunk] for chunk in tokens["l"]]).reshape(1, -1)
        context = self.table[ids]
        return [[context, {"pooled_output": context.mean(1).repeat(1, 5)}]]


def test_sdxl_layout_edits_both_resolutions_and_shares_noise(pack, node, official_dir, one_torch_thread):
    import comfy.model_base
    import comfy.model_patcher
    import comfy.ops
    import comfy.supported_models
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    from scripts.demo.unets import init_random_, unet_config
    config = {**unet_config("sdxl", "tiny"), "adm_in_channels": 2816}       # SDXL's real pooled + size embedding
    base = comfy.model_base.SDXL(comfy.supported_models.SDXL({**config, "disable_unet_model_creation": True}))
    base.diffusion_model = init_random_(UNetModel(**config, dtype=torch.float32, operations=comfy.ops.disable_weight_init), 0).eval()
    cpu = torch.device("cpu")
    model = comfy.model_patcher.ModelPatcher(base, load_device=cpu, offload_device=cpu)
    clip, hrv = FakeSDXLClip(), pack.hrv.format.hrv_file.load(f"{official_dir}/sdxl_official.safetensors")
    negative = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    same = node.edit(model, clip, hrv, "a blue car", "a blue car", "Color", 1.0, 0.8, -1.0, "replace", 64, 64, 1)
    assert len(same[0].model_options["transformer_options"]["patches_replace"]["attn1"]) == 70
    out = ksampler(same[0], same[1], negative, same[2], "euler_ancestral", steps=2)
    assert torch.equal(out[0], out[1])
    edited = node.edit(model, clip, hrv, "a blue car", "a red car", "Color", 1.0, 0.8, -1.0, "replace", 64, 64, 1)
    plain = node.edit(model, clip, hrv, "a blue car", "a red car", "none", 1.0, 0.8, 0.9, "replace", 64, 64, 1)
    a = ksampler(edited[0], edited[1], negative, edited[2], "euler_ancestral", steps=2)
    b = ksampler(plain[0], plain[1], negative, plain[2], "euler_ancestral", steps=2)
    assert torch.equal(a[0], b[0]) and not torch.equal(a[1], b[1])


def test_clear_errors(pack, node, pipeline, sd1_hrv, official_dir):
    model, clip = pipeline
    sdxl_hrv = pack.hrv.format.hrv_file.load(f"{official_dir}/sdxl_official.safetensors")
    with pytest.raises(ValueError, match="made for sdxl .* load the HRV made for your checkpoint"):
        edit(node, pipeline, sdxl_hrv, "a blue car", "a red car")
    with pytest.raises(ValueError, match="HRV Prompt Edit: .*3 words and the target 4: use mode refine"):
        edit(node, pipeline, sd1_hrv, "a blue car", "a light blue car")
    with pytest.raises(ValueError, match="local-blend word 'boat' is in neither prompt"):
        edit(node, pipeline, sd1_hrv, "a blue car", "a red car", local_blend_words="boat")
    with pytest.raises(ValueError, match="reweight word 'blue' is not a word of the prompt 'a red car'"):
        edit(node, pipeline, sd1_hrv, "a blue car", "a red car", reweight_words="blue", reweight_factor=2.0)
    with pytest.raises(ValueError, match="concept 'Colour' is not in this HRV"):
        edit(node, pipeline, sd1_hrv, "a blue car", "a red car", concept="Colour")
    edited, positive, _ = edit(node, pipeline, sd1_hrv, "a blue car", "a red car")
    with pytest.raises(RuntimeError, match="1 row.* LATENT output of HRV Prompt Edit"):
        ksampler(edited, positive, encode(clip, ""), {"samples": torch.zeros(1, 4, 8, 8)})


def test_sampler_custom_advanced_with_a_karras_schedule(node, pipeline, sd1_hrv):
    """The other way users sample: RandomNoise + CFGGuider + KSamplerSelect + BasicScheduler -> SamplerCustomAdvanced."""
    import comfy.samplers
    import comfy_extras.nodes_custom_sampler as custom
    _, clip = pipeline
    edited, positive, latent = edit(node, pipeline, sd1_hrv, "a blue car", "a blue car")
    guider = custom.CFGGuider.execute(edited, positive, encode(clip, ""), CFG)[0]
    sigmas = custom.BasicScheduler.execute(edited, "karras", STEPS, 1.0)[0]
    for name in ("euler_ancestral", "dpmpp_2m_sde"):
        out = custom.SamplerCustomAdvanced.execute(custom.RandomNoise.execute(SEED)[0], guider,
                                                   comfy.samplers.sampler_object(name), sigmas, latent)[0]["samples"]
        assert torch.equal(out[0], out[1]), name
