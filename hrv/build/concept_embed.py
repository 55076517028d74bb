"""Concept word embeddings from a ComfyUI CLIP object (duck-typed: tokenize, encode_from_tokens).

Each word is encoded on its own (its own start/end tokens and padding); the embeddings of its
semantic tokens, i.e. everything but start/end/padding, are kept (encode_concept_tokens, the
paper's estimator: every token its own key) or averaged (encode_concept_words, one key per word).
Words are packed as separate 77-token sections of one encode call, which ComfyUI encodes
independently.
"""
from __future__ import annotations

import torch

from .estimator import ConceptTokenBank
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


def _check_concepts(concepts: dict[str, list[str]]) -> list[tuple[str, str]]:
    """(concept, word) pairs in row order; a set without 2 concepts or with an empty concept is an error."""
    names = list(concepts)
    if len(names) < 2:
        raise ConceptWordsError(f"a build needs at least 2 concepts, got {len(names)}")
    for name in names:
        if not concepts[name]:
            raise ConceptWordsError(f"concept {name!r} has no words: give it at least one")
    return [(name, w) for name in names for w in concepts[name]]


def _tokenized(clip, word: str, where: str = "") -> tuple[dict, str, list[int]]:
    """(token sections, the section key that gives positions, the word's semantic positions)."""
    tokens = _sections(clip, word)
    key = sorted(tokens)[0]
    positions = semantic_positions(tokens[key])
    if not positions:
        raise ConceptWordsError(f"{where}the word {word!r} has no tokens for this text encoder; remove or respell it")
    return tokens, key, positions


def _encode_semantic_tokens(clip, tokenized: list[tuple[dict, str, list[int]]],
                            words_per_call: int) -> list[torch.Tensor]:
    """float32 [n_tokens, D] per word on the encoder's device: its semantic-token rows."""
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
            rows.append(cond[0, [offset + p for p in positions]].float())
            offset += length
        if offset != cond.shape[1]:
            raise ConceptWordsError(f"the text encoder returned {cond.shape[1]} token embeddings for {offset} tokens; "
                                    "this CLIP type is not supported for building HRVs")
    return rows


def encode_word_tokens(clip, word: str) -> torch.Tensor:
    """float32 [n_tokens, D] on the CPU: `word` encoded alone, the rows of its semantic tokens.

    The encoder callable of ConceptTokenBank.build: `lambda w: encode_word_tokens(clip, w)`.
    """
    return _encode_semantic_tokens(clip, [_tokenized(clip, word)], 1)[0].cpu()


def encode_concept_tokens(clip, concepts: dict[str, list[str]],
                          words_per_call: int = WORDS_PER_CALL) -> ConceptTokenBank:
    """The token bank of the paper's estimator, float32 [T_all, D] (D as in encode_concept_words).

    Equal to ConceptTokenBank.build(concepts, encode_word_tokens-of-clip), with words_per_call words
    per encoder call.
    """
    pairs = _check_concepts(concepts)
    tokenized = [_tokenized(clip, word, f"concept {name!r}: ") for name, word in pairs]
    rows = _encode_semantic_tokens(clip, tokenized, words_per_call)
    return ConceptTokenBank.from_word_tokens({n: list(concepts[n]) for n in concepts}, rows)


def encode_concept_words(clip, concepts: dict[str, list[str]], words_per_call: int = WORDS_PER_CALL) -> ConceptWords:
    """ConceptWords with float32 [W, D] embeddings (D = 768 for SD1.x, 2048 = clip_l||clip_g for SDXL)."""
    pairs = _check_concepts(concepts)
    tokenized = [_tokenized(clip, word, f"concept {name!r}: ") for name, word in pairs]
    rows = _encode_semantic_tokens(clip, tokenized, words_per_call)
    embeddings = torch.stack([r.mean(0) for r in rows]).cpu()
    return ConceptWords.from_embeddings({n: list(concepts[n]) for n in concepts}, embeddings)
