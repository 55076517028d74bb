"""ComfyUI's fused attention as an attn2 replacement, and what ComfyUI would run for a transformer now."""
from __future__ import annotations

import inspect
from typing import Callable, Mapping

import torch

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, dict], torch.Tensor]
AttnKey = tuple  # (block, block_id, transformer_index): ComfyUI's per-transformer attn2 key


def _accepts_transformer_options(fn) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "transformer_options" or p.kind is p.VAR_KEYWORD for p in params)


def fused_attention(optimized_attention) -> AttentionFn:
    """optimized_attention(q, k, v, heads, ...) in the replacement signature fn(q, k, v, extra_options).

    transformer_options is passed where the function takes it (ComfyUI >= 0.3.6x routes attention
    overrides through it); older versions get the old signature.
    """
    if _accepts_transformer_options(optimized_attention):
        def attention(q, k, v, extra_options):
            return optimized_attention(q, k, v, extra_options["n_heads"], attn_precision=extra_options.get("attn_precision"),
                                       transformer_options=extra_options)
    else:
        def attention(q, k, v, extra_options):
            return optimized_attention(q, k, v, extra_options["n_heads"], attn_precision=extra_options.get("attn_precision"))
    return attention


def installed_replacement(attn2_replacements: Mapping | None, key: AttnKey) -> tuple[AttentionFn | None, str]:
    """(fn, "transformer" | "block" | "default"): what ComfyUI runs for this transformer now.

    A per-transformer entry wins over a per-block one, as in BasicTransformerBlock.forward.
    """
    if attn2_replacements:
        if key in attn2_replacements:
            return attn2_replacements[key], "transformer"
        if tuple(key[:2]) in attn2_replacements:
            return attn2_replacements[tuple(key[:2])], "block"
    return None, "default"
