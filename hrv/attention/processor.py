"""What a feature plugs into the attention core."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol, Sequence

import torch

from .chunks import Chunk


@dataclass
class AttnCall:
    """One attention call as a processor sees it."""
    key: tuple                    # (block, block_id, transformer_index)
    extra_options: dict           # ComfyUI's extra_options (n_heads, sigmas, sample_sigmas, ...)
    run: "object"                 # the RunState of this sampling run (per-run caches, sigma gates)
    self_attention: bool = False  # an attn1 call (q, k, v from the image tokens) rather than attn2
    state: dict = field(default_factory=dict)   # scratch shared by a processor's hooks within this one call

    @property
    def heads(self) -> int:
        return int(self.extra_options["n_heads"])

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """ComfyUI's fused attention on these q, k, v with this call's options (no other processor, no inner
        replacement): for terms a processor adds to the output itself."""
        return self.run.fused(q, k, v, self.extra_options)


def request_block(layout, key: tuple, heads: int, what: str, error: type = RuntimeError):
    """The AttnBlock of transformer `key` in the layout of a request's HRV, checked against this call's head count.

    `what` names the conditioning in the message ("steered", "mapped", ...); `error` is the feature's error type.
    """
    name = ".".join(map(str, key))
    try:
        block = layout.block(key)
    except KeyError:
        raise error(f"the {what} conditioning was made with an HRV for {layout.arch}, which has no cross-attention "
                    f"{name}: load the HRV made for your checkpoint's architecture") from None
    if block.num_heads != heads:
        raise error(f"cross-attention {name} has {heads} heads but the HRV expects {block.num_heads}: the HRV was "
                    "made for another architecture")
    return block


MAX_PLANS_PER_REQUEST = 1024    # transformers x batch layouts x devices; a request rarely sees more than 70 x 2


def kept_plan(plans: dict, key, build: Callable[[], Any]):
    """A processor's device tensors for `key`, kept in a request's `plans` dict across sampling runs (requests are
    immutable and live as long as their conditioning), made by build() on first use; a full dict starts over."""
    if key not in plans:
        if len(plans) >= MAX_PLANS_PER_REQUEST:
            plans.clear()
        plans[key] = build()
    return plans[key]


class Processor(Protocol):
    """A feature's work on the chunks of the conditionings that asked for it.

    `feature` names the request key it serves. `process` gets q, k, v of the whole cross-attention call and the chunks
    that carry its requests, and returns (q, k, v) for the attention (unchanged when it only observes). It must not
    modify its inputs in place: other processors and the inner attention see them.

    Optional hooks (the core looks them up by name; a processor without them is skipped there):

    - `self_attention_keys(diffusion_model) -> iterable of (block, block_id, transformer_index)`: transformers whose
      self-attention (attn1) this processor works on; `install_core` puts the core on their attn1 too.
    - `process_self(call, q, k, v, chunks) -> (q, k, v)`: like `process`, for those attn1 calls.
    - `process_output(call, out, chunks) -> out`: after the attention of a call whose chunks this processor got
      (attn1 or attn2, see `call.self_attention`), e.g. to add a term computed with `call.attention`. Runs in reverse
      order of the processors, so the first processor's hook sees the output last. Must not modify `out` in place.
    """
    feature: str

    def process(self, call: AttnCall, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                chunks: Sequence[Chunk]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...


def self_attention_keys(processor, diffusion_model) -> Iterable[tuple]:
    """The transformers whose attn1 a processor asks for (none when it has no self-attention hook)."""
    ask = getattr(processor, "self_attention_keys", None)
    if ask is None or getattr(processor, "process_self", None) is None:
        return ()
    return [tuple(k) for k in ask(diffusion_model)]
