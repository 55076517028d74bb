"""HRV CLIP Score: how well images match a text, with the paper's CLIP metric (OpenCLIP ViT-H-14, raw cosine)."""
from __future__ import annotations

import logging

from ..hrv.eval.clip_score import DEFAULT_ARCHITECTURE, ClipScoreError, ClipScorer
from .hrv_folders import CLIP_FOLDER, clip_filenames, clip_path

log = logging.getLogger("hrv.nodes.eval")
_SCORERS: dict = {}     # (architecture, weights path, device) -> ClipScorer: a 1 B-parameter model is loaded once


def scorer_for(architecture: str, path: str | None, device) -> ClipScorer:
    key = (architecture, path, str(device))
    if key not in _SCORERS:
        _SCORERS.clear()
        _SCORERS[key] = ClipScorer.from_open_clip(architecture, path, device)
    return _SCORERS[key]


class HRVCLIPScore:
    DESCRIPTION = ("Scores how well each image matches a text: the cosine similarity of their CLIP embeddings, as the "
                   "HRV paper measures (OpenCLIP ViT-H-14, LAION-2B weights; about 0.18 to 0.35 for matching pairs). "
                   "Put it after VAE Decode, e.g. on HRV Prompt Edit's images with the target prompt. Weights are read "
                   f"from models/{CLIP_FOLDER}/, never downloaded.")
    CATEGORY = "HRV/eval"
    FUNCTION = "score"
    RETURN_TYPES = ("FLOAT", "STRING")
    RETURN_NAMES = ("score", "report")
    OUTPUT_TOOLTIPS = ("The mean similarity over the images.", "Each image's similarity, one per line.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "images": ("IMAGE", {"tooltip": "The images to score (a batch scores each image)."}),
            "text": ("STRING", {"multiline": True, "default": "", "tooltip":
                                "The text to compare with: one line for all images, or one line per image."}),
            "clip_weights": (clip_filenames(), {"tooltip":
                             f"The OpenCLIP weights file in models/{CLIP_FOLDER}/ (the paper's: open_clip_pytorch_model.bin "
                             "of laion/CLIP-ViT-H-14-laion2B-s32B-b79K)."}),
            "architecture": ("STRING", {"default": DEFAULT_ARCHITECTURE, "tooltip":
                                        "The OpenCLIP architecture of those weights; the paper's is ViT-H-14."}),
        }}

    def score(self, images, text, clip_weights, architecture):
        import comfy.model_management
        lines = [t.strip() for t in str(text).splitlines() if t.strip()]
        if not lines:
            raise ValueError("HRV CLIP Score: type the text to compare the images with")
        try:
            scorer = scorer_for(architecture.strip(), clip_path(clip_weights), comfy.model_management.get_torch_device())
            scores = scorer.score(images, lines)
        except (ClipScoreError, FileNotFoundError) as e:
            raise ValueError(f"HRV CLIP Score: {e}") from None
        report = "\n".join(f"image {i}: {float(s):.4f}" for i, s in enumerate(scores))
        return (float(scores.mean()), report)


NODE_CLASS_MAPPINGS = {"HRVCLIPScore": HRVCLIPScore}
NODE_DISPLAY_NAME_MAPPINGS = {"HRVCLIPScore": "HRV CLIP Score"}
