"""Attend-and-Excite's maps as a processor of the attention core, active only in its own gradient forwards.

While an ExciteCollector is set in the run's cache (the conditional-only forward that Attend-and-Excite runs with
gradients), every cross-attention call of the excited conditioning computes the explicit softmax maps of all its
heads (the gradient needs them), aggregates them per subject and adds them, resized to the target grid, into the
collector: HRV mode sum over layers of sum_h HRV[c][h] * A_h / H; original mode the mean over heads and over the
layers at a quarter of the latent's resolution (16x16 for a 512-pixel SD1 image). Outside those forwards it does
nothing. q, k, v go on unchanged to the fused kernel.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..attention import AttnCall, Chunk
from ..attention.processor import request_block
from ..maps.recorder import latent_shape, spatial_shape
from .maps import resize_maps, subject_max_attention
from .request import FEATURE, ExciteError, ExciteRequest

ACTIVE_KEY = "hrv_ae_collector"


class ExciteCollector:
    """The subjects' aggregated maps of one gradient forward."""

    def __init__(self, request: ExciteRequest):
        self.request = request
        self.maps = None        # [B, S or 1, T, res, res], part of the autograd graph
        self.layers = 0

    def add(self, call: AttnCall, q: torch.Tensor, k: torch.Tensor) -> None:
        request = self.request
        b, n, channels = q.shape
        heads = call.heads
        d = channels // heads
        context = k.shape[1]
        hw = spatial_shape(call.extra_options, n)
        if not request.hrv_mode:
            lh, lw = latent_shape(call.extra_options, hw)
            if hw != (math.ceil(lh / 4), math.ceil(lw / 4)):
                return
        qh = q.reshape(b, n, heads, d).transpose(1, 2).float() * (d ** -0.5)                 # [b, H, n, d]
        kt = k.reshape(b, context, heads, d).permute(0, 2, 3, 1).float()                    # [b, H, d, T]
        probs = torch.softmax(torch.matmul(qh, kt), dim=-1)                                  # [b, H, n, T]
        if request.hrv_mode:
            block = request_block(request.layout, call.key, heads, "excited", ExciteError)
            # A copy: a request made under inference mode holds inference tensors, which autograd cannot save.
            weights = request.subject_weights[:, block.columns].to(probs.device).clone()        # [S, H]
            maps = torch.einsum("bhnt,sh->bstn", probs, weights)
        else:
            maps = probs.mean(1).transpose(1, 2)[:, None]                                      # [b, 1, T, n]
        maps = resize_maps(maps.reshape(*maps.shape[:3], *hw), request.settings.resolution)
        self.maps = maps if self.maps is None else self.maps + maps
        self.layers += 1

    def max_attention(self) -> torch.Tensor:
        """float32 [B, S]: each subject's largest attention (the quantity the loss raises)."""
        if self.maps is None:
            raise ExciteError("Attend-and-Excite found no cross-attention layer to read (the original method reads the "
                              "layers at a quarter of the latent size: use an image of at least 64x64 pixels)")
        request = self.request
        maps = self.maps if request.hrv_mode else self.maps / self.layers
        device = maps.device
        keep = torch.tensor(request.keep, dtype=torch.int64, device=device)
        index = {p: i for i, p in enumerate(request.keep)}
        subjects = [torch.tensor([index[p] for p in s.positions], dtype=torch.int64, device=device)
                    for s in request.subjects]
        return subject_max_attention(maps, keep, subjects, request.settings.temperature, request.settings.smooth)


class ExciteProcessor:
    feature = FEATURE

    def process(self, call: AttnCall, q, k, v, chunks: Sequence[Chunk]):
        collector = call.run.cache.get(ACTIVE_KEY)
        if collector is None:
            return q, k, v
        for chunk in chunks:
            if chunk.request is collector.request:
                collector.add(call, q[chunk.rows], k[chunk.rows])
        return q, k, v


EXCITE = ExciteProcessor()
