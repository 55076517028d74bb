"""What HRV Prompt Edit puts on its CONDITIONING for the attention core."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..format.layout import HeadLayout
from .align import Alignment

FEATURE = "edit"
BLEND_THRESHOLD = 0.3       # P2P's LocalBlend default


@dataclass(frozen=True)
class LocalBlend:
    """P2P's local blend: where the words' attention (P2P's 16x16 layers) is weak, the target follows the source."""
    source_positions: tuple[int, ...]    # the words' positions in the source prompt's context
    target_positions: tuple[int, ...]    # and in the target's
    keys: frozenset                      # transformers whose maps count (SD1: input 7, 8 and output 3, 4, 5)
    threshold: float = BLEND_THRESHOLD


@dataclass(frozen=True, eq=False)
class EditRequest:
    """The edit of one conditioning of batch 2 (row 0 the source prompt, row 1 the target) or of its repeats.

    Columns of the target's cross-attention map that `scales` names are multiplied per head inside the
    cross-replace window (the concept's HRV on the edited words, P2P's reweighting).
    """
    layout: HeadLayout
    alignment: Alignment
    context_length: int                          # tokens of the conditioning (both prompts repeated to a common length)
    cross_replace: float                         # fraction of the sampling steps with the source's cross-attention
    self_replace: float                          # fraction of the steps with the source's self-attention
    self_keys: frozenset                         # transformers where the self-attention is taken from the source
    scales: tuple = ()                           # ((target position, float32 [H] factors), ...)
    blend: LocalBlend | None = None
    labels: tuple = field(default=())            # for logs
    # The processor's device tensors per (transformer, chunk placement, device, dtype), kept across sampling runs.
    plans: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        for name in ("cross_replace", "self_replace"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a fraction of the steps between 0 and 1, got {value}")
        a = self.alignment
        for length in (a.source_length, a.target_length):
            if self.context_length % length:
                raise ValueError(f"a {length}-token prompt does not repeat to the {self.context_length}-token context")
        for position, factors in self.scales:
            if not 0 <= position < a.target_length:
                raise ValueError(f"scaled position {position} is outside the {a.target_length}-token target prompt")
            if factors.shape != (self.layout.num_heads,):
                raise ValueError(f"factors of shape {list(factors.shape)}, expected [{self.layout.num_heads}]")

    @staticmethod
    def steps(fraction: float, total: int) -> int:
        """How many of `total` steps a fraction covers (P2P: int(fraction * steps))."""
        return int(fraction * total + 1e-6)


def merge_scales(*groups) -> tuple:
    """((position, factors), ...) with the factors of a position named in several groups multiplied."""
    merged: dict[int, torch.Tensor] = {}
    for group in groups:
        for position, factors in group:
            merged[position] = merged[position] * factors if position in merged else factors
    return tuple(sorted(merged.items()))
