"""The paper's ordered-weakening analysis (Park et al., arXiv 2412.02237, figure of CLIP similarity against k).

For a concept, its heads are sorted by relevance; the k most (MoRHF) or least (LeRHF) relevant heads get -2 on every
prompt word token (not start/end/padding), at every step, conditional half only. Each image is scored by the CLIP
similarity with the concept word alone. MoRHF should make the concept fade fast as k grows; LeRHF barely change it.

This module holds the sweep itself (used by the HRV Weakening Sweep node and `python -m hrv eval weakening`) and its
pictures (grid, plot). It goes through the steering path of the HRV nodes: ordered_weakening factors, a request on
the conditioning (targets_request with `*`), and the attention core. ComfyUI is imported only inside functions.
"""
from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch

log = logging.getLogger("hrv.eval.weakening")

ORDERS = ("MoRHF", "LeRHF")
FACTOR = -2.0
PAPER_SEEDS = (10, 20, 30)
FIELDS = ("concept", "order", "k", "word", "seed", "prompt", "clip")

# Prompt templates in the spirit of the authors' analysis ("a {color} {object}", "a {object} made of {material}",
# "photo of a {animal}"); {} is the concept word. Other concepts use GENERIC_TEMPLATE.
TEMPLATES = {
    "Color": "a {} car",
    "Material": "a cup made of {}",
    "Animals": "photo of a {}",
    "Plants": "photo of a {}",
    "Fruits and Vegetables": "photo of a {}",
    "Furniture": "photo of a {}",
    "Vehicles": "photo of a {}",
    "Weather Conditions": "a street in {} weather",
    "Art Styles": "a painting of a house in {} style",
}
GENERIC_TEMPLATE = "a photo of a {}"


class WeakeningError(ValueError):
    """Bad sweep settings; the message says what to change."""


def template_for(concept: str) -> str:
    return TEMPLATES.get(concept, GENERIC_TEMPLATE)


def fill(template: str, word: str) -> str:
    if "{}" not in template:
        raise WeakeningError(f"the prompt template {template!r} has no {{}} where the concept word goes")
    return template.replace("{}", word.strip(), 1)


