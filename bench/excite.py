"""Cost of Attend-and-Excite (A&E-HRV and the original) on a full-size SD1.5 UNet (random weights). A script, not a test.

    .venv/bin/python bench/excite.py [--size 64] [--steps 10] [--device cpu|cuda] [--dtype fp32|fp16]
    On a machine without ComfyUI: COMFYUI_DIR=$PWD/.gpu/comfyui python3 bench/excite.py --device cuda \\
        --reference-dir .gpu/reference

"a black cat and a white dog", subjects cat:Animals and dog:Animals, sampled through ComfyUI's KSampler (euler, CFG
7: cond + uncond in one batch) for --steps steps, three ways, each run once after a warm-up of each:
  plain      the model without Attend-and-Excite
  ae_hrv     HRV Attend and Excite (A&E-HRV), no iterative refinement: every excited step (the first half) adds one
             conditional forward and backward pass with gradients
  ae         the original Attend-and-Excite (16x16 layers, head average), the same way
A guided step's time is (run - plain steps that were not excited) / excited steps, relative to a plain step. The
iterative refinement (at most --max-refinement extra passes at the reference's steps 0, 10, 20 of 50) repeats that
pass; its cost per pass is printed from a run with refinement. Peak memory: max_memory_allocated on a GPU (reset
before each run), peak resident memory on the CPU (its growth over the plain runs). The UNet is built under inference
mode, as ComfyUI loads checkpoints, so the copy A&E makes of such weights for its gradient passes shows. Prints last
`ae_guided_step_ratio=` (A&E-HRV) and `ae_peak_memory_ratio=`.
"""
from __future__ import annotations

import argparse
import resource
import sys

import torch

import hrvbench as hb

PROMPT = "a black cat and a white dog"
SUBJECTS = "cat:Animals, dog:Animals"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=64, help="latent side (64 = 512 px); a multiple of 8")
    p.add_argument("--max-refinement", type=int, default=3,
                   help="refinement passes of the run that times them (the node's default is 20; 0 skips that run)")
    hb.add_common_args(p)
    p.set_defaults(steps=10)
    args = p.parse_args(argv)
    if args.size % 8:
        p.error("--size must be a multiple of 8")
    return args


def peak_memory(device) -> float:
    """GiB: max_memory_allocated since the last reset on a GPU, the process's peak resident size on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def main(argv=None) -> int:
    args = parse_args(argv)
    attention, device = hb.setup_comfy(args)
    dtype = hb.resolve_dtype(args)
    from harness.comfy_models import tokenizer_clip
    from steering import load_hrv

    from hrv.ae import FEATURE, ExciteSettings, install_excite
    from hrv.ae.encode import excite_request
    from hrv.attention import attach_request
    print(hb.describe_machine(attention, device, dtype, args), flush=True)

    with torch.inference_mode():        # as ComfyUI's executor loads a checkpoint: A&E must copy such weights
        model = hb.build_model("sd1", args.unet, device, dtype)
    hrv, source = load_hrv("sd1", args.reference_dir)
    clip = tokenizer_clip("sd1")
    excited_model = install_excite(model)
    dim = hb.context_dim(model)
    positive = hb.conditioning("sd1", dim, args.size, seed=0)
    sample = hb.Sampler("sd1", dim, args.size, 1, args.steps, device)

    def request(with_hrv: bool, refinement: int):
        settings = ExciteSettings(max_refinement=refinement, smooth=not with_hrv)
        return excite_request(clip, PROMPT, SUBJECTS, hrv if with_hrv else None, settings)

    requests = {"ae_hrv": request(True, 0), "ae": request(False, 0)}
    if args.max_refinement:
        requests["ae_hrv_refine"] = request(True, args.max_refinement)
    kinds = {"plain": lambda: sample(model, positive)}
    for name, req in requests.items():
        kinds[name] = lambda c=attach_request(positive, FEATURE, req): sample(excited_model, c)
    print(f"{args.unet} SD1.5 UNet, random weights; HRV {source}; latent 1x4x{args.size}x{args.size}, {args.steps} "
          f"euler steps, CFG 7; subjects {SUBJECTS}", flush=True)

    times, peaks = {}, {}
    for name, run in kinds.items():
        hb.timed(run, device)                                       # warm-up (and, for A&E, the weights' copy)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times[name] = hb.timed(run, device)
        peaks[name] = peak_memory(device)
        passes = sum(len(r.losses) for r in requests[name].runs[-1]) if name in requests else 0
        print(f"  {name}: {times[name]:.2f}s ({passes} gradient passes), peak memory {peaks[name]:.2f} GiB", flush=True)

    plain_step = times["plain"] / args.steps
    excited = len(requests["ae_hrv"].runs[-1])

    def guided(name):
        return (times[name] - (args.steps - excited) * plain_step) / excited / plain_step

    print(f"plain step {plain_step:.3f}s; {excited} of {args.steps} steps excited; guided step / plain step: A&E-HRV "
          f"{guided('ae_hrv'):.2f}, original A&E {guided('ae'):.2f}")
    if "ae_hrv_refine" in times:
        extra = sum(len(r.losses) - 1 for r in requests["ae_hrv_refine"].runs[-1])
        if extra:
            per_pass = (times["ae_hrv_refine"] - times["ae_hrv"]) / extra
            print(f"refinement: {extra} extra passes, {per_pass:.3f}s each = {per_pass / plain_step:.2f} plain steps; "
                  f"the whole run {times['ae_hrv_refine'] / times['plain']:.2f}x a plain run")
    print(f"ae_guided_step_ratio={guided('ae_hrv'):.4f}")
    print(f"ae_peak_memory_ratio={max(peaks[n] for n in requests) / peaks['plain']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
