"""HRV Prompt Edit on a full-size SD1.5 UNet (random weights): checks and overhead. A script, not a test.

    python bench/edit.py [--size tiny] [--steps 20] [--repeats 3]

Samples a 512x512 latent pair (64x64 latents, batch 2; CFG adds the negative: 4 UNet rows per step) with
ComfyUI's sampler in the model's dtype (float16 on a GPU), and prints:
- identical prompts: whether source and target rows come out bit for bit equal (euler_ancestral: per-step noise);
- hrv_strength 0 against concept none: equal bit for bit;
- seconds per sampling run (median of --repeats, interleaved) for plain sampling of the same pair without the
  edit, replace (P2P-HRV), refine (an added word: a second fused call for its column), and replace with local
  blend; and their ratio to plain.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

PACK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, PACK_DIR)
sys.path.insert(0, os.path.join(PACK_DIR, "tests"))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=("full", "tiny"), default="full")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--hrv", default=None, help="an sd1 HRV .safetensors (default: random rows)")
    args = p.parse_args()
    from hrv.comfy_host import import_pack, use_comfyui
    on_gpu = torch.cuda.is_available()
    use_comfyui(cpu=not on_gpu)
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.sample
    import comfy.supported_models
    from harness.tiny_pipeline import tiny_sd1_clip
    from scripts.demo.unets import init_random_, unet_config
    pack = import_pack()
    dtype = torch.float16 if on_gpu else torch.float32
    config = comfy.supported_models.SD15(unet_config("sd1", args.size))
    config.set_inference_dtype(dtype, None)
    base = config.get_model({})
    init_random_(base.diffusion_model, 0)
    base.eval()
    model = comfy.model_patcher.ModelPatcher(base, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())
    clip = tiny_sd1_clip(1)
    if args.hrv:
        hrv = pack.hrv.format.hrv_file.load(args.hrv)
    else:
        g = torch.Generator().manual_seed(0)
        hrv = pack.hrv.format.hrv_file.HRV(matrix=pack.hrv.format.hrv_file.normalise_rows(torch.rand(34, 128, generator=g)),
                                           layout=pack.hrv.format.layout.known_layout("sd1"),
                                           concepts=pack.hrv.format.concepts.default_concept_names())
    node = pack.nodes.edit_nodes.HRVPromptEdit()
    size = 512 if args.size == "full" else 64

    def encode(text):
        return clip.encode_from_tokens_scheduled(clip.tokenize(text))

    negative = encode("")

    def sample(model_, positive, latent, sampler="euler_ancestral", seed=3):
        noise = comfy.sample.prepare_noise(latent["samples"], seed, latent.get("batch_index"))
        out = comfy.sample.sample(model_, noise, args.steps, 7.5, sampler, "normal", positive, negative,
                                  latent["samples"], disable_pbar=True, seed=seed)
        if on_gpu:
            torch.cuda.synchronize()
        return out

    def edit(source, target, concept="Color", strength=1.0, mode="replace", **kw):
        return node.edit(model, clip, hrv, source, target, concept, strength, 0.8, -1.0, mode, size, size, 1, **kw)

    print(f"device {mm.get_torch_device()} ({torch.cuda.get_device_name() if on_gpu else 'cpu'}), UNet {args.size} "
          f"{dtype}, {args.steps} steps", flush=True)
    m, pos, lat = edit("a photo of a blue car", "a photo of a blue car")
    out = sample(m, pos, lat)
    print("identical prompts, euler_ancestral: rows equal bit for bit:", torch.equal(out[0], out[1]),
          "max diff", float((out[0] - out[1]).abs().max()), flush=True)
    m, pos, lat = edit("a photo of a blue car", "a photo of a blue car", mode="refine")
    out = sample(m, pos, lat, "dpmpp_2m")
    print("identical prompts, refine, dpmpp_2m: rows equal bit for bit:", torch.equal(out[0], out[1]), flush=True)
    m0, p0, l0 = node.edit(model, clip, hrv, "a photo of a blue car", "a photo of a red car", "Color", 0.0, 0.8, 0.9,
                           "replace", size, size, 1)
    mn, pn, ln = node.edit(model, clip, hrv, "a photo of a blue car", "a photo of a red car", "none", 1.0, 0.8, 0.9,
                           "replace", size, size, 1)
    print("hrv_strength 0 equals concept none bit for bit:", torch.equal(sample(m0, p0, l0), sample(mn, pn, ln)), flush=True)

    plain_pos = [[torch.cat([encode("a photo of a blue car")[0][0], encode("a photo of a red car")[0][0]]),
                  {"pooled_output": None}]]
    plain_latent = {"samples": torch.zeros(2, 4, size // 8, size // 8), "batch_index": [0, 0]}
    runs = {
        "plain": (model, plain_pos, plain_latent),
        "replace": edit("a photo of a blue car", "a photo of a red car"),
        "refine": edit("a photo of a car", "a photo of a red car", mode="refine"),
        "replace+blend": edit("a photo of a blue car", "a photo of a red car", local_blend_words="car"),
    }
    for name, (m_, pos_, lat_) in runs.items():          # warm-up
        sample(m_, pos_, lat_)
    times = {name: [] for name in runs}
    for r in range(args.repeats):
        for name, (m_, pos_, lat_) in (runs.items() if r % 2 == 0 else reversed(list(runs.items()))):
            t = time.perf_counter()
            sample(m_, pos_, lat_)
            times[name].append(time.perf_counter() - t)
    base_t = statistics.median(times["plain"])
    for name, ts in times.items():
        print(f"{name:14s} {statistics.median(ts):.3f} s/run  ratio {statistics.median(ts) / base_t:.3f}  "
              f"(all: {', '.join(f'{t:.3f}' for t in ts)})", flush=True)


if __name__ == "__main__":
    main()
