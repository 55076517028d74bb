"""Which context position of the source prompt each position of the target prompt takes its attention from.

Prompt-to-Prompt (Hertz et al., 2022) injects the source's cross-attention maps into the target's generation, carried
through a token alignment:

- replace (word swap): both prompts have the same words but for the swapped ones. Every other token takes the source
  token in the same place; a swapped word's tokens share its source word's tokens: equal token counts pair one to one,
  otherwise each target token takes the sum of the source word's columns divided by its own token count.
- refine (words added or removed): a global alignment of the two token sequences (match 1, mismatch -1, gap 0, the
  earliest match preferred, as P2P's sequence aligner); tokens with a partner take its column, new tokens keep the
  target's own column.

Start, end and padding positions are aligned by structure, chunk by chunk: the leading start token to the leading
start token, and the end/padding run counted from its first position (P2P's word-swap mapper shifts the tail by the
token difference; its refine mapper leaves the tail in place, and so points added padding at the source's words).

Positions are each prompt's own flat context positions (one 77-token chunk or several); a pair is
(target position, source position, weight) and the carried map of the target is
A'[:, t] = sum over pairs (t, s, w) of w * A_src[:, s].
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..steering.positions import ContextTokens, WordPositionError, context_tokens, locate_span

MODES = ("replace", "refine")


class AlignmentError(ValueError):
    """Two prompts that cannot be aligned in the asked mode; the message says what to change."""


@dataclass(frozen=True)
class Alignment:
    mode: str
    source_length: int                       # context positions of the source prompt
    target_length: int                       # of the target prompt
    pairs: tuple                             # ((target position, source position, weight), ...)
    own: tuple                               # target positions that keep their own attention column (refine: new tokens)
    edited: tuple                            # target positions of the swapped (replace) or added (refine) words

    def carried(self) -> dict[int, list[tuple[int, float]]]:
        """{target position: [(source position, weight), ...]}"""
        out: dict[int, list] = {}
        for t, s, w in self.pairs:
            out.setdefault(t, []).append((s, w))
        return out


# --- words of a prompt -----------------------------------------------------------------------------------------

_WORD = re.compile(r"[^\s()\[\]]+")
_WEIGHT = re.compile(r":\s*-?\d*\.?\d+$")


def prompt_word_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of every word: whitespace-separated, with ComfyUI's weight syntax ( ) [ ] and :1.2 left out."""
    spans = []
    for m in _WORD.finditer(text):
        start, end = m.start(), m.end()
        weight = _WEIGHT.search(m.group())
        if weight:
            end = start + weight.start()
        if end > start:
            spans.append((start, end))
    return spans


# --- start, end and padding positions ------------------------------------------------------------------------------

def _chunk_specials(semantic: tuple, offset: int, length: int) -> tuple[list[int], list[int]]:
    """Leading and trailing special positions of one chunk (flat positions)."""
    flags = semantic[offset:offset + length]
    words = [i for i, s in enumerate(flags) if s]
    if not words:
        return [offset], [offset + i for i in range(1, length)]
    lead = [offset + i for i in range(words[0])]
    trail = [offset + i for i in range(words[-1] + 1, length)]
    return lead, trail


def special_pairs(source: ContextTokens, target: ContextTokens) -> list[tuple[int, int]]:
    """(target, source) pairs of start/end/padding positions, chunk by chunk."""
    pairs = []
    s_offset = t_offset = 0
    for c, t_length in enumerate(target.chunks):
        if c >= len(source.chunks):
            break
        s_length = source.chunks[c]
        s_lead, s_trail = _chunk_specials(source.semantic, s_offset, s_length)
        t_lead, t_trail = _chunk_specials(target.semantic, t_offset, t_length)
        pairs += list(zip(t_lead, s_lead)) + list(zip(t_trail, s_trail))
        s_offset += s_length
        t_offset += t_length
    return pairs


# --- the two modes ---------------------------------------------------------------------------------------------------

def _semantic(tokens: ContextTokens) -> list[int]:
    return [p for p, s in enumerate(tokens.semantic) if s]


