"""Write docs/icon.png, the pack's icon for the Comfy Registry ([tool.comfy] Icon in pyproject.toml).

    .venv/bin/python scripts/make_icon.py

A stylised HRV: 8 x 8 heads on rounded tiles, a few of them bright (relevant), in the colour map the
HRV Inspect node uses. Deterministic; no data files needed.
"""
from __future__ import annotations

import os
import sys

import numpy as np
from PIL import Image, ImageDraw

PACK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, PACK_DIR)
SIZE, GRID, GAP = 256, 8, 5


def main() -> int:
    from hrv.inspect.plot import BACKGROUND, colormap
    rng = np.random.default_rng(2412)
    values = rng.gamma(1.5, 0.09, (GRID, GRID))  # most heads care little
    for r, c in ((1, 5), (2, 2), (4, 6), (5, 1), (6, 4)):
        values[r, c] = 0.85 + 0.15 * rng.random()  # a few care a lot
    colours = colormap(values)
    image = Image.new("RGB", (SIZE, SIZE), BACKGROUND)
    draw = ImageDraw.Draw(image)
    cell = (SIZE - GAP * (GRID + 1)) / GRID
    for r in range(GRID):
        for c in range(GRID):
            x, y = GAP + c * (cell + GAP), GAP + r * (cell + GAP)
            draw.rounded_rectangle([x, y, x + cell, y + cell], radius=5, fill=tuple(int(v) for v in colours[r, c]))
    out = os.path.join(PACK_DIR, "docs", "icon.png")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    image.save(out, optimize=True)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
