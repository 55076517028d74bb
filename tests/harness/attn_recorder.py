"""An instrumented inner attention for tests of the attention core on the real ComfyUI sampler.

`AttnRecorder.install(model)` puts a per-transformer attn2 replacement on every SD1 cross-attention of a clone
(as IPAdapter and other packs do) that records the value rows v it is given, then runs ComfyUI's
optimized_attention. Installed before an HRV node, it becomes the core's inner attention and so sees v after
steering; on a model without the core it sees the plain to_v(context).

Each chunk of a call is named by the conditioning whose context it holds: tag a CONDITIONING with
`name_conditioning`; a CALC_COND_BATCH wrapper reads the processed conds of each calc_cond_batch call, so a chunk
is found by (cond_or_uncond, uuid). That pair, not the uuid alone, names a chunk: for every positive entry with an
area (ConditioningSetArea, masks) ComfyUI's process_conds appends to the negative a copy of the positive entry's
dict (same uuid, same tag) holding the negative's model_conds; such a chunk is named after the entry that owns
its context. Call `take()` to get the calls recorded since the last take.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

# SD1.x cross-attention transformers in UNet execution order: the column order of the published HRVs (8 heads each).
SD1_CROSS_ATTENTION = ([("input", i, 0) for i in (1, 2, 4, 5, 7, 8)] + [("middle", 0, 0)]
                       + [("output", i, 0) for i in range(3, 12)])
SD1_HEADS = 8
NAME_KEY = "hrv_test_name"     # set on a CONDITIONING entry's dict; ComfyUI copies it into the guider's conds
WRAPPER_KEY = "hrv_test_recorder"


def name_conditioning(conditioning: list, name: str) -> list:
    """A copy of a CONDITIONING whose entries are named `name` in the recorded calls."""
    return [[entry[0], {**entry[1], NAME_KEY: name}, *entry[2:]] for entry in conditioning]


def sd1_columns(key: tuple) -> slice:
    """Columns of an SD1 HRV row that belong to the heads of transformer `key`."""
    first = SD1_CROSS_ATTENTION.index(tuple(key)) * SD1_HEADS
    return slice(first, first + SD1_HEADS)


@dataclass
class Call:
    key: tuple                 # (block, block_id, transformer_index)
    run: int                   # sampling run (OUTER_SAMPLE) it belongs to
    uuids: tuple               # transformer_options["uuids"] of the call
    names: tuple               # the test name of the conditioning whose context each chunk holds (None: untagged)
    cond_or_uncond: tuple
    sigma: float               # the call's sigma (transformer_options["sigmas"])
    v: torch.Tensor            # [B, L, C] as this attention received it
    source: str                # which recorder: "transformer", "block", or a label given to attention()

    def chunk(self, i: int) -> torch.Tensor:
        per = self.v.shape[0] // len(self.uuids)
        return self.v[i * per:(i + 1) * per]


class AttnRecorder:
    def __init__(self):
        self.calls: list[Call] = []
        self.runs = 0                   # sampling runs seen (OUTER_SAMPLE)
        self._owners: dict = {}         # id(cross_attn tensor) -> name, from the guider's conds of the current run
        self._batch: dict = {}          # (cond_or_uncond, uuid) -> name, for the current calc_cond_batch call

    def attention(self, source: str = "transformer", key: tuple | None = None):
        """An attn2 replacement that records, then attends with ComfyUI's optimized_attention.

        Without `key`, the transformer is read from extra_options (for per-block replacements).
        """
        from comfy.ldm.modules.attention import optimized_attention

        def recording_attention(q, k, v, extra_options):
            where = key or (extra_options["block"][0], extra_options["block"][1], extra_options.get("block_index", 0))
            uuids = tuple(extra_options.get("uuids") or ())
            cond_or_uncond = tuple(extra_options.get("cond_or_uncond") or ())
            names = tuple(self._batch.get(pair) for pair in zip(cond_or_uncond, uuids))
            sigmas = extra_options.get("sigmas")
            sigma = float(sigmas.reshape(-1)[0]) if sigmas is not None else float("nan")
            self.calls.append(Call(tuple(where), self.runs - 1, uuids, names, cond_or_uncond, sigma, v.detach().clone(),
                                   source))
            return optimized_attention(q, k, v, extra_options["n_heads"], attn_precision=extra_options.get("attn_precision"))
        return recording_attention

    def _outer_sample(self, executor, *args, **kwargs):
        self.runs += 1
        self._owners = {id(c["cross_attn"]): c.get(NAME_KEY) for conds in (executor.class_obj.conds or {}).values()
                        for c in conds or [] if c.get("cross_attn") is not None}
        return executor(*args, **kwargs)

    def _name(self, cond):
        crossattn = (cond.get("model_conds") or {}).get("c_crossattn")
        context = getattr(crossattn, "cond", None)
        if context is None or context is cond.get("cross_attn"):
            return cond.get(NAME_KEY)
        return self._owners.get(id(context), "<unknown context>")

    def _calc_cond_batch(self, executor, model, conds, *args, **kwargs):
        previous = self._batch
        self._batch = {(i, c["uuid"]): self._name(c) for i, group in enumerate(conds) for c in group or [] if "uuid" in c}
        try:
            return executor(model, conds, *args, **kwargs)
        finally:
            self._batch = previous

    def watch(self, model):
        """A clone of `model` whose calls' chunks get named, without recording attention."""
        import comfy.patcher_extension
        m = model.clone()
        wrappers = comfy.patcher_extension.WrappersMP
        for kind, fn in ((wrappers.OUTER_SAMPLE, self._outer_sample), (wrappers.CALC_COND_BATCH, self._calc_cond_batch)):
            if not m.get_wrappers(kind, WRAPPER_KEY):
                m.add_wrapper_with_key(kind, WRAPPER_KEY, fn)
        return m

    def install(self, model, keys=SD1_CROSS_ATTENTION):
        """A clone of `model` with a recording per-transformer attn2 replacement on each of `keys`."""
        m = self.watch(model)
        for key in keys:
            m.set_model_attn2_replace(self.attention("transformer", key), *key)
        return m

    def take(self) -> list[Call]:
        calls, self.calls = self.calls, []
        return calls
