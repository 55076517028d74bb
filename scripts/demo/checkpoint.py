"""A random-weight SD1.5 checkpoint, so every workflow runs end to end without a real model.

The file has the exact key names and shapes of an original single-file SD1.5 checkpoint
(model.diffusion_model.*, first_stage_model.*, cond_stage_model.transformer.text_model.*),
so ComfyUI detects it as SD15 and loads it through its normal path. Key names come from
ComfyUI itself: its SD15 model config builds the UNet, text encoder and VAE on the meta
device and converts their state dicts with the same helpers `CheckpointSave` uses.

The images it makes are noise: weights are random, not trained.
"""
from __future__ import annotations

import logging
import math
import os

import torch

log = logging.getLogger("scripts.demo.checkpoint")

# Bump when the generated weights change, so cached files are rebuilt.
GENERATOR_VERSION = 1
DEFAULT_NAME = "hrv_random_sd15_NOISE_ONLY.safetensors"
SD15_VAE = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
            "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}


def sd15_checkpoint_shapes() -> dict[str, torch.Size]:
    """Checkpoint key -> shape for SD1.5, as ComfyUI's `save_checkpoint` would write them."""
    import comfy.sd1_clip
    import comfy.supported_models
    from comfy.ldm.models.autoencoder import AutoencoderKL

    from scripts.demo.unets import unet_config

    model_config = comfy.supported_models.SD15(unet_config("sd1", "full"))
    with torch.device("meta"):
        model = model_config.get_model({}, device="meta")
        clip = comfy.sd1_clip.SD1ClipModel(device="meta", dtype=torch.float32)
        vae = AutoencoderKL(ddconfig=dict(SD15_VAE), embed_dim=4)
    state = model.state_dict_for_saving(clip.state_dict(), vae.state_dict())
    return {k: t.shape for k, t in state.items()}


def random_tensor(key: str, shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    """LeCun-normal weights, zero biases, unit norm scales: activations keep unit scale layer after layer."""
    if key.endswith("bias"):
        return torch.zeros(shape)
    if len(shape) <= 1:  # GroupNorm / LayerNorm scales
        return torch.ones(shape)
    fan_in = math.prod(shape[1:])  # [out, in, kh, kw] or [out, in]; embeddings [vocab, dim] -> dim
    return torch.randn(shape, generator=generator) / math.sqrt(fan_in)


def write_random_sd15_checkpoint(path: str, seed: int = 0, dtype: torch.dtype = torch.float16) -> str:
    """Write a random SD1.5 checkpoint (about 2.1 GB in float16) atomically; returns path.

    Needs ComfyUI importable (hrv.comfy_host.use_comfyui()).
    """
    from safetensors.torch import save_file

    shapes = sd15_checkpoint_shapes()
    generator = torch.Generator().manual_seed(seed)
    state = {k: random_tensor(k, shapes[k], generator).to(dtype) for k in sorted(shapes)}
    metadata = {"hrv.random_checkpoint": "1", "hrv.generator_version": str(GENERATOR_VERSION), "hrv.seed": str(seed),
                "description": "Random weights of the SD1.5 shape for tests and demos: every image it makes is noise."}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.part"  # two processes may build the same cached file at once
    try:
        save_file(state, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    log.info("wrote random SD1.5 checkpoint %s (%d tensors, seed %d, %s)", path, len(state), seed, dtype)
    return path


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "comfyui-hrv")


def cached_random_sd15_checkpoint(cache_dir: str | None = None, seed: int = 0) -> str:
    """Path of the random checkpoint in the cache (HRV_CACHE_DIR, else ~/.cache/comfyui-hrv), built once."""
    cache_dir = cache_dir or os.environ.get("HRV_CACHE_DIR") or default_cache_dir()
    path = os.path.join(cache_dir, f"random_sd15_v{GENERATOR_VERSION}_seed{seed}_fp16.safetensors")
    if not os.path.isfile(path):
        write_random_sd15_checkpoint(path, seed=seed, dtype=torch.float16)
    return path


def is_random_checkpoint(path: str) -> bool:
    """True for files written by write_random_sd15_checkpoint (read from the safetensors header)."""
    from safetensors import safe_open
    try:
        with safe_open(path, framework="pt") as f:
            return (f.metadata() or {}).get("hrv.random_checkpoint") == "1"
    except (OSError, ValueError, RuntimeError):
        return False


def main(argv=None) -> int:
    import argparse

    from hrv.comfy_host import use_comfyui

    p = argparse.ArgumentParser(prog="python -m scripts.demo.checkpoint",
                                description="write a random-weight SD1.5 checkpoint (images are noise)")
    p.add_argument("out", nargs="?", help="output .safetensors path (default: the shared cache; prints its path)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    use_comfyui(cpu=True)
    out = write_random_sd15_checkpoint(args.out, seed=args.seed) if args.out else cached_random_sd15_checkpoint(seed=args.seed)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
