"""Where words of a prompt sit in its cross-attention context.

ComfyUI's tokenizer does not split a prompt into words (a word id covers a whole weighted segment), so a
word's tokens are found by editing the text: the prompt is tokenized again with the word replaced by two
different one-digit sentinels, and the tokens where those variants differ from the prompt are the word's. CLIP's
BPE works word by word, so this holds for any word bounded by spaces or punctuation, whatever the weights,
embeddings or chunking (> 77 tokens) around it. A span that cuts through a word is an error.

Works with the CLIP object ComfyUI hands to nodes, duck-typed: `clip.tokenize(text, return_word_ids=True)`
returns {encoder: [[(token, weight, word_id), ...] per chunk]}; SDXL's encoders are concatenated along
features, so a context position is the same for both.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

# CLIP's pre-tokenizer makes every digit a word of its own, so a digit never merges with its neighbours.
SENTINELS = ("7", "3")


class WordPositionError(ValueError):
    """A word that cannot be located in the prompt; the message says why."""


@dataclass(frozen=True)
class TokenStream:
    keys: tuple            # comparable key of every semantic token (no start/end/padding)
    positions: tuple       # its flat context position (chunk * chunk_length + index)
    context_length: int    # tokens of the whole conditioning


def _token_key(token):
    if isinstance(token, int):
        return token
    # Textual-inversion embeddings arrive as tensors; each tokenize call loads them anew.
    return ("embedding", tuple(round(float(x), 5) for x in token.flatten().tolist()))


def _tokenize(clip, text: str) -> dict:
    if not hasattr(clip, "tokenize"):
        raise WordPositionError(f"the clip input ({type(clip).__name__}) has no tokenizer: connect the CLIP "
                                "output of your checkpoint loader")
    try:
        out = clip.tokenize(text, return_word_ids=True)
    except TypeError:
        out = clip.tokenize(text)
    if not isinstance(out, dict) or not out or not all(isinstance(c, list) and c for c in out.values()):
        raise WordPositionError("the CLIP tokenizer returned an unexpected structure; expected "
                                "{encoder: [[(token, weight, word_id), ...], ...]}")
    return out


@dataclass(frozen=True)
class ContextTokens:
    """Every position of an encoded prompt's context, special tokens (start, end, padding) included."""
    keys: tuple            # comparable key of the token at every position
    semantic: tuple        # bool per position: a token of the prompt's text
    chunks: tuple          # length of each chunk (ComfyUI encodes > 77 tokens as several 77-token chunks)

    @property
    def context_length(self) -> int:
        return len(self.keys)

    def stream(self) -> TokenStream:
        positions = tuple(p for p, s in enumerate(self.semantic) if s)
        return TokenStream(tuple(self.keys[p] for p in positions), positions, len(self.keys))


def context_tokens(clip, text: str) -> ContextTokens:
    """The tokens of every context position of the prompt as ComfyUI encodes it (its CLIP-L stream on SDXL)."""
    out = _tokenize(clip, text)
    specials = None
    found = {}
    for name, chunks in out.items():
        keys, semantic = [], []
        for chunk in chunks:
            for entry in chunk:
                if len(entry) >= 3:
                    is_word = entry[2] != 0
                else:  # a CLIP wrapper without word ids: start/end/padding are what an empty prompt consists of
                    if specials is None:
                        specials = {n: {_token_key(e[0]) for c in cs for e in c} for n, cs in _tokenize(clip, "").items()}
                    is_word = _token_key(entry[0]) not in specials.get(name, ())
                keys.append(_token_key(entry[0]))
                semantic.append(bool(is_word))
        found[name] = ContextTokens(tuple(keys), tuple(semantic), tuple(len(c) for c in chunks))
    lengths = {n: c.context_length for n, c in found.items()}
    if len(set(lengths.values())) != 1:
        raise WordPositionError(f"the text encoders disagree on the prompt's length ({lengths}); this CLIP is "
                                "not supported")
    return found["l"] if "l" in found else found[sorted(found)[0]]


def token_stream(clip, text: str) -> TokenStream:
    return context_tokens(clip, text).stream()


def _common_prefix(a: tuple, b: tuple) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def locate_span(clip, text: str, start: int, end: int, stream: TokenStream | None = None) -> tuple[int, ...]:
    """Context positions of the tokens of text[start:end] (a whole word or words) in the encoded prompt."""
    stream = stream or token_stream(clip, text)
    word = text[start:end]
    first, last = len(stream.keys), len(stream.keys)
    for sentinel in SENTINELS:
        variant = token_stream(clip, text[:start] + f"{sentinel}" + text[end:]).keys
        first = min(first, _common_prefix(stream.keys, variant))
        last = min(last, _common_prefix(stream.keys[::-1], variant[::-1]))
    run = stream.keys[first:len(stream.keys) - last]
    alone = token_stream(clip, word).keys
    if not alone:
        raise WordPositionError(f"{word!r} has no word tokens (the tokenizer drops it): mark or target a real word")
    if run != alone:
        raise WordPositionError(f"{word!r} is part of a longer word in the prompt ({text[max(0, start - 12):end + 12]!r}): "
                                "mark or target whole words, separated by spaces or punctuation")
    return stream.positions[first:first + len(run)]


def whole_word_spans(text: str, word: str) -> list[tuple[int, int]]:
    """Spans of `word` in text as a whole word: "rose" is not found inside "rose-colored" or "roses"."""
    word = word.strip()
    if not word:
        return []
    # Boundaries only where the word itself starts or ends with a letter or digit ("!" may follow "car").
    before = r"(?<![\w\-])" if re.match(r"\w", word) else ""
    after = r"(?![\w\-])" if re.search(r"\w$", word) else ""
    pattern = before + re.escape(word) + after
    return [(m.start(), m.end()) for m in re.finditer(pattern, text, flags=re.IGNORECASE)]


def prompt_words(text: str) -> list[str]:
    """The words of a prompt as a person reads them (weights dropped), for error messages."""
    text = re.sub(r":\s*-?[0-9.]+\s*\)", ")", text)
    return [w for w in re.split(r"[\s,()\[\]]+", text) if w]
