"""A cheap fingerprint of the weights a build samples with, so an interrupted build resumes only on the same model.

Hashing every byte of a 2-10 GB UNet would take longer than many builds; a strided sample of every tensor
(names, shapes, dtypes and every 997th value) changes with any fine-tune, merge or LoRA strength, and takes
well under a second.
"""
from __future__ import annotations

import hashlib

import torch

STRIDE = 997


def tensor_digest(digest, name: str, t: torch.Tensor) -> None:
    digest.update(f"{name}:{t.dtype}:{list(t.shape)}".encode())
    sample = t.detach().flatten()[::STRIDE].to("cpu", torch.float32)
    digest.update(sample.numpy().tobytes())


def weights_fingerprint(named_tensors, patches=None) -> str:
    """sha256 hex of a strided sample of the tensors and of pending weight patches (ComfyUI's LoRA patches:
    {key: [(strength_patch, patch, strength_model, ...), ...]})."""
    digest = hashlib.sha256()
    for name, t in sorted(named_tensors, key=lambda item: item[0]):
        tensor_digest(digest, name, t)
    for key in sorted(patches or {}):
        for entry in patches[key]:
            digest.update(f"{key}:{entry[0]!r}:{entry[2:]!r}".encode())
            payload = entry[1]
            tensors = payload if isinstance(payload, (tuple, list)) else (payload,)
            for i, item in enumerate(tensors):
                if isinstance(item, torch.Tensor):
                    tensor_digest(digest, f"{key}[{i}]", item)
                elif hasattr(item, "weights"):  # comfy.weight_adapter objects keep their tensors in .weights
                    for j, w in enumerate(item.weights):
                        if isinstance(w, torch.Tensor):
                            tensor_digest(digest, f"{key}[{i}].{j}", w)
    return digest.hexdigest()


def model_fingerprint(model_patcher) -> str:
    """The fingerprint of a ComfyUI ModelPatcher's diffusion model with its LoRA patches."""
    diffusion_model = model_patcher.get_model_object("diffusion_model")
    return weights_fingerprint(diffusion_model.state_dict().items(), getattr(model_patcher, "patches", None))
