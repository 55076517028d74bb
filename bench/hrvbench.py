"""What bench/steering.py and bench/build.py share: ComfyUI setup, a random full-size UNet wrapped as ComfyUI
wraps a checkpoint, conditionings, sampling runs through ComfyUI's KSampler, and capturing attn2 calls.

Scripts only; imported as `hrvbench` (the scripts' own folder is first on sys.path).
"""
from __future__ import annotations

import os
import statistics
import sys
import time

import torch

PACK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _path in (PACK_DIR, os.path.join(PACK_DIR, "tests")):  # hrv/, harness/
    if _path not in sys.path:
        sys.path.insert(0, _path)

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
POOLED_DIM = 1280          # SDXL's CLIP-G pooled output; with the size embeddings it makes y [B, 2816]
DEFAULT_LATENT = {"sd1": 64, "sdxl": 128}   # 512 and 1024 pixels


def add_common_args(p, reference: bool = True):
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu or cuda (default: cuda when available)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                   help="the UNet's weight and compute dtype (default: float32 on the CPU, float16 on a GPU)")
    p.add_argument("--unet", choices=("full", "tiny"), default="full",
                   help="full: the real UNet size (random weights); tiny: same layout, narrow channels (smoke runs)")
    p.add_argument("--steps", type=int, default=2, help="sampling steps of every timed sampler run (default 2)")
    p.add_argument("--use-pytorch-cross-attention", action="store_true",
                   help="ComfyUI's flag: use PyTorch SDPA instead of the CPU default (sub-quadratic)")
    if reference:
        p.add_argument("--reference-dir", default=os.path.join(PACK_DIR, "..", "shared", "hrv_reference"),
                       help="the published HRVs (on a GPU machine: .gpu/reference); a random HRV is used when "
                            "absent (values do not affect speed)")


def resolve_dtype(args) -> torch.dtype:
    return DTYPES[args.dtype] if args.dtype else (torch.float32 if args.device == "cpu" else torch.float16)


def setup_comfy(args):
    """ComfyUI on sys.path (COMFYUI_DIR or the vendored copy) for args.device; returns (attention module, device)."""
    from hrv.comfy_host import use_comfyui
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda, but this torch sees no CUDA device")
    use_comfyui(cpu=device.type == "cpu")
    import comfy.cli_args
    comfy.cli_args.args.use_pytorch_cross_attention = args.use_pytorch_cross_attention
    import comfy.ldm.modules.attention as attention  # picks optimized_attention from the args above
    return attention, device


def describe_machine(attention, device, dtype, args) -> str:
    gpu = f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    return (f"attention kernel: {attention.optimized_attention.__name__} (what ComfyUI picks here: device={device.type}"
            f"{gpu}, --use-pytorch-cross-attention={args.use_pytorch_cross_attention}); torch {torch.__version__}, "
            f"threads={torch.get_num_threads()}, dtype={str(dtype).replace('torch.', '')}, "
            f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")


def build_model(arch: str, unet: str, device: torch.device, dtype: torch.dtype):
    """A ModelPatcher of a random UNet built in `dtype` on `device`, as ComfyUI's loader builds a checkpoint:
    model_config.set_inference_dtype, so diffusion_model.dtype and apply_model's input casts match the weights."""
    from harness.comfy_models import model_patcher
    model = model_patcher(arch, unet, device=str(device), dtype=dtype)
    inner = model.model.diffusion_model
    weight = next(inner.parameters())
    assert inner.dtype == weight.dtype == dtype and weight.device.type == device.type, \
        (inner.dtype, weight.dtype, weight.device)
    base = model.model
    adm = base.model_config.unet_config.get("adm_in_channels")
    if arch == "sdxl" and adm and adm != base.encode_adm(pooled_output=torch.zeros(1, POOLED_DIM)).shape[1]:
        # The tiny SDXL UNet has a narrow y: SDXL's own vector (pooled output + size embeddings), cut to its width.
        full_adm = base.encode_adm
        base.encode_adm = lambda **kwargs: full_adm(**kwargs)[:, :adm]
    return model


def context_dim(model) -> int:
    """Width of the text embedding the model's cross-attention takes (768 SD1.x, 2048 SDXL; less in tiny UNets)."""
    return int(model.model.model_config.unet_config["context_dim"])


def conditioning(arch: str, dim: int, latent: int, seed: int, tokens: int = 77) -> list:
    """A CONDITIONING of one random text embedding [1, tokens, dim]; SDXL's also carries what its CLIP Text Encode
    puts there (pooled_output and the size conditioning that make the UNet's y)."""
    g = torch.Generator().manual_seed(seed)
    extra = {}
    if arch == "sdxl":
        pixels = latent * 8
        extra = {"pooled_output": torch.randn(1, POOLED_DIM, generator=g), "width": pixels, "height": pixels,
                 "crop_w": 0, "crop_h": 0, "target_width": pixels, "target_height": pixels}
    return [[torch.randn(1, tokens, dim, generator=g), extra]]


class Sampler:
    """Sampling runs through ComfyUI's KSampler (comfy.sample.sample, as the KSampler node): CFG > 1 puts cond and
    uncond in one batch, the OUTER_SAMPLE wrappers run, and attn2 sees transformer_options["uuids"]."""

    def __init__(self, arch: str, dim: int, latent: int, batch: int, steps: int, device, cfg: float = 7.0,
                 sampler: str = "euler", scheduler: str = "normal", seed: int = 0):
        self.steps, self.cfg, self.sampler, self.scheduler, self.seed = steps, cfg, sampler, scheduler, seed
        self.device = device
        self.latent = torch.zeros(batch, 4, latent, latent)
        self.noise = torch.randn(self.latent.shape, generator=torch.Generator().manual_seed(seed))
        self.negative = conditioning(arch, dim, latent, seed + 1)

    @torch.inference_mode()
    def __call__(self, model, positive, steps: int | None = None, callback=None) -> torch.Tensor:
        import comfy.sample
        return comfy.sample.sample(model, self.noise, steps or self.steps, self.cfg, self.sampler, self.scheduler,
                                   positive, self.negative, self.latent, seed=self.seed, disable_pbar=True,
                                   callback=callback)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device) -> float:
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def core_fns(model) -> dict:
    """{attn2 key: the attention core's replacement} of a model with the core installed."""
    from hrv.attention import is_core_fn
    attn2 = model.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
    found = {key: fn for key, fn in attn2.items() if len(key) == 3 and is_core_fn(fn)}
    if not found:
        raise RuntimeError("the model has no attention core installed")
    return found


