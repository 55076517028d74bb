"""Mutated HRV files for fuzz tests: truncated, bit-flipped, lying header lengths, wrong dtype/shape, NaN, junk.

    raw = good_file_bytes(work_dir)             # a valid small SD1 HRV (4 concepts x 128 heads)
    for kind, data in mutants(work_dir, raw, random.Random(0), count=1000): ...

Shared by the loader fuzz test (1,000 files through hrv.load) and the server test (HRV Loader over HTTP).
"""
from __future__ import annotations

import os
import random
import struct
from typing import Iterator

import torch

KINDS = ("truncated", "bit-flipped", "header-length", "semantic", "junk")


def good_file_bytes(work_dir: str) -> bytes:
    """Write work_dir/good.safetensors, a valid HRV with votes, and return its bytes."""
    from hrv.format.hrv_file import HRV, normalise_rows, save
    from hrv.format.layout import known_layout
    votes = torch.randint(0, 4, (3, 4, 128), generator=torch.Generator().manual_seed(1))  # [steps, concepts, heads]
    path = os.path.join(work_dir, "good.safetensors")
    save(HRV(matrix=normalise_rows(votes.sum(0)), layout=known_layout("sd1"), concepts=list("ABCD"),
             provenance={"k": 1}, votes=votes), path)
    with open(path, "rb") as f:
        return f.read()


def _consistent(work_dir: str, name: str, tensors: dict, meta_changes: dict) -> bytes:
    """A well-formed safetensors file with a valid checksum but a semantic defect."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from hrv.format.hrv_file import checksum
    with safe_open(os.path.join(work_dir, "good.safetensors"), framework="pt") as f:
        meta = dict(f.metadata())
    meta.update(meta_changes)
    checkable = all(t.dtype in (torch.float32, torch.int64) for t in tensors.values())
    meta["checksum"] = checksum(tensors, meta) if checkable else "x"
    path = os.path.join(work_dir, name)
    save_file(tensors, path, metadata=meta)
    with open(path, "rb") as f:
        return f.read()


def semantic_mutants(work_dir: str) -> list[tuple[str, bytes]]:
    """Well-formed files that are wrong in meaning: NaN/inf/negative, shapes, dtypes, layout, metadata."""
    ones = torch.ones(4, 128)
    cases = [
        ("nan", {"hrv": torch.full((4, 128), float("nan"))}, {}),
        ("inf", {"hrv": torch.full((4, 128), float("inf"))}, {}),
        ("negative", {"hrv": -ones}, {}),
        ("shape", {"hrv": torch.ones(4, 1300)}, {}),
        ("rows", {"hrv": torch.ones(7, 128)}, {}),
        ("float64", {"hrv": torch.ones(4, 128, dtype=torch.float64)}, {}),
        ("float16", {"hrv": torch.ones(4, 128, dtype=torch.float16)}, {}),
        ("int32", {"hrv": torch.ones(4, 128, dtype=torch.int32)}, {}),
        ("3d", {"hrv": torch.ones(1, 4, 128)}, {}),
        ("votes-shape", {"hrv": ones, "votes": torch.ones(2, 4, 100, dtype=torch.int64)}, {}),
        ("architecture", {"hrv": ones}, {"architecture": "sdxl"}),
        ("duplicate-concepts", {"hrv": ones}, {"concepts": '["A", "a", "B", "C"]'}),
        ("bad-json", {"hrv": ones}, {"head_layout": "{oops"}),
        ("no-matrix", {"other": ones}, {}),
    ]
    return [(name, _consistent(work_dir, f"{name}.safetensors", tensors, meta)) for name, tensors, meta in cases]


def mutants(work_dir: str, raw: bytes, rng: random.Random, count: int) -> Iterator[tuple[str, bytes]]:
    """count (kind, bytes) mutants of raw, the five kinds in turn; a few may equal raw by chance (skip those)."""
    (header_len,) = struct.unpack("<Q", raw[:8])
    semantic = semantic_mutants(work_dir)
    for i in range(count):
        kind = KINDS[i % len(KINDS)]
        if kind == "truncated":
            yield kind, raw[: rng.randrange(0, len(raw) - 1)]
        elif kind == "bit-flipped":  # 1-8 flipped bits anywhere
            data = bytearray(raw)
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            yield kind, bytes(data)
        elif kind == "header-length":  # oversized or lying header length
            yield kind, struct.pack("<Q", rng.choice([header_len + rng.randint(1, 10 ** 6), 2 ** 63, 2 ** 40, len(raw)])) + raw[8:]
        elif kind == "semantic":
            name, data = semantic[(i // len(KINDS)) % len(semantic)]
            yield f"{kind}:{name}", data
        else:  # random junk of a plausible size, or a header that is not a JSON object
            yield kind, rng.choice([bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 64))),
                                    struct.pack("<Q", 2) + b"[]" + raw[8 + header_len:]])
