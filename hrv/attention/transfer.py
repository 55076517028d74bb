"""Small host-made tensors onto the device without stalling the GPU.

A copy from ordinary (pageable) host memory to a CUDA device waits until the device has run everything queued
before it, so a processor building an index on the host would drain the GPU's queue at every such copy. Pinned
memory and a non-blocking copy keep the queue full; PyTorch's pinned-memory cache keeps the host buffer alive
until the copy is done.
"""
from __future__ import annotations

import torch


def to_device(host: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """`host` (a CPU tensor) on `device` in `dtype`; asynchronous on CUDA."""
    if dtype is not None and host.dtype != dtype:
        host = host.to(dtype)
    if torch.device(device).type != "cuda":
        return host.to(device)
    try:
        pinned = host.pin_memory()
    except RuntimeError:        # no pinned memory to be had (e.g. a locked-down container): a plain, waiting copy
        return host.to(device)
    return pinned.to(device, non_blocking=True)
