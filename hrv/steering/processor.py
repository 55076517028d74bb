"""Steering as a processor of the attention core: per-head scaling of the marked tokens' value rows.

Scaling head h's post-softmax attention to token t by s[h] (without renormalising, as the paper does) is
out_h = sum_t' A[:, t'] V_h[t'] with V_h[t] scaled by s[h]: only the target rows of v change, and the fused
kernel runs on. Per call: a copy of v and one scatter that multiplies the target rows.

The rows and factors of a steered chunk depend only on its request, the transformer and where the chunk sits in
the batch, so they are built once (on the host, copied to the device without a sync) and kept on the request
across sampling runs; a run only looks them up. Sigma gates are evaluated on the device (no host sync).
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..attention import AttnCall, Chunk
from ..attention.processor import kept_plan, request_block
from ..attention.transfer import to_device
from .request import FEATURE, SteerRequest

class SteeringRuntimeError(RuntimeError):
    """A conditioning met during sampling that does not fit the model."""


class ChunkPlan:
    """The steered rows of one chunk in one transformer, on the device."""

    def __init__(self, rows: torch.Tensor, factors: torch.Tensor, channels: int):
        self.index = rows[:, None].expand(-1, channels).contiguous()    # int64 [n, C]: scatter index into v.view(B*L, C)
        self.factors = factors                                          # [n, C] in v's dtype


def _block_factors(request: SteerRequest, key, heads: int) -> list[tuple[tuple[int, ...], torch.Tensor]]:
    block = request_block(request.layout, key, heads, "steered", SteeringRuntimeError)
    return [(t.positions, t.factors[block.columns]) for t in request.terms]


def build_chunk_plan(request: SteerRequest, key, heads: int, rows: slice, period: int, context: int, channels: int,
                     device, dtype) -> ChunkPlan | None:
    """Rows of v.view(B*L, C) that `request` steers in batch rows `rows`, and their per-channel factors."""
    if context % period:
        raise SteeringRuntimeError(f"the cross-attention context has {context} tokens, not a multiple of the "
                                   f"{period} tokens of the steered conditioning")
    dim_head = channels // heads
    factor_of: dict[int, torch.Tensor] = {}     # row -> [C] (words sharing a token multiply)
    for positions, s in _block_factors(request, key, heads):
        per_channel = s.to(torch.float32).repeat_interleave(dim_head)            # [C]: channel c is head c // d
        for b in range(rows.start, rows.stop):
            for repeat in range(context // period):
                for p in positions:
                    row = b * context + repeat * period + p
                    factor_of[row] = factor_of[row] * per_channel if row in factor_of else per_channel
    if not factor_of:
        return None
    order = sorted(factor_of)
    return ChunkPlan(to_device(torch.tensor(order, dtype=torch.int64), device),
                     to_device(torch.stack([factor_of[r] for r in order]), device, dtype), channels)


def chunk_plan(call: AttnCall, chunk: Chunk, context: int, channels: int, device, dtype) -> ChunkPlan | None:
    """build_chunk_plan, kept on the request (requests are immutable and live as long as their conditioning)."""
    request: SteerRequest = chunk.request
    period = chunk.context_length or request.context_length
    key = (call.key, chunk.rows.start, chunk.rows.stop, period, context, channels, device, dtype)
    return kept_plan(request.plans, key, lambda: build_chunk_plan(request, call.key, call.heads, chunk.rows, period,
                                                                  context, channels, device, dtype))


class _CallPlan:
    """What one batch layout steers in one transformer: every chunk's rows, merged where no gate splits them."""

    def __init__(self, chunks, parts: list[tuple[ChunkPlan, tuple[float, float] | None]], device):
        self.chunks = chunks        # the chunk list this plan was made for (its identity keys the run's cache)
        self.device = device
        self.gated = [(p, gate) for p, gate in parts if gate is not None]
        fixed = [p for p, gate in parts if gate is None]
        self.index = self.factors = None
        if len(fixed) == 1:
            self.index, self.factors = fixed[0].index, fixed[0].factors
        elif fixed:
            self.index = torch.cat([p.index for p in fixed])
            self.factors = torch.cat([p.factors for p in fixed])

    @property
    def empty(self) -> bool:
        return self.index is None and not self.gated


def _call_plan(call: AttnCall, chunks: Sequence[Chunk], context: int, channels: int, device, dtype) -> _CallPlan:
    parts = []
    for chunk in chunks:
        plan = chunk_plan(call, chunk, context, channels, device, dtype)
        if plan is not None:
            request: SteerRequest = chunk.request
            gate = None
            if request.gated:     # sigmas of the run's model, so per run
                gate = (call.run.percent_to_sigma(request.start_percent), call.run.percent_to_sigma(request.end_percent))
            parts.append((plan, gate))
    return _CallPlan(chunks, parts, device)


def _gated(call: AttnCall, plan: ChunkPlan, gate: tuple[float, float]) -> torch.Tensor:
    """The chunk's factors where its gate is open at this call's sigma, else ones (evaluated on the device, once
    per UNet call and gate: every transformer of the call shares the answer)."""
    sigmas = call.extra_options.get("sigmas")
    if sigmas is None:
        return plan.factors
    key = (FEATURE, "gate", gate, plan.factors.device)
    found = call.run.cache.get(key)
    if found is None or found[0] is not sigmas:
        sigma = sigmas.reshape(-1)[:1].to(device=plan.factors.device, dtype=torch.float32)
        found = call.run.cache[key] = (sigmas, ((sigma <= gate[0]) & (sigma >= gate[1]))[:, None])   # bool [1, 1]
    return torch.where(found[1], plan.factors, torch.ones_like(plan.factors))


class SteeringProcessor:
    feature = FEATURE

    def process(self, call: AttnCall, q, k, v, chunks: Sequence[Chunk]):
        batch, context, channels = v.shape
        # The run hands out one chunk list per batch layout and keeps it: its identity (checked, so a freed list's
        # reused id cannot match) names the layout without building a key from the chunks at every call.
        cache = call.run.cache
        cache_key = (FEATURE, call.key, id(chunks), context, v.dtype)
        plan = cache.get(cache_key)
        if plan is None or plan.chunks is not chunks or plan.device != v.device:
            plan = cache[cache_key] = _call_plan(call, chunks, context, channels, v.device, v.dtype)
        if plan.empty:
            return q, k, v
        index, factors = plan.index, plan.factors
        if plan.gated:
            parts = [(p.index, _gated(call, p, gate)) for p, gate in plan.gated]
            if index is not None:
                parts.append((index, factors))
            if len(parts) == 1:
                index, factors = parts[0]
            else:
                index, factors = torch.cat([i for i, _ in parts]), torch.cat([f for _, f in parts])
        # Two kernels: a copy (other code may still hold v) and one scatter that multiplies the target rows in place.
        out = v.clone()
        out.view(batch * context, channels).scatter_reduce_(0, index, factors, reduce="prod")
        return q, k, out


STEERING = SteeringProcessor()
