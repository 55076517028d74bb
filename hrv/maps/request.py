"""What a map text encoder puts on its CONDITIONING for the attention core, and the holder the maps land in."""
from __future__ import annotations

import hashlib
import logging
from collections import deque
from dataclasses import dataclass, field

import torch

from ..format.layout import HeadLayout
from .heads import auto_concept, concept_weight_of, head_weights

log = logging.getLogger("hrv.maps")

FEATURE = "maps"
MAX_RUNS = 8


class MapError(ValueError):
    """Maps that cannot be recorded or read; the message says how to fix it."""


@dataclass(frozen=True)
class MapWord:
    """One word whose map is recorded: its tokens' context positions (all occurrences; tokens averaged)."""
    label: str
    positions: tuple[int, ...]


@dataclass(frozen=True)
class HeadSelection:
    """How the heads are combined: mode (top_k, hrv_weighted, all), the concept row (None: auto, chosen per word
    after sampling) and k for top_k."""
    mode: str
    matrix: torch.Tensor | None = None      # float32 [C, H]: the HRV (needed unless mode is all)
    concepts: tuple[str, ...] = ()
    concept: int | None = None              # row of the concept; None = auto
    k: int | None = None

    def fixed_weights(self, num_heads: int) -> torch.Tensor | None:
        """float32 [H] known before sampling, or None when the concept is chosen after it (auto)."""
        if self.mode == "all":
            return head_weights("all", None, num_heads)
        if self.concept is None:
            return None
        return head_weights(self.mode, self.matrix[self.concept], num_heads, self.k)

    def describe(self, num_heads: int, concept: int | None = None) -> str:
        concept = self.concept if concept is None else concept
        if self.mode == "all":
            return f"all {num_heads} heads"
        name = self.concepts[concept] if concept is not None else "auto"
        if self.mode == "top_k":
            return f"top {self.k} of {num_heads} heads of {name}"
        return f"{num_heads} heads weighted by the {name} HRV"


@dataclass(eq=False)
class MapRequest:
    layout: HeadLayout
    words: tuple[MapWord, ...]
    selection: HeadSelection
    context_length: int
    start_percent: float = 0.0
    end_percent: float = 1.0
    holder: MapHolder = field(default_factory=lambda: MapHolder())

    def __post_init__(self):
        if not 0.0 <= self.start_percent < self.end_percent <= 1.0:
            raise MapError(f"start_percent ({self.start_percent}) must be below end_percent ({self.end_percent}), "
                           "both between 0 and 1")
        if not self.words:
            raise MapError("no words to map: type at least one word of the prompt")
        for word in self.words:
            if not word.positions or any(not 0 <= p < self.context_length for p in word.positions):
                raise MapError(f"the positions {list(word.positions)} of {word.label!r} fall outside the "
                               f"{self.context_length}-token prompt")
        weights = self.selection.fixed_weights(self.layout.num_heads)
        self.record_weights = weights       # float32 [H], or None: every head kept apart (auto concept)

    @property
    def gated(self) -> bool:
        return self.start_percent > 0.0 or self.end_percent < 1.0


def latent_fingerprint(samples: torch.Tensor | None) -> str | None:
    """A digest of a sampled latent, to find the run that made it."""
    if not isinstance(samples, torch.Tensor) or getattr(samples, "is_nested", False):
        return None
    t = samples.detach().to("cpu", torch.float32).contiguous()
    digest = hashlib.sha1(str(list(t.shape)).encode())
    digest.update(t.numpy().tobytes())
    return digest.hexdigest()


