"""Per-head steering factors s [H] from HRV rows (Park et al., arXiv 2412.02237, section 4).

Each factor multiplies one cross-attention head's attention to the chosen token(s):
s[h] = 1 leaves head h alone, s[h] > 1 strengthens the token in that head, s[h] < 0 pushes it away.
All functions take and return float32 [H] tensors and never modify their inputs.
"""
from __future__ import annotations

import math

import torch


class SteeringError(ValueError):
    """Bad steering parameters; the message says which one and what is allowed."""


def _check_row(row, name: str) -> torch.Tensor:
    if not isinstance(row, torch.Tensor):
        raise SteeringError(f"{name} must be a torch tensor [heads], got {type(row).__name__}")
    if row.dim() != 1 or row.numel() == 0:
        raise SteeringError(f"{name} must be one HRV row [heads], got shape {list(row.shape)}")
    if not row.dtype.is_floating_point:
        raise SteeringError(f"{name} must hold floating-point relevance values, got {row.dtype}")
    row = row.detach().to(torch.float32)
    if not torch.isfinite(row).all():
        raise SteeringError(f"{name} contains NaN or infinite values: rebuild or re-import the HRV")
    return row


def _check_number(value, name: str) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise SteeringError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(value):
        raise SteeringError(f"{name} must be a finite number, got {value}")
    return value


def strengthen(row: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    """s = 1 + strength * (row - 1): strength 1 rescales by HRV[concept][h] as in the paper, 0 changes nothing."""
    row = _check_row(row, "the concept's HRV row")
    strength = _check_number(strength, "strength")
    # Written as a blend so strength 1 returns the row exactly and 0 returns exact ones.
    return (1.0 - strength) + strength * row


def adjust(desired_row: torch.Tensor, undesired_row: torch.Tensor, w_desired: float = 1.0,
           w_undesired: float = 1.0, offset: float = 1.0, clamp: float | None = None) -> torch.Tensor:
    """s = w_d * min(d, clamp) - w_u * min(u, clamp) + offset.

    The paper uses (1, 1, 1, no clamp); the authors' SDXL code uses (2, 1, 0, clamp 9) because
    SDXL's 1300-head rows reach values where the unclamped factor overshoots.
    """
    d = _check_row(desired_row, "the desired concept's HRV row")
    u = _check_row(undesired_row, "the undesired concept's HRV row")
    if d.shape != u.shape:
        raise SteeringError(f"the desired and undesired rows have {d.numel()} and {u.numel()} heads: "
                            "take both from the same HRV")
    w_desired = _check_number(w_desired, "w_desired")
    w_undesired = _check_number(w_undesired, "w_undesired")
    offset = _check_number(offset, "offset")
    if clamp is not None:
        clamp = _check_number(clamp, "clamp")
        if clamp <= 0:
            raise SteeringError(f"clamp must be positive (or None for no clamp), got {clamp}")
        d, u = d.clamp(max=clamp), u.clamp(max=clamp)
    return w_desired * d - w_undesired * u + offset


def ordered_weakening(row: torch.Tensor, k: int, most_relevant_first: bool, factor: float = -2.0) -> torch.Tensor:
    """`factor` on the k most (MoRHF) or least (LeRHF) relevant heads of a concept, 1 elsewhere.

    Ties keep head order (lower column first) so the chosen heads never depend on the sort kernel.
    """
    row = _check_row(row, "the concept's HRV row")
    factor = _check_number(factor, "factor")
    if isinstance(k, bool) or not isinstance(k, int):
        raise SteeringError(f"k must be a whole number of heads, got {k!r}")
    if not 0 <= k <= row.numel():
        raise SteeringError(f"k must be between 0 and {row.numel()} (the number of heads), got {k}")
    order = torch.sort(row, descending=most_relevant_first, stable=True).indices
    s = torch.ones_like(row)
    s[order[:k]] = factor
    return s
