"""The paper's head-vote estimator (arXiv 2412.02237, Sec. 3 and App. B.1), vectorised.

At every cross-attention call of the conditional pass, and for every head h of that transformer:
  (a) one concept-word is sampled per concept (C words for C concepts); each word was encoded
      alone, and every one of its semantic tokens (no start/end/padding) is its own key;
  (b) p_h[n, t] = softmax over all sampled tokens t of q_h[n] . k_h[t] / sqrt(d);
  (c) mean of p_h over positions n, then the mean over each word's tokens -> one value per concept;
  (d) the concept with the largest value gets head h's vote.

The earlier estimator ("all_words": every word of every concept in one softmax, one key per word
from its mean token embedding) stays available for comparison (votes.head_vote_concepts).

Pure torch. The sampled words depend only on (build seed, prompt index, step, transformer), through a
counter-based integer hash, so sharded and resumed builds vote exactly as one uninterrupted run.

Use in a vote processor:
    bank = encode_concept_tokens(clip, concepts)                   # once (hrv.build.concept_embed)
    keys = scaled_keys(attn2.to_k, bank.tokens.to(q), heads)      # once per run and transformer
    table = sample_word_table(bank, seed, prompt_index, steps, len(layout.blocks)).to(device)  # per prompt
    words = table[step, transformer][None]                         # [1, C]; step may be a device tensor
    votes = paper_head_votes(q_cond, keys, heads, bank, words)     # int64 [B, heads] concept rows
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from .votes import ConceptWords, ConceptWordsError, default_max_elements, head_vote_concepts

log = logging.getLogger("hrv.build.estimator")

ESTIMATORS = ("paper", "all_words")
DEFAULT_ESTIMATOR = "paper"
ESTIMATOR_HELP = {
    "paper": "one sampled word per concept at every call, every semantic token its own key, "
             "per-word mean of the attention (arXiv 2412.02237, Sec. 3)",
    "all_words": "every word of every concept in one softmax, one key per word (its mean token embedding)",
}


def check_estimator(name: str) -> str:
    """`name` if it is a known estimator; otherwise a ValueError listing the choices."""
    if name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}; choose one of: {', '.join(ESTIMATORS)}")
    return name


@dataclass(frozen=True)
class TokenSlots:
    """Index tensors of a bank on one device, for the scorer.

    A sample (one word per concept) is laid out in T_sel slots: concept c owns the slots
    [offset_c, offset_c + m_c), m_c = the most tokens any word of c has; the word sampled for c
    fills the first token_count of them and the rest are padding. The slot -> concept map is then
    the same for every sample, so the per-word sums are one matmul with a constant one-hot matrix.
    """
    token_start: torch.Tensor     # int64 [W]: first row of each word in the bank's tokens
    token_count: torch.Tensor     # int64 [W]: tokens of each word (>= 1)
    slot_concept: torch.Tensor    # int64 [T_sel]: the concept whose word fills the slot
    slot_offset: torch.Tensor     # int64 [T_sel]: which of that word's tokens the slot holds
    slot_onehot: torch.Tensor     # float32 [T_sel, C]: slot_concept as one-hot rows (segment sums)

    @property
    def num_slots(self) -> int:
        return int(self.slot_concept.shape[0])

    @property
    def num_concepts(self) -> int:
        return int(self.slot_onehot.shape[1])


@dataclass(eq=False)
class ConceptTokenBank:
    """The concept set of a build with the semantic-token embeddings of every concept word."""
    names: list[str]              # C concept names, HRV row order
    words: list[str]              # W words, grouped by concept in row order
    word_concept: torch.Tensor    # int64 [W]: row of each word's concept (non-decreasing)
    token_count: torch.Tensor     # int64 [W]: semantic tokens of each word (>= 1)
    tokens: torch.Tensor          # float [T_all, D]: the words' token embeddings, word after word
    _slots: dict = field(default_factory=dict, init=False, repr=False)   # device -> TokenSlots

    def __post_init__(self):
        names, words = self.names, self.words
        if len(names) < 2:
            raise ConceptWordsError(f"a build needs at least 2 concepts, got {len(names)}")
        if self.word_concept.shape != (len(words),) or self.token_count.shape != (len(words),):
            raise ConceptWordsError(f"word_concept and token_count must have one entry per word ({len(words)})")
        rows = self.word_concept.tolist()
        if rows != sorted(rows) or not set(rows) <= set(range(len(names))):
            raise ConceptWordsError("words must be grouped by concept in row order")
        for row, name in enumerate(names):
            if row not in rows:
                raise ConceptWordsError(f"concept {name!r} has no words: give it at least one")
        if self.token_count.min().item() < 1:
            raise ConceptWordsError("every concept word needs at least one token")
        if self.tokens.dim() != 2 or self.tokens.shape[0] != int(self.token_count.sum()):
            raise ConceptWordsError(f"tokens must be [{int(self.token_count.sum())} tokens, dim], "
                                    f"got {list(self.tokens.shape)}")
        if not torch.isfinite(self.tokens).all():
            raise ConceptWordsError("a concept word embedding contains NaN or infinite values: "
                                    "the text encoder is broken or was loaded with the wrong weights")
        # Kept for the word sampler, which runs at every attention call.
        self._first_word = torch.searchsorted(self.word_concept, torch.arange(len(names)))       # [C]
        self._num_words = torch.bincount(self.word_concept, minlength=len(names))                # [C]

    # --- construction ---------------------------------------------------------------------------

    @classmethod
    def from_word_tokens(cls, concepts: dict[str, list[str]],
                         word_tokens: Sequence[torch.Tensor]) -> "ConceptTokenBank":
        """word_tokens: one float [n_tokens, D] per word, in the order of the words of `concepts`."""
        names = list(concepts)
        words = [w for name in names for w in concepts[name]]
        if len(word_tokens) != len(words):
            raise ConceptWordsError(f"{len(word_tokens)} token embeddings for {len(words)} words")
        labels = [(name, w) for name in names for w in concepts[name]]
        for (name, word), t in zip(labels, word_tokens):
            if t.dim() != 2 or t.shape[0] < 1:
                raise ConceptWordsError(f"concept {name!r}: the word {word!r} has no tokens for this text encoder "
                                        f"(got an embedding of shape {list(t.shape)}); remove or respell it")
            if t.shape[1] != word_tokens[0].shape[1]:
                raise ConceptWordsError(f"concept {name!r}: the word {word!r} has {t.shape[1]}-dim tokens, "
                                        f"the first word {word_tokens[0].shape[1]}")
        word_concept = torch.tensor([row for row, name in enumerate(names) for _ in concepts[name]], dtype=torch.int64)
        token_count = torch.tensor([t.shape[0] for t in word_tokens], dtype=torch.int64)
        tokens = torch.cat([t.detach().float().cpu() for t in word_tokens]) if word_tokens else torch.zeros(0, 0)
        return cls(names, words, word_concept, token_count, tokens)

    @classmethod
    def build(cls, concepts: dict[str, list[str]], encode_word: Callable[[str], torch.Tensor]) -> "ConceptTokenBank":
        """encode_word(word) -> float [n_tokens, D]: the word encoded alone, its semantic tokens only."""
        names = list(concepts)
        if len(names) < 2:
            raise ConceptWordsError(f"a build needs at least 2 concepts, got {len(names)}")
        for name in names:
            if not concepts[name]:
                raise ConceptWordsError(f"concept {name!r} has no words: give it at least one")
        bank = cls.from_word_tokens(concepts, [encode_word(w) for name in names for w in concepts[name]])
        log.debug("concept token bank: %d concepts, %d words, %d tokens", len(names), len(bank.words), bank.num_tokens)
        return bank

    # --- views ----------------------------------------------------------------------------------

    @property
    def num_concepts(self) -> int:
        return len(self.names)

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def dim(self) -> int:
        return int(self.tokens.shape[1])

    @property
    def token_start(self) -> torch.Tensor:
        """int64 [W]: the first row of each word in `tokens`."""
        return torch.cumsum(self.token_count, 0) - self.token_count

    @property
    def concept_first_word(self) -> torch.Tensor:
        """int64 [C]: index of each concept's first word (its words follow it)."""
        return self._first_word

    @property
    def concept_num_words(self) -> torch.Tensor:
        """int64 [C]: how many words each concept has."""
        return self._num_words

    def word_tokens(self, word: int) -> torch.Tensor:
        """float [n_tokens, D]: the token embeddings of word `word`."""
        start = int(self.token_start[word])
        return self.tokens[start:start + int(self.token_count[word])]

    def as_dict(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {name: [] for name in self.names}
        for word, row in zip(self.words, self.word_concept.tolist()):
            out[self.names[row]].append(word)
        return out

    def concept_words(self) -> ConceptWords:
        """The same words for the "all_words" estimator: one key per word, its mean token embedding."""
        segment = torch.repeat_interleave(torch.arange(len(self.words)), self.token_count)      # [T_all]
        sums = torch.zeros(len(self.words), self.dim, dtype=torch.float32).index_add_(0, segment, self.tokens.float())
        return ConceptWords(list(self.names), list(self.words), self.word_concept.clone(),
                            sums / self.token_count[:, None].float())

    def slots(self, device) -> TokenSlots:
        """The scorer's index tensors on `device`, made once per device."""
        device = torch.device(device)
        slots = self._slots.get(device)
        if slots is None:
            width = torch.zeros(self.num_concepts, dtype=torch.int64).scatter_reduce_(
                0, self.word_concept, self.token_count, reduce="amax")                         # m_c [C]
            slot_concept = torch.repeat_interleave(torch.arange(self.num_concepts), width)       # [T_sel]
            slot_offset = torch.arange(int(width.sum())) - (torch.cumsum(width, 0) - width)[slot_concept]
            slots = TokenSlots(
                token_start=self.token_start.to(device), token_count=self.token_count.to(device),
                slot_concept=slot_concept.to(device), slot_offset=slot_offset.to(device),
                slot_onehot=torch.nn.functional.one_hot(slot_concept, self.num_concepts).float().to(device))
            self._slots[device] = slots
        return slots


def scaled_keys(to_k: Callable[[torch.Tensor], torch.Tensor], embeddings: torch.Tensor, heads: int) -> torch.Tensor:
    """[T, heads*d] = to_k(embeddings) / sqrt(d): the keys the scorers take (scaled once, not per call)."""
    keys = to_k(embeddings)
    if keys.shape[-1] % heads:
        raise ValueError(f"keys of width {keys.shape[-1]} do not split into {heads} heads")
    return keys * (1.0 / math.sqrt(keys.shape[-1] // heads))


# --- word sampling ------------------------------------------------------------------------------

_MASK64 = (1 << 64) - 1


def _signed(x: int) -> int:
    return x - (1 << 64) if x >= 1 << 63 else x


# splitmix64's finalizer constants and the golden-ratio increment, as wrapping int64 arithmetic.
_GAMMA, _MUL1, _MUL2 = _signed(0x9E3779B97F4A7C15), _signed(0xBF58476D1CE4E5B9), _signed(0x94D049BB133111EB)


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def _mix(x: torch.Tensor) -> torch.Tensor:
    x = x + _GAMMA
    x = (x ^ _shift_right(x, 30)) * _MUL1
    x = (x ^ _shift_right(x, 27)) * _MUL2
    return x ^ _shift_right(x, 31)


def word_uniforms(seed, prompt_index, step, transformer_index, num_concepts: int) -> torch.Tensor:
    """float64 [..., C] in [0, 1): a counter-based hash of (seed, prompt, step, transformer, concept).

    Integer arithmetic only, so it is the same on every machine; arguments broadcast as int64 tensors, so a whole
    prompt's table is a handful of vectorised ops, not thousands of seeded generators. Each argument is mixed in
    turn: seed + prompt_index would give prompt 1 of seed 0 the words of prompt 0 of seed 1.
    """
    h = _mix(torch.as_tensor(seed, dtype=torch.int64))
    for part in (prompt_index, step, transformer_index):
        h = _mix(h ^ torch.as_tensor(part, dtype=torch.int64))
    h = _mix(h[..., None] ^ torch.arange(num_concepts, dtype=torch.int64))
    return _shift_right(h, 11).to(torch.float64) * (1.0 / (1 << 53))


def _pick(bank: ConceptTokenBank, u: torch.Tensor) -> torch.Tensor:
    counts = bank.concept_num_words
    return bank.concept_first_word + torch.minimum((u * counts).to(torch.int64), counts - 1)


def sample_word_indices(bank: ConceptTokenBank, seed: int, prompt_index: int, step: int,
                        transformer_index: int) -> torch.Tensor:
    """int64 [C] on the CPU: the word sampled for each concept (entry c is a word of concept c).

    Deterministic in (seed, prompt_index, step, transformer_index) and uniform over each
    concept's words. transformer_index names the cross-attention transformer of the call, e.g.
    its position in HeadLayout.blocks (ComfyUI's extra_options["transformer_index"] counts
    SpatialTransformers, which hold up to 10 attn2 in SDXL, so it is not unique per attn2).
    """
    return _pick(bank, word_uniforms(seed, prompt_index, step, transformer_index, bank.num_concepts))


def sample_word_indices_batch(bank: ConceptTokenBank, seed: int, prompt_indices: Sequence[int], step: int,
                              transformer_index: int) -> torch.Tensor:
    """int64 [B, C]: sample_word_indices for each prompt of a batched sampling run, row b for prompt_indices[b]."""
    prompts = torch.tensor(list(prompt_indices), dtype=torch.int64)
    return _pick(bank, word_uniforms(seed, prompts, step, transformer_index, bank.num_concepts))


def sample_word_table(bank: ConceptTokenBank, seed: int, prompt_index: int, steps: int,
                      num_transformers: int) -> torch.Tensor:
    """int64 [steps, num_transformers, C]: every call's words of one prompt, drawn up front.

    Moved to the sampling device once per prompt, the table is indexed by a step tensor that
    stays on the device, so choosing the words costs no host sync during sampling.
    """
    step = torch.arange(steps, dtype=torch.int64)[:, None]
    transformer = torch.arange(num_transformers, dtype=torch.int64)[None, :]
    return _pick(bank, word_uniforms(seed, prompt_index, step, transformer, bank.num_concepts))


# --- scoring ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SlotTables:
    """What the scorer needs of some samples of words (one word per concept each), derived once.

    Leading dims [...] follow word_indices [..., C]; a build derives them for a whole run up front, so an
    attention call only selects its step's rows.
    """
    rows: torch.Tensor            # int64 [..., T_sel]: the bank token each slot holds (0 for padding)
    pad: torch.Tensor             # float32 [..., T_sel]: 0, or -inf for a padding slot (no share of the softmax)
    inv_count: torch.Tensor       # float32 [..., C]: 1 / tokens of each sampled word (the mean over its tokens)


def slot_tables(bank: ConceptTokenBank, word_indices: torch.Tensor) -> SlotTables:
    """SlotTables of word_indices int64 [..., C] (entry c a word of concept c), on word_indices' device."""
    slots = bank.slots(word_indices.device)
    if word_indices.shape[-1] != slots.num_concepts:
        raise ValueError(f"word_indices must end in {slots.num_concepts} concepts, got {list(word_indices.shape)}")
    count = slots.token_count[word_indices]                                  # [..., C] tokens per sampled word
    valid = slots.slot_offset < count[..., slots.slot_concept]               # [..., T_sel] False = padding
    rows = torch.where(valid, slots.token_start[word_indices][..., slots.slot_concept] + slots.slot_offset, 0)
    pad = torch.zeros(valid.shape, dtype=torch.float32, device=valid.device).masked_fill_(~valid, float("-inf"))
    return SlotTables(rows, pad, 1.0 / count.float())


def paper_word_attention(q: torch.Tensor, keys: torch.Tensor, heads: int, bank: ConceptTokenBank,
                         word_indices: torch.Tensor, max_elements: int | None = None) -> torch.Tensor:
    """float32 [B, heads, C]: steps (a)-(c) for the sampled words, one value per concept.

    q [B, N, heads*d]: projected queries of the conditional rows. keys [T_all, heads*d]: the
    whole bank projected by this transformer's to_k and multiplied by 1/sqrt(d) (scaled_keys).
    word_indices int64 [B, C]: row b's sampled words, entry c a word of concept c (as
    sample_word_indices gives; other words would be cut to concept c's slot width), best already
    on q's device: a CPU tensor is copied to the GPU, and that copy waits for the stream.
    """
    batch = q.shape[0]
    if tuple(word_indices.shape) != (batch, bank.num_concepts):
        raise ValueError(f"word_indices must be [{batch}, {bank.num_concepts}], got {list(word_indices.shape)}")
    return score_slots(q, keys, heads, bank.slots(q.device), slot_tables(bank, word_indices.to(q.device)),
                       max_elements)


def score_slots(q: torch.Tensor, keys: torch.Tensor, heads: int, slots: TokenSlots, tables: SlotTables,
                max_elements: int | None = None) -> torch.Tensor:
    """paper_word_attention with the samples' SlotTables [B, ...] already made (tables on q's device).

    Positions run in chunks so the [B, heads, n, T_sel] scores stay under max_elements. No value is read on the
    host; the op sequence does not depend on heads, concepts or words.
    """
    batch, positions, inner = q.shape
    if inner % heads or keys.dim() != 2 or keys.shape[1] != inner:
        raise ValueError(f"queries [.., {inner}] and keys {list(keys.shape)} do not split into {heads} heads")
    d, n_slots = inner // heads, slots.num_slots
    # float32 scores even for half-precision models: a few MFLOP per call, and the votes of a
    # build then do not depend on the dtype the UNet runs in more than its queries do.
    kt = keys[tables.rows].float().reshape(batch, n_slots, heads, d).permute(0, 2, 3, 1)   # [B, heads, d, T_sel]
    pad = tables.pad[:, None, None, :]                                       # [B, 1, 1, T_sel]
    qh = q.reshape(batch, positions, heads, d).transpose(1, 2)               # [B, heads, N, d]
    max_elements = max_elements or default_max_elements(q.device)
    chunk = max(1, max_elements // max(1, batch * heads * n_slots))
    if chunk >= positions:
        # One copy makes the heads' queries contiguous and float32 (the matmul would copy them anyway).
        qh = qh.to(torch.float32, memory_format=torch.contiguous_format)
        total = (torch.matmul(qh, kt) + pad).softmax(-1).sum(2)             # [B, heads, T_sel]
    else:
        total = torch.zeros((batch, heads, n_slots), dtype=torch.float32, device=q.device)
        for start in range(0, positions, chunk):
            scores = torch.matmul(qh[:, :, start:start + chunk].float(), kt) + pad   # [B, heads, n, T_sel]
            total += scores.softmax(-1).sum(2)
    per_word = torch.matmul(total, slots.slot_onehot)                        # [B, heads, C] summed over tokens
    return per_word * tables.inv_count[:, None, :] / positions


def paper_head_votes(q: torch.Tensor, keys: torch.Tensor, heads: int, bank: ConceptTokenBank,
                     word_indices: torch.Tensor, max_elements: int | None = None) -> torch.Tensor:
    """int64 [B, heads]: the concept row each head votes for (step (d): argmax over the concepts)."""
    # Entry c of word_indices is concept c's word, so the argmax position is the concept row.
    return paper_word_attention(q, keys, heads, bank, word_indices, max_elements).argmax(-1)


def paper_head_votes_of_tables(q: torch.Tensor, keys: torch.Tensor, heads: int, bank: ConceptTokenBank,
                               tables: SlotTables, max_elements: int | None = None) -> torch.Tensor:
    """paper_head_votes with the samples' SlotTables [B, ...] already on q's device (a build makes them per run)."""
    return score_slots(q, keys, heads, bank.slots(q.device), tables, max_elements).argmax(-1)


def all_words_head_votes(q: torch.Tensor, word_keys: torch.Tensor, heads: int, word_concept: torch.Tensor,
                         max_elements: int | None = None) -> torch.Tensor:
    """int64 [B, heads]: the "all_words" estimator (votes.head_vote_concepts).

    word_keys [W, heads*d]: one scaled key per word of every concept (ConceptTokenBank.concept_words()
    gives the embeddings); word_concept int64 [W] on q's device.
    """
    return head_vote_concepts(q, word_keys, heads, word_concept, max_elements)
