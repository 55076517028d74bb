"""A real ComfyUI (model, clip) pair of SD1.x layout with tiny random weights, for build tests.

The model is ComfyUI's SD1.5 BaseModel in a ModelPatcher around build_unet("sd1", "tiny");
the CLIP is ComfyUI's SD1 CLIP (real tokenizer, start/end handling) with 2 small layers.
Sampling a 16x16 latent takes a fraction of a second per step on a CPU core.
"""
from __future__ import annotations

import torch

from scripts.demo.unets import init_random_, unet_config

TINY_CLIP = {"num_hidden_layers": 2, "intermediate_size": 512}


def tiny_sd1_model(seed: int = 0, unet=None):
    from hrv.comfy_host import use_comfyui
    use_comfyui(cpu=True)
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models
    model_config = comfy.supported_models.SD15(unet_config("sd1", "tiny"))
    model_config.set_inference_dtype(torch.float32, None)
    base = model_config.get_model({})
    if unet is not None:
        base.diffusion_model = unet
    else:
        init_random_(base.diffusion_model, seed)
    base.eval()
    return comfy.model_patcher.ModelPatcher(base, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())


def tiny_sd1_clip(seed: int = 1):
    from hrv.comfy_host import use_comfyui
    use_comfyui(cpu=True)
    import comfy.sd
    import comfy.supported_models
    target = comfy.supported_models.SD15(unet_config("sd1", "tiny")).clip_target()
    clip = comfy.sd.CLIP(target, model_options={"dtype": torch.float32, "clip_l_model_config": dict(TINY_CLIP)})
    init_random_(clip.cond_stage_model, seed)
    return clip


def tiny_sd1_pipeline(seed: int = 0):
    """(ModelPatcher, CLIP); the same seed gives the same weights in every process."""
    return tiny_sd1_model(seed), tiny_sd1_clip(seed + 1)


def tiny_sdxl_clip(seed: int = 2):
    """ComfyUI's SDXL CLIP (clip_l || clip_g, 2048-dim tokens) with 3 small layers each (SDXL reads layer -2)."""
    from hrv.comfy_host import use_comfyui
    use_comfyui(cpu=True)
    import comfy.sd
    import comfy.supported_models
    target = comfy.supported_models.SDXL(unet_config("sdxl", "full")).clip_target()
    small = {"num_hidden_layers": 3, "intermediate_size": 256}
    clip = comfy.sd.CLIP(target, model_options={"dtype": torch.float32, "clip_l_model_config": dict(small),
                                                "clip_g_model_config": dict(small)})
    init_random_(clip.cond_stage_model, seed)
    return clip


def tiny_sdxl_model(seed: int = 0, std: float = 0.05):
    """ComfyUI's SDXL model around a tiny UNet of the real layout (1300 heads, context 256) whose ADM input takes
    SDXL's real conds (pooled_output [1, 1280] and the size embeddings), so that it samples like SDXL."""
    from hrv.comfy_host import use_comfyui
    use_comfyui(cpu=True)
    import comfy.model_base
    import comfy.model_patcher
    import comfy.ops
    import comfy.supported_models
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    config = dict(unet_config("sdxl", "tiny"), adm_in_channels=2816)
    base = comfy.model_base.SDXL(comfy.supported_models.SDXL({**config, "disable_unet_model_creation": True}))
    unet = UNetModel(**config, dtype=torch.float32, device="cpu", operations=comfy.ops.disable_weight_init)
    base.diffusion_model = init_random_(unet, seed, std=std).eval()
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(base, load_device=cpu, offload_device=cpu)
