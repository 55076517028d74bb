"""The sampler side of HRV Prompt Edit: shared noise for each (source, target) pair, and P2P's local blend.

Both are wrappers that HRV Prompt Edit adds to its model clone (ComfyUI's public wrapper mechanism; nothing of
ComfyUI is replaced). They act only in a run whose positive conditioning carries an edit request.

Shared noise (SAMPLER_SAMPLE): the target must see exactly the noise the source sees, or the pair's images part
ways. The initial noise: the target rows get the source rows' noise (HRV Prompt Edit's latent already asks
ComfyUI's prepare_noise for it with batch_index [0, 0, 1, 1, ...]; a plain latent of batch 2 gets it here). The
noise a stochastic sampler draws at every step: ComfyUI's k-diffusion samplers take a `noise_sampler` option
(KSAMPLER passes its extra_options to the sampler function). For this call only, the sampler gets one that draws
for the source rows alone, with the generator the sampler would have built itself (default_noise_sampler, or the
Brownian tree of the SDE samplers, seeded with the run's seed), and gives each target row its source row's draw. So
both rows get the same noise, and the source rows get exactly the noise they get when the source prompt is sampled
alone with the same seed. A noise sampler already set on the sampler is kept and its draws shared the same way.

Local blend (PREDICT_NOISE): after each model evaluation, the maps the processor summed over the blend layers
become P2P's mask (3x3 max-pool, resized to the latent, divided by its maximum, above the threshold, source or
target), and the target's denoised prediction is taken from the source outside it. P2P blends the latent x after
each step; blending the prediction instead works with any sampler, and outside the mask the target then follows
the source's trajectory (the difference left in x shrinks with sigma and is gone at sigma 0).
"""
from __future__ import annotations

import inspect
import logging

import torch
import torch.nn.functional as F

from ..attention.core import CORE_KEY
from ..attention.requests import requests_of
from ..attention.run import RunState
from .processor import BLEND_KEY, EditRuntimeError
from .request import FEATURE

log = logging.getLogger("hrv.edit")
WRAPPER_KEY = "hrv_edit"

# k-diffusion samplers whose default noise comes from a Brownian tree (ComfyUI 0.3.x): name -> tree on the CPU
BROWNIAN = {"sample_dpmpp_sde": True, "sample_dpmpp_2m_sde": True, "sample_dpmpp_2m_sde_heun": True,
            "sample_dpmpp_3m_sde": True, "sample_dpmpp_sde_gpu": False, "sample_dpmpp_2m_sde_gpu": False,
            "sample_dpmpp_2m_sde_heun_gpu": False, "sample_dpmpp_3m_sde_gpu": False}


def edits_in(conds) -> bool:
    return any(FEATURE in requests_of(c) for c in (conds or {}).get("positive", []) or [])


def check_pairs(batch: int) -> None:
    if batch % 2:
        raise EditRuntimeError(f"HRV Prompt Edit samples pairs (source, target), but the latent has {batch} row(s): "
                               "connect the LATENT output of HRV Prompt Edit (or a latent of batch 2, 4, ...) to the sampler")


def share_pairs(x: torch.Tensor) -> torch.Tensor:
    """Each odd (target) row replaced by the even (source) row before it."""
    out = x.clone()
    out[1::2] = x[0::2]
    return out


class PairNoiseSampler:
    """noise_sampler(sigma, sigma_next) for a batch of pairs: draws for the source rows, repeats for the targets."""

    def __init__(self, source_sampler=None, full_sampler=None):
        self.source_sampler = source_sampler     # draws [pairs, ...]
        self.full_sampler = full_sampler         # draws [2 * pairs, ...] (a noise sampler set by the user)

    def __call__(self, sigma, sigma_next):
        if self.full_sampler is not None:
            return share_pairs(self.full_sampler(sigma, sigma_next))
        return self.source_sampler(sigma, sigma_next).repeat_interleave(2, dim=0)


