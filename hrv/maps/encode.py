"""From a prompt, the words to map and a head selection to the MapRequest its conditioning carries."""
from __future__ import annotations

from ..steering.positions import (
    WordPositionError,
    locate_span,
    prompt_words,
    token_stream,
    whole_word_spans,
)
from .heads import MODES, HeadSelectionError, top_k_count
from .request import HeadSelection, MapRequest, MapWord

AUTO = "auto"


def split_words(words: str) -> list[str]:
    found = [w.strip() for w in str(words).split(",") if w.strip()]
    if not found:
        raise WordPositionError("no word given: type the word of the prompt to map (several separated by commas)")
    return found


def locate_words(clip, text: str, words: str) -> tuple[tuple[MapWord, ...], int]:
    """(one MapWord per comma-separated word with the positions of all its whole-word occurrences, context length)."""
    stream = token_stream(clip, text)
    found = []
    for word in split_words(words):
        spans = whole_word_spans(text, word)
        if not spans:
            raise WordPositionError(f"{word!r} is not a word of the prompt. Type it as it is written there (whole "
                                    f"words; spelling, singular/plural). Prompt words: "
                                    f"{', '.join(prompt_words(text)) or '(none)'}")
        positions = sorted({p for a, b in spans for p in locate_span(clip, text, a, b, stream)})
        found.append(MapWord(word, tuple(positions)))
    return tuple(found), stream.context_length


def selection_of(hrv, heads: str, concept: str, top_k: float) -> HeadSelection:
    """The head selection of the node inputs; concept 'auto' leaves the concept to be chosen per word after sampling."""
    if heads not in MODES:
        raise HeadSelectionError(f"heads must be one of {', '.join(MODES)}, got {heads!r}")
    num_heads = hrv.layout.num_heads
    k = top_k_count(top_k, num_heads) if heads == "top_k" else None
    if heads == "all":
        return HeadSelection("all", hrv.matrix, tuple(hrv.concepts))
    index = None if str(concept).strip().lower() == AUTO else hrv.concept_index(concept)
    if index is not None and not bool(hrv.matrix[index].abs().sum() > 0):
        raise HeadSelectionError(f"the concept {hrv.concepts[index]!r} got no votes when this HRV was built, so it names "
                                 "no heads: pick another concept, auto, or heads = all")
    return HeadSelection(heads, hrv.matrix, tuple(hrv.concepts), index, k)


def map_request(clip, hrv, text: str, words: str, concept: str = AUTO, heads: str = "top_k", top_k: float = 0.25,
                start_percent: float = 0.0, end_percent: float = 1.0) -> MapRequest:
    located, context_length = locate_words(clip, text, words)
    return MapRequest(hrv.layout, located, selection_of(hrv, heads, concept, top_k), context_length,
                      start_percent, end_percent)
