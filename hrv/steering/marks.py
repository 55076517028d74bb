"""Inline marks in a prompt: `[word:Concept]`, `[word:Concept:1.5]`, `[word:Desired-Undesired]`.

The marks are removed before encoding, so the text the CLIP sees is the prompt as if typed without them;
each mark keeps the character span of its word in that clean text. `\\[` and `\\]` are literal brackets,
and brackets without a colon are left as text. ComfyUI's own syntax (`(word:1.2)`, `embedding:name`,
`\\(`) passes through untouched, inside and around marks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


class MarkError(ValueError):
    """A mark that cannot be used; the message says which and how to write it."""


@dataclass(frozen=True)
class Mark:
    start: int                      # span of the word in the clean text
    end: int
    word: str
    desired: str                    # a concept name as the HRV spells it
    undesired: str | None = None    # set: adjust towards desired and away from undesired
    strength: float | None = None   # strengthen only; None = 1

    @property
    def label(self) -> str:
        concept = self.desired if self.undesired is None else f"{self.desired}-{self.undesired}"
        return f"{self.word}: {concept}" + ("" if self.strength is None else f" x{self.strength:g}")


@dataclass(frozen=True)
class MarkedPrompt:
    text: str                       # the prompt without marks, as it is encoded
    marks: tuple[Mark, ...]


def _concept(name: str, concepts: list[str]) -> str | None:
    lowered = {c.lower(): c for c in concepts}
    return lowered.get(name.strip().lower())


def _resolve_concepts(spec: str, concepts: list[str], mark_text: str) -> tuple[str, str | None]:
    found = _concept(spec, concepts)
    if found:
        return found, None
    # Concept names can hold hyphens (Geo-locations): try every hyphen as the desired/undesired split.
    for i, ch in enumerate(spec):
        if ch == "-":
            desired, undesired = _concept(spec[:i], concepts), _concept(spec[i + 1:], concepts)
            if desired and undesired:
                if desired == undesired:
                    raise MarkError(f"the mark {mark_text} pushes a word towards and away from the same concept")
                return desired, undesired
    raise MarkError(f"the mark {mark_text} names the concept {spec.strip()!r}, which this HRV does not have. "
                    f"Its concepts: {', '.join(concepts)}. Write [word:Concept] or [word:Desired-Undesired].")


def _parse_mark(inner: str, concepts: list[str], start: int) -> tuple[str, str, str | None, float | None]:
    mark_text = f"[{inner}]"
    parts = inner.split(":")
    strength = None
    if len(parts) >= 3:
        try:
            strength = float(parts[-1])
        except ValueError:
            strength = None
        else:
            parts = parts[:-1]
            if not math.isfinite(strength):
                raise MarkError(f"the strength of the mark {mark_text} must be a finite number")
    word, spec = ":".join(parts[:-1]), parts[-1]
    if not word.strip():
        raise MarkError(f"the mark {mark_text} (at character {start}) has no word: write [word:Concept]")
    if word != word.strip():
        raise MarkError(f"the mark {mark_text} has spaces around its word: write [{word.strip()}:{spec}]")
    desired, undesired = _resolve_concepts(spec, concepts, mark_text)
    if undesired is not None and strength is not None:
        raise MarkError(f"the mark {mark_text} adjusts between two concepts, which takes no strength: the adjust weights "
                        "(w_desired, w_undesired, offset) set how hard; write [word:Desired-Undesired]")
    return word, desired, undesired, strength


def parse_marks(text: str, concepts: list[str]) -> MarkedPrompt:
    """The clean text and its marks; raises MarkError for a mark that cannot be used."""
    out: list[str] = []
    marks: list[Mark] = []
    length = 0
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text) and text[i + 1] in "[]":
            out.append(text[i + 1])
            length += 1
            i += 2
            continue
        if ch == "[":
            close = _closing_bracket(text, i)
            inner = text[i + 1:close] if close is not None else None
            if inner is not None and ":" in inner:
                word, desired, undesired, strength = _parse_mark(inner, concepts, i)
                marks.append(Mark(length, length + len(word), word, desired, undesired, strength))
                out.append(word)
                length += len(word)
                i = close + 1
                continue
        out.append(ch)
        length += 1
        i += 1
    return MarkedPrompt("".join(out), tuple(marks))


def _closing_bracket(text: str, start: int) -> int | None:
    """Index of the `]` closing the `[` at start, or None when a `[` opens first (nested) or none closes."""
    i = start + 1
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in "[]":
            i += 2
            continue
        if text[i] == "[":
            return None
        if text[i] == "]":
            return i
        i += 1
    return None
