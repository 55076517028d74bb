"""`python -m hrv eval edit`: the paper's image-editing benchmark on a checkpoint, run in-process with ComfyUI.

For every (source, target) pair of a benchmark CSV (columns source_prompt, target_prompt; the published sets are in
the authors' applications/benchmark_prompts/) and every seed: one HRV Prompt Edit run (P2P-HRV) and, with
--baseline, one plain P2P run of the same pair and seed, sampled with ComfyUI's sampler and decoded with the
checkpoint's VAE. Writes the images, results.csv (one row per pair and seed) and summary.json. With --clip-weights,
every image is scored with the paper's CLIP metric against its prompt (the edited images against the target).
"""
from __future__ import annotations

import csv
import json
import logging
import os
import statistics

log = logging.getLogger("hrv.eval.edit")


def read_pairs(path: str) -> list[tuple[str, str]]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"source_prompt", "target_prompt"} <= set(rows[0]):
        raise ValueError(f"{path}: expected a CSV with columns source_prompt,target_prompt (the benchmark's format)")
    return [(r["source_prompt"].strip(), r["target_prompt"].strip()) for r in rows]


def add_parser(sub) -> None:
    s = sub.add_parser("edit", help="run P2P-HRV (and plain P2P) on an editing benchmark CSV, save images and CLIP scores")
    s.add_argument("--checkpoint", required=True, help="an SD1.x or SDXL single-file checkpoint")
    s.add_argument("--hrv", required=True, help="the HRV .safetensors for that architecture")
    s.add_argument("--prompts", required=True, help="benchmark CSV with columns source_prompt,target_prompt")
    s.add_argument("--concept", default="Color", help="the concept of the edited attribute (default Color)")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--seeds", type=int, nargs="+", default=[10, 20, 30])
    s.add_argument("--limit", type=int, default=0, help="only the first N pairs (0: all)")
    s.add_argument("--steps", type=int, default=50)
    s.add_argument("--cfg", type=float, default=7.5)
    s.add_argument("--sampler", default="euler")
    s.add_argument("--scheduler", default="normal")
    s.add_argument("--size", type=int, default=512, help="image width and height")
    s.add_argument("--mode", choices=("replace", "refine"), default="replace")
    s.add_argument("--baseline", action="store_true", help="also run plain P2P (self_replace 0.4, as the authors)")
    s.add_argument("--clip-weights", default=None, help="OpenCLIP weights file (the paper's: ViT-H-14 laion2b_s32b_b79k)")
    s.add_argument("--clip-arch", default="ViT-H-14")


def run(args) -> dict:
    import torch
    with torch.inference_mode():       # as ComfyUI's executor runs every node
        return _run(args)


def _run(args) -> dict:
    from PIL import Image

    from ..comfy_host import accelerator_available, use_comfyui
    use_comfyui(cpu=not accelerator_available())
    import comfy.model_management
    import comfy.sample
    import comfy.sd

    from ..format.hrv_file import load
    from ..format.layout import layout_of_unet
    from ..edit.encode import EditSettings, prompt_edit
    from .clip_score import ClipScorer

    pairs = read_pairs(args.prompts)
    if args.limit:
        pairs = pairs[:args.limit]
    hrv = load(args.hrv)
    model, clip, vae = comfy.sd.load_checkpoint_guess_config(args.checkpoint, output_vae=True, output_clip=True)[:3]
    if layout_of_unet(model.get_model_object("diffusion_model")).compact() != hrv.layout.compact():
        raise ValueError(f"{args.hrv} is for {hrv.arch}, not this checkpoint's architecture")
    scorer = (ClipScorer.from_open_clip(args.clip_arch, args.clip_weights, comfy.model_management.get_torch_device())
              if args.clip_weights else None)
    negative = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    os.makedirs(args.out, exist_ok=True)
    runs = [("hrv", EditSettings(args.mode, args.concept))]
    if args.baseline:
        runs.append(("p2p", EditSettings(args.mode, "none")))
    rows = []
    for index, (source, target) in enumerate(pairs):
        for seed in args.seeds:
            row = {"pair": index, "seed": seed, "source_prompt": source, "target_prompt": target}
            for name, settings in runs:
                edited, positive, latent, _ = prompt_edit(model, clip, hrv, source, target, settings, args.size, args.size)
                noise = comfy.sample.prepare_noise(latent["samples"], seed, latent["batch_index"])
                samples = comfy.sample.sample(edited, noise, args.steps, args.cfg, args.sampler, args.scheduler, positive,
                                              negative, latent["samples"], disable_pbar=True, seed=seed)
                images = vae.decode(samples).float().clamp(0, 1)           # [2, H, W, 3]: source, edited
                for label, image in (("source", images[0]), (name, images[1])):
                    path = os.path.join(args.out, f"{index:03d}_{seed}_{label}.png")
                    if label != "source" or name == "hrv":
                        Image.fromarray((image.cpu().numpy() * 255).round().astype("uint8")).save(path)
                        row[f"{label}_image"] = os.path.basename(path)
                if scorer is not None:
                    scores = scorer.score(images, [source, target])
                    row["clip_source"] = round(float(scores[0]), 6)
                    row[f"clip_{name}"] = round(float(scores[1]), 6)
            rows.append(row)
            log.info("pair %d seed %d: %s", index, seed, {k: v for k, v in row.items() if k.startswith("clip_")})
    with open(os.path.join(args.out, "results.csv"), "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["pair"])
        writer.writeheader()
        writer.writerows(rows)
    summary = {"pairs": len(pairs), "seeds": args.seeds, "concept": args.concept, "steps": args.steps,
               "sampler": args.sampler, "scheduler": args.scheduler}
    for key in sorted({k for r in rows for k in r if k.startswith("clip_")}):
        summary[f"mean_{key}"] = statistics.fmean(r[key] for r in rows)
    with open(os.path.join(args.out, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    print(json.dumps(summary, indent=2))
    return summary
