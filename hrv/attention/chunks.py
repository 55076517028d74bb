"""Which conditioning each batch chunk of an attn2 call belongs to.

ComfyUI batches the chunks of several conditionings into one UNet call (cond and uncond under CFG, the
extra passes of SAG, PerpNeg or DualCFG) and names each chunk's conditioning in
`transformer_options["uuids"]`. This is the only place of the pack that reads it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping


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


def call_uuids(extra_options: Mapping) -> list | None:
    """The conditioning uuid of every chunk of an attn2 call; None outside a sampler."""
    return extra_options.get("uuids")


def split_chunks(uuids, batch: int, entries: Mapping[Any, CondEntry]) -> list[tuple[slice, Any, CondEntry]]:
    """(rows, uuid, entry) for every chunk of a call whose conditioning carries requests."""
    if not uuids:
        return []
    if batch % len(uuids):
        raise ChunkError(f"a batch of {batch} does not split into the {len(uuids)} conditioning chunks of this call")
    per = batch // len(uuids)
    return [(slice(i * per, (i + 1) * per), u, entries[u]) for i, u in enumerate(uuids) if u in entries]