def capture_core_calls(model, run) -> list:
    """[(key, core fn, q, k, v, extra_options)] of every attn2 call of `run(clone)`: what the core got, before its
    processors, with the sampling run's RunState in extra_options (its entries survive the run's end, so calling
    the core fn again replays the call, rebuilding the processors' per-run caches on the first call)."""
    calls = []
    m = model.clone()
    for key, core_fn in core_fns(model).items():
        def record(q, k, v, extra_options, key=key, core_fn=core_fn):
            calls.append((key, core_fn, q, k, v, dict(extra_options)))
            return core_fn(q, k, v, extra_options)
        # Marked as the core so the run does not warn that another node shadowed it.
        record.hrv_core, record.hrv_inner, record.hrv_inner_source = True, core_fn.hrv_inner, core_fn.hrv_inner_source
        m.set_model_attn2_replace(record, *key)
    run(m)
    return calls


def plain_attention(attention):
    """What attn2 runs in a model without replacements (CrossAttention.forward's optimized_attention call)."""
    def plain(q, k, v, e):
        return attention.optimized_attention(q, k, v, e["n_heads"], attn_precision=e.get("attn_precision"),
                                             transformer_options=e)
    return plain


def time_interleaved(variants: dict, n_calls: int, reps: int, device) -> dict:
    """{variant: [[seconds per rep] per call]}: per call, the variants run back to back in rotating order, so load
    bursts from other processes hit them alike; the first round warms up and is dropped."""
    names = list(variants)
    per_call = {name: [[] for _ in range(n_calls)] for name in names}
    with torch.inference_mode():
        for rep in range(reps + 1):
            for i in range(n_calls):
                shift = (rep + i) % len(names)
                for name in names[shift:] + names[:shift]:
                    t = timed(lambda: variants[name](i), device)
                    if rep:
                        per_call[name][i].append(t)
    return per_call


def paired_ratio(per_call: dict, name: str, base: str) -> float:
    """Per call: median of (variant / base) over back-to-back runs; weighted by that call's median base time."""
    ratios = [statistics.median(a / b for a, b in zip(per_call[name][i], per_call[base][i]))
              for i in range(len(per_call[base]))]
    weights = [statistics.median(t) for t in per_call[base]]
    return sum(r * w for r, w in zip(ratios, weights)) / sum(weights)


def interleaved_runs(kinds: dict, pairs: int, device, label=lambda name, t: f"{name} {t:.3f}s") -> dict:
    """{kind: [seconds]} of `pairs` ABBA-interleaved rounds of the callables in `kinds` (two of them)."""
    names = list(kinds)
    times = {name: [] for name in names}
    for i in range(pairs):
        for name in (names if i % 2 == 0 else names[::-1]):
            times[name].append(timed(kinds[name], device))
        print(f"  pair {i + 1}/{pairs}: " + ", ".join(label(n, times[n][-1]) for n in names), flush=True)
    return times


RUNTIME_CALLS = {"launches": ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx"),
                 "copies": ("cudaMemcpyAsync", "cudaMemcpy"),
                 "syncs": ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")}


VIEW_OPS = {"aten.view", "aten._unsafe_view", "aten.alias", "aten.expand", "aten.detach", "aten.slice", "aten.select",
            "aten.transpose", "aten.permute", "aten.t", "aten.unsqueeze", "aten.squeeze", "aten.reshape",
            "aten.as_strided", "aten.split", "aten.chunk", "aten.unbind", "aten.lift_fresh"}


def launch_counts(fn, device, per: int = 1) -> dict:
    """What one call of fn asks of the device, divided by `per` (e.g. its steps): on a GPU the CUDA runtime calls
    (kernel launches, memcpys, synchronisations; a step of SD1.5 is launch-bound, so these are its cost), on the
    CPU the aten ops that do work (views left out: about what a GPU would launch)."""
    if device.type != "cuda":
        from torch.utils._python_dispatch import TorchDispatchMode
        ops = []

        class Count(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                ops.append(str(func.overloadpacket))
                return func(*args, **(kwargs or {}))
        with Count():
            fn()
        return {"aten ops": round(sum(op not in VIEW_OPS for op in ops) / per, 1)}
    from torch.profiler import ProfilerActivity, profile
    sync(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        sync(device)
    events = {e.key: e.count for e in prof.key_averages()}
    return {kind: round(sum(events.get(n, 0) for n in names) / per, 1) for kind, names in RUNTIME_CALLS.items()}


def describe_counts(counts: dict) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in counts.items())
