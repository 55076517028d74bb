"""Overhead of HRV concept steering on a full-size SD1.5 or SDXL UNet (random weights). A script, not a test.

    .venv/bin/python bench/steering.py [--arch sd1|sdxl] [--device cpu|cuda] [--dtype float32|float16]
        [--size LATENT] [--batch N] [--steps N] [--pairs N] [--attn-reps N] [--use-pytorch-cross-attention]
    On a machine without ComfyUI (files from ../shared/gpu/bundle.sh):
    COMFYUI_DIR=$PWD/.gpu/comfyui python3 bench/steering.py --reference-dir .gpu/reference --device cuda --dtype fp16

Steering runs the real path: a conditioning carrying a SteerRequest for one target word ("rose-colored", 3 tokens;
factors from the HRV's Color and Plants rows, the paper's adjust setting for the architecture), a model with the
attention core (install_core(model, [STEERING])), and ComfyUI's KSampler (euler, CFG 7: cond and uncond in one
batch of 2 x --batch, so the OUTER_SAMPLE wrapper maps the batch chunks by transformer_options["uuids"]). The plain
side is the same model without the core, sampling the same conditioning without the request. The latent is
--size x --size (default 64 for SD1.5 = 512 px, 128 for SDXL = 1024 px). Plain and steered runs are interleaved
(ABBA) in one process and repeated; medians are printed, and last:
  attn_overhead_ratio=  every cross-attention call of one step at its real shapes (16 on SD1.5, 70 on SDXL):
                        the core's attn2 replacement with the steering processor / ComfyUI's fused attention
  overhead_ratio=       one whole sampling step (a KSampler run of --steps steps, per step), steered / plain
Both are ratios of medians. Diagnostics before them: the ratio of minima (noise from other processes only adds
time) and the median of back-to-back ratios (per call, per ABBA pair). On a shared, busy machine all of these
carry noise of several percent; the load average is printed. The attention kernel is the one ComfyUI picks on this
machine (CPU: sub-quadratic unless --use-pytorch-cross-attention selects SDPA; NVIDIA GPU: SDPA). For the record
it also times the explicit-attention-map way (materialise softmax(QK^T/sqrt(d)), rescale the token columns,
multiply by V).
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time

import torch

import hrvbench as hb

PROMPT = "a photo of a rose-colored car parked by the sea"
TARGET = "rose-colored"
DESIRED, UNDESIRED = "Color", "Plants"
OFFICIAL = {"sd1": "sd1_official", "sdxl": "sdxl_official"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", choices=("sd1", "sdxl"), default="sd1", help="SD1.5 (default) or SDXL UNet")
    p.add_argument("--size", type=int, default=None,
                   help="latent side (default 64 for sd1 = 512 px, 128 for sdxl = 1024 px); a multiple of 8")
    p.add_argument("--batch", type=int, default=1, help="latent batch; the UNet sees twice that (cond + uncond)")
    p.add_argument("--pairs", type=int, default=6, help="timed plain/steered sampler-run pairs (default 6)")
    p.add_argument("--warmup", type=int, default=1, help="untimed sampler runs of each kind first (default 1)")
    p.add_argument("--attn-reps", type=int, default=50, help="repetitions of one step's attention calls (default 50)")
    p.add_argument("--end-percent", type=float, default=1.0,
                   help="steering's end_percent; below 1 the sigma-gated path runs (default 1: always on)")
    hb.add_common_args(p)
    args = p.parse_args(argv)
    args.size = args.size or hb.DEFAULT_LATENT[args.arch]
    if args.size % 8:
        p.error("--size must be a multiple of 8 (the UNet downsamples three times)")
    return args


def load_hrv(arch: str, reference_dir: str):
    from hrv.format.hrv_file import HRV, load, normalise_rows
    if os.path.isdir(reference_dir):
        from hrv.format.official import import_official
        with tempfile.TemporaryDirectory() as tmp:
            path = [p for p in import_official(reference_dir, tmp) if p.endswith(f"{OFFICIAL[arch]}.safetensors")][0]
            return load(path), f"official {arch}"
    from hrv.format.concepts import default_concept_names
    from hrv.format.layout import known_layout
    layout = known_layout(arch)
    concepts = default_concept_names()
    g = torch.Generator().manual_seed(0)
    matrix = normalise_rows(torch.rand(len(concepts), layout.num_heads, generator=g))
    return HRV(matrix=matrix, layout=layout, concepts=concepts), f"random {arch} (no {reference_dir})"


def steer_request(arch: str, hrv, clip, end_percent: float):
    """The SteerRequest HRVConceptAdjust would attach for TARGET: positions from the real tokenizer."""
    from hrv.steering.encode import auto_weights, targets_request
    from hrv.steering.factors import adjust
    w = auto_weights(arch)
    factors = adjust(hrv.row(DESIRED), hrv.row(UNDESIRED), w.w_desired, w.w_undesired, w.offset, w.clamp)
    return targets_request(clip, hrv, PROMPT, TARGET, factors, f"{DESIRED}-{UNDESIRED}", 0.0, end_percent)


def explicit_map_attention(q, k, v, heads, column_scale):
    """softmax(QK^T/sqrt(d)) materialised [B*H, N, T], token columns rescaled, times V."""
    b, n, c = q.shape
    d = c // heads
    qh, kh, vh = (t.reshape(b, -1, heads, d).transpose(1, 2).reshape(b * heads, -1, d) for t in (q, k, v))
    attn = torch.baddbmm(torch.empty(1, 1, 1, dtype=q.dtype, device=q.device), qh, kh.transpose(1, 2),
                         beta=0, alpha=1 / math.sqrt(d)).softmax(dim=-1)
    attn = attn * column_scale                          # [B*H, 1, T]
    out = torch.bmm(attn, vh)                           # [B*H, N, d]
    return out.reshape(b, heads, n, d).transpose(1, 2).reshape(b, n, c)


def column_scales(calls, request, dtype, device) -> list:
    """Per captured call, [B*H, 1, T] factors on the steered chunk's target columns (1 elsewhere)."""
    from hrv.attention import CORE_KEY
    scales = []
    for key, _, q, k, v, extra in calls:
        run, uuids, batch, heads = extra[CORE_KEY], extra["uuids"], q.shape[0], extra["n_heads"]
        block = request.layout.block(key)
        scale = torch.ones(batch, heads, 1, k.shape[1], dtype=dtype)
        per = batch // len(uuids)
        for i, u in enumerate(uuids):
            if u in run.entries:
                for term in request.terms:
                    for p in term.positions:
                        scale[i * per:(i + 1) * per, :, 0, p::request.context_length] *= \
                            term.factors[block.columns].to(dtype)[:, None]
        scales.append(scale.reshape(batch * heads, 1, -1).to(device))
    return scales


