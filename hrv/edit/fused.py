"""Prompt-to-Prompt's attention edits on fused attention: the algebra, tensors in and out.

For one (source, target) pair and one head, with A_s = softmax(Q_s K_s^T / sqrt(d)) and A_t = softmax(Q_t K_t^T / sqrt(d))
over each prompt's own context, P2P gives the target the map

    M[:, t] = c_t * sum_s W[s, t] A_s[:, s]     for a carried column t (W: the alignment's weights)
    M[:, t] = c_t * A_t[:, t]                   for a column t the target keeps (refine: new tokens)

(c_t the column's per-head factor: the concept's HRV on the edited word, P2P's reweighting) and attends with
out_t = M V_t. Regrouping the sums over the source's positions,

    out_t = A_s (W (c * V_t)) + A_t (own * c * V_t)
          = attention(Q_s, K_s, fold(c * V_t)) + attention(Q_t, K_t, keep(c * V_t))

with fold(V)[s] = sum_t W[s, t] V[t] (the target's value rows carried to the positions they take attention from) and
keep(V) the own columns' rows with every other row zero. Both are fused attention calls: no map is materialised.
Replace has no own column, so only the first call runs; identical prompts fold to V_t itself, bit for bit.

Self-attention injection is attention(Q_s, K_s, V_t): the target's rows get the source's queries and keys.

Contexts repeated to a common length (ComfyUI repeats a shorter conditioning, and so does HRV Prompt Edit when the
prompts have different chunk counts) attend as the unrepeated context: every copy of a position gets an equal share
of its attention. So the value rows are computed over one period of each prompt and repeated to the context.
"""
from __future__ import annotations

import torch


def scale_rows(v: torch.Tensor, positions: torch.Tensor | None, factors: torch.Tensor | None) -> torch.Tensor:
    """v [P, L, C] with rows `positions` multiplied by `factors` [n, C] (out of place)."""
    if positions is None:
        return v
    return v.index_copy(1, positions, v.index_select(1, positions) * factors)


def fold_values(v_target: torch.Tensor, pair_target: torch.Tensor, pair_source: torch.Tensor,
                weights: torch.Tensor | None, source_length: int) -> torch.Tensor:
    """fold(V)[s] = sum over pairs (t, s, w) of w V[t]: [P, Lt, C] -> [P, Ls, C]."""
    rows = v_target.index_select(1, pair_target)
    if weights is not None:
        rows = rows * weights[:, None]
    out = v_target.new_zeros(v_target.shape[0], source_length, v_target.shape[2])
    return out.index_add_(1, pair_source, rows)


def keep_values(v_target: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
    """V with every row but `own` set to zero: [P, Lt, C]."""
    out = torch.zeros_like(v_target)
    return out.index_copy_(1, own, v_target.index_select(1, own))


def repeat_context(x: torch.Tensor, length: int) -> torch.Tensor:
    """[P, period, C] repeated along the tokens to `length` (a multiple of the period)."""
    period = x.shape[1]
    return x if period == length else x.repeat(1, length // period, 1)


def attention_probs(q: torch.Tensor, k: torch.Tensor, heads: int, period: int) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d)) per head in float32, [P, H, N, period]: the copies of a repeated context summed."""
    p, n, c = q.shape
    d = c // heads
    qh = q.float().view(p, n, heads, d).transpose(1, 2)
    kh = k.float().view(p, k.shape[1], heads, d).transpose(1, 2)
    probs = torch.softmax(qh @ kh.transpose(-1, -2) * d ** -0.5, dim=-1)
    if k.shape[1] != period:
        probs = probs.view(p, heads, n, k.shape[1] // period, period).sum(-2)
    return probs
