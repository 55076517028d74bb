"""Prompt-to-Prompt (with the concept's HRV on the edited words) as a processor of the attention core.

The edit conditioning holds the source prompt and the target prompt as one conditioning of batch 2, so each of its
chunks in an attention call holds pairs of rows: (source, target), (source, target), ... in latent batch order.
Every chunk of the edit conditioning is edited, wherever the guider batches it (the core names chunks by
conditioning); chunks of other conditionings and the source rows are never changed.

Per sampling step i of N (read from the call's sigma and ComfyUI's sample_sigmas, once per UNet call):
- i < int(cross_replace * N): in every cross-attention, the target's map is the source's carried through the token
  alignment (fused.py), its scaled columns (HRV, reweighting) multiplied per head;
- i < int(self_replace * N): in the self-attention of the request's layers, the target takes the source's map;
- with a local blend, the words' maps of the blend layers are summed for the sampler wrapper (sampling.py).
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..attention import AttnCall, Chunk
from ..attention.processor import kept_plan
from ..attention.transfer import to_device
from ..format.layout import attention_levels
from . import fused
from .request import FEATURE, EditRequest

STEP_KEY = (FEATURE, "step")
BLEND_KEY = (FEATURE, "blend")      # run.cache: {id(request): BlendMaps} of the current model call


class EditRuntimeError(RuntimeError):
    """An edit conditioning met during sampling in a way it cannot work; the message says what to connect."""


def self_attention_layers(diffusion_model, lowest: int = 2) -> frozenset:
    """The transformers at the `lowest` lowest resolutions of the UNet (SD1: 16x16 and 8x8 at 512 px, P2P's layers;
    SDXL: both of its attention resolutions)."""
    levels = attention_levels(diffusion_model)
    deepest = sorted(set(levels.values()))[-lowest:]
    return frozenset(k for k, level in levels.items() if level in deepest)


def blend_layers(diffusion_model) -> frozenset:
    """P2P's local-blend maps: the cross-attentions a quarter of the latent's resolution across, middle block left out
    (SD1 at 512 px: the 16x16 input 7, 8 and output 3, 4, 5)."""
    return frozenset(k for k, level in attention_levels(diffusion_model).items() if level == 2 and k[0] != "middle")


def sampling_step(call: AttnCall) -> tuple[int, int] | None:
    """(step, steps) of this call's sigma in the run's schedule; None outside a sampler. Once per UNet call: the
    sigma tensor is the same object in all its attention calls."""
    sigmas = call.extra_options.get("sigmas")
    schedule = call.extra_options.get("sample_sigmas")
    if sigmas is None or schedule is None or len(schedule) < 2:
        return None
    cached = call.run.cache.get(STEP_KEY)
    if cached is not None and cached[0] is sigmas and cached[1] is schedule:
        return cached[2]
    sigma = float(sigmas.reshape(-1)[0])
    values = schedule.tolist()
    steps = len(values) - 1
    # The step whose interval holds sigma: a multi-stage sampler's inner evaluations count to the step they refine.
    step = min(max(sum(1 for s in values[:steps] if s >= sigma) - 1, 0), steps - 1)
    call.run.cache[STEP_KEY] = (sigmas, schedule, (step, steps))   # the references keep the ids from being reused
    return step, steps


class BlendMaps:
    """The blend words' attention of one model call, summed over the blend layers: [pairs, 2 (source, target), N]."""

    def __init__(self, request: EditRequest):
        self.request = request
        self.total = None
        self.layers = 0
        self.shape = None          # (h, w) of the maps

    def add(self, maps: torch.Tensor, shape) -> None:
        self.total = maps if self.total is None else self.total + maps
        self.layers += 1
        self.shape = shape


