"""From a prompt and its subject words ("cat:Animals, dog:Animals") to the ExciteRequest its conditioning carries."""
from __future__ import annotations

from ..steering.positions import (
    WordPositionError,
    locate_span,
    prompt_words,
    token_stream,
    whole_word_spans,
)
from .request import ExciteError, ExciteRequest, ExciteSettings, Subject


def parse_subjects(spec: str) -> list[tuple[str, str | None]]:
    """[(word, concept or None)] from 'cat:Animals, dog:Animals' (or 'cat, dog' for the original method)."""
    out = []
    for part in str(spec).split(","):
        part = part.strip()
        if not part:
            continue
        word, _, concept = part.partition(":")
        if not word.strip():
            raise ExciteError(f"the subject {part!r} has no word: write word:Concept, e.g. cat:Animals")
        out.append((word.strip(), concept.strip() or None))
    if not out:
        raise ExciteError("no subject words: give the words to excite, e.g. 'cat:Animals, dog:Animals'")
    return out


def start_positions(clip, text: str) -> tuple[int, ...]:
    """Context positions of the start tokens: the first token of every 77-token chunk of the prompt."""
    out = clip.tokenize(text)
    chunks = out["l"] if "l" in out else out[sorted(out)[0]]
    starts, position = [], 0
    for chunk in chunks:
        starts.append(position)
        position += len(chunk)
    return tuple(starts)


def excite_request(clip, text: str, subjects: str, hrv=None, settings: ExciteSettings | None = None) -> ExciteRequest:
    stream = token_stream(clip, text)
    starts = set(start_positions(clip, text))
    keep = tuple(p for p in range(stream.context_length) if p not in starts)
    found = []
    for word, concept in parse_subjects(subjects):
        spans = whole_word_spans(text, word)
        if not spans:
            raise WordPositionError(f"the subject {word!r} is not a word of the prompt. Type it as it is written there "
                                    f"(whole words). Prompt words: {', '.join(prompt_words(text)) or '(none)'}")
        positions = tuple(sorted({p for a, b in spans for p in locate_span(clip, text, a, b, stream)}))
        index = None
        if hrv is not None:
            if concept is None:
                raise ExciteError(f"the subject {word!r} has no concept: write it as {word}:Concept (e.g. "
                                  f"{word}:Animals), or disconnect the HRV for the original Attend-and-Excite")
            index = hrv.concept_index(concept)
            if not bool(hrv.matrix[index].abs().sum() > 0):
                raise ExciteError(f"the concept {hrv.concepts[index]!r} got no votes when this HRV was built, so it "
                                  "weighs no heads: pick another concept")
        found.append(Subject(word, positions, index))
    if hrv is None:
        return ExciteRequest(tuple(found), keep, stream.context_length, settings=settings or ExciteSettings(smooth=True))
    return ExciteRequest(tuple(found), keep, stream.context_length, hrv.layout, hrv.matrix, tuple(hrv.concepts),
                         settings or ExciteSettings())
