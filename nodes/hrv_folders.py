"""The "hrv" model folder: ComfyUI's models/hrv/ plus this pack's data/hrv_vectors/."""
from __future__ import annotations

import os

PACK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACK_VECTORS_DIR = os.path.join(PACK_DIR, "data", "hrv_vectors")
EXTENSIONS = {".safetensors"}


def ensure_hrv_folder_registered() -> None:
    import folder_paths
    models_hrv = os.path.join(folder_paths.models_dir, "hrv")
    if "hrv" not in folder_paths.folder_names_and_paths:
        folder_paths.folder_names_and_paths["hrv"] = ([models_hrv, PACK_VECTORS_DIR], set(EXTENSIONS))
    else:
        paths, extensions = folder_paths.folder_names_and_paths["hrv"]
        for p in (models_hrv, PACK_VECTORS_DIR):
            if p not in paths:
                paths.append(p)
        extensions.update(EXTENSIONS)


def hrv_filenames() -> list[str]:
    import folder_paths
    ensure_hrv_folder_registered()
    return folder_paths.get_filename_list("hrv")


def hrv_path(name: str) -> str:
    import folder_paths
    ensure_hrv_folder_registered()
    path = folder_paths.get_full_path("hrv", name)
    if path is None:
        raise FileNotFoundError(f"HRV file {name!r} not found in models/hrv/ or the pack's data/hrv_vectors/; "
                                "run `python -m hrv fetch-official` or save one with the HRV Save node")
    return path


def models_hrv_dir() -> str:
    import folder_paths
    return os.path.join(folder_paths.models_dir, "hrv")
