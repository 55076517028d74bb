"""Benchmark: the cost of counting head votes during an HRV build.

Full-size SD1.5 UNet with random weights, 64x64 latent, batch 2 (CFG: uncond + cond). Times a
plain UNet step against a step with the vote patches on every attn2 (340 concept keys per head,
conditional half only), interleaved in one run. Prints the projected time of the paper's build
(2,100 prompts x 50 steps) and, last, `build_overhead_ratio=<vote step / plain step>`, taken from
the fastest step of each kind: on a shared machine other processes only ever add time, so the
minimum is the least disturbed measurement (medians and the scoring cost alone are printed too).

    python bench/build.py [--pairs N] [--device cpu|cuda] [--dtype float32|float16]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

PACK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, PACK_DIR)
sys.path.insert(0, os.path.join(PACK_DIR, "tests"))  # harness/

PAPER_PROMPTS, PAPER_STEPS = 2100, 50


def main() -> int:
    import torch
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pairs", type=int, default=0, help="timed (plain, vote) pairs; 0 = fit ~2.5 minutes of timing")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, help="float32 (CPU default) or float16 (GPU default)")
    p.add_argument("--latent", type=int, default=64)
    args = p.parse_args()

    from hrv.comfy_host import use_comfyui
    use_comfyui(cpu=args.device == "cpu")
    from comfy.ldm.modules.attention import optimized_attention
    from hrv.format.concepts import load_concept_set
    from hrv.format.layout import cross_attention_modules, layout_of_unet
    from scripts.demo.unets import build_unet
    from hrv.build.votes import ConceptWords, VoteRecorder, fused_attention, head_vote_concepts, make_vote_patch

    dtype = getattr(torch, args.dtype or ("float16" if args.device != "cpu" else "float32"))
    device = torch.device(args.device)
    t0 = time.perf_counter()
    unet = build_unet("sd1", "full").to(device=device, dtype=dtype)
    print(f"built full SD1.5 UNet ({sum(p.numel() for p in unet.parameters()) / 1e6:.0f}M params) "
          f"in {time.perf_counter() - t0:.1f}s; device {device}, {dtype}, torch threads {torch.get_num_threads()}")

    concepts = load_concept_set()
    words_count = sum(len(w) for w in concepts.values())
    g = torch.Generator().manual_seed(0)
    words = ConceptWords.from_embeddings(concepts, torch.randn(words_count, 768, generator=g))
    layout = layout_of_unet(unet)
    modules = cross_attention_modules(unet)
    recorder = VoteRecorder(layout, words, steps=PAPER_STEPS, attn_modules=modules)
    inner = fused_attention(optimized_attention)
    patches = {b.key: make_vote_patch(recorder, b.key, inner) for b in layout.blocks}

    size = args.latent
    x = torch.randn(2, 4, size, size, generator=g).to(device, dtype)
    context = torch.randn(2, 77, 768, generator=g).to(device, dtype)
    schedule = torch.linspace(14.6, 0.0, PAPER_STEPS + 1, device=device)
    sigmas = schedule[10].expand(2).clone()
    timesteps = torch.full((2,), 700.0, device=device, dtype=dtype)
    vote_options = {"patches_replace": {"attn2": patches}, "cond_or_uncond": [1, 0], "sigmas": sigmas,
                    "sample_sigmas": schedule}

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def step(vote: bool) -> float:
        options = dict(vote_options) if vote else {}
        sync()
        start = time.perf_counter()
        unet(x, timesteps, context, transformer_options=options)
        sync()
        return time.perf_counter() - start

    with torch.inference_mode():
        recorder.start_prompt()
        warm_plain, warm_vote = step(False), step(True)        # the vote warm-up also computes the concept keys
        print(f"warm-up: plain {warm_plain:.3f}s, vote {warm_vote:.3f}s")
        pairs = args.pairs or max(3, min(12, int(150 / (warm_plain + warm_vote))))
        plain, vote = [], []
        for i in range(pairs):
            # ABBA order so slow drift (thermal, other load) hits both sides equally
            if i % 2 == 0:
                plain.append(step(False))
                vote.append(step(True))
            else:
                vote.append(step(True))
                plain.append(step(False))
            print(f"pair {i + 1}/{pairs}: plain {plain[-1]:.3f}s  vote {vote[-1]:.3f}s")
        counts = recorder.take_prompt_counts()
        expected_votes = (pairs + 1) * layout.num_heads        # cond half only: one vote per head per step
        assert int(counts.sum()) == expected_votes, (int(counts.sum()), expected_votes)

        # The scoring alone, on queries of the real shapes (cond half of the batch).
        scoring = []
        for _ in range(3):
            sync()
            start = time.perf_counter()
            for b in layout.blocks:
                attn2 = modules[b.key]
                side = size // {320: 1, 640: 2, 1280: 4}[attn2.to_q.weight.shape[0]]
                side = side // 2 if b.block == "middle" else side
                q = torch.randn(1, side * side, attn2.to_q.weight.shape[0], device=device, dtype=dtype)
                head_vote_concepts(q, recorder.concept_keys(b.key, q), b.num_heads,
                                   words.word_concept.to(device))
            sync()
            scoring.append(time.perf_counter() - start)

    plain_med, vote_med = statistics.median(plain), statistics.median(vote)
    ratio = min(vote) / min(plain)
    projected_h = PAPER_PROMPTS * PAPER_STEPS * min(vote) / 3600
    print(f"plain step: min {min(plain):.3f}s, median {plain_med:.3f}s")
    print(f"vote step:  min {min(vote):.3f}s, median {vote_med:.3f}s")
    print(f"ratios: of minima {ratio:.4f}, of medians {vote_med / plain_med:.4f}, of sums {sum(vote) / sum(plain):.4f}")
    print(f"vote scoring alone (16 blocks, 340 keys/head, cond half, incl. random q): {min(scoring) * 1000:.1f} ms/step "
          f"= {min(scoring) / min(plain):.4f} of a plain step")
    print(f"votes counted: {int(counts.sum())} (= {pairs + 1} vote steps x {layout.num_heads} heads, cond only)")
    print(f"projected paper build ({PAPER_PROMPTS} prompts x {PAPER_STEPS} steps, batch 2 CFG) on this device: "
          f"{projected_h:.1f} h ({projected_h / 24:.1f} days)")
    print(f"build_overhead_ratio={ratio:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
