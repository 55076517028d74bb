"""What a steering text encoder puts on its CONDITIONING for the attention core."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..format.layout import HeadLayout

FEATURE = "steer"


@dataclass(frozen=True)
class SteerTerm:
    """One word's steering: its context positions and per-head factors."""
    positions: tuple[int, ...]      # flat positions in the conditioning's own context
    factors: torch.Tensor           # float32 [H], head order of the layout
    label: str                      # for logs, e.g. "rose-colored: Color-Plants"


@dataclass(frozen=True)
class SteerRequest:
    layout: HeadLayout
    terms: tuple[SteerTerm, ...]
    context_length: int             # tokens of the encoded prompt
    start_percent: float = 0.0      # ComfyUI's sampling fractions, as ControlNet's start/end
    end_percent: float = 1.0
    # The steering processor's device tensors per (transformer, chunk placement, device, dtype), kept across
    # sampling runs; not part of the request's value.
    plans: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        if not 0.0 <= self.start_percent < self.end_percent <= 1.0:
            raise ValueError(f"start_percent ({self.start_percent}) must be below end_percent ({self.end_percent}), "
                             "both between 0 and 1")
        for term in self.terms:
            if term.factors.shape != (self.layout.num_heads,):
                raise ValueError(f"the factors of {term.label} have shape {list(term.factors.shape)}, expected "
                                 f"[{self.layout.num_heads}] for the {self.layout.arch} layout")
            if not term.positions or any(not 0 <= p < self.context_length for p in term.positions):
                raise ValueError(f"the positions {list(term.positions)} of {term.label} fall outside the "
                                 f"{self.context_length}-token prompt")

    @property
    def gated(self) -> bool:
        return self.start_percent > 0.0 or self.end_percent < 1.0
