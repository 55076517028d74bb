"""Overhead of recording HRV heat maps on a full-size SD1.5 UNet (random weights). A script, not a test.

    .venv/bin/python bench/heatmap.py --unet tiny --size 16 --threads 1   # CPU: smaller options
    python bench/heatmap.py --device cuda --dtype fp16                     # GPU (COMFYUI_DIR: where ComfyUI is)

One UNet call as KSampler makes it for a batch of images under CFG: --batch images (default 2) x (cond + uncond) at a
--size x --size latent (default 64: 512 pixels), one mapped word of the cond prompt (3 tokens), every image its
own map. Three variants run interleaved in rotating order, repeated --pairs times after --warmup rounds:
  plain      the model without the recorder
  all        the recorder with every head (128: DAAM's all-heads map)
  top25      the recorder with the top 25% heads of one concept (32 of 128)
Medians are printed, and last:
  heatmap_all_heads_ratio=   all / plain
  heatmap_overhead_ratio=    top25 / plain
Both are ratios of medians of whole UNet calls; on a shared machine they carry noise of a few percent (the load
average is printed). The attention kernel is the one ComfyUI picks here.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid

import torch

PACK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, PACK_DIR)
sys.path.insert(0, os.path.join(PACK_DIR, "tests"))  # harness/
sys.path.insert(0, os.path.join(PACK_DIR, "bench"))  # hrvbench

PROMPT = "a photo of a rose-colored car parked by the sea"
WORD = "rose-colored"
CONCEPT = "Color"


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default=None, help="default: fp16 on cuda, fp32 on cpu")
    p.add_argument("--unet", choices=("full", "tiny"), default="full", help="tiny: a quick smoke run")
    p.add_argument("--size", type=int, default=64, help="latent side (64 = 512 pixels)")
    p.add_argument("--batch", type=int, default=2, help="images per call; each has a cond and an uncond row")
    p.add_argument("--pairs", type=int, default=10, help="timed rounds of the three variants")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's; 1 is steadier on "
                   "a busy machine)")
    p.add_argument("--use-pytorch-cross-attention", action="store_true",
                   help="ComfyUI's flag: PyTorch SDPA instead of the CPU default (sub-quadratic)")
    p.add_argument("--reference-dir", default=os.path.join(PACK_DIR, "..", "shared", "hrv_reference"),
                   help="published HRVs; a random HRV is used when absent (values do not affect speed)")
    return p.parse_args()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def load_hrv(reference_dir):
    import tempfile

    from hrv.format.hrv_file import HRV, load, normalise_rows
    from hrv.format.layout import known_layout
    if os.path.isdir(reference_dir):
        from hrv.format.official import import_official
        with tempfile.TemporaryDirectory() as tmp:
            path = [p for p in import_official(reference_dir, tmp) if p.endswith("sd1_official.safetensors")][0]
            return load(path), "official sd1"
    from hrv.format.concepts import default_concept_names
    matrix = normalise_rows(torch.rand(34, 128, generator=torch.Generator().manual_seed(0)))
    return HRV(matrix=matrix, layout=known_layout("sd1"), concepts=default_concept_names()), "random"


def main():
    args = parse_args()
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[
        args.dtype or ("fp16" if device.type == "cuda" else "fp32")]
    if args.threads:
        torch.set_num_threads(args.threads)
    from hrv.comfy_host import use_comfyui
    use_comfyui(cpu=device.type == "cpu")
    import comfy.cli_args
    comfy.cli_args.args.use_pytorch_cross_attention = args.use_pytorch_cross_attention
    from comfy.ldm.modules import attention
    from harness.comfy_models import model_patcher, tokenizer_clip

    from hrv.attention import COND_KEY, CORE_KEY, install_core
    from hrv.attention.run import RunState
    from hrv.maps import FEATURE, RECORDER
    from hrv.maps.encode import map_request

    print(f"attention kernel: {attention.optimized_attention.__name__}; torch {torch.__version__}, device "
          f"{device.type}{' ' + torch.cuda.get_device_name() if device.type == 'cuda' else ''}, dtype "
          f"{str(dtype).replace('torch.', '')}, threads {torch.get_num_threads()}, load average "
          f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cores", flush=True)
    t0 = time.perf_counter()
    model = model_patcher("sd1", args.unet)
    model.model.to(device=device, dtype=dtype)
    model.model.diffusion_model.dtype = dtype
    hrv, source = load_hrv(args.reference_dir)
    clip = tokenizer_clip("sd1")
    requests = {"all": map_request(clip, hrv, PROMPT, WORD, CONCEPT, "all"),
                "top25": map_request(clip, hrv, PROMPT, WORD, CONCEPT, "top_k", 0.25)}
    print(f"{args.unet} SD1.5 UNet built in {time.perf_counter() - t0:.1f}s; HRV {source}; word {WORD!r} at "
          f"{list(requests['top25'].words[0].positions)}; top25 = {requests['top25'].selection.describe(128)}",
          flush=True)

    g = torch.Generator().manual_seed(0)
    b = args.batch
    x = torch.randn(2 * b, 4, args.size, args.size, generator=g).to(device, dtype)
    context = torch.randn(2 * b, 77, 768, generator=g).to(device, dtype)
    sigma = torch.tensor([5.0], device=device)
    cond, uncond = uuid.uuid4(), uuid.uuid4()
    base = {"cond_or_uncond": [0, 1], "uuids": [cond, uncond], "sigmas": sigma}

    def options_of(name):
        if name == "plain":
            return model, {**model.model_options["transformer_options"], **base}
        m = install_core(model, [RECORDER])
        options = m.model_options["transformer_options"]
        conds = {"positive": [{"uuid": cond, COND_KEY: {FEATURE: requests[name]}, "cross_attn": context[:1]}]}
        run = RunState(options[CORE_KEY].processors, conds, model.get_model_object("model_sampling"),
                       options.get("patches_replace", {}).get("attn2", {}), options[CORE_KEY].keys)
        return m, {**options, **base, CORE_KEY: run}

    variants = {name: options_of(name) for name in ("plain", "all", "top25")}

    def step(name):
        m, options = variants[name]
        sync(device)
        t = time.perf_counter()
        with torch.inference_mode():
            m.model.apply_model(x, sigma.repeat(2 * b), c_crossattn=context, transformer_options=dict(options))
        sync(device)
        return time.perf_counter() - t

    names = list(variants)
    times = {name: [] for name in names}
    for r in range(args.warmup + args.pairs):
        order = names[r % 3:] + names[:r % 3]
        measured = {name: step(name) for name in order}
        if r >= args.warmup:
            for name, t in measured.items():
                times[name].append(t)
            print(f"  round {r - args.warmup + 1}/{args.pairs}: " +
                  ", ".join(f"{n} {measured[n] * 1e3:.1f}ms" for n in names), flush=True)
    with torch.inference_mode():
        outputs = {name: m.model.apply_model(x, sigma.repeat(2 * b), c_crossattn=context,
                                             transformer_options=dict(options)) for name, (m, options) in variants.items()}
    import hrvbench as hb
    counts = {name: hb.launch_counts(lambda name=name: step(name), device) for name in names}
    print("per UNet call, profiled: " + "; ".join(f"{n}: {hb.describe_counts(c)}" for n, c in counts.items()), flush=True)
    identical = all(torch.equal(outputs["plain"], outputs[name]) for name in ("all", "top25"))
    median = {name: statistics.median(t) for name, t in times.items()}
    run = variants["top25"][1][CORE_KEY]
    assert run.cache, "the recorder did not run"
    print(f"UNet call ({b} images x cond+uncond, {args.size}x{args.size} latent), median ms: " +
          ", ".join(f"{n} {median[n] * 1e3:.2f}" for n in names) +
          f"; minima ratios all {min(times['all']) / min(times['plain']):.4f}, top25 "
          f"{min(times['top25']) / min(times['plain']):.4f}; load average now {os.getloadavg()[0]:.2f}")
    print(f"outputs bit-identical to plain: {identical}")
    print(f"heatmap_all_heads_ratio={median['all'] / median['plain']:.4f}")
    print(f"heatmap_overhead_ratio={median['top25'] / median['plain']:.4f}")


if __name__ == "__main__":
    main()
