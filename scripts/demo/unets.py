"""ComfyUI UNets with the real SD1.x / SDXL cross-attention layout and random weights.

`full` is the real size; `tiny` keeps every transformer, head count and context width but
shrinks channels so a forward pass takes milliseconds. comfy.ops layers skip weight init,
so every parameter is initialised here.
"""
from __future__ import annotations

import torch

SD1 = dict(image_size=32, in_channels=4, out_channels=4, model_channels=320, num_res_blocks=[2, 2, 2, 2],
           channel_mult=[1, 2, 4, 4], transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0], transformer_depth_middle=1,
           transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], num_heads=8, context_dim=768,
           use_linear_in_transformer=False, use_spatial_transformer=True, legacy=False, adm_in_channels=None,
           use_temporal_attention=False, use_temporal_resblock=False)
SDXL = dict(image_size=32, in_channels=4, out_channels=4, model_channels=320, num_res_blocks=[2, 2, 2],
            channel_mult=[1, 2, 4], transformer_depth=[0, 0, 2, 2, 10, 10], transformer_depth_middle=10,
            transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10], num_head_channels=64, context_dim=2048,
            use_linear_in_transformer=True, use_spatial_transformer=True, legacy=False, num_classes="sequential",
            adm_in_channels=2816, use_temporal_attention=False, use_temporal_resblock=False)
# Tiny: same heads per transformer (SD1: 8; SDXL: channels/head_channels = 10 and 20).
TINY = {"sd1": dict(model_channels=32), "sdxl": dict(model_channels=160, num_head_channels=32, context_dim=256, adm_in_channels=256)}


def unet_config(arch: str, size: str = "tiny") -> dict:
    config = dict(SD1 if arch == "sd1" else SDXL)
    if size == "tiny":
        config.update(TINY[arch])
    elif size != "full":
        raise ValueError(f"size must be 'tiny' or 'full', got {size!r}")
    return config


@torch.no_grad()
def init_random_(module: torch.nn.Module, seed: int = 0, std: float = 0.02) -> torch.nn.Module:
    """Seeded N(0, std) weights, zero biases, unit norm scales.

    Parameters on the CPU draw from a CPU generator (the same weights on every machine); parameters on an
    accelerator draw there, in their own dtype, from a generator of that device (seconds instead of minutes
    for a full SDXL UNet; the values differ from the CPU ones, which only benchmarks use).
    """
    generators = {}

    def generator(device):
        if device not in generators:
            generators[device] = torch.Generator(device=device).manual_seed(seed)
        return generators[device]

    for name, p in module.named_parameters():
        if p.device.type == "meta":
            continue
        if name.endswith("bias"):
            p.zero_()
        elif p.dim() == 1:  # norm scales
            p.fill_(1.0)
        elif p.device.type == "cpu":
            p.copy_(torch.randn(p.shape, generator=generator(p.device)) * std)
        else:
            p.normal_(0.0, std, generator=generator(p.device))
    return module


def build_unet(arch: str = "sd1", size: str = "tiny", device: str = "cpu", dtype=torch.float32, seed: int = 0):
    """A ComfyUI UNetModel; call after hrv.comfy_host.use_comfyui()."""
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    config = unet_config(arch, size)
    unet = UNetModel(**config, dtype=dtype, device=device, operations=comfy.ops.disable_weight_init)
    return unet if device == "meta" else init_random_(unet, seed).eval()
