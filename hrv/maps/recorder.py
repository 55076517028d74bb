"""Attention maps recorded as a processor of the attention core, on the side of the fused kernel.

For the chunks of the conditioning that carries a MapRequest, and only for the heads with a weight (every head for
the auto concept), this computes softmax_t(q_h k_h^T / sqrt(d)) over all the context keys, keeps the columns of the
requested words' tokens (a word's tokens averaged; a context that ComfyUI repeated to a longer one batched with it is
summed over its repeats, which gives the unrepeated attention; one matrix product does both) and adds them into
per-run, per-head accumulators of the layer's size. Nothing is stored per step; the head weights apply at read-out. q, k, v go on to the
inner attention unchanged, so the image is the one sampled without the recorder, bit for bit.

At the end of the run (end_run) the accumulators move to the CPU into the request's MapHolder, tagged with a digest of
the sampled latent, where the render node finds them.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..attention import AttnCall, Chunk
from ..attention.processor import request_block
from ..attention.transfer import to_device
from .request import FEATURE, MapError, MapRequest, RecordedMaps, latent_fingerprint

SUSPEND_KEY = "hrv_maps_suspended"      # set in run.cache while extra forwards (A&E's gradient passes) run
_ACCUMULATORS = (FEATURE, "accumulators")
# Upper bound on the [b, heads, n, T] score chunk, in elements: cache-sized on a CPU, large on a GPU.
MAX_SCORE_ELEMENTS = {"cpu": 1 << 19}
MAX_SCORE_ELEMENTS_DEFAULT = 1 << 24


def spatial_shape(extra_options: dict, queries: int) -> tuple[int, int]:
    """(h, w) of the layer this attn2 call runs in."""
    shape = extra_options.get("activations_shape")
    if shape is not None and len(shape) == 4 and int(shape[2]) * int(shape[3]) == queries:
        return int(shape[2]), int(shape[3])
    original = extra_options.get("original_shape")
    if original is not None and len(original) >= 4:
        h, w = int(original[-2]), int(original[-1])
        for level in range(8):
            hh, ww = math.ceil(h / 2 ** level), math.ceil(w / 2 ** level)
            if hh * ww == queries:
                return hh, ww
    side = math.isqrt(queries)
    if side * side == queries:
        return side, side
    raise MapError(f"cannot tell the height and width of a cross-attention layer with {queries} positions")


def latent_shape(extra_options: dict, fallback: tuple[int, int]) -> tuple[int, int]:
    original = extra_options.get("original_shape")
    if original is not None and len(original) >= 4:
        return int(original[-2]), int(original[-1])
    return fallback


class _Plan:
    """Per request, transformer, context length and device: which heads, and the token-averaging matrix."""

    def __init__(self, request: MapRequest, key, heads: int, context: int, period: int, device):
        block = request_block(request.layout, key, heads, "mapped", MapError)
        if context % period:
            raise MapError(f"the cross-attention context has {context} tokens, not a multiple of the {period} tokens "
                           "of the mapped conditioning")
        weights = request.record_weights
        chosen = torch.arange(heads) if weights is None else torch.nonzero(weights[block.columns] != 0).flatten()
        self.heads_cpu = chosen
        self.columns_cpu = chosen + block.first_column
        self.all_heads = chosen.numel() == heads
        self.heads = to_device(chosen, device)
        self.count = int(chosen.numel())
        self.budget = MAX_SCORE_ELEMENTS.get(torch.device(device).type, MAX_SCORE_ELEMENTS_DEFAULT)
        # [T, words]: the mean over a word's tokens, summed over the repeats of a context ComfyUI repeated.
        average = torch.zeros(context, len(request.words), dtype=torch.float32)
        for index, word in enumerate(request.words):
            for repeat in range(context // period):
                for p in word.positions:
                    average[repeat * period + p, index] += 1.0 / len(word.positions)
        self.average = to_device(average, device)
        self.hw = self.latent_hw = None        # the layer's (h, w) and the latent's, read from the first call


class RunAccumulator:
    """One request's sums during one sampling run, on the sampling device: per transformer, float32
    [B, chosen heads, h*w, words]."""

    def __init__(self, request: MapRequest):
        self.request = request
        self.sums: dict = {}            # attn2 key -> (plan, (h, w), float32 [B, k, h*w, words])
        self.calls: dict = {}           # attn2 key -> recorded calls (host ints: no tensor op per call)
        self.latent_hw = None
        self.batch = None

    def add(self, plan: _Plan, key, q: torch.Tensor, k: torch.Tensor, heads: int, hw, latent_hw) -> None:
        b, n, channels = q.shape
        context = k.shape[1]
        d = channels // heads
        if self.batch is None:
            self.batch, self.latent_hw = b, latent_hw
        elif b != self.batch:
            raise MapError(f"the mapped conditioning came with {b} images in one call and {self.batch} in another; "
                           "sample one batch size per run")
        entry = self.sums.get(key)
        chosen = plan.count
        if entry is None:
            entry = self.sums[key] = (plan, hw, torch.zeros(b, chosen, n, plan.average.shape[1], dtype=torch.float32,
                                                            device=q.device))
        acc = entry[2].view(-1, plan.average.shape[1])
        qh = q.reshape(b, n, heads, d)
        kh = k.reshape(b, context, heads, d)
        if not plan.all_heads:
            qh, kh = qh.index_select(2, plan.heads), kh.index_select(2, plan.heads)
        qh = qh.transpose(1, 2)                                                   # [b, k, n, d]
        kt = kh.permute(0, 2, 3, 1) * (d ** -0.5)                                 # [b, k, d, T]
        step = max(1, plan.budget // max(1, b * chosen * context))
        if step >= n:
            probs = torch.matmul(qh, kt).softmax(-1, dtype=torch.float32)       # [b, k, n, T]
            acc.addmm_(probs.view(-1, context), plan.average)                    # + the words' columns, tokens averaged
        else:
            rows = entry[2]
            for start in range(0, n, step):
                probs = torch.matmul(qh[:, :, start:start + step], kt).softmax(-1, dtype=torch.float32)
                rows[:, :, start:start + step] += torch.matmul(probs, plan.average)
        self.calls[key] = self.calls.get(key, 0) + 1

    def finish(self, output) -> RecordedMaps | None:
        if self.batch is None:
            return None
        maps = {}
        with torch.inference_mode(False):
            for key, (plan, (h, w), sums) in self.sums.items():
                cpu = sums.detach().to("cpu").clone()                             # [B, k, h*w, words]
                maps[key] = (plan.heads_cpu.clone(), cpu.permute(0, 1, 3, 2).reshape(*cpu.shape[:2], -1, h, w).contiguous())
            calls = torch.zeros(self.request.layout.num_heads, dtype=torch.int64)     # per head
            for key, n in self.calls.items():
                calls[self.sums[key][0].columns_cpu] += n
        return RecordedMaps(self.request, self.latent_hw, self.batch, maps, calls, latent_fingerprint(output))


class MapRecorder:
    feature = FEATURE

    def _active(self, call: AttnCall, request: MapRequest) -> bool:
        if not request.gated:
            return True
        sigmas = call.extra_options.get("sigmas")
        if sigmas is None:
            return True
        cache = call.run.cache
        gate = cache.get((FEATURE, "gate", id(request)))
        if gate is not None and gate[0] is sigmas:
            return gate[1]
        bounds = cache.get((FEATURE, "bounds", id(request)))
        if bounds is None:
            bounds = cache[(FEATURE, "bounds", id(request))] = (call.run.percent_to_sigma(request.start_percent),
                                                                call.run.percent_to_sigma(request.end_percent))
        sigma = float(sigmas.reshape(-1)[0])      # one host read per model call, cached for its other layers
        active = bounds[1] <= sigma <= bounds[0]
        cache[(FEATURE, "gate", id(request))] = (sigmas, active)
        return active

    def process(self, call: AttnCall, q, k, v, chunks: Sequence[Chunk]):
        cache = call.run.cache
        if cache.get(SUSPEND_KEY):
            return q, k, v
        accumulators = cache.setdefault(_ACCUMULATORS, {})
        heads = call.heads
        for chunk in chunks:
            request: MapRequest = chunk.request
            if not self._active(call, request):
                continue
            period = chunk.context_length or request.context_length
            plan_key = (FEATURE, "plan", id(request), call.key, k.shape[1], period, q.device)
            plan = cache.get(plan_key)
            if plan is None:
                plan = cache[plan_key] = _Plan(request, call.key, heads, k.shape[1], period, q.device)
            if plan.count == 0:
                continue
            if plan.hw is None or plan.hw[0] * plan.hw[1] != q.shape[1]:
                plan.hw = spatial_shape(call.extra_options, q.shape[1])
                plan.latent_hw = latent_shape(call.extra_options, plan.hw)
            acc = accumulators.get(id(request))
            if acc is None:
                acc = accumulators[id(request)] = RunAccumulator(request)
            with torch.no_grad():
                acc.add(plan, call.key, q[chunk.rows], k[chunk.rows], heads, plan.hw, plan.latent_hw)
        return q, k, v

    def end_run(self, run) -> None:
        output = getattr(run, "output", None)
        if output is None:      # the run failed or was interrupted: keep the maps of the last complete run
            return
        for acc in run.cache.get(_ACCUMULATORS, {}).values():
            recorded = acc.finish(output)
            if recorded is not None:
                acc.request.holder.commit(recorded)


RECORDER = MapRecorder()
