"""Overhead of HRV concept steering on a full-size SD1.5 UNet (random weights). A script, not a test.

    .venv/bin/python bench/steering.py [--use-pytorch-cross-attention] [--pairs N] [--attn-reps N]

One 64x64 latent, batch 2 (cond + uncond), one target word (3 tokens), HRVConceptAdjust with the paper's
settings, steering active at the measured sigma. Plain and patched runs are interleaved (ABBA) in one
process and repeated; medians are printed, and last:
  attn_overhead_ratio=  the 16 cross-attention calls of one step at their real shapes, patched / plain
  overhead_ratio=       one whole UNet step, patched / plain
Both are ratios of medians. Diagnostics before them: the ratio of minima (noise from other processes
only adds time) and the median of back-to-back ratios (per call, per ABBA pair). On a shared, busy
machine all of these carry noise of several percent; the load average is printed.
The attention kernel is the one ComfyUI picks on this machine (CPU: sub-quadratic unless
--use-pytorch-cross-attention selects SDPA; NVIDIA GPU: SDPA). For the record it also times the
explicit-attention-map way (materialise softmax(QK^T/sqrt(d)), rescale the token columns, multiply by V).
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

import torch

PACK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, PACK_DIR)
sys.path.insert(0, os.path.join(PACK_DIR, "tests"))  # harness/

PROMPT = "a photo of a rose-colored car parked by the sea"
TARGET = "rose-colored"


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--use-pytorch-cross-attention", action="store_true",
                   help="ComfyUI's flag: use PyTorch SDPA instead of the CPU default (sub-quadratic)")
    p.add_argument("--pairs", type=int, default=6, help="timed plain/patched UNet step pairs (default 6)")
    p.add_argument("--warmup", type=int, default=1, help="untimed UNet steps of each kind first (default 1)")
    p.add_argument("--attn-reps", type=int, default=50, help="repetitions of the 16 attention calls (default 50)")
    p.add_argument("--size", choices=("full", "tiny"), default="full", help="tiny: a quick smoke run")
    p.add_argument("--reference-dir", default=os.path.join(PACK_DIR, "..", "shared", "hrv_reference"),
                   help="published HRVs; a random HRV is used when absent (values do not affect speed)")
    return p.parse_args()


def setup_comfy(args):
    from hrv.comfy_host import use_comfyui
    on_gpu = torch.cuda.is_available()
    use_comfyui(cpu=not on_gpu)
    import comfy.cli_args
    comfy.cli_args.args.use_pytorch_cross_attention = args.use_pytorch_cross_attention
    import comfy.ldm.modules.attention as attention  # picks optimized_attention from the args above
    return attention, torch.device("cuda" if on_gpu else "cpu")


def load_hrv(pack, reference_dir, tmp_dir):
    if os.path.isdir(reference_dir):
        from hrv.format.official import import_official
        path = [p for p in import_official(reference_dir, tmp_dir) if p.endswith("sd1_official.safetensors")][0]
        return pack.hrv.hrv_file.load(path), "official sd1"
    g = torch.Generator().manual_seed(0)
    matrix = pack.hrv.hrv_file.normalise_rows(torch.rand(34, 128, generator=g))
    concepts = pack.hrv.concepts.default_concept_names()
    return pack.hrv.hrv_file.HRV(matrix=matrix, layout=pack.hrv.layout.known_layout("sd1"), concepts=concepts), "random"


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device):
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def capture_cross_attention(model, attention, run_step):
    """The projected q, k, v and extra_options of every attn2 call of one real UNet step."""
    calls = []
    m = model.clone()
    from hrv.format.layout import known_layout
    for b in known_layout("sd1").blocks:
        def record(q, k, v, extra_options):
            calls.append((q, k, v, dict(extra_options)))
            return attention.optimized_attention(q, k, v, extra_options["n_heads"],
                                                 attn_precision=extra_options.get("attn_precision"),
                                                 transformer_options=extra_options)
        m.set_model_attn2_replace(record, *b.key)
    run_step(m)
    return calls


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


def main():
    args = parse_args()
    attention, device = setup_comfy(args)
    from hrv.comfy_host import import_pack
    from harness.comfy_models import model_patcher, tokenizer_clip
    import tempfile
    pack = import_pack()
    nodes = pack.nodes.steering_nodes
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    kernel = attention.optimized_attention.__name__
    print(f"attention kernel: {kernel} (what ComfyUI picks here: device={device.type}, "
          f"--use-pytorch-cross-attention={args.use_pytorch_cross_attention}); torch {torch.__version__}, "
          f"threads={torch.get_num_threads()}, dtype={str(dtype).replace('torch.', '')}, "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores", flush=True)

    t0 = time.perf_counter()
    model = model_patcher("sd1", args.size)
    model.model.to(device=device, dtype=dtype)
    with tempfile.TemporaryDirectory() as tmp:
        hrv, hrv_source = load_hrv(pack, args.reference_dir, tmp)
    clip = tokenizer_clip("sd1")
    steered = nodes.HRVConceptAdjust().apply(model, clip, hrv, PROMPT, TARGET, "Color", "Plants",
                                             1.0, 1.0, 1.0, 0.0, 0.0, 1.0)[0]
    print(f"model built in {time.perf_counter() - t0:.1f}s ({args.size} SD1.5 UNet, random weights); "
          f"HRV: {hrv_source}; target {TARGET!r}", flush=True)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 64, 64, generator=g).to(device, dtype)
    context = torch.randn(2, 77, 768, generator=g).to(device, dtype)
    sigma = torch.tensor([5.0], device=device)

    def run_step(m):
        options = {**m.model_options["transformer_options"], "cond_or_uncond": [0, 1], "sigmas": sigma}
        with torch.inference_mode():
            return m.model.apply_model(x, sigma.repeat(2), c_crossattn=context, transformer_options=options)

    # Cross-attention alone, at the shapes one real step produces.
    calls = capture_cross_attention(model, attention, run_step)
    assert len(calls) == 16, f"expected 16 cross-attention calls, got {len(calls)}"
    patched_fns = [steered.model_options["transformer_options"]["patches_replace"]["attn2"][b.key]
                   for b in pack.hrv.layout.known_layout("sd1").blocks]
    positions = pack.hrv.tokens.find_target_positions(clip, PROMPT, TARGET).positions
    s = pack.hrv.steering.adjust(hrv.row("Color"), hrv.row("Plants"))
    blocks = pack.hrv.attention_patch.factors_by_block(hrv.layout, s)
    scales = []
    for (q, k, v, extra), b in zip(calls, pack.hrv.layout.known_layout("sd1").blocks):
        scale = torch.ones(2, b.num_heads, 1, k.shape[1], dtype=dtype)
        scale[0, :, 0, list(positions)] = blocks[b.key].to(dtype)[:, None]   # cond chunk only
        scales.append(scale.reshape(2 * b.num_heads, 1, -1).to(device))
    shapes = sorted({(q.shape[1], e["n_heads"], e["dim_head"]) for q, _, _, e in calls}, reverse=True)
    print("cross-attention shapes (queries, heads, dim_head) x batch 2, 77 tokens:", shapes, flush=True)

    def plain(i):
        q, k, v, e = calls[i]
        return attention.optimized_attention(q, k, v, e["n_heads"], attn_precision=e.get("attn_precision"),
                                             transformer_options=e)

    def patched(i):
        q, k, v, e = calls[i]
        return patched_fns[i](q, k, v, e)

    def explicit_map(i):
        q, k, v, e = calls[i]
        return explicit_map_attention(q, k, v, e["n_heads"], scales[i])

    variants = {"plain": plain, "patched": patched, "explicit_map": explicit_map}
    # Per call, the variants run back to back in rotating order, so load bursts from other processes hit
    # them alike; a step's attention time is the sum over its 16 calls of each call's median.
    per_call = {name: [[] for _ in calls] for name in variants}
    names = list(variants)
    with torch.inference_mode():
        for rep in range(args.attn_reps + 1):
            for i in range(len(calls)):
                for name in names[(rep + i) % 3:] + names[:(rep + i) % 3]:
                    t = timed(lambda: variants[name](i), device)
                    if rep:  # the first round warms up
                        per_call[name][i].append(t)
    attn = {name: sum(statistics.median(t) for t in times) for name, times in per_call.items()}
    attn_min = {name: sum(min(t) for t in times) for name, times in per_call.items()}

    def paired_ratio(name):
        # Per call: median of (variant / plain) over back-to-back runs; weighted by that call's plain time.
        ratios = [statistics.median(a / b for a, b in zip(per_call[name][i], per_call["plain"][i]))
                  for i in range(len(calls))]
        weights = [statistics.median(t) for t in per_call["plain"]]
        return sum(r * w for r, w in zip(ratios, weights)) / sum(weights)

    print("attention, 16 calls of one step, sum of per-call medians, ms: " +
          ", ".join(f"{name} {t * 1e3:.2f}" for name, t in attn.items()), flush=True)
    print("  (sum of per-call minima, ms: " + ", ".join(f"{n} {t * 1e3:.2f}" for n, t in attn_min.items()) +
          f"; patched/plain: minima {attn_min['patched'] / attn_min['plain']:.4f}, "
          f"back-to-back {paired_ratio('patched'):.4f})", flush=True)

    # Whole UNet steps, ABBA-interleaved after warm-up.
    for i in range(args.warmup):
        for m in (model, steered):
            t = timed(lambda: run_step(m), device)
            print(f"  warm-up step {'plain' if m is model else 'patched'}: {t:.2f}s", flush=True)
    step_times = {"plain": [], "patched": []}
    for i in range(args.pairs):
        order = (("plain", model), ("patched", steered)) if i % 2 == 0 else (("patched", steered), ("plain", model))
        for name, m in order:
            step_times[name].append(timed(lambda: run_step(m), device))
        print(f"  pair {i + 1}/{args.pairs}: plain {step_times['plain'][-1]:.2f}s, "
              f"patched {step_times['patched'][-1]:.2f}s", flush=True)
    step = {name: statistics.median(t) for name, t in step_times.items()}
    pair_ratio = statistics.median(p / q for p, q in zip(step_times["patched"], step_times["plain"]))
    print(f"UNet step, median s: plain {step['plain']:.3f}, patched {step['patched']:.3f} "
          f"(patched/plain: back-to-back {pair_ratio:.4f}, minima "
          f"{min(step_times['patched']) / min(step_times['plain']):.4f}); load average now {os.getloadavg()[0]:.2f}")
    print(f"explicit_map_attn_ratio={attn['explicit_map'] / attn['plain']:.4f} (materialised attention map, for the record)")
    print(f"attn_overhead_ratio={attn['patched'] / attn['plain']:.4f}")
    print(f"overhead_ratio={step['patched'] / step['plain']:.4f}")


if __name__ == "__main__":
    main()
