"""How the model reads a word: its attention per head compared with every concept's HRV row.

m_h = the word's attention in head h (the softmax share of its tokens, mean over image positions and the recorded
steps). The reading is the cosine similarity of m with each concept's HRV row, highest first; the suggested mark is
the inline mark of HRV Text Encode that pushes the word towards the meant concept and away from the strongest other.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .heads import cosine_reading

SHOWN = 5


@dataclass(frozen=True)
class Reading:
    word: str
    scores: torch.Tensor            # float32 [C]: cosine similarity per concept
    order: tuple[int, ...]          # concept rows, highest score first (ties by row order)
    concepts: tuple[str, ...]

    def top(self, n: int = SHOWN) -> list[tuple[str, float]]:
        return [(self.concepts[c], float(self.scores[c])) for c in self.order[:n]]

    def text(self, n: int = SHOWN) -> str:
        listed = ", ".join(f"{name} {score:.2f}" for name, score in self.top(n))
        return f"{self.word} is read as {listed}"


def read_word(word: str, matrix: torch.Tensor, concepts, mass: torch.Tensor) -> Reading:
    scores = cosine_reading(matrix, mass)
    order = tuple(torch.sort(scores, descending=True, stable=True).indices.tolist())
    return Reading(word, scores, order, tuple(concepts))


def compared_concepts(reading: Reading, intended: int | None, other: int | None) -> tuple[int, int]:
    """(the meant concept, the one to compare it with): intended or the top reading; other or the strongest rival."""
    first = intended if intended is not None else reading.order[0]
    if other is None or other == first:
        other = next(c for c in reading.order if c != first)
    return first, other


def suggest_mark(reading: Reading, intended: int | None, other: int | None = None) -> tuple[str, str]:
    """(inline mark for HRV Text Encode, one sentence saying why)."""
    names = reading.concepts
    word = reading.word
    if intended is None:
        meant, rival = reading.order[1], reading.order[0]
        if other is not None and other != rival:
            meant = other
        return (f"[{word}:{names[meant]}-{names[rival]}]",
                f"If you meant {names[meant]}, mark it so (set intended_concept to get the mark for your meaning).")
    if reading.order[0] == intended:
        rival = compared_concepts(reading, intended, other)[1]
        return (f"[{word}:{names[intended]}]",
                f"It is already read as {names[intended]} first (then {names[rival]}); the mark only strengthens it.")
    rival = other if other is not None and other != intended else reading.order[0]
    return (f"[{word}:{names[intended]}-{names[rival]}]",
            f"It leans to {names[reading.order[0]]}; the mark steers it towards {names[intended]} and away from "
            f"{names[rival]}.")
