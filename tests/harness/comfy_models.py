"""Random-weight UNets wrapped the way ComfyUI wraps a checkpoint, and CLIP objects with the real tokenizers.

For tests and benchmarks; call hrv.comfy_host.use_comfyui() first. No weights are downloaded.
"""
from __future__ import annotations

import torch

from scripts.demo.unets import build_unet, unet_config


def model_patcher(arch: str = "sd1", size: str = "tiny", device: str = "cpu", seed: int = 0):
    """A comfy.model_patcher.ModelPatcher around a comfy.model_base model holding build_unet(arch, size)."""
    import comfy.model_base
    import comfy.model_patcher
    import comfy.supported_models
    config_class = {"sd1": comfy.supported_models.SD15, "sdxl": comfy.supported_models.SDXL}[arch]
    base_class = {"sd1": comfy.model_base.BaseModel, "sdxl": comfy.model_base.SDXL}[arch]
    # ComfyUI would build the UNet from the config with uninitialised weights and its own head-size
    # overrides; the config is told not to, and the seeded random UNet of the real layout goes in instead.
    config = config_class({**unet_config(arch, size), "disable_unet_model_creation": True})
    base = base_class(config, device=device)
    base.diffusion_model = build_unet(arch, size, device=device, seed=seed)
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(base, load_device=cpu, offload_device=cpu)


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
