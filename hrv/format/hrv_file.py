"""The HRV file format: one `.safetensors` file, validated on every load.

Tensors: `hrv` float32 [concepts, heads]; optional `votes` int64 [steps, concepts, heads]
(raw vote counts of a build) and `hrv_per_timestep` float32 [steps, concepts, heads].
Metadata (strings): format, architecture, head_layout (JSON), concepts (JSON),
provenance (JSON), normalisation.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from dataclasses import dataclass, field

import torch

from .layout import HeadLayout, LayoutError, known_layout

FORMAT = "hrv/1"
NORMALISATION = "l1_rows_sum_to_num_heads"
MAX_HEADER_BYTES = 16 * 1024 * 1024


class HRVFileError(ValueError):
    """A file that is not a valid HRV; the message says what to do."""


@dataclass
class HRV:
    matrix: torch.Tensor                       # float32 [C, H]
    layout: HeadLayout
    concepts: list[str]
    provenance: dict = field(default_factory=dict)
    votes: torch.Tensor | None = None          # int64 [S, C, H]
    per_timestep: torch.Tensor | None = None   # float32 [S, C, H]

    def __post_init__(self):
        validate(self)

    @property
    def arch(self) -> str:
        return self.layout.arch

    @property
    def num_heads(self) -> int:
        return self.layout.num_heads

    def concept_index(self, name: str) -> int:
        lowered = {c.lower(): i for i, c in enumerate(self.concepts)}
        try:
            return lowered[name.strip().lower()]
        except KeyError:
            raise ValueError(f"concept {name!r} is not in this HRV; pick one of: {', '.join(self.concepts)}") from None

    def row(self, name: str) -> torch.Tensor:
        """float32 [H] relevance of every head for one concept (mean 1)."""
        return self.matrix[self.concept_index(name)]

    def summary(self) -> dict:
        return {"format": FORMAT, "architecture": self.arch, "num_heads": self.num_heads,
                "num_concepts": len(self.concepts), "concepts": self.concepts,
                "has_votes": self.votes is not None, "has_per_timestep": self.per_timestep is not None,
                "normalisation": NORMALISATION, "provenance": self.provenance}


def normalise_rows(counts: torch.Tensor) -> torch.Tensor:
    """L1-normalise each concept row of [C, H] to sum to H; all-zero rows stay zero."""
    counts = counts.to(torch.float64)
    totals = counts.sum(-1, keepdim=True)
    return torch.where(totals > 0, counts * counts.shape[-1] / totals.clamp_min(1e-300), counts).float()


def validate(hrv: HRV) -> None:
    m = hrv.matrix
    if not isinstance(m, torch.Tensor) or m.dtype != torch.float32 or m.dim() != 2:
        raise HRVFileError("the HRV matrix must be a float32 tensor [concepts, heads]")
    if m.shape[1] != hrv.layout.num_heads:
        raise HRVFileError(f"the HRV has {m.shape[1]} head columns but its {hrv.arch} layout has "
                           f"{hrv.layout.num_heads} heads: it was made for another architecture")
    if m.shape[0] != len(hrv.concepts) or m.shape[0] < 1:
        raise HRVFileError(f"the HRV has {m.shape[0]} rows but names {len(hrv.concepts)} concepts")
    if len({c.lower() for c in hrv.concepts}) != len(hrv.concepts) or not all(c.strip() for c in hrv.concepts):
        raise HRVFileError("concept names must be non-empty and distinct")
    if not torch.isfinite(m).all():
        raise HRVFileError("the HRV contains NaN or infinite values: rebuild or re-import it")
    if (m < 0).any():
        raise HRVFileError("the HRV contains negative relevance values: it is not an HRV")
    for name, extra, dtype in (("votes", hrv.votes, torch.int64), ("hrv_per_timestep", hrv.per_timestep, torch.float32)):
        if extra is None:
            continue
        if extra.dtype != dtype or extra.dim() != 3 or tuple(extra.shape[1:]) != tuple(m.shape):
            raise HRVFileError(f"'{name}' must be {dtype} [steps, {m.shape[0]}, {m.shape[1]}], "
                               f"got {extra.dtype} {list(extra.shape)}")
        if not torch.isfinite(extra.double()).all() or (extra < 0).any():
            raise HRVFileError(f"'{name}' contains negative, NaN or infinite values")


def checksum(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    """sha256 over metadata and tensor bytes: any bit flip that still parses is caught on load."""
    digest = hashlib.sha256(json.dumps({k: v for k, v in metadata.items() if k != "checksum"}, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        digest.update(f"{name}:{t.dtype}:{list(t.shape)}".encode())
        digest.update(t.numpy().tobytes())
    return digest.hexdigest()


def save(hrv: HRV, path: str) -> None:
    """Write atomically: a reader never sees a half-written file."""
    from safetensors.torch import save_file
    validate(hrv)
    tensors = {"hrv": hrv.matrix.contiguous()}
    if hrv.votes is not None:
        tensors["votes"] = hrv.votes.contiguous()
    if hrv.per_timestep is not None:
        tensors["hrv_per_timestep"] = hrv.per_timestep.contiguous()
    metadata = {"format": FORMAT, "architecture": hrv.arch, "normalisation": NORMALISATION,
                "head_layout": json.dumps(hrv.layout.compact()), "concepts": json.dumps(hrv.concepts),
                "provenance": json.dumps(hrv.provenance, sort_keys=True)}
    metadata["checksum"] = checksum(tensors, metadata)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".hrv-", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _read_header(path: str) -> dict:
    # Checked by hand first so a truncated or hostile file fails with our message, not a parser's.
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise HRVFileError("the file is too short to be a .safetensors HRV")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES or 8 + n > size:
            raise HRVFileError("the file's header is oversized or truncated: it is damaged or not an HRV")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise HRVFileError("the file's header is not valid JSON: it is damaged or not a .safetensors file") from None
    if not isinstance(header, dict):
        raise HRVFileError("the file's header is malformed: it is not an HRV")
    data_len = size - 8 - n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            start, end = info["data_offsets"]
            ok = 0 <= start <= end <= data_len
        except (TypeError, ValueError, KeyError):
            ok = False
        if not ok:
            raise HRVFileError(f"tensor {name!r} points outside the file: the file is truncated or damaged")
    return header


def load(path: str) -> HRV:
    if not os.path.isfile(path):
        raise HRVFileError(f"no HRV file at {path}")
    if not path.endswith(".safetensors"):
        raise HRVFileError(f"{os.path.basename(path)} is not a .safetensors HRV; convert published .npy files "
                           "with `python -m hrv import-official SRC_DIR OUT_DIR`")
    header = _read_header(path)
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise HRVFileError(f"{os.path.basename(path)} has malformed metadata: it is damaged or not an HRV")
    if meta.get("format") != FORMAT:
        raise HRVFileError(f"{os.path.basename(path)} is not an HRV file (format {meta.get('format')!r}, "
                           f"expected {FORMAT!r})")
    try:
        from safetensors import safe_open
        with safe_open(path, framework="pt") as f:
            names = set(f.keys())
            if "hrv" not in names:
                raise HRVFileError("the file has no 'hrv' tensor: it is not an HRV")
            tensors = {k: f.get_tensor(k) for k in names & {"hrv", "votes", "hrv_per_timestep"}}
    except HRVFileError:
        raise
    except Exception as e:  # safetensors raises several types for damaged data
        raise HRVFileError(f"the file's tensors cannot be read ({type(e).__name__}): it is damaged") from None
    expected = {"hrv": torch.float32, "votes": torch.int64, "hrv_per_timestep": torch.float32}
    for name, t in tensors.items():
        if t.dtype != expected[name]:
            raise HRVFileError(f"tensor {name!r} is {t.dtype}, expected {expected[name]}: it is not an HRV")
    if meta.get("checksum") != checksum(tensors, meta):
        raise HRVFileError(f"{os.path.basename(path)} fails its checksum: the file is damaged; "
                           "download, re-import or rebuild it")
    try:
        arch = meta.get("architecture", "")
        compact = json.loads(meta.get("head_layout", "null"))
        layout = HeadLayout.from_compact(arch, compact) if compact is not None else known_layout(arch)
        if arch != "custom" and layout != known_layout(arch):
            raise HRVFileError(f"the head layout stored in the file does not match the {arch} UNet")
        concepts = json.loads(meta.get("concepts", "null"))
        provenance = json.loads(meta.get("provenance", "{}"))
    except (json.JSONDecodeError, LayoutError) as e:
        raise HRVFileError(f"the file's metadata is invalid: {e}") from None
    if not isinstance(concepts, list) or not all(isinstance(c, str) for c in concepts):
        raise HRVFileError("the file's concept list is missing or malformed")
    return HRV(matrix=tensors["hrv"], layout=layout, concepts=concepts,
               provenance=provenance if isinstance(provenance, dict) else {},
               votes=tensors.get("votes"), per_timestep=tensors.get("hrv_per_timestep"))


def read_concept_names(path: str) -> list[str]:
    """The concept names in a file's metadata, read from its header only (no tensors, no checksum)."""
    meta = _read_header(path).get("__metadata__") or {}
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise HRVFileError(f"{os.path.basename(path)} is not an HRV file")
    try:
        concepts = json.loads(meta.get("concepts", "null"))
    except (TypeError, json.JSONDecodeError):
        concepts = None
    if not isinstance(concepts, list) or not all(isinstance(c, str) for c in concepts):
        raise HRVFileError(f"{os.path.basename(path)} has no readable concept list")
    return concepts
