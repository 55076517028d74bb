"""HRV Prompt Edit on a full-size SD1.5 or SDXL UNet (random weights): checks, time and peak memory. A script, not a test.

    python bench/edit.py [--arch sd1|sdxl] [--latent N] [--steps 20] [--repeats 3] [--device cpu|cuda]
    On a machine without ComfyUI: COMFYUI_DIR=$PWD/.gpu/comfyui python3 bench/edit.py --device cuda \\
        --reference-dir .gpu/reference [--arch sdxl]

Samples a source/target pair (one latent pair, batch 2; CFG adds the negative: 4 UNet rows per step) with ComfyUI's
sampler (euler_ancestral) in the model's dtype (float16 on a GPU), at --latent (default 64 = 512 px for SD1.5, 128
= 1024 px for SDXL). The text encoders are small random ones of the real width (the UNet is what costs). Each kind
runs in its own process (so each peak is its own): checks, then
  plain          the same pair sampled without the edit (a batch of 2 of both prompts)
  replace        P2P-HRV word swap "blue" -> "red", concept Color
  refine         an added word ("a photo of a car" -> "a photo of a red car"): a second fused call for its column
  replace+blend  replace with a local blend on "car" (maps of that word at the blend layers, this step only)
and prints seconds per run (median of --repeats after a warm-up), peak memory (max_memory_allocated on a GPU, reset
after the warm-up; peak resident memory on the CPU), their ratios to plain and, last,
`edit_time_ratio=` (replace) and `edit_peak_memory_ratio=` (the largest edit peak / plain). Targets: time <= 1.3,
memory <= 1.5 (the authors' code keeps explicit maps: 9 GB for SD1.4, 21-22 GB for SDXL).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

import hrvbench as hb

KINDS = ("plain", "replace", "refine", "replace+blend")
RESULT = "RESULT "


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", choices=("sd1", "sdxl"), default="sd1")
    p.add_argument("--latent", type=int, default=None, help="latent side (default 64 for sd1, 128 for sdxl)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each kind after one warm-up (default 3)")
    p.add_argument("--worker", choices=("checks",) + KINDS, default=None, help=argparse.SUPPRESS)
    hb.add_common_args(p)
    p.set_defaults(steps=20)
    args = p.parse_args(argv)
    args.latent = args.latent or hb.DEFAULT_LATENT[args.arch]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    forwarded = list(argv if argv is not None else sys.argv[1:])
    results = {}
    for kind in ("checks",) + KINDS:
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), *forwarded, "--worker", kind],
                              capture_output=True, text=True)
        for line in proc.stdout.splitlines():
            if line.startswith(RESULT):
                results[kind] = json.loads(line[len(RESULT):])
            else:
                print(f"[{kind}] {line}", flush=True)
        if proc.returncode:
            print(proc.stderr[-4000:], file=sys.stderr)
            raise SystemExit(f"the {kind} process failed (exit {proc.returncode})")
    plain = results["plain"]
    for kind in KINDS:
        r = results[kind]
        print(f"{kind:14s} {r['seconds']:.3f} s/run (all: {', '.join(f'{t:.3f}' for t in r['all'])}), time ratio "
              f"{r['seconds'] / plain['seconds']:.3f}; peak {r['peak_gib']:.2f} GiB, ratio "
              f"{r['peak_gib'] / plain['peak_gib']:.3f}")
    print(f"edit_time_ratio={results['replace']['seconds'] / plain['seconds']:.4f}")
    print(f"edit_peak_memory_ratio={max(results[k]['peak_gib'] for k in KINDS[1:]) / plain['peak_gib']:.4f}")
    return 0


class NarrowClip:
    """The SDXL CLIP with its context cut to a tiny UNet's width (--unet tiny smoke runs only)."""

    def __init__(self, clip, width: int):
        self.clip, self.width = clip, width

    def tokenize(self, text, **kwargs):
        return self.clip.tokenize(text, **kwargs)

    def encode_from_tokens_scheduled(self, tokens):
        return [[c[..., :self.width], extra] for c, extra in self.clip.encode_from_tokens_scheduled(tokens)]


