"""Random-weight UNets wrapped the way ComfyUI wraps a checkpoint, and CLIP objects with the real tokenizers.

For tests and benchmarks; call hrv.comfy_host.use_comfyui() first. No weights are downloaded.
"""
from __future__ import annotations

import torch

from scripts.demo.unets import build_unet, unet_config


def model_patcher(arch: str = "sd1", size: str = "tiny", device: str = "cpu", seed: int = 0, dtype=None):
    """A comfy.model_patcher.ModelPatcher around a comfy.model_base model holding build_unet(arch, size).

    dtype (default float32) is the UNet's weight and compute dtype, set as ComfyUI's checkpoint loader sets it
    (model_config.set_inference_dtype), so apply_model casts inputs to the weights' dtype. The patcher loads to
    and offloads to `device` (the CPU for "meta").
    """
    import comfy.model_base
    import comfy.model_patcher
    import comfy.supported_models
    dtype = dtype or torch.float32
    config_class = {"sd1": comfy.supported_models.SD15, "sdxl": comfy.supported_models.SDXL}[arch]
    base_class = {"sd1": comfy.model_base.BaseModel, "sdxl": comfy.model_base.SDXL}[arch]
    # ComfyUI would build the UNet from the config with uninitialised weights and its own head-size
    # overrides; the config is told not to, and the seeded random UNet of the real layout goes in instead.
    config = config_class({**unet_config(arch, size), "disable_unet_model_creation": True})
    config.set_inference_dtype(dtype, None)
    base = base_class(config, device=device)
    base.diffusion_model = build_unet(arch, size, device=device, dtype=dtype, seed=seed)
    load_device = torch.device("cpu" if device == "meta" else device)
    if load_device.type != "cpu":
        base.to(load_device)   # model_sampling's buffers too, as ComfyUI's full load does
    return comfy.model_patcher.ModelPatcher(base, load_device=load_device, offload_device=load_device)


def tokenizer_clip(arch: str = "sd1", embedding_directory: str | None = None):
    """ComfyUI's CLIP class with the real SD1/SDXL tokenizer and no text encoder: .tokenize() works, encode does not."""
    import comfy.sd
    import comfy.sd1_clip
    import comfy.sdxl_clip
    tokenizer_class = {"sd1": comfy.sd1_clip.SD1Tokenizer, "sdxl": comfy.sdxl_clip.SDXLTokenizer}[arch]
    clip = comfy.sd.CLIP(no_init=True)
    clip.tokenizer = tokenizer_class(embedding_directory=embedding_directory)
    clip.tokenizer_options = {}
    return clip
