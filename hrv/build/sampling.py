"""The ComfyUI side of a build: sample one prompt, load a checkpoint, the default attention.

ComfyUI is imported inside the functions only (the caller has put it on sys.path).
"""
from __future__ import annotations

import logging
import math
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


def _common_length(conds: list[torch.Tensor]) -> list[torch.Tensor]:
    """Prompts of different chunk counts repeated to a common length, as ComfyUI batches them (cond_cat):
    attention over a key set repeated k times is the same attention."""
    lengths = [c.shape[1] for c in conds]
    common = math.lcm(*lengths)
    return [c.repeat(1, common // c.shape[1], 1) for c in conds]


class ComfyPromptSampler:
    """Samples prompts with ComfyUI's KSampler machinery (CFG, sampler, scheduler), like the KSampler node.

    Several prompts sample as one latent batch, each row with the initial noise of its own seed; samplers that
    draw noise during sampling (ancestral, SDE) draw it for the batch, so their rows differ from one-by-one runs.
    """

    def __init__(self, encode: Callable[[str], tuple], settings: BuildSettings, latent_channels: int = 4):
        self.encode = encode
        self.settings = settings
        self.latent_channels = latent_channels
        self._negative = None

    def _conditioning(self, texts: list[str]) -> list:
        encoded = [self.encode(t) for t in texts]
        cond = torch.cat(_common_length([c for c, _ in encoded]))
        pooled = None if encoded[0][1] is None else torch.cat([p for _, p in encoded])
        s = self.settings
        extra = {"pooled_output": pooled, "width": s.width, "height": s.height,
                 "target_width": s.width, "target_height": s.height}
        return [[cond, extra]]

    def _voting(self, texts: list[str]) -> list:
        """The positive conditioning, carrying the request that makes its chunks vote."""
        return attach_request(self._conditioning(texts), VOTE_FEATURE, True)

    @torch.inference_mode()
    def __call__(self, model, prompts: str | list[str], seeds: int | list[int],
                 step_done: Callable[[int], None]) -> torch.Tensor:
        """The denoised latents [N, 4, h/8, w/8] of N prompts (row i seeded with seeds[i]); step_done(i) after step i."""
        import comfy.sample
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        seeds = [seeds] if isinstance(seeds, int) else list(seeds)
        if len(prompts) != len(seeds) or not prompts:
            raise ValueError(f"{len(prompts)} prompts and {len(seeds)} seeds: give one seed per prompt")
        s = self.settings
        if self._negative is None:
            self._negative = self._conditioning([s.negative_prompt])
        one = torch.zeros([1, self.latent_channels, s.height // 8, s.width // 8])
        one = comfy.sample.fix_empty_latent_channels(model, one)
        noise = torch.cat([comfy.sample.prepare_noise(one, seed) for seed in seeds])
        latent = one.repeat(len(prompts), 1, 1, 1)
        return comfy.sample.sample(model, noise, s.steps, s.cfg, s.sampler, s.scheduler, self._voting(prompts),
                                   self._negative, latent, seed=seeds[0], disable_pbar=True,
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



