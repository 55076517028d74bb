"""Benchmark: the cost of counting head votes during an HRV build.

Full-size SD1.5 UNet with random weights, 64x64 latent, sampled through ComfyUI's KSampler (euler, CFG 7: uncond
and cond in one batch of 2). The vote side is the build's own path: install_vote_patches (the attention core with
the vote processor, the paper's estimator: one drawn word per concept, every token its own key) and a positive
conditioning carrying the vote request, so only its chunk votes; the plain side is the same model without the core.
Runs are interleaved (ABBA) in one process, for each prompt batch size of --batch (B prompts = a latent batch of B,
UNet batch 2B). Prints the cost of the vote processor per attention call, the projected time of the paper's build
(2,100 prompts x 50 steps) at each batch size and, last, `build_overhead_ratio=<vote step / plain step>` at the
batch size that builds fastest, taken from the fastest run of each kind: on a shared machine other processes only
ever add time, so the minimum is the least disturbed measurement (medians are printed too).

    python bench/build.py [--pairs N] [--steps N] [--batch 1,8,16] [--device cpu|cuda] [--dtype float32|float16]
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
    p.add_argument("--batch", default="1", help="comma-separated prompt batch sizes to time (GPU: e.g. 1,8,16)")
    hb.add_common_args(p, reference=False)
    args = p.parse_args(argv)
    args.size = args.size or hb.DEFAULT_LATENT[args.arch]
    try:
        args.batch = sorted({int(b) for b in str(args.batch).split(",") if b.strip()})
    except ValueError:
        p.error("--batch takes whole numbers separated by commas, e.g. 1,8,16")
    if not args.batch or min(args.batch) < 1:
        p.error("--batch sizes must be at least 1")
    if args.size % 8:
        p.error("--size must be a multiple of 8 (the UNet downsamples three times)")
    return args


def concept_bank(dim: int):
    """The default concept set (34 concepts, 340 words) with random token embeddings of the model's text width;
    about one word in six has 2 or 3 tokens, as CLIP splits the real words."""
    from hrv.build.estimator import ConceptTokenBank
    from hrv.format.concepts import load_concept_set
    concepts = load_concept_set()
    g = torch.Generator().manual_seed(1)
    count = sum(len(w) for w in concepts.values())
    tokens = [torch.randn(1 + (i % 7 == 0) + (i % 13 == 0), dim, generator=g) for i in range(count)]
    return ConceptTokenBank.from_word_tokens(concepts, tokens)


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
    words = concept_bank(dim)
    voting, recorder = install_vote_patches(model, words, args.steps, attention.optimized_attention)
    layout = recorder.layout
    positive = hb.conditioning(args.arch, dim, args.size, seed=0)
    positive_vote = attach_request(positive, VOTE_FEATURE, True)
    print(f"built {args.unet} {args.arch} UNet ({sum(p.numel() for p in model.model.diffusion_model.parameters()) / 1e6:.0f}M "
          f"params) in {time.perf_counter() - t0:.1f}s; {len(words.words)} concept words ({words.num_tokens} tokens), "
          f"{layout.num_heads} heads; latent Bx4x{args.size}x{args.size}, UNet batch 2B (uncond + voting cond), "
          f"{args.steps}-step KSampler runs, estimator {recorder.estimator}", flush=True)
    results = {}
    for batch in args.batch:
        results[batch] = measure(args, device, attention, model, voting, recorder, positive, positive_vote, dim, batch,
                                 with_attention=batch == args.batch[0])
    per_prompt = {b: r["vote_step"] / b for b, r in results.items()}
    best = min(per_prompt, key=per_prompt.get)
    for b, r in results.items():
        hours = PAPER_PROMPTS * PAPER_STEPS * per_prompt[b] / 3600
        print(f"batch {b}: plain step {r['plain_step']:.4f}s, vote step {r['vote_step']:.4f}s, overhead "
              f"{r['ratio']:.4f}; projected paper build ({PAPER_PROMPTS} prompts x {PAPER_STEPS} steps) on this device: "
              f"{hours * 60:.1f} min")
    print(f"best batch {best}: projected_paper_build_minutes={PAPER_PROMPTS * PAPER_STEPS * per_prompt[best] / 60:.1f}")
    print(f"build_overhead_ratio={results[best]['ratio']:.4f}")
    return 0


def measure(args, device, attention, model, voting, recorder, positive, positive_vote, dim, batch, with_attention):
    layout = recorder.layout
    sample = hb.Sampler(args.arch, dim, args.size, batch, args.steps, device)

    votes = torch.zeros(recorder.shape, dtype=torch.int64)
    vote_runs = 0

    def vote_run():
        # What run_build does per prompt: start, sample (end_step after every step), take the prompt's counts.
        nonlocal votes, vote_runs
        recorder.start_prompt(range(batch))
        sample(voting, positive_vote, callback=lambda step, x0, x, total: recorder.end_step(step))
        votes += recorder.take_prompt_counts()
        vote_runs += 1

    def plain_run():
        sample(model, positive)

    warm_plain, warm_vote = hb.timed(plain_run, device), hb.timed(vote_run, device)  # vote warm-up makes the concept keys
    print(f"batch {batch} warm-up: plain {warm_plain / args.steps:.3f}s/step, vote {warm_vote / args.steps:.3f}s/step",
          flush=True)
    pairs = args.pairs or max(3, min(12, int(150 / (warm_plain + warm_vote))))
    runs = hb.interleaved_runs({"plain": plain_run, "vote": vote_run}, pairs, device,
                               lambda name, t: f"{name} {t / args.steps:.3f}s/step")
    counts = {name: hb.launch_counts(run, device, per=args.steps) for name, run in (("plain", plain_run), ("vote", vote_run))}
    print(f"batch {batch} per step, from one profiled run: " +
          "; ".join(f"{name}: {hb.describe_counts(c)}" for name, c in counts.items()), flush=True)
    expected = vote_runs * args.steps * layout.num_heads * batch   # cond chunk only: one vote per head, step and prompt
    assert int(votes.sum()) == expected, (int(votes.sum()), expected)
    plain_step, vote_step = min(runs["plain"]) / args.steps, min(runs["vote"]) / args.steps
    print(f"batch {batch} plain step: min {plain_step:.4f}s, median {statistics.median(runs['plain']) / args.steps:.4f}s")
    print(f"batch {batch} vote step:  min {vote_step:.4f}s, median {statistics.median(runs['vote']) / args.steps:.4f}s")
    print(f"batch {batch} ratios: of minima {vote_step / plain_step:.4f}, of medians "
          f"{statistics.median(runs['vote']) / statistics.median(runs['plain']):.4f}", flush=True)
    result = {"plain_step": plain_step, "vote_step": vote_step, "ratio": vote_step / plain_step}
    if not with_attention:
        return result

    # The vote processor alone: every attn2 call of one step through the core (scoring included) vs the fused kernel.
    recorder.start_prompt(range(batch))
    calls = hb.capture_core_calls(voting, lambda m: sample(m, positive_vote, steps=1))
    recorder.start_prompt(range(batch))
    plain_fn = hb.plain_attention(attention)
    per_call = hb.time_interleaved({"plain": lambda i: plain_fn(*calls[i][2:]),
                                    "vote": lambda i: calls[i][1](*calls[i][2:])}, len(calls), args.attn_reps, device)
    recorder.take_prompt_counts()
    attn = {name: sum(min(t) for t in times) for name, times in per_call.items()}

    print(f"attention, {len(calls)} calls of one step, sum of per-call minima: plain {attn['plain'] * 1e3:.2f} ms, with "
          f"votes {attn['vote'] * 1e3:.2f} ms: the vote processor costs {(attn['vote'] - attn['plain']) * 1e3:.2f} ms a "
          f"step = {(attn['vote'] - attn['plain']) / plain_step:.4f} of a plain step", flush=True)
    return result


if __name__ == "__main__":
    sys.exit(main())
