"""Benchmark: the cost of counting head votes during an HRV build.

Full-size SD1.5 UNet with random weights, 64x64 latent, sampled through ComfyUI's KSampler (euler, CFG 7: uncond
and cond in one batch of 2). The vote side is the build's own path: install_vote_patches (the attention core with
the vote processor, 340 concept keys per head) and a positive conditioning carrying the vote request, so only its
chunk votes; the plain side is the same model without the core. Runs are interleaved (ABBA) in one process. Prints
the cost of the vote processor per attention call, the projected time of the paper's build (2,100 prompts x 50
steps) and, last, `build_overhead_ratio=<vote step / plain step>`, taken from the fastest run of each kind: on a
shared machine other processes only ever add time, so the minimum is the least disturbed measurement (medians
are printed too).

    python bench/build.py [--pairs N] [--steps N] [--device cpu|cuda] [--dtype float32|float16]
    On a machine without ComfyUI: COMFYUI_DIR=$PWD/.gpu/comfyui python3 bench/build.py --device cuda --dtype fp16
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

import hrvbench as hb

PAPER_PROMPTS, PAPER_STEPS = 2100, 50


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", choices=("sd1", "sdxl"), default="sd1", help="SD1.5 (default) or SDXL UNet")
    p.add_argument("--pairs", type=int, default=0, help="timed (plain, vote) run pairs; 0 = fit ~2.5 minutes of timing")
    p.add_argument("--size", "--latent", dest="size", type=int, default=None,
                   help="latent side (default 64 for sd1, 128 for sdxl); a multiple of 8")
    p.add_argument("--attn-reps", type=int, default=20, help="repetitions of one step's attention calls (default 20)")
    hb.add_common_args(p, reference=False)
    args = p.parse_args(argv)
    args.size = args.size or hb.DEFAULT_LATENT[args.arch]
    if args.size % 8:
        p.error("--size must be a multiple of 8 (the UNet downsamples three times)")
    return args


def concept_words(dim: int):
    """The default concept set (34 concepts, 340 words) with random word embeddings of the model's text width."""
    from hrv.build.votes import ConceptWords
    from hrv.format.concepts import load_concept_set
    concepts = load_concept_set()
    count = sum(len(w) for w in concepts.values())
    return ConceptWords.from_embeddings(concepts, torch.randn(count, dim, generator=torch.Generator().manual_seed(1)))


def main(argv=None) -> int:
    args = parse_args(argv)
    attention, device = hb.setup_comfy(args)
    dtype = hb.resolve_dtype(args)
    from hrv.attention import attach_request
    from hrv.build.votes import VOTE_FEATURE, install_vote_patches
    print(hb.describe_machine(attention, device, dtype, args), flush=True)

    t0 = time.perf_counter()
    model = hb.build_model(args.arch, args.unet, device, dtype)
    dim = hb.context_dim(model)
    words = concept_words(dim)
    voting, recorder = install_vote_patches(model, words, args.steps, attention.optimized_attention)
    layout = recorder.layout
    positive = hb.conditioning(args.arch, dim, args.size, seed=0)
    positive_vote = attach_request(positive, VOTE_FEATURE, True)
    sample = hb.Sampler(args.arch, dim, args.size, 1, args.steps, device)
    print(f"built {args.unet} {args.arch} UNet ({sum(p.numel() for p in model.model.diffusion_model.parameters()) / 1e6:.0f}M "
          f"params) in {time.perf_counter() - t0:.1f}s; {len(words.words)} concept words, {layout.num_heads} heads; "
          f"latent 1x4x{args.size}x{args.size}, UNet batch 2 (uncond + voting cond), {args.steps}-step KSampler runs",
          flush=True)

    votes = torch.zeros(recorder.shape, dtype=torch.int64)
    vote_runs = 0

    def vote_run():
        # What run_build does per prompt: start, sample (end_step after every step), take the prompt's counts.
        nonlocal votes, vote_runs
        recorder.start_prompt()
        sample(voting, positive_vote, callback=lambda step, x0, x, total: recorder.end_step(step))
        votes += recorder.take_prompt_counts()
        vote_runs += 1

    def plain_run():
        sample(model, positive)

    warm_plain, warm_vote = hb.timed(plain_run, device), hb.timed(vote_run, device)  # vote warm-up makes the concept keys
    print(f"warm-up: plain {warm_plain / args.steps:.3f}s/step, vote {warm_vote / args.steps:.3f}s/step", flush=True)
    pairs = args.pairs or max(3, min(12, int(150 / (warm_plain + warm_vote))))
    runs = hb.interleaved_runs({"plain": plain_run, "vote": vote_run}, pairs, device,
                               lambda name, t: f"{name} {t / args.steps:.3f}s/step")
    expected = vote_runs * args.steps * layout.num_heads        # cond chunk only: one vote per head per step
    assert int(votes.sum()) == expected, (int(votes.sum()), expected)

    # The vote processor alone: every attn2 call of one step through the core (scoring included) vs the fused kernel.
    recorder.start_prompt()
    calls = hb.capture_core_calls(voting, lambda m: sample(m, positive_vote, steps=1))
    recorder.start_prompt()
    plain_fn = hb.plain_attention(attention)
    per_call = hb.time_interleaved({"plain": lambda i: plain_fn(*calls[i][2:]),
                                    "vote": lambda i: calls[i][1](*calls[i][2:])}, len(calls), args.attn_reps, device)
    recorder.take_prompt_counts()
    attn = {name: sum(min(t) for t in times) for name, times in per_call.items()}

    plain_step, vote_step = min(runs["plain"]) / args.steps, min(runs["vote"]) / args.steps
    ratio = vote_step / plain_step
    projected_h = PAPER_PROMPTS * PAPER_STEPS * vote_step / 3600
    print(f"plain step: min {plain_step:.4f}s, median {statistics.median(runs['plain']) / args.steps:.4f}s")
    print(f"vote step:  min {vote_step:.4f}s, median {statistics.median(runs['vote']) / args.steps:.4f}s")
    print(f"ratios: of minima {ratio:.4f}, of medians {statistics.median(runs['vote']) / statistics.median(runs['plain']):.4f}, "
          f"of sums {sum(runs['vote']) / sum(runs['plain']):.4f}")
    print(f"attention, {len(calls)} calls of one step, sum of per-call minima: plain {attn['plain'] * 1e3:.2f} ms, with "
          f"votes {attn['vote'] * 1e3:.2f} ms: the vote processor costs {(attn['vote'] - attn['plain']) * 1e3:.2f} ms a "
          f"step = {(attn['vote'] - attn['plain']) / plain_step:.4f} of a plain step")
    print(f"votes counted: {int(votes.sum())} (= {vote_runs} vote runs x {args.steps} steps x {layout.num_heads} heads, "
          "cond only)")
    print(f"projected paper build ({PAPER_PROMPTS} prompts x {PAPER_STEPS} steps, batch 2 CFG) on this device: "
          f"{projected_h:.1f} h ({projected_h / 24:.1f} days)")
    print(f"build_overhead_ratio={ratio:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