def default_source_sampler(function, like: torch.Tensor, sigmas: torch.Tensor, seed):
    """The noise sampler `function` builds for itself when given none, on the source rows `like` [pairs, ...]."""
    import comfy.k_diffusion.sampling as k_sampling
    name = getattr(function, "__name__", "")
    if name in BROWNIAN:
        positive = sigmas[sigmas > 0]
        return k_sampling.BrownianTreeNoiseSampler(like, positive.min(), sigmas.max(), seed=seed, cpu=BROWNIAN[name])
    return k_sampling.default_noise_sampler(like, seed=seed)


def _takes_noise_sampler(function) -> bool:
    try:
        params = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "noise_sampler" or p.kind is p.VAR_KEYWORD for p in params)


def pair_noise_wrapper(executor, guider, sigmas, extra_args, callback, noise, *args, **kwargs):
    """SAMPLER_SAMPLE: the same initial and per-step noise for both rows of every pair."""
    if not edits_in(getattr(guider, "conds", None)):
        return executor(guider, sigmas, extra_args, callback, noise, *args, **kwargs)
    check_pairs(noise.shape[0])
    noise = share_pairs(noise)
    sampler = executor.class_obj
    function = getattr(sampler, "sampler_function", None)
    options = getattr(sampler, "extra_options", None)
    if function is None or not isinstance(options, dict) or not _takes_noise_sampler(function):
        log.info("HRV Prompt Edit: %s takes no noise sampler; the pair shares its initial noise only (fine for "
                 "deterministic samplers)", type(sampler).__name__)
        return executor(guider, sigmas, extra_args, callback, noise, *args, **kwargs)
    given = options.get("noise_sampler")
    if given is not None:
        paired = PairNoiseSampler(full_sampler=given)
    else:
        paired = PairNoiseSampler(default_source_sampler(function, noise[0::2], sigmas, extra_args.get("seed")))
    sampler.extra_options = {**options, "noise_sampler": paired}
    try:
        return executor(guider, sigmas, extra_args, callback, noise, *args, **kwargs)
    finally:
        sampler.extra_options = options


def blend_mask(maps: torch.Tensor, layers: int, shape, latent_size, threshold: float) -> torch.Tensor:
    """P2P's local-blend mask from summed word maps [pairs, 2, h*w]: float [pairs, 1, H, W] of 0 and 1."""
    h, w = shape
    m = (maps / layers).reshape(maps.shape[0], 2, h, w).float()
    m = F.max_pool2d(m, kernel_size=3, stride=1, padding=1)
    m = F.interpolate(m, size=tuple(latent_size))
    m = m / m.amax(dim=(2, 3), keepdim=True).clamp_min(1e-12)
    return (m > threshold).any(dim=1, keepdim=True).float()


def local_blend_wrapper(executor, x, timestep, model_options, seed, *args, **kwargs):
    """PREDICT_NOISE: the target's prediction taken from the source outside the local-blend mask."""
    run = (model_options or {}).get("transformer_options", {}).get(CORE_KEY)
    if type(run) is not RunState:
        return executor(x, timestep, model_options, seed, *args, **kwargs)
    run.cache.pop(BLEND_KEY, None)
    out = executor(x, timestep, model_options, seed, *args, **kwargs)
    maps = run.cache.pop(BLEND_KEY, None)
    if not maps:
        return out
    for entry in maps.values():
        pairs = entry.total.shape[0]
        if out.shape[0] != 2 * pairs:
            raise EditRuntimeError(f"local blend: {pairs} pair(s) of maps for a latent of {out.shape[0]} rows")
        mask = blend_mask(entry.total, entry.layers, entry.shape, out.shape[2:], entry.request.blend.threshold)
        source, target = out[0::2], out[1::2]
        out = out.clone()
        out[1::2] = source + mask.to(out.dtype) * (target - source)
    return out


def install_sampling_wrappers(model) -> None:
    """Adds both wrappers to the ModelPatcher clone `model` (once)."""
    import comfy.patcher_extension
    wrappers = comfy.patcher_extension.WrappersMP
    for kind, fn in ((wrappers.SAMPLER_SAMPLE, pair_noise_wrapper), (wrappers.PREDICT_NOISE, local_blend_wrapper)):
        if not model.get_wrappers(kind, WRAPPER_KEY):
            model.add_wrapper_with_key(kind, WRAPPER_KEY, fn)