def worker(args) -> int:
    attention, device = hb.setup_comfy(args)
    dtype = hb.resolve_dtype(args)
    import comfy.cli_args
    import comfy.sample
    from harness.tiny_pipeline import tiny_sd1_clip, tiny_sdxl_clip
    from steering import load_hrv

    from hrv.comfy_host import import_pack
    pack = import_pack()
    model = hb.build_model(args.arch, args.unet, device, dtype)
    clip = tiny_sd1_clip(1) if args.arch == "sd1" else tiny_sdxl_clip(2)
    if hb.context_dim(model) != 2048 and args.arch == "sdxl":
        clip = NarrowClip(clip, hb.context_dim(model))
    comfy.cli_args.args.cpu = device.type == "cpu"          # the tiny CLIP helpers set the CPU flag
    hrv, source = load_hrv(args.arch, args.reference_dir)
    node = pack.nodes.edit_nodes.HRVPromptEdit()
    pixels = args.latent * 8

    def encode(text):
        return clip.encode_from_tokens_scheduled(clip.tokenize(text))

    negative = encode("")

    def sample(model_, positive, latent, sampler="euler_ancestral", seed=3):
        noise = comfy.sample.prepare_noise(latent["samples"], seed, latent.get("batch_index"))
        with torch.inference_mode():
            out = comfy.sample.sample(model_, noise, args.steps, 7.5, sampler, "normal", positive, negative,
                                      latent["samples"], disable_pbar=True, seed=seed)
        hb.sync(device)
        return out

    def edit(source_text, target_text, concept="Color", strength=1.0, mode="replace", self_replace=-1.0, **kw):
        return node.edit(model, clip, hrv, source_text, target_text, concept, strength, 0.8, self_replace, mode,
                         pixels, pixels, 1, **kw)

    if args.worker == "checks":
        print(hb.describe_machine(attention, device, dtype, args))
        print(f"{args.unet} {args.arch} UNet, random weights; HRV {source}; latent pair 2x4x{args.latent}x{args.latent} "
              f"({pixels} px), {args.steps} steps, euler_ancestral, CFG 7.5 (4 UNet rows a step)", flush=True)
        out = sample(*edit("a photo of a blue car", "a photo of a blue car"))
        print(f"identical prompts, replace, euler_ancestral: rows equal bit for bit: {torch.equal(out[0], out[1])} "
              f"(max difference {float((out[0] - out[1]).abs().max()):.3g})", flush=True)
        out = sample(*edit("a photo of a blue car", "a photo of a blue car", mode="refine"), "dpmpp_2m")
        print(f"identical prompts, refine, dpmpp_2m: rows equal bit for bit: {torch.equal(out[0], out[1])}", flush=True)
        zero = sample(*edit("a photo of a blue car", "a photo of a red car", strength=0.0, self_replace=0.9))
        none = sample(*edit("a photo of a blue car", "a photo of a red car", concept="none", self_replace=0.9))
        print(f"hrv_strength 0 equals concept none bit for bit: {torch.equal(zero, none)}", flush=True)
        print(RESULT + json.dumps({}))
        return 0

    if args.worker == "plain":
        pair = [encode("a photo of a blue car")[0], encode("a photo of a red car")[0]]
        extra = dict(pair[0][1])
        if extra.get("pooled_output") is not None:
            extra["pooled_output"] = torch.cat([p[1]["pooled_output"] for p in pair])
        run = (model, [[torch.cat([p[0] for p in pair]), extra]],
               {"samples": torch.zeros(2, 4, args.latent, args.latent), "batch_index": [0, 0]})
    else:
        run = {"replace": lambda: edit("a photo of a blue car", "a photo of a red car"),
               "refine": lambda: edit("a photo of a car", "a photo of a red car", mode="refine"),
               "replace+blend": lambda: edit("a photo of a blue car", "a photo of a red car",
                                             local_blend_words="car")}[args.worker]()
    sample(*run)                                              # warm-up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        sample(*run)
        times.append(time.perf_counter() - t)
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2 ** 30
    print(RESULT + json.dumps({"seconds": statistics.median(times), "all": times, "peak_gib": peak}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
