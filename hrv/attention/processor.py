"""What a feature plugs into the attention core."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import torch

from .chunks import Chunk


@dataclass
class AttnCall:
    """One attn2 call as a processor sees it."""
    key: tuple                    # (block, block_id, transformer_index)
    extra_options: dict           # ComfyUI's extra_options (n_heads, sigmas, sample_sigmas, ...)
    run: "object"                 # the RunState of this sampling run (per-run caches, sigma gates)

    @property
    def heads(self) -> int:
        return int(self.extra_options["n_heads"])


class Processor(Protocol):
    """A feature's work on the chunks of the conditionings that asked for it.

    `feature` names the request key it serves. `process` gets q, k, v of the whole call and the chunks that carry
    its requests, and returns (q, k, v) for the attention (unchanged when it only observes). It must not modify
    its inputs in place: other processors and the inner attention see them.
    """
    feature: str

    def process(self, call: AttnCall, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                chunks: Sequence[Chunk]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...
