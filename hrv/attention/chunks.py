"""Which conditioning each batch chunk of an attn2 call belongs to.

ComfyUI batches the chunks of several conditionings into one UNet call (cond and uncond under CFG, the
extra passes of SAG, PerpNeg or DualCFG) and names each chunk's conditioning in
`transformer_options["uuids"]`. Only the attention core reads it: this module maps chunks to conditionings, and
run.py keys its per-UNet-call memo on the list's identity. A uuid can be borrowed:
ComfyUI's copies of the negative for area conditionings keep the area entry's uuid, so within one
calc_cond_batch call a chunk is named by (cond_or_uncond, uuid), cond_or_uncond being its cond list's index.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping


@dataclass(frozen=True)
class CondEntry:
    """What the core knows of one conditioning of a sampling run."""
    requests: Mapping[str, Any]   # feature -> request
    context_length: int           # tokens of this conditioning's own cross_attn


@dataclass(frozen=True)
class Chunk:
    """The batch rows of one conditioning in one attn2 call."""
    index: int                    # chunk number in the call
    rows: slice                   # its rows of q, k, v
    request: Any                  # the request of the feature being processed
    context_length: int           # the conditioning's own token count: a shorter one batched with a longer one is
                                  # repeated to the common length (ComfyUI's cond_cat), so positions recur with this period
    uuid: Any


class ChunkError(RuntimeError):
    """A batch that does not split into the chunks ComfyUI named; a bug or an unsupported sampler."""


def call_uuids(extra_options: Mapping, borrowed: Mapping | None = None) -> list | None:
    """The uuid of the conditioning whose context each chunk of an attn2 call holds; None outside a sampler.

    `borrowed` ((cond_or_uncond, uuid) -> uuid or None, from `borrowed_uuids`) renames the chunks of the current
    calc_cond_batch call that carry another conditioning's uuid.
    """
    uuids = extra_options.get("uuids")
    cond_or_uncond = extra_options.get("cond_or_uncond") or ()
    if not borrowed or not uuids or len(cond_or_uncond) != len(uuids):
        return uuids
    return [borrowed.get(pair, pair[1]) for pair in zip(cond_or_uncond, uuids)]


def split_chunks(uuids, batch: int, entries: Mapping[Any, CondEntry]) -> list[tuple[slice, Any, CondEntry]]:
    """(rows, uuid, entry) for every chunk of a call whose conditioning carries requests."""
    if not uuids:
        return []
    if batch % len(uuids):
        raise ChunkError(f"a batch of {batch} does not split into the {len(uuids)} conditioning chunks of this call")
    per = batch // len(uuids)
    return [(slice(i * per, (i + 1) * per), u, entries[u]) for i, u in enumerate(uuids) if u in entries]


def borrowed_uuids(conds, borrows: Callable[[Mapping], bool] | None = None) -> dict:
    """(cond_or_uncond, uuid) -> the uuid of the conditioning whose context that chunk holds (None: not found), for
    the chunks of one calc_cond_batch call (`conds`: its processed cond lists) that borrow another's uuid.

    The owner is the cond of the same list that shares the borrowing cond's c_crossattn (ComfyUI copies its
    model_conds).
    """
    borrows = borrows or borrows_uuid
    found = {}
    for index, group in enumerate(conds or ()):
        group = [c for c in group or () if "uuid" in c]
        flags = [borrows(c) for c in group]
        if not any(flags):
            continue
        owners = {id((c.get("model_conds") or {}).get("c_crossattn")): c["uuid"] for c, f in zip(group, flags) if not f}
        for cond, flag in zip(group, flags):
            if flag:
                found[(index, cond["uuid"])] = owners.get(id(cond["model_conds"]["c_crossattn"]))
    return found


def borrows_uuid(cond: Mapping) -> bool:
    """Whether a processed cond holds another conditioning's context under its own uuid.

    For every entry with an area (ConditioningSetArea, masks) ComfyUI's process_conds appends to each other cond
    group (the negative) a copy of that entry's dict, uuid and requests included, whose model_conds are the
    negative's: its chunks hold the negative's context and must get the negative's requests, not the entry's.
    """
    crossattn = (cond.get("model_conds") or {}).get("c_crossattn")
    own = cond.get("cross_attn")
    context = getattr(crossattn, "cond", None)
    if context is None or own is None or context is own:
        return False
    try:
        return context.shape != own.shape or not bool((context == own).all())
    except (AttributeError, RuntimeError, TypeError):
        return True
