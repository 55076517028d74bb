"""From accumulated maps to masks and pictures: DAAM's read-out (bicubic up-sampling to the image, min-max
normalisation per image and word, optional threshold tau), heat colours, overlays and labelled panels."""
from __future__ import annotations

import torch

from .request import upsample

DAAM_TAU = 0.4
# A perceptual ramp from dark blue through cyan, green and yellow to red (anchors at 0, .25, .5, .75, 1).
PALETTE = torch.tensor([[0.05, 0.05, 0.45], [0.0, 0.65, 0.9], [0.1, 0.8, 0.2], [0.98, 0.85, 0.1], [0.85, 0.05, 0.05]])


def normalise(maps: torch.Tensor) -> torch.Tensor:
    """Min-max over the last two dims (each image and word on its own); a flat map becomes all zeros."""
    low = maps.amin(dim=(-2, -1), keepdim=True)
    high = maps.amax(dim=(-2, -1), keepdim=True)
    return (maps - low) / (high - low).clamp_min(1e-8)


def word_masks(latent_maps: torch.Tensor, image_hw, threshold: float = DAAM_TAU) -> torch.Tensor:
    """float32 [B, words, H, W] in [0, 1]: bicubic to the image size, min-max normalised, then 1 where > threshold
    (threshold 0: the soft normalised map)."""
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold must be from 0 (soft map) to below 1, got {threshold}")
    maps = normalise(upsample(latent_maps.to(torch.float32), image_hw))
    return (maps > threshold).to(torch.float32) if threshold > 0 else maps


def heat_colors(mask: torch.Tensor) -> torch.Tensor:
    """[..., H, W] in [0, 1] -> [..., H, W, 3] colours of PALETTE."""
    x = mask.clamp(0, 1) * (len(PALETTE) - 1)
    low = x.floor().long().clamp(max=len(PALETTE) - 2)
    frac = (x - low)[..., None]
    palette = PALETTE.to(mask.device)
    return palette[low] * (1 - frac) + palette[low + 1] * frac


def overlay(images: torch.Tensor, masks: torch.Tensor, opacity: float = 0.55) -> torch.Tensor:
    """images [B, H, W, 3], masks [B, H, W] -> [B, H, W, 3]: the heat colours over a dimmed image, stronger where
    the map is high."""
    alpha = opacity * (0.35 + 0.65 * masks.clamp(0, 1))[..., None]
    return images * (1 - alpha) + heat_colors(masks) * alpha


def label(image: torch.Tensor, text: str) -> torch.Tensor:
    """[H, W, 3] with `text` written in its top-left corner on a dark band (PIL's default font)."""
    import numpy as np
    from PIL import Image, ImageDraw
    picture = Image.fromarray((image.clamp(0, 1).cpu().numpy() * 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    box = draw.textbbox((4, 2), text)
    draw.rectangle((0, 0, min(picture.width, box[2] + 4), box[3] + 3), fill=(0, 0, 0))
    draw.text((4, 2), text, fill=(255, 255, 255))
    return torch.from_numpy(np.asarray(picture).astype(np.float32) / 255.0)


def side_by_side(panels: list[torch.Tensor], gap: int = 6) -> torch.Tensor:
    """[H, W, 3] panels in one row with a white gap."""
    height = panels[0].shape[0]
    spacer = torch.ones(height, gap, 3)
    row = []
    for i, panel in enumerate(panels):
        if i:
            row.append(spacer)
        row.append(panel)
    return torch.cat(row, dim=1)
