"""Attend-and-Excite's maps and loss (Chefer et al. 2023; HRV variant: Park et al., arXiv 2412.02237), plain torch.

Per cross-attention layer the softmax maps [.., T, h, w] are brought to the target grid (16x16): up-sampled
bicubically, or, when larger, Gaussian-blurred first against aliasing (kernel (h // res) + 1, sigma
0.3 * ((kernel - 1) * 0.5 - 1) + 0.8, reflect padding, as the HRV authors do) and then down-sampled bicubically.
The loss of an image is max over subjects of max(0, 1 - the subject's largest attention), where a subject's map is
the softmax over the prompt's tokens (start tokens left out) of the aggregated maps times 100.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def gaussian_kernel(size: int, sigma: float, device=None, dtype=torch.float32) -> torch.Tensor:
    """Normalised 1-D Gaussian of `size` taps centred on the middle tap."""
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def gaussian_blur(maps: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """[..., h, w] blurred with a separable Gaussian, reflect padding (the same 2-D kernel as torchvision's)."""
    lead, (h, w) = maps.shape[:-2], maps.shape[-2:]
    x = maps.reshape(-1, 1, h, w)
    kernel = gaussian_kernel(size, sigma, x.device, x.dtype)
    pad = size // 2
    x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, size))
    x = F.conv2d(x, kernel.view(1, 1, size, 1))
    return x.reshape(*lead, h, w)


def anti_alias(size_in: int, size_out: int) -> tuple[int, float]:
    """The authors' blur before down-sampling size_in to size_out: (odd kernel size, sigma)."""
    kernel = size_in // size_out + 1
    if kernel % 2 == 0:
        kernel += 1
    return kernel, 0.3 * ((kernel - 1) * 0.5 - 1) + 0.8


def resize_maps(maps: torch.Tensor, res: int) -> torch.Tensor:
    """[..., h, w] -> [..., res, res]: identity, bicubic up-sampling, or Gaussian blur then bicubic down-sampling."""
    lead, (h, w) = maps.shape[:-2], maps.shape[-2:]
    if (h, w) == (res, res):
        return maps
    x = maps.reshape(-1, 1, h, w)
    if max(h, w) > res:
        kernel, sigma = anti_alias(max(h, w), res)
        if min(h, w) > kernel // 2:          # reflect padding needs a pad smaller than the map
            x = gaussian_blur(x, kernel, sigma)
    x = F.interpolate(x, size=(res, res), mode="bicubic", align_corners=False)
    return x.reshape(*lead, res, res)


def subject_max_attention(maps: torch.Tensor, keep: torch.Tensor, subjects: list[torch.Tensor],
                          temperature: float = 100.0, smooth: bool = False) -> torch.Tensor:
    """float32 [B, S]: each subject's largest attention on the grid.

    maps [B, S', T, r, r] (S' = S: one aggregate per subject; S' = 1: shared by all), keep int64 [T'] the token
    columns of the softmax (the start tokens left out), subjects: per subject int64 indices into `keep` (a subject of
    several tokens gets their mean). smooth: a 3x3 Gaussian (sigma 0.5) on the subject's map first (original A&E).
    """
    out = []
    for s, columns in enumerate(subjects):
        m = maps[:, s if maps.shape[1] > 1 else 0].index_select(1, keep)              # [B, T', r, r]
        probs = torch.softmax(m * temperature, dim=1)
        subject = probs.index_select(1, columns).mean(1)                               # [B, r, r]
        if smooth:
            subject = gaussian_blur(subject, 3, 0.5)
        out.append(subject.flatten(1).amax(1))
    return torch.stack(out, dim=1)


def excite_loss(max_attention: torch.Tensor) -> torch.Tensor:
    """float32 [B]: max over subjects of max(0, 1 - max attention)."""
    return (1.0 - max_attention).clamp_min(0).amax(dim=1)


def step_sizes(steps: int, scale_factor: float = 20.0, scale_range=(1.0, 0.5)) -> list[float]:
    """The A&E step size of every step: scale_factor * sqrt(linspace(scale_range)[t]), on the z = x / sqrt(1 + sigma^2)
    scale of the reference code."""
    if steps == 1:
        return [scale_factor * math.sqrt(scale_range[0])]
    return [scale_factor * math.sqrt(scale_range[0] + (scale_range[1] - scale_range[0]) * t / (steps - 1))
            for t in range(steps)]
