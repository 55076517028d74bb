"""Pictures of head relevance: one row per cross-attention transformer, one cell per head."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ..format.layout import HeadLayout

# Anchors of a perceptually ordered sequential map (dark blue -> teal -> yellow) and a diverging one.
SEQUENTIAL = np.array([[13, 8, 135], [84, 2, 163], [139, 10, 165], [185, 50, 137], [219, 92, 104],
                       [244, 136, 73], [254, 188, 43], [240, 249, 33]], dtype=np.float32)
DIVERGING = np.array([[33, 102, 172], [146, 197, 222], [247, 247, 247], [244, 165, 130], [178, 24, 43]],
                     dtype=np.float32)
BACKGROUND = (24, 24, 28)
TEXT = (230, 230, 230)
MUTED = (150, 150, 160)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def colormap(values01: np.ndarray, anchors: np.ndarray = SEQUENTIAL) -> np.ndarray:
    """[...] in [0, 1] -> [..., 3] uint8 by linear interpolation between anchor colours."""
    x = np.clip(values01, 0.0, 1.0) * (len(anchors) - 1)
    low = np.floor(x).astype(int).clip(0, len(anchors) - 2)
    frac = (x - low)[..., None]
    return (anchors[low] * (1 - frac) + anchors[low + 1] * frac).round().astype(np.uint8)


def top_heads(layout: HeadLayout, row: torch.Tensor, k: int = 10) -> list[tuple[str, float]]:
    labels = layout.head_labels()
    values, order = torch.sort(row.float(), descending=True, stable=True)
    return [(labels[i], float(v)) for v, i in zip(values[:k].tolist(), order[:k].tolist())]


def _panel(layout: HeadLayout, values: np.ndarray, title: str, vmin: float, vmax: float,
           anchors: np.ndarray, cell: int) -> Image.Image:
    font, small = _font(14), _font(11)
    label_w, top = 86, 40
    width = label_w + cell * max(b.num_heads for b in layout.blocks) + 12
    height = top + cell * len(layout.blocks) + 34
    img = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(img)
    draw.text((8, 10), title, fill=TEXT, font=font)
    scaled = (values - vmin) / max(vmax - vmin, 1e-12)
    colours = colormap(scaled, anchors)
    for r, block in enumerate(layout.blocks):
        y = top + r * cell
        if cell >= 10:
            draw.text((6, y + (cell - 11) // 2), block.block_id_str, fill=MUTED, font=small)
        for h in range(block.num_heads):
            x = label_w + h * cell
            draw.rectangle([x, y, x + cell - 2, y + cell - 2], fill=tuple(int(c) for c in colours[block.first_column + h]))
    # Colour bar with its range, so cells can be read as numbers.
    bar_y = top + cell * len(layout.blocks) + 8
    bar_w = width - label_w - 70
    ramp = colormap(np.linspace(0, 1, bar_w), anchors)
    for i in range(bar_w):
        draw.line([label_w + i, bar_y, label_w + i, bar_y + 10], fill=tuple(int(c) for c in ramp[i]))
    draw.text((6, bar_y - 2), f"{vmin:.2f}", fill=MUTED, font=small)
    draw.text((label_w + bar_w + 6, bar_y - 2), f"{vmax:.2f}", fill=MUTED, font=small)
    return img


def _text_panel(lines: list[str], height: int) -> Image.Image:
    font = _font(13)
    img = Image.new("RGB", (250, height), BACKGROUND)
    draw = ImageDraw.Draw(img)
    for i, line in enumerate(lines):
        draw.text((8, 10 + i * 18), line, fill=TEXT if i == 0 else MUTED, font=font)
    return img


def _hstack(panels: list[Image.Image]) -> Image.Image:
    out = Image.new("RGB", (sum(p.width for p in panels), max(p.height for p in panels)), BACKGROUND)
    x = 0
    for p in panels:
        out.paste(p, (x, 0))
        x += p.width
    return out


def relevance_image(layout: HeadLayout, row: torch.Tensor, concept: str, top_k: int = 10,
                    other: torch.Tensor | None = None, other_concept: str = "") -> np.ndarray:
    """uint8 [height, width, 3]: the concept's heads by block (and, with `other`, both plus their difference)."""
    cell = 22 if layout.num_heads <= 256 else 12
    a = row.float().numpy()
    vmax = float(a.max()) if other is None else float(max(a.max(), other.float().max()))
    panels = [_panel(layout, a, f"{concept}", 0.0, vmax, SEQUENTIAL, cell)]
    lines = [f"Top heads for {concept}"] + [f"{label}  {value:.2f}" for label, value in top_heads(layout, row, top_k)]
    if other is not None:
        b = other.float().numpy()
        diff = a - b
        limit = float(np.abs(diff).max()) or 1.0
        panels.append(_panel(layout, b, f"{other_concept}", 0.0, vmax, SEQUENTIAL, cell))
        panels.append(_panel(layout, diff, f"{concept} - {other_concept}", -limit, limit, DIVERGING, cell))
        lines += ["", f"Top heads for {other_concept}"] + [f"{label}  {value:.2f}" for label, value in top_heads(layout, other, top_k)]
    panels.append(_text_panel(lines, panels[0].height))
    return np.asarray(_hstack(panels))