class _Plan:
    """Index and factor tensors of one chunk layout in one transformer, built once and kept on the request."""

    def __init__(self, call: AttnCall, chunk: Chunk, request: EditRequest, batch: int, context: int, channels: int,
                 device, dtype):
        a = request.alignment
        rows = range(chunk.rows.start, chunk.rows.stop)
        if len(rows) % 2:
            raise EditRuntimeError(f"the edit conditioning got {len(rows)} latent row(s); it needs pairs (source, "
                                   "target): connect the LATENT output of HRV Prompt Edit (or a latent of batch 2, 4, ...) "
                                   "to the sampler")
        if context % a.source_length or context % a.target_length:
            raise EditRuntimeError(f"the cross-attention context has {context} tokens, not a multiple of the prompts' "
                                   f"{a.source_length} and {a.target_length}")
        self.source_rows = to_device(torch.tensor(list(rows)[0::2], dtype=torch.int64), device)
        self.target_rows = to_device(torch.tensor(list(rows)[1::2], dtype=torch.int64), device)
        self.take = _take_source_rows(rows, batch, device)
        self.context, self.source_length, self.target_length = context, a.source_length, a.target_length
        self.pair_target = to_device(torch.tensor([t for t, _, _ in a.pairs], dtype=torch.int64), device)
        self.pair_source = to_device(torch.tensor([s for _, s, _ in a.pairs], dtype=torch.int64), device)
        weights = [w for _, _, w in a.pairs]
        self.weights = (None if all(w == 1.0 for w in weights) else
                        to_device(torch.tensor(weights, dtype=torch.float32), device, dtype))
        # The usual word swap: every position carried from the same position, so the fold is the identity.
        self.identity = (a.source_length == a.target_length and self.weights is None
                         and [(t, s) for t, s, _ in a.pairs] == [(p, p) for p in range(a.target_length)])
        self.own = to_device(torch.tensor(a.own, dtype=torch.int64), device) if a.own else None
        heads = call.heads
        self.scale_positions = self.scale = self.head_scale = None
        if request.scales:
            try:
                columns = request.layout.block(call.key).columns
            except KeyError:
                raise EditRuntimeError(f"the edit was made with an HRV for {request.layout.arch}, which has no "
                                       f"cross-attention {'.'.join(map(str, call.key))}: load the HRV made for your "
                                       "checkpoint's architecture") from None
            if columns.stop - columns.start != heads:
                raise EditRuntimeError(f"cross-attention {'.'.join(map(str, call.key))} has {heads} heads but the HRV "
                                       f"expects {columns.stop - columns.start}: the HRV was made for another architecture")
            per_head = torch.stack([f[columns].to(torch.float32) for _, f in request.scales])          # [n, H]
            self.scale_positions = to_device(torch.tensor([p for p, _ in request.scales], dtype=torch.int64), device)
            self.scale = to_device(per_head.repeat_interleave(channels // heads, dim=1), device, dtype)
            self.head_scale = to_device(per_head, device)
        blend = request.blend
        self.blend = blend is not None and call.key in blend.keys
        if self.blend:
            self.blend_source = to_device(torch.tensor(blend.source_positions, dtype=torch.int64), device)
            targets = blend.target_positions
            carried = a.carried()
            weights = torch.zeros(a.source_length, len(targets), dtype=torch.float32)
            for j, t in enumerate(targets):
                for s, w in carried.get(t, ()):
                    weights[s, j] += w
            self.blend_weights = to_device(weights, device)                                    # [Ls, T]
            self.blend_target = to_device(torch.tensor(targets, dtype=torch.int64), device)
            self.blend_own = to_device(torch.tensor([t in set(a.own) for t in targets], dtype=torch.bool), device)
            scale = torch.ones(len(targets), heads)
            if request.scales:
                for j, t in enumerate(targets):
                    for (p, _), factors in zip(request.scales, per_head):
                        if p == t:
                            scale[j] = factors
            self.blend_scale = to_device(scale, device)                                         # [T, H]


def _halved_twice(n: int) -> int:
    """A side after two of the UNet's stride-2 downsamplings (each rounds up)."""
    return ((n + 1) // 2 + 1) // 2


class EditProcessor:
    feature = FEATURE

    # --- the core's hooks ---------------------------------------------------------------------------------------

    def self_attention_keys(self, diffusion_model):
        return self_attention_layers(diffusion_model)

    def process(self, call: AttnCall, q, k, v, chunks: Sequence[Chunk]):
        step = sampling_step(call)
        if step is None:
            return q, k, v
        for chunk in chunks:
            request: EditRequest = chunk.request
            plan = self._plan(call, chunk, v)
            active = step[0] < request.steps(request.cross_replace, step[1])
            if plan.blend:
                self._record_blend(call, plan, request, q, k, active)
            if active:
                q, k, v = self._replace_cross(call, plan, q, k, v)
        return q, k, v

    def process_self(self, call: AttnCall, q, k, v, chunks: Sequence[Chunk]):
        step = sampling_step(call)
        if step is None:
            return q, k, v
        for chunk in chunks:
            request: EditRequest = chunk.request
            if (call.key not in request.self_keys
                    or step[0] >= request.steps(request.self_replace, step[1])):
                continue
            plan = self._plan(call, chunk, v, self_attention=True)
            q, k = q.index_select(0, plan.take), k.index_select(0, plan.take)
        return q, k, v

    def process_output(self, call: AttnCall, out, chunks):
        for rows, term in call.state.pop(FEATURE, ()):
            out = out.index_add(0, rows, term.to(out.dtype))
        return out

    # --- the work ------------------------------------------------------------------------------------------------

    def _plan(self, call: AttnCall, chunk: Chunk, v, self_attention: bool = False) -> _Plan:
        """The chunk's plan, kept on its request across sampling runs (it depends only on the request, the
        transformer and where the chunk sits in the batch); built with asynchronous copies to the device."""
        batch, context, channels = v.shape
        request: EditRequest = chunk.request
        if self_attention:   # only the rows matter; the context is the image
            key = ("self", chunk.rows.start, chunk.rows.stop, batch, v.device)
        else:
            key = (call.key, chunk.rows.start, chunk.rows.stop, batch, context, channels, v.device, v.dtype)
        return kept_plan(request.plans, key, lambda: self._new_plan(call, chunk, request, v, self_attention))

    @staticmethod
    def _new_plan(call: AttnCall, chunk: Chunk, request: EditRequest, v, self_attention: bool):
        batch, context, channels = v.shape
        if not self_attention:
            return _Plan(call, chunk, request, batch, context, channels, v.device, v.dtype)
        rows = range(chunk.rows.start, chunk.rows.stop)
        if len(rows) % 2:
            raise EditRuntimeError(f"the edit conditioning got {len(rows)} latent row(s); it needs pairs "
                                   "(source, target): connect the LATENT output of HRV Prompt Edit to the sampler")
        return _RowsPlan(_take_source_rows(rows, batch, v.device))

    @staticmethod
    def _replace_cross(call: AttnCall, plan: _Plan, q, k, v):
        target = plan.target_rows
        v_target = v.index_select(0, target)
        if plan.context != plan.target_length:
            v_target = v_target[:, :plan.target_length]
        v_target = fused.scale_rows(v_target, plan.scale_positions, plan.scale)
        if plan.identity:
            carried = v_target
        else:
            carried = fused.fold_values(v_target, plan.pair_target, plan.pair_source, plan.weights, plan.source_length)
        if plan.own is not None:
            kept = fused.repeat_context(fused.keep_values(v_target, plan.own), plan.context)
            term = call.attention(q.index_select(0, target), k.index_select(0, target), kept)
            call.state.setdefault(FEATURE, []).append((target, term))
        q, k = q.index_select(0, plan.take), k.index_select(0, plan.take)
        v = v.index_copy(0, target, fused.repeat_context(carried, plan.context))
        return q, k, v

    @staticmethod
    def _record_blend(call: AttnCall, plan: _Plan, request: EditRequest, q, k, active: bool) -> None:
        heads = call.heads
        source, target = plan.source_rows, plan.target_rows
        probs_s = fused.attention_probs(q.index_select(0, source), k.index_select(0, source), heads, plan.source_length)
        probs_t = fused.attention_probs(q.index_select(0, target), k.index_select(0, target), heads, plan.target_length)
        map_s = probs_s.index_select(-1, plan.blend_source).sum(-1).mean(1)                       # [P, N]
        own_t = probs_t.index_select(-1, plan.blend_target)                                       # [P, H, N, T]
        if active:
            carried_t = probs_s @ plan.blend_weights                                              # [P, H, N, T]
            edited = torch.where(plan.blend_own, own_t, carried_t) * plan.blend_scale.t()[None, :, None, :]
            map_t = edited.sum(-1).mean(1)
        else:
            map_t = own_t.sum(-1).mean(1)
        shape = call.extra_options.get("original_shape")
        queries = q.shape[1]
        if not shape or len(shape) != 4:
            raise EditRuntimeError("local blend needs a UNet that reports its latent shape (SD1.x, SDXL)")
        h, w = _halved_twice(shape[2]), _halved_twice(shape[3])
        if h * w != queries:
            raise EditRuntimeError(f"local blend: a {queries}-token map does not fit the {shape[2]}x{shape[3]} latent "
                                   "a quarter across; local blend needs the latent of HRV Prompt Edit without area "
                                   "conditioning")
        maps = call.run.cache.setdefault(BLEND_KEY, {})
        entry = maps.get(id(request))
        if entry is None:
            entry = maps[id(request)] = BlendMaps(request)
        entry.add(torch.stack([map_s, map_t], dim=1), (h, w))


class _RowsPlan:
    def __init__(self, take: torch.Tensor):
        self.take = take


def _take_source_rows(rows: range, batch: int, device) -> torch.Tensor:
    """Row index of the whole batch with every target row of `rows` pointing at its source row: one index_select
    gives the target rows the source's q (or k) and leaves the other rows as they are."""
    take = list(range(batch))
    for r in list(rows)[1::2]:
        take[r] = r - 1
    return to_device(torch.tensor(take, dtype=torch.int64), device)


EDIT = EditProcessor()
