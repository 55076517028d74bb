"""Concept word embeddings from a ComfyUI CLIP object (duck-typed: tokenize, encode_from_tokens).

Each word is encoded on its own (its own start/end tokens and padding); the embeddings of its
semantic tokens, i.e. everything but start/end/padding, are averaged. Words are packed as
separate 77-token sections of one encode call, which ComfyUI encodes independently.
"""
from __future__ import annotations

import torch

from .votes import ConceptWords, ConceptWordsError

WORDS_PER_CALL = 32


def _escape(word: str) -> str:
    # ComfyUI reads "(word)" and "(word:1.2)" as emphasis; a concept word is literal text.
    return word.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def _sections(clip, word: str) -> dict[str, list[list[tuple]]]:
    tokens = clip.tokenize(_escape(word), return_word_ids=True)
    if not isinstance(tokens, dict) or not tokens:
        raise ConceptWordsError("this CLIP's tokenizer returns no token sections; is it an SD1.x/SDXL text encoder?")
    return tokens


def semantic_positions(sections: list[list[tuple]]) -> list[int]:
    """Flat positions of the word's own tokens: ComfyUI gives start/end/padding word id 0."""
    positions, offset = [], 0
    for section in sections:
        positions += [offset + i for i, token in enumerate(section) if len(token) > 2 and token[2] != 0]
        offset += len(section)
    return positions


def encode_concept_words(clip, concepts: dict[str, list[str]], words_per_call: int = WORDS_PER_CALL) -> ConceptWords:
    """ConceptWords with float32 [W, D] embeddings (D = 768 for SD1.x, 2048 = clip_l||clip_g for SDXL)."""
    names = list(concepts)
    if len(names) < 2:
        raise ConceptWordsError(f"a build needs at least 2 concepts, got {len(names)}")
    words = []
    for name in names:
        if not concepts[name]:
            raise ConceptWordsError(f"concept {name!r} has no words: give it at least one")
        words += [(name, w) for w in concepts[name]]
    tokenized = []
    for name, word in words:
        tokens = _sections(clip, word)
        key = sorted(tokens)[0]
        positions = semantic_positions(tokens[key])
        if not positions:
            raise ConceptWordsError(f"concept {name!r}: the word {word!r} has no tokens for this text encoder; "
                                    "remove or respell it")
        tokenized.append((tokens, key, positions))
    rows = []
    for start in range(0, len(tokenized), words_per_call):
        group = tokenized[start:start + words_per_call]
        packed: dict[str, list] = {}
        for tokens, _, _ in group:
            for k, sections in tokens.items():
                packed.setdefault(k, []).extend(sections)
        cond = clip.encode_from_tokens(packed)                     # [1, sum of section lengths, D]
        offset = 0
        for tokens, key, positions in group:
            length = sum(len(s) for s in tokens[key])
            rows.append(cond[0, [offset + p for p in positions]].float().mean(0))
            offset += length
        if offset != cond.shape[1]:
            raise ConceptWordsError(f"the text encoder returned {cond.shape[1]} token embeddings for {offset} tokens; "
                                    "this CLIP type is not supported for building HRVs")
    embeddings = torch.stack(rows).cpu()
    return ConceptWords.from_embeddings({n: list(concepts[n]) for n in names}, embeddings)
