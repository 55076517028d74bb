"""What the Attend-and-Excite text encoder puts on its CONDITIONING, its schedule, and the report of each run."""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import torch

from ..format.layout import HeadLayout

FEATURE = "ae"
REFERENCE_STEPS = 50


class ExciteError(ValueError):
    """Attend-and-Excite settings or subjects that cannot be used; the message says how to fix them."""


@dataclass(frozen=True)
class Subject:
    label: str
    positions: tuple[int, ...]          # context positions of its tokens (all occurrences)
    concept: int | None = None          # HRV row (HRV mode)


@dataclass(frozen=True)
class ExciteSettings:
    """The reference settings on its 50-step scale; scaled to the steps of the run."""
    excite_until: float = 25 / REFERENCE_STEPS                   # latent updates in the first 25 of 50 steps
    thresholds: tuple = ((0, 0.05), (10, 0.5), (20, 0.8))       # (reference step, threshold) of iterative refinement
    max_refinement: int = 20
    scale_factor: float = 20.0
    scale_range: tuple = (1.0, 0.5)
    temperature: float = 100.0
    resolution: int = 16
    smooth: bool = False                                         # 3x3 Gaussian on each subject's map before its max

    def __post_init__(self):
        if not 0.0 <= self.excite_until <= 1.0:
            raise ExciteError(f"excite_until must be a fraction of the steps from 0 to 1, got {self.excite_until}")
        if self.max_refinement < 0:
            raise ExciteError(f"max_refinement must be 0 or more, got {self.max_refinement}")


@dataclass(frozen=True)
class ExcitePlan:
    """The schedule of one run of `steps` steps."""
    steps: int
    excited: int                        # steps 0 .. excited-1 update the latent
    thresholds: dict                    # step -> refinement threshold
    sizes: list                         # step -> step size (z scale)

    @classmethod
    def of(cls, settings: ExciteSettings, steps: int) -> ExcitePlan:
        from .maps import step_sizes
        excited = min(steps, int(math.floor(settings.excite_until * steps + 0.5)))
        thresholds = {}
        for step, threshold in sorted(settings.thresholds):
            at = int(math.floor(step * steps / REFERENCE_STEPS + 0.5))
            if at < steps:
                thresholds[at] = threshold          # a later reference step landing on the same step wins
        return cls(steps, excited, thresholds, step_sizes(steps, settings.scale_factor, settings.scale_range))


@dataclass
class StepRecord:
    step: int
    sigma: float
    losses: list                        # per evaluation: per-image losses (the first before any update)
    update_norm: float                  # L2 norm of the latent change in this step


@dataclass(eq=False)
class ExciteRequest:
    subjects: tuple[Subject, ...]
    keep: tuple[int, ...]               # context positions in the softmax (start tokens left out)
    context_length: int
    layout: HeadLayout | None = None    # HRV mode when set
    matrix: torch.Tensor | None = None  # float32 [C, H]
    concepts: tuple = ()
    settings: ExciteSettings = field(default_factory=ExciteSettings)
    runs: deque = field(default_factory=lambda: deque(maxlen=8))   # list[StepRecord] per sampling run

    def __post_init__(self):
        if not self.subjects:
            raise ExciteError("no subject words: give the words to excite, e.g. 'cat:Animals, dog:Animals'")
        for s in self.subjects:
            if not s.positions or any(p not in self.keep for p in s.positions):
                raise ExciteError(f"the tokens of {s.label!r} are not prompt tokens of the {self.context_length}-token "
                                  "context")
            if self.hrv_mode and s.concept is None:
                raise ExciteError(f"the subject {s.label!r} has no concept: write it as {s.label}:Concept (e.g. "
                                  f"{s.label}:Animals), or disconnect the HRV for the original Attend-and-Excite")
        self.subject_weights = None
        if self.hrv_mode:
            rows = self.matrix[[s.concept for s in self.subjects]].to(torch.float32)
            self.subject_weights = rows / self.layout.num_heads               # sum_h HRV[c][h] * A_h / H

    @property
    def hrv_mode(self) -> bool:
        return self.layout is not None

    def describe(self) -> str:
        if not self.hrv_mode:
            return "original Attend-and-Excite (16x16 layers, heads averaged): " + ", ".join(s.label for s in self.subjects)
        return "A&E-HRV: " + ", ".join(f"{s.label} ({self.concepts[s.concept]})" for s in self.subjects)
