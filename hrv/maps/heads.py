"""Which cross-attention heads a map reads, and with what weight.

`all`: every head with weight 1 (DAAM). `top_k`: the k heads with the largest HRV values of a concept, weight 1
(ties keep head order: the lower column first). `hrv_weighted`: every head with its HRV value HRV[c][h] as weight.
All functions take and return float32 tensors [H] in the layout's head order and never change their inputs.
"""
from __future__ import annotations

import math

import torch

MODES = ("top_k", "hrv_weighted", "all")


class HeadSelectionError(ValueError):
    """A head selection that cannot be made; the message says how to fix it."""


def top_k_count(top_k: float, num_heads: int) -> int:
    """Heads to keep: below 1 a fraction of num_heads (at least one head), from 1 on a number of heads."""
    try:
        value = float(top_k)
    except (TypeError, ValueError):
        raise HeadSelectionError(f"top_k must be a number, got {top_k!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise HeadSelectionError(f"top_k must be above 0: a fraction of the heads below 1 (0.25 = 25%) or a number "
                                 f"of heads from 1 to {num_heads}, got {top_k!r}")
    if value < 1:
        return max(1, int(math.floor(value * num_heads + 0.5)))
    if value != int(value) or value > num_heads:
        raise HeadSelectionError(f"top_k {value:g} is read as a number of heads: give a whole number from 1 to "
                                 f"{num_heads} (this model has {num_heads} heads), or a fraction below 1")
    return int(value)


def ranked_heads(row: torch.Tensor) -> torch.Tensor:
    """int64 [H]: heads from the most to the least relevant; equal values keep head order."""
    return torch.sort(row.detach().to(torch.float32), descending=True, stable=True).indices


def top_heads(row: torch.Tensor, k: int) -> torch.Tensor:
    """int64 [k]: the k most relevant heads of an HRV row, most relevant first (ties by head order)."""
    if not 1 <= k <= row.numel():
        raise HeadSelectionError(f"cannot pick {k} of {row.numel()} heads")
    return ranked_heads(row)[:k]


def head_weights(mode: str, row: torch.Tensor | None, num_heads: int, k: int | None = None) -> torch.Tensor:
    """float32 [H]: the weight of every head in the map (0 = the head is not read at all)."""
    if mode == "all":
        return torch.ones(num_heads, dtype=torch.float32)
    if mode not in MODES:
        raise HeadSelectionError(f"heads must be one of {', '.join(MODES)}, got {mode!r}")
    if row is None or row.shape != (num_heads,):
        raise HeadSelectionError(f"{mode} needs the concept's HRV row of {num_heads} heads")
    row = row.detach().to(torch.float32)
    if not bool(row.abs().sum() > 0):
        raise HeadSelectionError("the concept's HRV row is all zero (it got no votes when the HRV was built), so it "
                                 "names no heads: pick another concept or heads = all")
    if mode == "hrv_weighted":
        return row.clone()
    weights = torch.zeros(num_heads, dtype=torch.float32)
    weights[top_heads(row, k if k is not None else top_k_count(0.25, num_heads))] = 1.0
    return weights


def concept_weight_of(matrix: torch.Tensor, mass: torch.Tensor) -> torch.Tensor:
    """float32 [C]: sum_h HRV[c][h] * m_h / sum_h m_h, the weight concept c's row gives the heads the word draws
    attention in (m [H]: the word's share of each head's attention). Rows all sum to H, so this compares fairly."""
    mass = mass.detach().to(torch.float32).clamp_min(0)
    total = mass.sum()
    if not bool(total > 0):
        return torch.zeros(matrix.shape[0], dtype=torch.float32)
    return matrix.to(torch.float32) @ (mass / total)


def auto_concept(matrix: torch.Tensor, mass: torch.Tensor) -> int:
    """The concept row whose HRV gives the word's heads most weight (concept_weight_of); ties: the first row."""
    return int(ranked_heads(concept_weight_of(matrix, mass))[0])


def cosine_reading(matrix: torch.Tensor, mass: torch.Tensor) -> torch.Tensor:
    """float32 [C]: cosine similarity between the word's per-head attention mass m [H] and every HRV row."""
    m = mass.detach().to(torch.float64)
    rows = matrix.detach().to(torch.float64)
    norms = rows.norm(dim=1) * m.norm()
    return torch.where(norms > 0, rows @ m / norms.clamp_min(1e-300), torch.zeros_like(norms)).float()