def main(argv=None):
    args = parse_args(argv)
    attention, device = hb.setup_comfy(args)
    dtype = hb.resolve_dtype(args)
    from harness.comfy_models import tokenizer_clip
    from hrv.attention import attach_request, install_core
    from hrv.steering.processor import STEERING
    from hrv.steering.request import FEATURE
    print(hb.describe_machine(attention, device, dtype, args), flush=True)

    t0 = time.perf_counter()
    model = hb.build_model(args.arch, args.unet, device, dtype)
    hrv, hrv_source = load_hrv(args.arch, args.reference_dir)
    request = steer_request(args.arch, hrv, tokenizer_clip(args.arch), args.end_percent)
    steered = install_core(model, [STEERING])
    dim = hb.context_dim(model)
    positive = hb.conditioning(args.arch, dim, args.size, seed=0, tokens=request.context_length)
    positive_steered = attach_request(positive, FEATURE, request)
    sample = hb.Sampler(args.arch, dim, args.size, args.batch, args.steps, device)
    positions = [p for t in request.terms for p in t.positions]
    print(f"model built in {time.perf_counter() - t0:.1f}s ({args.unet} {args.arch} UNet, random weights, "
          f"{sum(p.numel() for p in model.model.diffusion_model.parameters()) / 1e6:.0f}M params); HRV: {hrv_source}; "
          f"target {TARGET!r} at context positions {positions}; latent {args.batch}x4x{args.size}x{args.size} "
          f"({args.size * 8} px), UNet batch {2 * args.batch} (cond + uncond)", flush=True)

    # Cross-attention alone, at the shapes one real sampling step produces, with that run's state.
    t0 = time.perf_counter()
    calls = hb.capture_core_calls(steered, lambda m: sample(m, positive_steered, steps=1))
    chunked = [len(e["uuids"]) for *_, e in calls]
    print(f"captured {len(calls)} cross-attention calls of one step in {time.perf_counter() - t0:.1f}s "
          f"(conditioning chunks per call: {sorted(set(chunked))})", flush=True)
    if not any(u in e["hrv_core"].entries for *_, e in calls for u in e["uuids"]):
        raise SystemExit("no attn2 call carried the steered conditioning: the core did not see the request")
    plain_fn = hb.plain_attention(attention)
    scales = column_scales(calls, request, dtype, device)
    shapes = sorted({(q.shape[0], q.shape[1], e["n_heads"], e["dim_head"]) for _, _, q, _, _, e in calls}, reverse=True)
    print("cross-attention shapes (batch, queries, heads, dim_head), "
          f"{calls[0][3].shape[1]} tokens:", shapes, flush=True)

    def plain(i):
        _, _, q, k, v, e = calls[i]
        return plain_fn(q, k, v, e)

    def patched(i):
        _, core_fn, q, k, v, e = calls[i]
        return core_fn(q, k, v, e)

    def explicit_map(i):
        _, _, q, k, v, e = calls[i]
        return explicit_map_attention(q, k, v, e["n_heads"], scales[i])

    with torch.inference_mode():
        diff = max(float((patched(i) - plain(i)).abs().max()) for i in range(len(calls)))
    if not diff > 0:
        raise SystemExit("the steered attention equals the plain one: steering did nothing")
    per_call = hb.time_interleaved({"plain": plain, "patched": patched, "explicit_map": explicit_map},
                                   len(calls), args.attn_reps, device)
    attn = {name: sum(statistics.median(t) for t in times) for name, times in per_call.items()}
    attn_min = {name: sum(min(t) for t in times) for name, times in per_call.items()}
    n = len(calls)
    print(f"attention, {n} calls of one step, sum of per-call medians, ms: " +
          ", ".join(f"{name} {t * 1e3:.2f}" for name, t in attn.items()) +
          f"; steering costs {(attn['patched'] - attn['plain']) / n * 1e6:.1f} us a call", flush=True)
    print("  (sum of per-call minima, ms: " + ", ".join(f"{k} {t * 1e3:.2f}" for k, t in attn_min.items()) +
          f"; patched/plain: minima {attn_min['patched'] / attn_min['plain']:.4f}, "
          f"back-to-back {hb.paired_ratio(per_call, 'patched', 'plain'):.4f})", flush=True)
    calls = scales = per_call = None      # free the captured tensors before the sampler runs

    # Whole sampler runs, ABBA-interleaved after warm-up; a step is a run's time / --steps.
    kinds = {"plain": lambda: sample(model, positive), "steered": lambda: sample(steered, positive_steered)}
    for _ in range(args.warmup):
        for name, run in kinds.items():
            print(f"  warm-up run {name}: {hb.timed(run, device):.2f}s ({args.steps} steps)", flush=True)
    runs = hb.interleaved_runs(kinds, args.pairs, device, lambda name, t: f"{name} {t / args.steps:.3f}s/step")
    step = {name: statistics.median(t) / args.steps for name, t in runs.items()}
    pair_ratio = statistics.median(s / p for s, p in zip(runs["steered"], runs["plain"]))
    print(f"sampling step (KSampler {args.steps}-step runs), median s: plain {step['plain']:.4f}, steered "
          f"{step['steered']:.4f} (steered/plain: back-to-back {pair_ratio:.4f}, minima "
          f"{min(runs['steered']) / min(runs['plain']):.4f}); load average now {os.getloadavg()[0]:.2f}")
    per_step = {name: hb.launch_counts(run, device, per=args.steps) for name, run in kinds.items()}
    print("per step, from one profiled run: " + "; ".join(f"{name}: {hb.describe_counts(c)}" for name, c in
                                                         per_step.items()), flush=True)
    print(f"explicit_map_attn_ratio={attn['explicit_map'] / attn['plain']:.4f} (materialised attention map, for the record)")
    print(f"attn_overhead_ratio={attn['patched'] / attn['plain']:.4f}")
    print(f"overhead_ratio={step['steered'] / step['plain']:.4f}")


if __name__ == "__main__":
    sys.exit(main())
