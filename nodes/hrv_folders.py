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


_concepts_cache: dict[str, tuple[float, int, list[str]]] = {}


def concept_choices() -> list[str]:
    """The default concepts, then every other concept of the HRV files ComfyUI can see (re-read on refresh)."""
    from ..hrv.format.concepts import default_concept_names
    from ..hrv.format.hrv_file import HRVFileError, read_concept_names
    names = list(default_concept_names())
    seen = {n.lower() for n in names}
    for name in hrv_filenames():
        try:
            path = hrv_path(name)
            stat = os.stat(path)
            cached = _concepts_cache.get(path)
            if cached is None or cached[:2] != (stat.st_mtime, stat.st_size):
                cached = _concepts_cache[path] = (stat.st_mtime, stat.st_size, read_concept_names(path))
        except (OSError, HRVFileError):
            continue  # a broken file is reported when it is loaded, not in every dropdown
        for concept in cached[2]:
            if concept.lower() not in seen:
                seen.add(concept.lower())
                names.append(concept)
    return names


CLIP_FOLDER = "hrv_clip"
CLIP_EXTENSIONS = {".safetensors", ".bin", ".pt", ".pth"}


def clip_filenames() -> list[str]:
    """OpenCLIP weight files in models/hrv_clip/ (for HRV CLIP Score)."""
    import folder_paths
    if CLIP_FOLDER not in folder_paths.folder_names_and_paths:
        folder_paths.folder_names_and_paths[CLIP_FOLDER] = ([os.path.join(folder_paths.models_dir, CLIP_FOLDER)],
                                                            set(CLIP_EXTENSIONS))
    return folder_paths.get_filename_list(CLIP_FOLDER)


def clip_path(name: str) -> str:
    import folder_paths
    clip_filenames()
    path = folder_paths.get_full_path(CLIP_FOLDER, name)
    if path is None:
        raise FileNotFoundError(f"OpenCLIP weights {name!r} not found in models/{CLIP_FOLDER}/: put the file there "
                                "(the paper's: open_clip_pytorch_model.bin of laion/CLIP-ViT-H-14-laion2B-s32B-b79K)")
    return path