def replace_alignment(source: ContextTokens, target: ContextTokens, swaps) -> Alignment:
    """Word swap. `swaps`: [(source positions, target positions)] of the words that differ, in prompt order."""
    pairs = [(t, s, 1.0) for t, s in special_pairs(source, target)]
    in_swap_s = {p for s_span, _ in swaps for p in s_span}
    in_swap_t = {p for _, t_span in swaps for p in t_span}
    rest_s = [p for p in _semantic(source) if p not in in_swap_s]
    rest_t = [p for p in _semantic(target) if p not in in_swap_t]
    if [source.keys[p] for p in rest_s] != [target.keys[p] for p in rest_t]:
        raise AlignmentError("apart from the swapped words the two prompts tokenize differently; in replace mode the "
                             "prompts must be the same but for whole words swapped one for one: use mode refine")
    pairs += [(t, s, 1.0) for s, t in zip(rest_s, rest_t)]
    for s_span, t_span in swaps:
        if len(s_span) == len(t_span):
            pairs += [(t, s, 1.0) for s, t in zip(s_span, t_span)]
        else:
            pairs += [(t, s, 1.0 / len(t_span)) for t in t_span for s in s_span]
    return Alignment("replace", source.context_length, target.context_length, tuple(sorted(pairs)), (),
                     tuple(sorted(in_swap_t)))


def global_alignment(x: list, y: list) -> list[tuple[int, int]]:
    """Index pairs (i, j) with x[i] == y[j] of an alignment maximising matches - mismatches (gaps free).

    Ties go to the earliest partner: tracing back from the end, a gap in x (y[j] new) is preferred, then a gap in y.
    """
    n, m = len(x), len(y)
    score = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            diagonal = score[i - 1][j - 1] + (1 if x[i - 1] == y[j - 1] else -1)
            score[i][j] = max(score[i][j - 1], score[i - 1][j], diagonal)
    pairs, i, j = [], n, m
    while i > 0 and j > 0:
        if score[i][j] == score[i][j - 1]:
            j -= 1
        elif score[i][j] == score[i - 1][j]:
            i -= 1
        else:
            if x[i - 1] == y[j - 1]:
                pairs.append((i - 1, j - 1))
            i, j = i - 1, j - 1
    return pairs[::-1]


def refine_alignment(source: ContextTokens, target: ContextTokens) -> Alignment:
    """Words added or removed: aligned tokens take the source's column, new tokens keep the target's own."""
    pairs = [(t, s, 1.0) for t, s in special_pairs(source, target)]
    words_s, words_t = _semantic(source), _semantic(target)
    matched = global_alignment([source.keys[p] for p in words_s], [target.keys[p] for p in words_t])
    pairs += [(words_t[j], words_s[i], 1.0) for i, j in matched]
    paired = {t for t, _, _ in pairs}
    own = tuple(p for p in range(target.context_length) if p not in paired)
    edited = tuple(p for p in own if target.semantic[p])
    return Alignment("refine", source.context_length, target.context_length, tuple(sorted(pairs)), own, edited)


# --- from the prompts ------------------------------------------------------------------------------------------------

def word_swaps(clip, source_text: str, target_text: str) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """The context positions of the words that differ between two prompts of the same word count."""
    ws, wt = prompt_word_spans(source_text), prompt_word_spans(target_text)
    if len(ws) != len(wt):
        raise AlignmentError(f"replace swaps words one for one, but the source has {len(ws)} words and the target "
                             f"{len(wt)}: use mode refine to add or remove words")
    swaps = []
    for (a, b), (c, d) in zip(ws, wt):
        if source_text[a:b] != target_text[c:d]:
            try:
                swaps.append((locate_span(clip, source_text, a, b), locate_span(clip, target_text, c, d)))
            except WordPositionError as e:
                raise AlignmentError(f"cannot find the swapped word: {e}") from None
    return swaps


def align_prompts(clip, source_text: str, target_text: str, mode: str) -> Alignment:
    if mode not in MODES:
        raise AlignmentError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    source, target = context_tokens(clip, source_text), context_tokens(clip, target_text)
    if mode == "replace":
        return replace_alignment(source, target, word_swaps(clip, source_text, target_text))
    return refine_alignment(source, target)