def default_ks(num_heads: int) -> list[int]:
    """The authors' k values: {0, 1, 11, ..., 121, 128} for SD1.x, {0, 11, 111, ..., 1211, 1300} for SDXL."""
    if num_heads == 1300:
        return [0] + list(range(11, 1300, 100)) + [1300]
    if num_heads == 128:
        return [0] + list(range(1, 128, 10)) + [128]
    step = max(1, num_heads // 12)
    return sorted({0, *range(1, num_heads, step), num_heads})


def parse_ks(text: str, num_heads: int) -> list[int]:
    """'0,1,11' -> [0, 1, 11]; empty or 'auto' -> default_ks(num_heads)."""
    text = str(text or "").strip()
    if not text or text.lower() == "auto":
        return default_ks(num_heads)
    ks = []
    for part in text.replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            k = int(part)
        except ValueError:
            raise WeakeningError(f"k values must be whole numbers separated by commas, got {part!r}") from None
        if not 0 <= k <= num_heads:
            raise WeakeningError(f"k must be between 0 and {num_heads} (the number of heads), got {k}")
        ks.append(k)
    if not ks:
        raise WeakeningError("no k value given: type e.g. 0,1,11,21 (or auto)")
    return list(dict.fromkeys(ks))


def parse_words(text) -> list[str]:
    words = [w.strip() for w in (text.split(",") if isinstance(text, str) else text) if w and w.strip()]
    if not words:
        raise WeakeningError("no concept word given: type e.g. dog, cat")
    return words


def parse_seeds(text) -> list[int]:
    try:
        seeds = [int(s) for s in (str(text).replace(",", " ").split() if isinstance(text, str) else text)]
    except ValueError:
        raise WeakeningError(f"seeds must be whole numbers separated by commas, got {text!r}") from None
    if not seeds:
        raise WeakeningError("no seed given: the paper's are 10, 20, 30")
    return seeds


@dataclass(frozen=True)
class Sample:
    concept: str
    order: str
    k: int
    word: str
    seed: int
    prompt: str

    def key(self) -> tuple:
        return (self.concept, self.order, int(self.k), self.word, int(self.seed))


@dataclass(frozen=True)
class Sampling:
    steps: int = 50
    cfg: float = 7.5
    sampler: str = "euler"
    scheduler: str = "normal"
    width: int = 512
    height: int = 512


def plan(concept: str, words: Sequence[str], template: str, ks: Sequence[int], seeds: Sequence[int],
         orders: Sequence[str] = ORDERS) -> list[Sample]:
    return [Sample(concept, order, int(k), word, int(seed), fill(template, word))
            for order in orders for k in ks for word in words for seed in seeds]


def weakened_conditioning(clip, hrv, concept: str, order: str, k: int, text: str, factor: float = FACTOR):
    """CLIP Text Encode of `text` carrying the request that scales every word token by `factor` in the k most or least
    relevant heads of `concept`: what HRV Ordered Weakening returns with target `*`."""
    from ..attention import attach_request
    from ..steering.encode import ALL_WORDS, concept_row, targets_request
    from ..steering.factors import ordered_weakening
    from ..steering.request import FEATURE
    if order not in ORDERS:
        raise WeakeningError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
    s = ordered_weakening(concept_row(hrv, concept), int(k), most_relevant_first=order == "MoRHF", factor=factor)
    request = targets_request(clip, hrv, text, ALL_WORDS, s, f"{order} k={k} {concept}")
    conditioning = clip.encode_from_tokens_scheduled(clip.tokenize(text))
    return attach_request(conditioning, FEATURE, request)


def steering_model(model):
    from ..attention import install_core
    from ..steering.processor import STEERING
    return install_core(model, [STEERING])


def sample_image(model, positive, negative, vae, sampling: Sampling, seed: int) -> torch.Tensor:
    """One image [H, W, 3] in 0..1, sampled as KSampler samples (same noise, same sampler call) and decoded."""
    import comfy.sample
    latent = torch.zeros([1, 4, sampling.height // 8, sampling.width // 8])
    latent = comfy.sample.fix_empty_latent_channels(model, latent)
    noise = comfy.sample.prepare_noise(latent, seed, None)
    samples = comfy.sample.sample(model, noise, sampling.steps, sampling.cfg, sampling.sampler, sampling.scheduler,
                                  positive, negative, latent, denoise=1.0, disable_pbar=True, seed=seed)
    return vae.decode(samples)[0].float().clamp(0, 1).cpu()


def run_sweep(model, clip, vae, hrv, samples: Iterable[Sample], sampling: Sampling, scorer=None,
              on_sample: Callable[[Sample, torch.Tensor, float | None], None] | None = None,
              skip: Callable[[Sample], bool] | None = None) -> list[tuple[Sample, torch.Tensor, float | None]]:
    """Sample (and score against the concept word alone) every Sample not skipped; on_sample after each one."""
    with torch.inference_mode():        # as ComfyUI's executor runs every node
        return _run_sweep(model, clip, vae, hrv, samples, sampling, scorer, on_sample, skip)


def _run_sweep(model, clip, vae, hrv, samples, sampling, scorer, on_sample, skip):
    steered = steering_model(model)
    negative = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    results = []
    for s in samples:
        if skip is not None and skip(s):
            continue
        positive = weakened_conditioning(clip, hrv, s.concept, s.order, s.k, s.prompt)
        image = sample_image(steered, positive, negative, vae, sampling, s.seed)
        score = float(scorer.score(image[None], [s.word])[0]) if scorer is not None else None
        results.append((s, image, score))
        if on_sample is not None:
            on_sample(s, image, score)
    return results


# --- tables -------------------------------------------------------------------------------------------------------

def row_of(s: Sample, score: float | None) -> dict:
    return {"concept": s.concept, "order": s.order, "k": s.k, "word": s.word, "seed": s.seed, "prompt": s.prompt,
            "clip": "" if score is None else f"{score:.6f}"}


def key_of_row(row: dict) -> tuple:
    return (row["concept"], row["order"], int(row["k"]), row["word"], int(row["seed"]))


def csv_text(rows: Sequence[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def mean_curves(rows: Sequence[dict]) -> dict[str, list[tuple[int, float]]]:
    """order -> [(k, mean CLIP similarity over words and seeds)], k ascending; rows without a score are left out."""
    sums: dict = {}
    for r in rows:
        if r.get("clip", "") in ("", None):
            continue
        total, n = sums.get((r["order"], int(r["k"])), (0.0, 0))
        sums[(r["order"], int(r["k"]))] = (total + float(r["clip"]), n + 1)
    curves: dict = {}
    for (order, k), (total, n) in sorted(sums.items(), key=lambda kv: kv[0][1]):
        curves.setdefault(order, []).append((k, total / n))
    return curves


# --- pictures -----------------------------------------------------------------------------------------------------

GRID_LABEL_W, GRID_HEADER_H = 96, 20
PLOT_SIZE = (640, 400)
COLORS = {"MoRHF": (214, 39, 40), "LeRHF": (31, 119, 180)}


def _pil(image: torch.Tensor):
    from PIL import Image
    return Image.fromarray((image.detach().clamp(0, 1).cpu().numpy() * 255).round().astype("uint8"))


def _tensor(picture) -> torch.Tensor:
    import numpy as np
    return torch.from_numpy(np.asarray(picture.convert("RGB"), dtype=np.float32) / 255.0)


def grid(cells: dict[tuple[str, int], torch.Tensor], rows: Sequence[str], ks: Sequence[int]) -> torch.Tensor:
    """IMAGE [H, W, 3]: one row per label in `rows` (e.g. MoRHF, LeRHF), one column per k, labels on the left and top."""
    from PIL import Image, ImageDraw
    h, w = next(iter(cells.values())).shape[:2]
    canvas = Image.new("RGB", (GRID_LABEL_W + w * len(ks), GRID_HEADER_H + h * len(rows)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for j, k in enumerate(ks):
        draw.text((GRID_LABEL_W + j * w + 2, 4), f"k={k}", fill=(0, 0, 0))
    for i, label in enumerate(rows):
        draw.text((4, GRID_HEADER_H + i * h + h // 2 - 6), str(label)[:16], fill=(0, 0, 0))
        for j, k in enumerate(ks):
            if (label, k) in cells:
                canvas.paste(_pil(cells[(label, k)]), (GRID_LABEL_W + j * w, GRID_HEADER_H + i * h))
    return _tensor(canvas)


def plot(curves: dict[str, list[tuple[int, float]]], title: str = "") -> torch.Tensor:
    """IMAGE [400, 640, 3]: CLIP similarity against k, one line per order; matplotlib when installed, else PIL."""
    try:
        import matplotlib
    except ImportError:
        return _plot_pil(curves, title)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image
    fig, ax = plt.subplots(figsize=(PLOT_SIZE[0] / 100, PLOT_SIZE[1] / 100), dpi=100)
    try:
        for order, points in curves.items():
            ax.plot([k for k, _ in points], [v for _, v in points], marker="o", label=order,
                    color=[c / 255 for c in COLORS.get(order, (0, 0, 0))])
        if not curves:
            ax.text(0.5, 0.5, "no CLIP scores (no CLIP weights chosen)", ha="center", transform=ax.transAxes)
        ax.set_xlabel("k (heads weakened)")
        ax.set_ylabel("CLIP similarity")
        ax.set_title(title)
        if curves:
            ax.legend()
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
    finally:
        plt.close(fig)
    buffer.seek(0)
    return _tensor(Image.open(buffer).resize(PLOT_SIZE))


def _plot_pil(curves, title: str) -> torch.Tensor:
    from PIL import Image, ImageDraw
    width, height = PLOT_SIZE
    left, right, top, bottom = 60, 20, 30, 40
    canvas = Image.new("RGB", PLOT_SIZE, (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.text((left, 8), title[:80], fill=(0, 0, 0))
    draw.rectangle([left, top, width - right, height - bottom], outline=(0, 0, 0))
    points = [p for line in curves.values() for p in line]
    if not points:
        draw.text((left + 20, height // 2), "no CLIP scores (no CLIP weights chosen)", fill=(0, 0, 0))
        return _tensor(canvas)
    k_max = max(max(k for k, _ in points), 1)
    lo, hi = min(v for _, v in points), max(v for _, v in points)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.01, hi + 0.01

    def xy(k, v):
        return (left + (width - left - right) * k / k_max, height - bottom - (height - top - bottom) * (v - lo) / (hi - lo))
    for i in range(5):
        v = lo + (hi - lo) * i / 4
        y = xy(0, v)[1]
        draw.line([left - 4, y, left, y], fill=(0, 0, 0))
        draw.text((4, y - 6), f"{v:.3f}", fill=(0, 0, 0))
    for k in sorted({k for k, _ in points}):
        x = xy(k, lo)[0]
        draw.line([x, height - bottom, x, height - bottom + 4], fill=(0, 0, 0))
    draw.text((left, height - bottom + 8), "0", fill=(0, 0, 0))
    draw.text((width - right - 30, height - bottom + 8), str(k_max), fill=(0, 0, 0))
    draw.text(((width - 120) // 2, height - 18), "k (heads weakened)", fill=(0, 0, 0))
    for n, (order, line) in enumerate(curves.items()):
        color = COLORS.get(order, (0, 0, 0))
        xys = [xy(k, v) for k, v in line]
        if len(xys) > 1:
            draw.line(xys, fill=color, width=2)
        for x, y in xys:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=color)
        draw.text((width - right - 80, top + 6 + 14 * n), order, fill=color)
    return _tensor(canvas)


def save_png(image: torch.Tensor, path: str) -> None:
    _pil(image).save(path)


def load_png(path: str) -> torch.Tensor:
    from PIL import Image
    with Image.open(path) as picture:
        return _tensor(picture)
