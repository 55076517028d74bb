"""The ComfyUI side of a build: sample one prompt, load a checkpoint, the default attention.

ComfyUI is imported inside the functions only (the caller has put it on sys.path).
"""
from __future__ import annotations

import logging
import sys
from typing import Callable

import torch

from ..attention import attach_request
from .run import BuildSettings
from .votes import VOTE_FEATURE

log = logging.getLogger("hrv.build")


def optimized_attention():
    """ComfyUI's default attention function (what attn2 runs when nothing replaces it)."""
    from comfy.ldm.modules.attention import optimized_attention as attention
    return attention


def clip_text_encoder(clip) -> Callable[[str], tuple[torch.Tensor, torch.Tensor | None]]:
    def encode(text: str):
        cond, pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
        return cond, pooled
    return encode


class ComfyPromptSampler:
    """Samples one prompt with ComfyUI's KSampler machinery (CFG, sampler, scheduler), like the KSampler node."""

    def __init__(self, encode: Callable[[str], tuple], settings: BuildSettings, latent_channels: int = 4):
        self.encode = encode
        self.settings = settings
        self.latent_channels = latent_channels
        self._negative = None

    def _conditioning(self, text: str) -> list:
        cond, pooled = self.encode(text)
        s = self.settings
        extra = {"pooled_output": pooled, "width": s.width, "height": s.height,
                 "target_width": s.width, "target_height": s.height}
        return [[cond, extra]]

    def _voting(self, text: str) -> list:
        """The positive conditioning, carrying the request that makes its chunks vote."""
        return attach_request(self._conditioning(text), VOTE_FEATURE, True)

    @torch.inference_mode()
    def __call__(self, model, prompt: str, seed: int, step_done: Callable[[int], None]) -> torch.Tensor:
        """The denoised latent [1, 4, h/8, w/8]; step_done(i) after every step i."""
        import comfy.sample
        s = self.settings
        if self._negative is None:
            self._negative = self._conditioning(s.negative_prompt)
        latent = torch.zeros([1, self.latent_channels, s.height // 8, s.width // 8])
        latent = comfy.sample.fix_empty_latent_channels(model, latent)
        noise = comfy.sample.prepare_noise(latent, seed)
        return comfy.sample.sample(model, noise, s.steps, s.cfg, s.sampler, s.scheduler, self._voting(prompt),
                                   self._negative, latent, seed=seed, disable_pbar=True,
                                   callback=lambda step, x0, x, total: step_done(step))


def load_checkpoint(path: str, cpu: bool | None = None):
    """(model, clip) of an SD1.x/SDXL checkpoint, through ComfyUI's own loader.

    In a fresh process (a Ray worker) this first puts ComfyUI on sys.path, on the CPU if
    `cpu` (default: when no CUDA device is visible).
    """
    if "comfy.model_management" not in sys.modules:
        from ..comfy_host import use_comfyui
        use_comfyui(cpu=cpu if cpu is not None else not torch.cuda.is_available())
    import comfy.sd
    out = comfy.sd.load_checkpoint_guess_config(path, output_vae=False, output_clip=True)
    model, clip = out[0], out[1]
    if model is None or clip is None:
        raise ValueError(f"{path} has no UNet or no text encoder: building an HRV needs both")
    return model, clip



