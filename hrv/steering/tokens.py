"""Where the target words sit in the cross-attention context of a prompt.

Works with the CLIP object ComfyUI hands to nodes, duck-typed: `clip.tokenize(text, return_word_ids=True)`
returns {encoder: [[(token, weight, word_id), ...] per 77-token chunk]} ("l" for SD1, "g" and "l" for
SDXL). The encoders' outputs are concatenated along features, so a context position is
chunk * chunk_length + index, the same for every encoder.
"""
from __future__ import annotations

import re
from dataclasses import dataclass


class TargetWordError(ValueError):
    """A target word that cannot be found in the prompt; the message lists what the prompt holds."""


@dataclass(frozen=True)
class TargetPositions:
    positions: tuple[int, ...]          # sorted flat context indices of every target token
    context_length: int                 # chunks * tokens per chunk of the conditioning
    words: dict[str, tuple[int, ...]]   # each target word -> its positions


def split_targets(target: str) -> list[str]:
    words = [w.strip() for w in str(target).split(",")]
    words = [w for w in words if w]
    if not words:
        raise TargetWordError("no target word given: type the word of the prompt to steer, "
                              "or several separated by commas")
    return words


def _tokenize(clip, text: str) -> dict[str, list[list[tuple]]]:
    if not hasattr(clip, "tokenize"):
        raise TargetWordError(f"the clip input ({type(clip).__name__}) has no tokenizer: connect the CLIP "
                              "output of your checkpoint loader")
    try:
        out = clip.tokenize(text, return_word_ids=True)
    except TypeError:  # a CLIP wrapper without word ids; special tokens are then told apart by id
        out = clip.tokenize(text)
    if not isinstance(out, dict) or not out or not all(isinstance(c, list) and c for c in out.values()):
        raise TargetWordError("the CLIP tokenizer returned an unexpected structure; expected "
                              "{encoder: [[(token, weight), ...], ...]}")
    return out


def _token_id(entry) -> int | None:
    token = entry[0]
    # Textual-inversion embeddings arrive as tensors: they are prompt content but can never match a word.
    return int(token) if isinstance(token, int) else None


class _Encoder:
    """One encoder's view of a text: (position, token id) of its semantic tokens, and the context length."""

    def __init__(self, chunks: list[list[tuple]], special_ids: frozenset[int]):
        self.stream: list[tuple[int, int | None]] = []
        position = 0
        for chunk in chunks:
            for entry in chunk:
                semantic = entry[2] != 0 if len(entry) > 2 else _token_id(entry) not in special_ids
                if semantic:
                    self.stream.append((position, _token_id(entry)))
                position += 1
        self.context_length = position

    @property
    def ids(self) -> list[int | None]:
        return [t for _, t in self.stream]

    def find(self, needle: list[int]) -> list[int]:
        ids, n, found = self.ids, len(needle), []
        for start in range(len(ids) - n + 1):
            if ids[start:start + n] == needle:
                found += [p for p, _ in self.stream[start:start + n]]
        return found


def _special_ids(clip, encoders) -> dict[str, frozenset[int]]:
    # Only needed without word ids: start/end/padding are whatever an empty prompt consists of.
    if all(len(e) > 2 for enc in encoders.values() for chunk in enc for e in chunk):
        return {name: frozenset() for name in encoders}
    empty = _tokenize(clip, "")
    return {name: frozenset(_token_id(e) for chunk in empty.get(name, []) for e in chunk) for name in encoders}


def _pieces(clip, ids: list[int | None]) -> list[str]:
    """Readable token strings when the tokenizer can untokenize, else the ids."""
    untokenize = getattr(getattr(clip, "tokenizer", None), "untokenize", None)
    if untokenize is not None:
        try:
            return [piece.replace("</w>", "") if t is not None else "<embedding>"
                    for t, (_, piece) in zip(ids, untokenize([(t if t is not None else 0, 1.0) for t in ids]))]
        except (KeyError, TypeError, ValueError, AttributeError):
            pass
    return ["<embedding>" if t is None else str(t) for t in ids]


def _prompt_words(prompt: str) -> list[str]:
    text = re.sub(r":\s*-?[0-9.]+\s*\)", ")", prompt)  # drop weights of "(word:1.2)"
    return [w for w in re.split(r"[\s,()\[\]]+", text) if w]


def find_target_positions(clip, prompt: str, target: str) -> TargetPositions:
    """Flat context positions of all semantic tokens of the comma-separated target words in the prompt."""
    words = split_targets(target)
    prompt_tokens = _tokenize(clip, prompt)
    specials = _special_ids(clip, prompt_tokens)
    encoders = {name: _Encoder(chunks, specials[name]) for name, chunks in prompt_tokens.items()}
    lengths = {name: e.context_length for name, e in encoders.items()}
    if len(set(lengths.values())) != 1:
        raise TargetWordError(f"the text encoders disagree on the prompt's length ({lengths}); "
                              "this CLIP is not supported by the steering nodes")
    context_length = next(iter(lengths.values()))

    per_word: dict[str, tuple[int, ...]] = {}
    for word in words:
        word_tokens = _tokenize(clip, word)
        found_by_encoder = {}
        for name, encoder in encoders.items():
            if name not in word_tokens:
                raise TargetWordError(f"the tokenizer gave no {name!r} tokens for {word!r}")
            needle = _Encoder(word_tokens[name], specials[name]).ids
            if not needle or None in needle:
                raise TargetWordError(f"the target {word!r} has no word tokens: type a word of the prompt")
            found_by_encoder[name] = encoder.find(needle)
        found = next(iter(found_by_encoder.values()))
        if not found:
            first = next(iter(encoders.values()))
            raise TargetWordError(
                f"the target {word!r} is not in the prompt. Type it exactly as it is written in the prompt "
                f"(spelling, singular/plural). Prompt words: {', '.join(_prompt_words(prompt)) or '(none)'}. "
                f"Prompt tokens: {' '.join(_pieces(clip, first.ids)) or '(none)'}; "
                f"{word!r} tokenizes as: {' '.join(_pieces(clip, needle))}")
        if any(f != found for f in found_by_encoder.values()):
            raise TargetWordError(f"the text encoders place {word!r} at different positions "
                                  f"({found_by_encoder}); this CLIP is not supported by the steering nodes")
        per_word[word] = tuple(sorted(set(found)))
    positions = tuple(sorted({p for found in per_word.values() for p in found}))
    return TargetPositions(positions=positions, context_length=context_length, words=per_word)
