"""Per-run state of the attention core: the conditionings of one sampling run and the processors' caches.

Made by the OUTER_SAMPLE wrapper from the guider's conds before sampling starts and dropped after it, so
nothing of one run (uuids, cached index tensors) leaks into the next.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

from .adapter import installed_replacement
from .chunks import Chunk, CondEntry, borrowed_uuids, borrows_uuid, call_uuids, split_chunks
from .processor import AttnCall
from .requests import requests_of

log = logging.getLogger("hrv.attention")

ACTIVE_KEY = "hrv_core_active"  # set in extra_options while the core's inner attention runs: nested cores pass through
MAX_CACHED_LAYOUTS = 64


def core_entries(conds: Mapping[str, list] | None) -> dict[Any, CondEntry]:
    """{uuid: CondEntry} of every conditioning of the guider that carries requests."""
    entries = {}
    for group in (conds or {}).values():
        for cond in group or []:
            requests = requests_of(cond)
            if requests and "uuid" in cond:
                cross_attn = cond.get("cross_attn")
                length = int(cross_attn.shape[1]) if cross_attn is not None and cross_attn.dim() >= 2 else 0
                entries[cond["uuid"]] = CondEntry(requests, length)
    return entries


class RunState:
    def __init__(self, processors: Mapping[str, Any], conds: Mapping[str, list] | None, model_sampling=None,
                 attn2_replacements: Mapping | None = None, keys=(), fused=None):
        self.processors = dict(processors)
        self._fused = fused                # ComfyUI's fused attention fn(q, k, v, extra_options), see AttnCall.attention
        self.entries = core_entries(conds)
        self.model_sampling = model_sampling
        self.cache: dict = {}              # processors' per-run caches
        self.output = None                 # the sampled latent, set when the run completes (end_run sees it)
        self.ran: set = set()              # transformers where the core ran
        self._chunks: dict = {}
        self._memo = None                  # (uuids list, borrowed, batch, work) of the last UNet call
        # (cond_or_uncond, uuid) -> owner uuid for the chunks of the current calc_cond_batch call that carry one
        # conditioning's uuid but another's context (chunks.borrowed_uuids); set by begin_batch.
        self.borrowed: dict = {}
        self._borrows: dict = {}
        self.shadowed, self.inner_override = self._inspect_replacements(attn2_replacements or {}, keys)
        missing = sorted({f for e in self.entries.values() for f in e.requests} - set(self.processors))
        if missing:
            log.warning("a conditioning asks for %s, but the model connected to the sampler does not do it: connect "
                        "the MODEL output of the HRV node that made the conditioning", ", ".join(missing))

    @staticmethod
    def _inspect_replacements(attn2: Mapping, keys) -> tuple[list, dict]:
        """Transformers whose core another node replaced, and per-block patches installed after the core."""
        from .core import is_core_fn
        shadowed, override = [], {}
        for key in keys:
            fn, source = installed_replacement(attn2, key)
            if not is_core_fn(fn):
                shadowed.append(key)
                continue
            block_fn = attn2.get(tuple(key[:2]))
            # ComfyUI would run a per-block patch added after the core, had the core not been per-transformer.
            if (block_fn is not None and not is_core_fn(block_fn) and fn.hrv_inner_source != "transformer"
                    and block_fn is not fn.hrv_inner):
                override[key] = block_fn
        return shadowed, override

    @property
    def fused(self):
        if self._fused is None:
            from comfy.ldm.modules.attention import optimized_attention

            from .adapter import fused_attention
            self._fused = fused_attention(optimized_attention)
        return self._fused

    def percent_to_sigma(self, percent: float) -> float:
        if self.model_sampling is None:
            return float("inf") if percent <= 0 else 0.0
        return float(self.model_sampling.percent_to_sigma(percent))

    def begin_batch(self, conds) -> dict:
        """Called with the processed conds of each calc_cond_batch call (list i = cond_or_uncond i); returns the
        previous `borrowed` for the caller to restore."""
        previous = self.borrowed
        self.borrowed = borrowed_uuids(conds, self._borrows_cached) if self.entries else {}
        return previous

    def _borrows_cached(self, cond) -> bool:
        found = self._borrows.get(id(cond))
        if found is None:
            found = self._borrows[id(cond)] = (cond, borrows_uuid(cond))   # the cond is kept so its id stays unique
        return found[1]

    def chunks_for(self, uuids, batch: int) -> list[tuple[str, list[Chunk]]]:
        """[(feature, its chunks)] of a call, in the order the processors were installed."""
        key = (tuple(uuids), batch)
        found = self._chunks.get(key)
        if found is None:
            by_feature: dict[str, list[Chunk]] = {}
            for rows, uuid, entry in split_chunks(uuids, batch, self.entries):
                index = rows.start // (rows.stop - rows.start)      # the chunk's number in the call, requests or not
                for feature, request in entry.requests.items():
                    if feature in self.processors:
                        by_feature.setdefault(feature, []).append(Chunk(index, rows, request, entry.context_length, uuid))
            found = [(f, by_feature[f]) for f in self.processors if f in by_feature]
            if len(self._chunks) >= MAX_CACHED_LAYOUTS:
                self._chunks.clear()
            self._chunks[key] = found
        return found

    def _work_of(self, extra_options: dict, batch: int) -> list:
        """chunks_for of this call. ComfyUI hands every transformer of one UNet call the same uuids list object,
        so the answer is kept for that object: the 16 to 70 attention calls of a step pay for one lookup."""
        raw = extra_options.get("uuids")
        memo = self._memo
        if memo is not None and memo[0] is raw and memo[1] is self.borrowed and memo[2] == batch:
            return memo[3]
        uuids = call_uuids(extra_options, self.borrowed)
        work = self.chunks_for(uuids, batch) if uuids else []
        self._memo = (raw, self.borrowed, batch, work)     # holds raw, so its identity cannot be reused meanwhile
        return work

    def attend(self, key, q, k, v, extra_options: dict, inner, inner_source: str, self_attention: bool = False):
        if not self_attention:
            self.ran.add(key)
        if inner_source != "transformer" and not self_attention:
            inner = self.inner_override.get(key, inner)
        hook = "process_self" if self_attention else "process"
        done = []
        if self.entries:
            work = self._work_of(extra_options, q.shape[0])
            if work:
                call = AttnCall(key, extra_options, self, self_attention)
                for feature, chunks in work:
                    processor = self.processors[feature]
                    process = getattr(processor, hook, None)
                    if process is not None:
                        q, k, v = process(call, q, k, v, chunks)
                        done.append((processor, chunks))
        extra_options[ACTIVE_KEY] = True
        try:
            out = inner(q, k, v, extra_options)
        finally:
            extra_options.pop(ACTIVE_KEY, None)
        for processor, chunks in reversed(done):
            finish = getattr(processor, "process_output", None)
            if finish is not None:
                out = finish(call, out, chunks)
        return out

    def finish(self) -> None:
        skipped = [k for k in self.shadowed if k not in self.ran]
        if skipped and self.entries:
            names = ", ".join(".".join(map(str, k)) for k in skipped[:4]) + (" ..." if len(skipped) > 4 else "")
            log.warning("HRV: another node replaced the HRV attention in %d cross-attention layer(s) (%s), so HRV "
                        "steering, editing and maps were skipped there. Put the HRV node after that node, closer to "
                        "the sampler, so that the HRV attention wraps it.", len(skipped), names)
        for processor in self.processors.values():
            end = getattr(processor, "end_run", None)
            if end is not None:
                end(self)
        self.cache.clear()
        self._chunks.clear()
        self._memo = None
        self._borrows.clear()
