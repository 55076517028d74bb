"""HRVLoader and HRVInspect: pick an HRV file, see where a concept lives in the UNet."""
from __future__ import annotations

import os

import torch

from ..hrv.format.concepts import default_concept_names
from ..hrv.format.hrv_file import HRVFileError, load
from .hrv_folders import hrv_filenames, hrv_path

NONE = "(none)"


class HRVLoader:
    DESCRIPTION = ("Loads a Head Relevance Vector file (.safetensors from models/hrv/ or the pack's data/hrv_vectors/). "
                   "Connect its HRV output to the steering nodes or to HRV Inspect.")
    CATEGORY = "HRV/loaders"
    FUNCTION = "load_hrv"
    RETURN_TYPES = ("HRV", "STRING")
    RETURN_NAMES = ("hrv", "info")
    OUTPUT_TOOLTIPS = ("The head relevance vectors: one relevance score per concept and cross-attention head.",
                       "A short summary: architecture, number of heads and concepts, where the vectors came from.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"hrv_name": (hrv_filenames(), {
            "tooltip": "Which HRV file to load. sd1_official works with SD1.4/1.5 checkpoints, sdxl_official with SDXL. "
                       "No files listed? Run `python -m hrv fetch-official` in the pack folder."})}}

    def load_hrv(self, hrv_name):
        path = hrv_path(hrv_name)
        try:
            hrv = load(path)
        except HRVFileError as e:
            # The node shows only the message: make sure it says which file is bad.
            message = str(e)
            if os.path.basename(path) not in message:
                message = f"HRV file {hrv_name}: {message}"
            raise HRVFileError(message) from None
        source = hrv.provenance.get("source", "built") if hrv.provenance else "unknown"
        info = f"{hrv_name}: {hrv.arch}, {hrv.num_heads} heads, {len(hrv.concepts)} concepts, source {source}"
        return (hrv, info)


class HRVInspect:
    DESCRIPTION = ("Shows which cross-attention heads care about a concept: one row per UNet transformer block, "
                   "one cell per head, brighter = more relevant. Pick a second concept to compare the two. "
                   "Put it after HRV Loader and send the image to Preview Image.")
    CATEGORY = "HRV/inspect"
    FUNCTION = "inspect"
    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("image", "top_heads")
    OUTPUT_TOOLTIPS = ("Heat map of head relevance laid out like the UNet (and the difference when comparing).",
                       "The most relevant heads as text, one 'block head value' per line.")

    @classmethod
    def INPUT_TYPES(cls):
        concepts = default_concept_names()
        return {"required": {
            "hrv": ("HRV", {"tooltip": "Head relevance vectors from HRV Loader or HRV Build."}),
            "concept": (concepts, {"default": "Color", "tooltip": "The visual concept to show."}),
            "compare_with": ([NONE] + concepts, {"default": NONE,
                              "tooltip": "Optional second concept: shows both and their difference side by side."}),
            "top_k": ("INT", {"default": 10, "min": 1, "max": 50,
                              "tooltip": "How many of the most relevant heads to list."}),
        }}

    def inspect(self, hrv, concept, compare_with, top_k):
        from ..hrv.inspect.plot import relevance_image, top_heads  # PIL only when a heat map is drawn, not at start-up
        row = hrv.row(concept)
        other = None if compare_with == NONE else hrv.row(compare_with)
        pixels = relevance_image(hrv.layout, row, concept, top_k, other, compare_with)
        image = torch.from_numpy(pixels.copy()).float().div(255.0).unsqueeze(0)  # [1, H, W, 3]
        text = "\n".join(f"{label} {value:.3f}" for label, value in top_heads(hrv.layout, row, top_k))
        return (image, text)


NODE_CLASS_MAPPINGS = {"HRVLoader": HRVLoader, "HRVInspect": HRVInspect}
NODE_DISPLAY_NAME_MAPPINGS = {"HRVLoader": "HRV Loader", "HRVInspect": "HRV Inspect"}