class RecordedMaps:
    """The accumulated maps of one sampling run, on the CPU.

    maps:  {attn2 key: (heads, sums)}: heads int64 [k] the recorded heads of that transformer (0..heads-1), sums
           float32 [B, k, words, h, w] the sum over the recorded steps of A_h[:, word] (A_h: head h's softmax over the
           context; a word's tokens averaged). Only the heads with a weight are recorded (every head for auto).
    calls: int64 [H]: how many calls each head was recorded in.
    """

    def __init__(self, request: MapRequest, latent_hw, batch, maps, calls, fingerprint):
        self.request = request
        self.latent_hw = tuple(latent_hw)
        self.batch = int(batch)
        self.maps = maps
        self.calls = calls
        self.fingerprint = fingerprint

    @property
    def words(self) -> list[str]:
        return [w.label for w in self.request.words]

    def head_mass(self) -> torch.Tensor:
        """float32 [B, H, words]: each head's attention to each word, mean over image positions and recorded steps
        (0 for heads not recorded)."""
        layout = self.request.layout
        mass = torch.zeros(self.batch, layout.num_heads, len(self.words), dtype=torch.float32)
        for key, (heads, sums) in self.maps.items():
            mass[:, heads + layout.block(key).first_column] = sums.mean(dim=(-2, -1))
        return mass / self.calls.clamp_min(1).to(torch.float32)[None, :, None]

    def word_concepts(self) -> list[int] | None:
        """Auto concept of every word (None when the concept was fixed or heads = all)."""
        selection = self.request.selection
        if self.request.record_weights is not None:
            return None
        mass = self.head_mass().mean(0)                             # [H, words]
        return [auto_concept(selection.matrix, mass[:, w]) for w in range(mass.shape[1])]

    def word_weights(self) -> torch.Tensor:
        """float32 [words, H]: the head weights each word's map is read with."""
        layout = self.request.layout
        if self.request.record_weights is not None:
            return self.request.record_weights[None].expand(len(self.words), -1)
        selection = self.request.selection
        concepts = self.word_concepts()
        return torch.stack([head_weights(selection.mode, selection.matrix[c], layout.num_heads, selection.k)
                            for c in concepts])

    def describe(self) -> list[str]:
        """One line per word: which heads its map reads."""
        selection = self.request.selection
        num_heads = self.request.layout.num_heads
        concepts = self.word_concepts()
        lines = []
        for w, label in enumerate(self.words):
            if concepts is None:
                lines.append(f"{label}: {selection.describe(num_heads)}")
                continue
            scores = concept_weight_of(selection.matrix, self.head_mass().mean(0)[:, w])
            best = torch.argsort(scores, descending=True, stable=True)[:3].tolist()
            ranking = ", ".join(f"{selection.concepts[c]} {float(scores[c]):.2f}" for c in best)
            lines.append(f"{label}: {selection.describe(num_heads, concepts[w])} (auto concept; weight of the "
                         f"word's heads: {ranking})")
        return lines

    def latent_maps(self, weights: torch.Tensor | None = None) -> torch.Tensor:
        """float32 [B, words, Hl, Wl]: sum over layers, heads and steps of w_h * the head's word map, on the latent grid.

        weights: None = as the request asks (per word by auto concept), else float32 [H] or [words, H]; a weight on a
        head that was not recorded is an error. Each resolution's sum is up-sampled bicubically to the latent grid
        (up-sampling is linear, so this equals up-sampling every layer's map at every step and summing, as DAAM does).
        """
        weights = self.word_weights() if weights is None else weights.to(torch.float32)
        if weights.dim() == 1:
            weights = weights[None].expand(len(self.words), -1)
        fixed = self.request.record_weights
        if fixed is not None:
            unrecorded = torch.nonzero((weights != 0).any(0) & (fixed == 0)).flatten().tolist()
            if unrecorded:
                raise MapError(f"these maps were recorded for {int((fixed != 0).sum())} heads only; heads "
                               f"{unrecorded[:5]} were not: record with concept = auto to read any heads")
        by_resolution = {}
        for key, (heads, sums) in self.maps.items():
            block = self.request.layout.block(key)
            w = weights[:, block.first_column + heads]                                    # [words, k]
            m = torch.einsum("bkwxy,wk->bwxy", sums, w)
            hw = tuple(sums.shape[-2:])
            by_resolution[hw] = by_resolution[hw] + m if hw in by_resolution else m
        out = torch.zeros(self.batch, len(self.words), *self.latent_hw, dtype=torch.float32)
        for hw, m in by_resolution.items():
            out += upsample(m, self.latent_hw)
        return out


def upsample(maps: torch.Tensor, size) -> torch.Tensor:
    """Bicubic resize of [..., h, w] to size (align_corners False, as DAAM and the authors)."""
    size = tuple(int(s) for s in size)
    if tuple(maps.shape[-2:]) == size:
        return maps
    lead = maps.shape[:-2]
    flat = maps.reshape(-1, 1, *maps.shape[-2:])
    return torch.nn.functional.interpolate(flat, size=size, mode="bicubic", align_corners=False).reshape(*lead, *size)


class MapHolder:
    """The maps of the last sampling runs of one map conditioning (newest last), shared by every copy of it.

    A sampler that re-runs (new seed, new steps) adds a run; a render node finds its run by the sampled latent.
    """

    def __init__(self, max_runs: int = MAX_RUNS):
        self.runs: deque[RecordedMaps] = deque(maxlen=max_runs)

    def commit(self, recorded: RecordedMaps) -> None:
        self.runs.append(recorded)

    def find(self, samples: torch.Tensor | None = None) -> RecordedMaps:
        if not self.runs:
            raise MapError("no maps were recorded for this conditioning yet: connect the model and conditioning "
                           "outputs of HRV Attention Map to the sampler that makes the images, and this node after "
                           "that sampler")
        fingerprint = latent_fingerprint(samples)
        if fingerprint is not None:
            for recorded in reversed(self.runs):
                if recorded.fingerprint == fingerprint:
                    return recorded
            log.warning("HRV maps: the latent given is not one this conditioning sampled (changed after sampling, "
                        "or sampled more than %d runs ago); showing the maps of the latest run", self.runs.maxlen)
        return self.runs[-1]
