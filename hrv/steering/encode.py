"""From a prompt (with marks or target words) and an HRV to the SteerRequest its conditioning carries."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .factors import SteeringError, adjust, strengthen
from .marks import Mark
from .positions import WordPositionError, locate_span, prompt_words, token_stream, whole_word_spans
from .request import SteerRequest, SteerTerm


@dataclass(frozen=True)
class AdjustWeights:
    w_desired: float = 1.0
    w_undesired: float = 1.0
    offset: float = 1.0
    clamp: float | None = None


# The paper's setting for SD1.x; the authors' SDXL notebook uses 2*min(d, 9) - min(u, 9).
AUTO_WEIGHTS = {"sd1": AdjustWeights(1.0, 1.0, 1.0, None), "sdxl": AdjustWeights(2.0, 1.0, 0.0, 9.0)}


def auto_weights(arch: str) -> AdjustWeights:
    return AUTO_WEIGHTS.get(arch, AUTO_WEIGHTS["sd1"])


def concept_row(hrv, concept: str) -> torch.Tensor:
    """float32 [H]; a concept whose row got no votes cannot steer anything."""
    row = hrv.row(concept)  # raises ValueError listing the HRV's concepts
    if not bool(row.abs().sum() > 0):
        raise SteeringError(f"the concept {concept!r} got no votes when this HRV was built, so it says nothing about "
                            "the heads: build the HRV with more prompts, or pick another concept")
    return row


def mark_factors(hrv, mark: Mark, weights: AdjustWeights) -> torch.Tensor:
    desired = concept_row(hrv, mark.desired)
    if mark.undesired is None:
        return strengthen(desired, 1.0 if mark.strength is None else mark.strength)
    return adjust(desired, concept_row(hrv, mark.undesired), weights.w_desired, weights.w_undesired, weights.offset,
                  weights.clamp)


def marks_request(clip, hrv, text: str, marks, weights: AdjustWeights, start_percent: float = 0.0,
                  end_percent: float = 1.0) -> SteerRequest | None:
    """The request of a marked prompt (its clean text and marks); None when it has no marks."""
    if not marks:
        return None
    stream = token_stream(clip, text)
    terms = tuple(SteerTerm(locate_span(clip, text, m.start, m.end, stream), mark_factors(hrv, m, weights), m.label)
                  for m in marks)
    return SteerRequest(hrv.layout, terms, stream.context_length, start_percent, end_percent)


ALL_WORDS = "*"


def split_targets(target: str) -> list[str]:
    words = [w.strip() for w in str(target).split(",") if w.strip()]
    if not words:
        raise WordPositionError("no target word given: type the word of the prompt to steer, several separated by "
                                f"commas, or {ALL_WORDS} for every word")
    return words


def targets_request(clip, hrv, text: str, target: str, factors: torch.Tensor, label: str,
                    start_percent: float = 0.0, end_percent: float = 1.0) -> SteerRequest:
    """Every whole-word occurrence of the comma-separated target words (or every token for `*`) scaled by factors [H]."""
    stream = token_stream(clip, text)
    if target.strip() == ALL_WORDS:
        if not stream.positions:
            raise WordPositionError("the prompt has no words to steer")
        terms = (SteerTerm(stream.positions, factors, f"every word: {label}"),)
    else:
        terms = []
        for word in split_targets(target):
            spans = whole_word_spans(text, word)
            if not spans:
                raise WordPositionError(f"the target {word!r} is not a word of the prompt. Type it as it is written "
                                        "there (whole words; spelling, singular/plural). Prompt words: "
                                        f"{', '.join(prompt_words(text)) or '(none)'}")
            positions = sorted({p for a, b in spans for p in locate_span(clip, text, a, b, stream)})
            terms.append(SteerTerm(tuple(positions), factors, f"{word}: {label}"))
        terms = tuple(terms)
    return SteerRequest(hrv.layout, terms, stream.context_length, start_percent, end_percent)
