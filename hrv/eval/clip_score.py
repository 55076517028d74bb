"""CLIP image-text similarity with OpenCLIP, on ComfyUI IMAGE tensors.

The paper's metric (ordered weakening, and the editing results' text alignment) is the cosine similarity between
the CLIP embeddings of an image and a text, with OpenCLIP's ViT-H-14 trained on LAION-2B (laion2b_s32b_b79k); the
published scores are raw cosines (about 0.18 to 0.24), not the x100 or x2.5 CLIPScore variants.

open_clip is imported only when a scorer is made; weights come from a local file, never from a hub.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

DEFAULT_ARCHITECTURE = "ViT-H-14"
PAPER_WEIGHTS = "laion2b_s32b_b79k"


class ClipScoreError(ValueError):
    """A scorer that cannot be made or inputs it cannot score; the message says what to do."""


def preprocess(images: torch.Tensor, size: int, mean, std) -> torch.Tensor:
    """ComfyUI IMAGE [B, H, W, 3] in 0..1 -> CLIP input [B, 3, size, size]: the shorter side resized to `size`
    (bicubic, antialiased), centre crop, normalised; what OpenCLIP's transform does to a picture."""
    if images.dim() != 4 or images.shape[-1] != 3:
        raise ClipScoreError(f"expected a ComfyUI IMAGE [batch, height, width, 3], got shape {list(images.shape)}")
    x = images.permute(0, 3, 1, 2).float()
    h, w = x.shape[2:]
    # torchvision's Resize(size) and CenterCrop(size), which OpenCLIP's transform uses
    resized = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
    x = F.interpolate(x, size=resized, mode="bicubic", antialias=True, align_corners=False)
    top, left = int(round((resized[0] - size) / 2.0)), int(round((resized[1] - size) / 2.0))
    x = x[:, :, top:top + size, left:left + size]
    mean = torch.tensor(mean, dtype=x.dtype, device=x.device)[None, :, None, None]
    std = torch.tensor(std, dtype=x.dtype, device=x.device)[None, :, None, None]
    return (x - mean) / std


class ClipScorer:
    def __init__(self, model, tokenizer, image_size: int, mean, std, device="cpu"):
        self.model = model.eval().to(device)
        self.tokenizer = tokenizer
        self.image_size, self.mean, self.std = int(image_size), tuple(mean), tuple(std)
        self.device = torch.device(device)

    @classmethod
    def from_open_clip(cls, architecture: str = DEFAULT_ARCHITECTURE, checkpoint: str | None = None, device="cpu"):
        """OpenCLIP's `architecture` with the weights of a local `checkpoint` file (None: random weights, for tests)."""
        try:
            import open_clip
        except ImportError:
            raise ClipScoreError("CLIP scoring needs OpenCLIP: pip install open-clip-torch (in ComfyUI's Python)") from None
        if architecture not in open_clip.list_models():
            raise ClipScoreError(f"OpenCLIP has no architecture {architecture!r}; the paper's is {DEFAULT_ARCHITECTURE}")
        model = open_clip.create_model(architecture, pretrained=checkpoint, device=device)
        visual = model.visual
        size = visual.image_size[0] if isinstance(visual.image_size, (tuple, list)) else visual.image_size
        mean = getattr(visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN
        std = getattr(visual, "image_std", None) or open_clip.OPENAI_DATASET_STD
        return cls(model, open_clip.get_tokenizer(architecture), size, mean, std, device)

    @torch.no_grad()
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        x = preprocess(images.to(self.device), self.image_size, self.mean, self.std)
        return F.normalize(self.model.encode_image(x).float(), dim=-1)

    @torch.no_grad()
    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(texts)).to(self.device)
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1)

    def score(self, images: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """float32 [B]: cosine similarity of each image with its text (one text for all images, or one per image)."""
        texts = list(texts)
        if len(texts) not in (1, images.shape[0]):
            raise ClipScoreError(f"{images.shape[0]} image(s) and {len(texts)} texts: give one text, or one per image "
                                 "(one per line)")
        image = self.image_features(images)
        text = self.text_features(texts)
        if text.shape[0] == 1:
            text = text.expand(image.shape[0], -1)
        return (image * text).sum(-1).cpu()
