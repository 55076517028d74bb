"""The published HRVs: import from .npy, export back bit-identically, download with sha256 pinning."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import urllib.request

import numpy as np
import torch

from .concepts import load_concept_set
from .hrv_file import HRV, HRVFileError, save
from .layout import known_layout

log = logging.getLogger("hrv.format.official")

PACK_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MANIFEST_PATH = os.path.join(PACK_DIR, "data", "hrv_vectors", "manifest.json")
RAW_URL = "https://raw.githubusercontent.com/{repository}/{commit}/{path}"

# (output name, architecture, matrix file, head order file, optional per-timestep file)
OFFICIAL_SETS = (
    ("sd1_official", "sd1", "sd1_hrv", "sd1_head_index", "sd1_hrv_per_timestep"),
    ("sdxl_official", "sdxl", "sdxl_hrv", "sdxl_head_index", None),
)


def official_manifest() -> dict:
    with open(MANIFEST_PATH, encoding="utf-8") as f:
        return json.load(f)["sources"]["official"]


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_npy(path: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise HRVFileError(f"{os.path.basename(path)} is not a readable .npy array ({e})") from None


def import_official(src_dir: str, out_dir: str) -> list[str]:
    """Convert the published .npy files in src_dir into our .safetensors files; returns their paths."""
    files = official_manifest()["files"]
    concepts = list(load_concept_set().keys())
    written = []
    for out_name, arch, matrix_key, index_key, per_step_key in OFFICIAL_SETS:
        layout = known_layout(arch)
        matrix_path = os.path.join(src_dir, files[matrix_key]["local_name"])
        index_path = os.path.join(src_dir, files[index_key]["local_name"])
        for p in (matrix_path, index_path):
            if not os.path.isfile(p):
                raise HRVFileError(f"missing {p}: run `python -m hrv fetch-official` or point SRC_DIR at the published files")
        perm = layout.permutation_from_reference([str(s) for s in load_npy(index_path)])
        matrix = load_npy(matrix_path)
        if matrix.dtype != np.float32 or matrix.shape != (len(concepts), layout.num_heads):
            raise HRVFileError(f"{matrix_path}: expected float32 {[len(concepts), layout.num_heads]}, "
                               f"got {matrix.dtype} {list(matrix.shape)}")
        per_step = None
        if per_step_key and os.path.isfile(os.path.join(src_dir, files[per_step_key]["local_name"])):
            per_step = torch.from_numpy(load_npy(os.path.join(src_dir, files[per_step_key]["local_name"]))[..., perm].copy())
        provenance = {"source": "official", "paper": "arXiv 2412.02237", "repository": official_manifest()["repository"],
                      "commit": official_manifest()["commit"], "model": "sd_v1_4" if arch == "sd1" else "sd_xl_base_1_0",
                      "prompts": 2100 if arch == "sd1" else None, "steps": 50 if arch == "sd1" else None,
                      "sha256": sha256_of(matrix_path), "reference_head_order": os.path.basename(index_path)}
        hrv = HRV(matrix=torch.from_numpy(matrix[:, perm].copy()), layout=layout, concepts=concepts,
                  provenance=provenance, per_timestep=per_step)
        out_path = os.path.join(out_dir, f"{out_name}.safetensors")
        save(hrv, out_path)
        written.append(out_path)
        log.info("wrote %s (%s, %d heads)", out_path, arch, layout.num_heads)
    return written


def export_npy(hrv: HRV, out_path: str, per_timestep: bool = False) -> None:
    """Write the matrix (or per-timestep HRVs) in the published head order.

    Our columns already run in diffusers' processor order (HeadLayout.reference_names),
    which is the order of the published files, so columns are written as they are.
    """
    data = hrv.per_timestep if per_timestep else hrv.matrix
    if data is None:
        raise HRVFileError("this HRV has no per-timestep vectors to export")
    np.save(out_path, np.ascontiguousarray(data.numpy()), allow_pickle=False)


def verify_download(path: str, expected_sha256: str) -> None:
    actual = sha256_of(path)
    if actual != expected_sha256:
        raise HRVFileError(f"{os.path.basename(path)} has sha256 {actual}, expected {expected_sha256}: "
                           "the download is corrupt or was tampered with; delete it and fetch again")


def fetch_official(out_dir: str, cache_dir: str | None = None, opener=urllib.request.urlopen) -> list[str]:
    """Download the published files at the pinned commit, verify sha256, then import them."""
    manifest = official_manifest()
    cache_dir = cache_dir or os.path.join(out_dir, "cache")
    os.makedirs(cache_dir, exist_ok=True)
    for entry in manifest["files"].values():
        target = os.path.join(cache_dir, entry["local_name"])
        if os.path.isfile(target) and sha256_of(target) == entry["sha256"]:
            continue
        url = RAW_URL.format(repository=manifest["repository"], commit=manifest["commit"], path=entry["path"])
        log.info("downloading %s", url)
        tmp = target + ".part"
        with opener(url) as response, open(tmp, "wb") as f:
            while chunk := response.read(1 << 20):
                f.write(chunk)
        try:
            verify_download(tmp, entry["sha256"])
        except HRVFileError:
            os.remove(tmp)
            raise
        os.replace(tmp, target)
    return import_official(cache_dir, out_dir)
