"""ComfyUI attn2 replacements that scale chosen tokens per head, keeping the fused attention kernel.

Scaling head h's post-softmax attention column of token t by s[h] (without renormalising, as the
paper does) gives out_h = sum_t' A[:, t'] * V_h[t'] with V_h[t] multiplied by s[h]. So the patch
multiplies row t of each head's slice of V and hands q, k, v to the inner attention unchanged
otherwise: no attention map is materialised and any kernel (SDPA, sub-quadratic, xformers) works.

No `comfy` import here: the node passes ComfyUI's optimized_attention in as the default inner attention.
"""
from __future__ import annotations

import logging
from typing import Callable, Mapping, Sequence

import torch

from ..format.layout import HeadLayout

log = logging.getLogger("hrv.steering.attention_patch")

AttnKey = tuple  # (block, block_id, transformer_index): ComfyUI's attn2 replace key
Attn2Fn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, dict], torch.Tensor]

COND = 0  # ComfyUI's cond_or_uncond marks the positive prompt's batch chunks with 0
MAX_CACHED = 32


class SteeringRuntimeError(RuntimeError):
    """The conditioning met during sampling does not fit what the node was set up for."""


def factors_by_block(layout: HeadLayout, s: torch.Tensor) -> dict[AttnKey, torch.Tensor]:
    """Split per-head factors s [H] into {attn2 key: float32 [heads of that transformer]}."""
    if s.dim() != 1 or s.numel() != layout.num_heads:
        raise ValueError(f"expected {layout.num_heads} head factors for the {layout.arch} layout, got {list(s.shape)}")
    s = s.detach().to("cpu", torch.float32)
    return {b.key: s[b.columns].clone() for b in layout.blocks}


def default_inner(optimized_attention) -> Attn2Fn:
    """Adapt ComfyUI's optimized_attention(q, k, v, heads, ...) to the replacement signature."""
    def attention(q, k, v, extra_options):
        return optimized_attention(q, k, v, extra_options["n_heads"], attn_precision=extra_options.get("attn_precision"),
                                   transformer_options=extra_options)
    return attention


def existing_replacement(existing: Mapping | None, key: AttnKey):
    """What ComfyUI would run for this transformer now: a per-transformer entry wins over a per-block one."""
    if not existing:
        return None
    return existing.get(key) or existing.get(tuple(key[:2]))


class SigmaGate:
    """Whether a step's sigma lies in [sigma_end, sigma_start]; decided once per step, shared by all blocks."""

    def __init__(self, sigma_start: float, sigma_end: float):
        self.sigma_start, self.sigma_end = float(sigma_start), float(sigma_end)
        self._last = None     # the step's sigmas tensor (kept alive so identity cannot be reused)
        self._active = True

    def active(self, sigmas) -> bool:
        if sigmas is None:
            return True  # called outside a sampler: nothing to gate on
        if sigmas is not self._last:
            # One host sync per step: the sampler passes the same tensor object to all 16/70 blocks.
            sigma = float(sigmas.reshape(-1)[0])
            self._last, self._active = sigmas, self.sigma_end <= sigma <= self.sigma_start
        return self._active


def _value_multiplier(s: torch.Tensor, positions: Sequence[int], cond_length: int, context_length: int,
                      dim_head: int, device, dtype) -> torch.Tensor:
    """[context, heads*dim_head]: s[h] on each head's channels at the target rows, 1 elsewhere."""
    if context_length % cond_length:
        raise SteeringRuntimeError(
            f"the cross-attention context has {context_length} tokens, which is not a multiple of the "
            f"{cond_length} tokens of the prompt given to the HRV steering node: give the node the same prompt "
            "text that your positive CLIP Text Encode uses")
    rows = torch.tensor([p + j * cond_length for j in range(context_length // cond_length) for p in positions],
                        dtype=torch.long)
    mult = torch.ones(context_length, s.numel() * dim_head, dtype=torch.float32)
    mult[rows] = s.repeat_interleave(dim_head)  # channel c belongs to head c // dim_head
    return mult.to(device=device, dtype=dtype)


def make_steering_fn(s: torch.Tensor, positions: Sequence[int], cond_length: int, gate: SigmaGate | None,
                     inner: Attn2Fn) -> Attn2Fn:
    """One transformer's attn2 replacement: scale the target tokens' value rows of the cond chunks, then run inner."""
    s = s.detach().to("cpu", torch.float32)
    positions = tuple(int(p) for p in positions)
    cache: dict[tuple, torch.Tensor] = {}  # per (device, dtype, context, batch layout), built once per run

    def multiplier(v: torch.Tensor, extra_options: dict, chunks: tuple) -> torch.Tensor:
        batch, context_length, channels = v.shape
        key = (v.device, v.dtype, context_length, batch, chunks)
        found = cache.get(key)
        if found is None:
            heads = int(extra_options.get("n_heads", s.numel()))
            if heads != s.numel() or channels % heads:
                raise SteeringRuntimeError(
                    f"this cross-attention has {heads} heads but the HRV expects {s.numel()}: "
                    "the HRV was made for another architecture than the model")
            per_token = _value_multiplier(s, positions, cond_length, context_length, channels // heads,
                                          v.device, v.dtype)
            if not chunks:  # no cond_or_uncond (called outside a sampler): every batch row is cond
                found = per_token.unsqueeze(0)
            else:
                if batch % len(chunks):
                    raise SteeringRuntimeError(f"a batch of {batch} does not split into {len(chunks)} cond/uncond chunks")
                ones = torch.ones_like(per_token)
                found = torch.stack([per_token if c == COND else ones for c in chunks])   # [chunks, context, channels]
                found = found.repeat_interleave(batch // len(chunks), dim=0)             # [batch, context, channels]
            if len(cache) >= MAX_CACHED:
                cache.clear()
            cache[key] = found
        return found

    def attn2_steering(q, k, v, extra_options):
        chunks = tuple(extra_options.get("cond_or_uncond") or ())
        if (not chunks or COND in chunks) and (gate is None or gate.active(extra_options.get("sigmas"))):
            v = v * multiplier(v, extra_options, chunks)
        return inner(q, k, v, extra_options)

    return attn2_steering


def make_attn2_replacements(factors: Mapping[AttnKey, torch.Tensor], positions: Sequence[int], cond_length: int,
                            default_attention: Attn2Fn, existing: Mapping | None = None,
                            sigma_range: tuple[float, float] | None = None) -> dict[AttnKey, Attn2Fn]:
    """{attn2 key: fn(q, k, v, extra_options)} for every transformer in `factors`.

    Each fn wraps what was installed for that transformer before (`existing`), else `default_attention`,
    so steering nodes in series multiply and other packs' attn2 patches keep running.
    sigma_range = (sigma_start, sigma_end) with sigma_start >= sigma_end; None = every step.
    """
    if not positions:
        raise ValueError("no token positions to steer")
    if any(not 0 <= p < cond_length for p in positions):
        raise ValueError(f"token positions {list(positions)} fall outside the {cond_length}-token prompt")
    gate = SigmaGate(*sigma_range) if sigma_range is not None else None
    return {key: make_steering_fn(s, positions, cond_length, gate, existing_replacement(existing, key) or default_attention)
            for key, s in factors.items()}
