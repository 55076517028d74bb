"""Steering as a processor of the attention core: per-head scaling of the marked tokens' value rows.

Scaling head h's post-softmax attention to token t by s[h] (without renormalising, as the paper does) is
out_h = sum_t' A[:, t'] V_h[t'] with V_h[t] scaled by s[h]: only the target rows of v change, and the fused
kernel runs on. Per call: a copy of v and one scatter that multiplies the target rows; the index and factor
tensors are built once per run for each batch layout. No host sync: sigma gates are evaluated on the device.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..attention import AttnCall, Chunk
from ..attention.processor import request_block
from .request import FEATURE, SteerRequest


class SteeringRuntimeError(RuntimeError):
    """A conditioning met during sampling that does not fit the model."""


class _Plan:
    def __init__(self, chunks, rows: torch.Tensor, factors: torch.Tensor, row_gate: torch.Tensor | None, gates: list,
                 channels: int):
        self.chunks = chunks        # the chunk list this plan was made for (its identity keys the cache)
        self.rows = rows            # int64 [n] rows of v.view(B*L, C)
        self.index = rows[:, None].expand(-1, channels).contiguous()   # int64 [n, C]: scatter index of those rows
        self.factors = factors      # [n, C] in v's dtype
        self.row_gate = row_gate    # int64 [n] index into gates, or None when no request is gated
        # float32 [gates + 1, 2] (sigma_start, sigma_end) per gated request, then an always-open gate
        self.bounds = None if row_gate is None else torch.tensor(
            gates + [(float("inf"), float("-inf"))], dtype=torch.float32, device=rows.device)


def _block_factors(request: SteerRequest, key, heads: int) -> list[tuple[tuple[int, ...], torch.Tensor]]:
    block = request_block(request.layout, key, heads, "steered", SteeringRuntimeError)
    return [(t.positions, t.factors[block.columns]) for t in request.terms]


def build_plan(call: AttnCall, chunks: Sequence[Chunk], batch: int, context: int, channels: int, device, dtype) -> _Plan | None:
    heads = call.heads
    dim_head = channels // heads
    factor_of: dict[int, torch.Tensor] = {}     # row -> [C] (words sharing a token multiply)
    gate_of: dict[int, int] = {}
    gates: list = []
    for chunk in chunks:
        request: SteerRequest = chunk.request
        period = chunk.context_length or request.context_length
        if context % period:
            raise SteeringRuntimeError(f"the cross-attention context has {context} tokens, not a multiple of the "
                                       f"{period} tokens of the steered conditioning")
        gate = None
        if request.gated:
            gate = len(gates)
            gates.append((call.run.percent_to_sigma(request.start_percent), call.run.percent_to_sigma(request.end_percent)))
        for positions, s in _block_factors(request, call.key, heads):
            per_channel = s.to(torch.float32).repeat_interleave(dim_head)            # [C]: channel c is head c // d
            for b in range(chunk.rows.start, chunk.rows.stop):
                for repeat in range(context // period):
                    for p in positions:
                        row = b * context + repeat * period + p
                        factor_of[row] = factor_of[row] * per_channel if row in factor_of else per_channel
                        if gate is not None:
                            gate_of[row] = gate
    if not factor_of:
        return None
    rows = sorted(factor_of)
    row_gate = None
    if gates:
        # Rows of ungated requests get an always-open gate appended last.
        row_gate = torch.tensor([gate_of.get(r, len(gates)) for r in rows], dtype=torch.int64, device=device)
    return _Plan(chunks, torch.tensor(rows, dtype=torch.int64, device=device),
                 torch.stack([factor_of[r] for r in rows]).to(device=device, dtype=dtype), row_gate, gates, channels)


def _open_gates(plan: _Plan, sigmas: torch.Tensor | None, device) -> torch.Tensor:
    """bool [gates + 1] on the device: whether each gated request is active at this call's sigma."""
    if sigmas is None:
        return torch.ones(plan.bounds.shape[0], dtype=torch.bool, device=device)
    sigma = sigmas.reshape(-1)[:1].to(device=device, dtype=torch.float32)
    return (plan.bounds[:, 1] <= sigma) & (sigma <= plan.bounds[:, 0])


class SteeringProcessor:
    feature = FEATURE

    def process(self, call: AttnCall, q, k, v, chunks: Sequence[Chunk]):
        batch, context, channels = v.shape
        # The run hands out one chunk list per batch layout and keeps it: its identity (checked, so a freed list's
        # reused id cannot match) names the layout without building a key from the chunks at every call.
        cache_key = (FEATURE, call.key, id(chunks), batch, context, v.dtype, v.device)
        plan = call.run.cache.get(cache_key)
        if plan is None or plan.chunks is not chunks:
            plan = build_plan(call, chunks, batch, context, channels, v.device, v.dtype) or _Nothing(chunks)
            call.run.cache[cache_key] = plan
        if plan.rows is None:
            return q, k, v
        factors = plan.factors
        if plan.row_gate is not None:
            open_rows = _open_gates(plan, call.extra_options.get("sigmas"), v.device)[plan.row_gate]
            factors = torch.where(open_rows[:, None], factors, torch.ones_like(factors))
        # Two kernels: a copy (other code may still hold v) and one scatter that multiplies the target rows in place.
        out = v.clone()
        out.view(batch * context, channels).scatter_reduce_(0, plan.index, factors, reduce="prod")
        return q, k, out


class _Nothing:
    """Cached for a layout with nothing to steer in this transformer."""
    rows = None

    def __init__(self, chunks):
        self.chunks = chunks


STEERING = SteeringProcessor()
