"""`python -m hrv eval weakening`: the paper's ordered-weakening analysis on a checkpoint, run in-process with ComfyUI.

For every concept, word, k, order (MoRHF, LeRHF) and seed: the prompt (the concept's template with the word) with
every word token weakened by -2 in the k most / least relevant heads, sampled with ComfyUI's sampler, decoded, saved
under images/, and (with --clip-weights) scored by CLIP similarity with the word alone. One row per sample is
appended to weakening.csv as it is made; a rerun skips the rows already there (resume). At the end, per concept:
<concept>_grid.png (MoRHF and LeRHF rows for the first word and seed, one column per k) and <concept>_plot.png
(mean similarity against k).
"""
from __future__ import annotations

import csv
import logging
import os
import re

from . import weakening as W

log = logging.getLogger("hrv.eval.weakening")
CSV_NAME = "weakening.csv"


def add_parser(sub) -> None:
    s = sub.add_parser("weakening", help="the paper's ordered-weakening analysis: images, CLIP similarity against k, "
                                         "grid and plot per concept (resumable)")
    s.add_argument("--ckpt", "--checkpoint", dest="checkpoint", required=True, help="an SD1.x or SDXL checkpoint")
    s.add_argument("--hrv", required=True, help="the HRV .safetensors for that architecture")
    s.add_argument("--concepts", nargs="+", required=True, help="concept names of the HRV, e.g. Color Animals")
    s.add_argument("--words", default=None, help="comma-separated concept words for every concept (default: the "
                                                 "concept's words in the pack's concept set)")
    s.add_argument("--words-per-concept", type=int, default=0, help="only the first N words (0: all)")
    s.add_argument("--template", default=None, help="prompt with {} for the word (default: per concept, "
                                                    f"'{W.GENERIC_TEMPLATE}' for concepts without one)")
    s.add_argument("--k", default="auto", help="comma-separated k values (auto: 0,1,11,...,121,128 or SDXL's)")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--seeds", type=int, nargs="+", default=list(W.PAPER_SEEDS))
    s.add_argument("--steps", type=int, default=50)
    s.add_argument("--cfg", type=float, default=7.5)
    s.add_argument("--sampler", default="euler")
    s.add_argument("--scheduler", default="normal")
    s.add_argument("--size", type=int, default=0, help="image width and height (0: 512 for SD1.x, 1024 for SDXL)")
    s.add_argument("--clip-weights", default=None, help="OpenCLIP weights file (the paper's: ViT-H-14 laion2b_s32b_b79k)")
    s.add_argument("--clip-arch", default="ViT-H-14")


def words_of(concept: str, args) -> list[str]:
    if args.words:
        words = W.parse_words(args.words)
    else:
        from ..format.concepts import load_concept_set
        concepts = {c.lower(): ws for c, ws in load_concept_set().items()}
        if concept.lower() not in concepts:
            raise ValueError(f"the pack's concept set has no words for {concept!r}: give them with --words")
        words = [w.lower() for w in concepts[concept.lower()]]
    return words[:args.words_per_concept] if args.words_per_concept else words


def image_name(s: W.Sample) -> str:
    safe = re.sub(r"[^A-Za-z0-9]+", "-", f"{s.concept}_{s.word}").strip("-")
    return f"{safe}_{s.order}_k{s.k}_s{s.seed}.png"


def read_rows(path: str) -> list[dict]:
    if not os.path.isfile(path):
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def run(args) -> dict:
    from tqdm import tqdm

    from ..comfy_host import accelerator_available, use_comfyui
    use_comfyui(cpu=not accelerator_available())
    import comfy.model_management
    import comfy.sd

    from ..format.hrv_file import load
    from ..format.layout import layout_of_unet
    from .clip_score import ClipScorer

    hrv = load(args.hrv)
    ks = W.parse_ks(args.k, hrv.layout.num_heads)
    names = [hrv.concepts[hrv.concept_index(c)] for c in args.concepts]   # a ValueError listing the HRV's concepts
    plans = {c: W.plan(c, words_of(c, args), args.template or W.template_for(c), ks, args.seeds) for c in names}
    os.makedirs(os.path.join(args.out, "images"), exist_ok=True)
    csv_path = os.path.join(args.out, CSV_NAME)
    rows = read_rows(csv_path)
    done = {W.key_of_row(r) for r in rows}
    todo = [s for samples in plans.values() for s in samples if s.key() not in done]
    log.info("%d samples, %d already in %s", sum(map(len, plans.values())), sum(map(len, plans.values())) - len(todo),
             csv_path)
    if todo:
        model, clip, vae = comfy.sd.load_checkpoint_guess_config(args.checkpoint, output_vae=True, output_clip=True)[:3]
        if layout_of_unet(model.get_model_object("diffusion_model")).compact() != hrv.layout.compact():
            raise ValueError(f"{args.hrv} is for {hrv.arch}, not this checkpoint's architecture")
        scorer = (ClipScorer.from_open_clip(args.clip_arch, args.clip_weights, comfy.model_management.get_torch_device())
                  if args.clip_weights else None)
        size = args.size or (1024 if hrv.layout.arch == "sdxl" else 512)
        sampling = W.Sampling(args.steps, args.cfg, args.sampler, args.scheduler, size, size)
        new_file = not os.path.isfile(csv_path)
        with open(csv_path, "a", newline="", encoding="utf-8") as f, tqdm(total=len(todo), desc="weakening") as bar:
            writer = csv.DictWriter(f, fieldnames=W.FIELDS)
            if new_file:
                writer.writeheader()

            def on_sample(s, image, score):
                W.save_png(image, os.path.join(args.out, "images", image_name(s)))
                row = W.row_of(s, score)
                writer.writerow(row)
                f.flush()
                rows.append(row)
                bar.update(1)
            W.run_sweep(model, clip, vae, hrv, todo, sampling, scorer, on_sample)
    summary = {"csv": csv_path, "samples": len(rows), "new": len(todo), "k": ks, "seeds": args.seeds, "outputs": []}
    for concept, samples in plans.items():
        first = samples[0]
        cells = {}
        for s in samples:
            path = os.path.join(args.out, "images", image_name(s))
            if s.word == first.word and s.seed == first.seed and os.path.isfile(path):
                cells[(s.order, s.k)] = W.load_png(path)
        safe = re.sub(r"[^A-Za-z0-9]+", "-", first.concept).strip("-")
        if cells:
            W.save_png(W.grid(cells, list(W.ORDERS), ks), os.path.join(args.out, f"{safe}_grid.png"))
        concept_rows = [r for r in rows if r["concept"] == first.concept]
        W.save_png(W.plot(W.mean_curves(concept_rows), f"{first.concept}: ordered weakening"),
                   os.path.join(args.out, f"{safe}_plot.png"))
        summary["outputs"] += [f"{safe}_grid.png", f"{safe}_plot.png"]
    log.info("wrote %s", ", ".join(summary["outputs"] + [CSV_NAME]))
    return summary
