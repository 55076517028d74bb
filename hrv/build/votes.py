"""Head votes of an HRV build (paper, Sec. 3): which concept each cross-attention head attends to.

At every attn2 call, for the rows of the conditionings that carry a vote request, every head votes
for one concept (estimator.py: the paper's estimator, one sampled word per concept, by default;
"all_words", every word in one softmax, below). Only the concept keys are scored here; the prompt's
own attention runs untouched in the inner attention (fused kernel or the replacement that was
already installed), so building never changes what the model computes. VoteProcessor is the
build's processor of the attention core.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..attention.transfer import to_device
from ..format.layout import HeadLayout, cross_attention_modules, layout_of_unet

# Upper bound on the [B, heads, n, W] score chunk, in elements. On a GPU big chunks mean few
# kernel launches (64 MiB of float32); on a CPU a chunk that stays in cache (2 MiB) while it is
# multiplied, soft-maxed and summed is 3-4x faster than one big pass (bench/build.py).
MAX_SCORE_ELEMENTS = {"cpu": 1 << 19}
MAX_SCORE_ELEMENTS_DEFAULT = 1 << 24


def default_max_elements(device) -> int:
    return MAX_SCORE_ELEMENTS.get(torch.device(device).type, MAX_SCORE_ELEMENTS_DEFAULT)


class ConceptWordsError(ValueError):
    """Concept words that cannot be used for a build; the message says how to fix them."""


@dataclass
class ConceptWords:
    """The concept set of a build with one text embedding per concept word."""
    names: list[str]              # C concept names, HRV row order
    words: list[str]              # W words, grouped by concept in row order
    word_concept: torch.Tensor    # int64 [W]: row of each word's concept
    embeddings: torch.Tensor      # float [W, D]: mean semantic-token embedding of each word

    def __post_init__(self):
        if len(self.names) < 2:
            raise ConceptWordsError(f"a build needs at least 2 concepts, got {len(self.names)}")
        if self.embeddings.dim() != 2 or self.embeddings.shape[0] != len(self.words):
            raise ConceptWordsError(f"embeddings must be [words={len(self.words)}, dim], "
                                    f"got {list(self.embeddings.shape)}")
        if self.word_concept.shape != (len(self.words),):
            raise ConceptWordsError("word_concept must name one concept row per word")
        present = set(self.word_concept.tolist())
        for row, name in enumerate(self.names):
            if row not in present:
                raise ConceptWordsError(f"concept {name!r} has no words: give it at least one")
        if not torch.isfinite(self.embeddings).all():
            raise ConceptWordsError("a concept word embedding contains NaN or infinite values: "
                                    "the text encoder is broken or was loaded with the wrong weights")

    @property
    def num_concepts(self) -> int:
        return len(self.names)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    @classmethod
    def from_embeddings(cls, concepts: dict[str, list[str]], embeddings: torch.Tensor) -> "ConceptWords":
        """embeddings [W, D] in the order of the words of `concepts` (concept by concept)."""
        names = list(concepts)
        words = [w for name in names for w in concepts[name]]
        word_concept = torch.tensor([row for row, name in enumerate(names) for _ in concepts[name]], dtype=torch.int64)
        return cls(names, words, word_concept, embeddings)

    def as_dict(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {name: [] for name in self.names}
        for word, row in zip(self.words, self.word_concept.tolist()):
            out[self.names[row]].append(word)
        return out


# --- the "all_words" estimator: p_h = mean over positions of softmax_w(q_h . k_h[w] / sqrt(d)) over all W words,
# one key per word (its mean token embedding); head h votes for the concept of argmax_w p_h.

def mean_word_attention(q: torch.Tensor, keys: torch.Tensor, heads: int,
                        max_elements: int | None = None) -> torch.Tensor:
    """Mean over positions of each head's softmax over the concept words.

    q [B, N, heads*d] (projected queries), keys [W, heads*d] (projected concept keys, already
    multiplied by 1/sqrt(d)) -> float32 [B, heads, W]. Positions are processed in chunks so the
    [B, heads, n, W] scores stay under max_elements.
    """
    batch, positions, inner = q.shape
    if inner % heads or keys.shape[1] != inner:
        raise ValueError(f"queries [.., {inner}] and keys [.., {keys.shape[1]}] do not split into {heads} heads")
    d = inner // heads
    words = keys.shape[0]
    kt = keys.reshape(words, heads, d).permute(1, 2, 0)        # [heads, d, W]
    qh = q.reshape(batch, positions, heads, d).transpose(1, 2)  # [B, heads, N, d]
    max_elements = max_elements or default_max_elements(q.device)
    chunk = max(1, max_elements // max(1, batch * heads * words))
    total = torch.zeros((batch, heads, words), dtype=torch.float32, device=q.device)
    for start in range(0, positions, chunk):
        scores = torch.matmul(qh[:, :, start:start + chunk], kt)  # [B, heads, n, W]
        total += scores.softmax(-1, dtype=torch.float32).sum(2)
    return total / positions


def head_vote_concepts(q: torch.Tensor, keys: torch.Tensor, heads: int, word_concept: torch.Tensor,
                       max_elements: int | None = None) -> torch.Tensor:
    """int64 [B, heads]: the concept each head votes for (the concept of its argmax word)."""
    return word_concept[mean_word_attention(q, keys, heads, max_elements).argmax(-1)]


class VoteRecorder:
    """Per-run state of a build: concept keys per block, current step, vote counts of one prompt.

    Vote counts stay on the sampling device (no host sync per attention call) until
    take_prompt_counts() moves the finished prompt's int64 [S, C, H] counts to the CPU.
    """

    def __init__(self, layout: HeadLayout, bank, steps: int, attn_modules: dict, estimator: str = "paper",
                 seed: int = 0, max_elements: int | None = None):
        from .estimator import check_estimator
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        self.layout = layout
        self.bank = bank                          # ConceptTokenBank: every concept word's semantic tokens
        self.estimator = check_estimator(estimator)
        self.words = bank.concept_words()         # the all_words estimator's one key per word
        self.seed = int(seed)
        self.steps = int(steps)
        self.attn_modules = attn_modules
        self.max_elements = max_elements
        self.step = 0
        self.prompt_indices: tuple = (0,)
        self.counts: torch.Tensor | None = None   # int64 [S, C, H] on the sampling device
        self._keys: dict = {}                     # attn2 key -> scaled keys [T_all | W, heads*d]
        self._word_concept: dict = {}             # device -> int64 [W]
        self._columns: dict = {}                  # (attn2 key, rows, device) -> int64 [rows * heads] columns
        self._ones: dict = {}                     # (n, device) -> int64 [n] ones: the index_put_ increments
        self._position = {b.key: i for i, b in enumerate(layout.blocks)}   # transformer number of the word draw
        self._tables: dict = {}                   # device -> SlotTables [T, S, B, ...] of those words
        self._step_for: tuple = (None, None)      # (sigmas tensor of the current model call, its step)
        self.start_prompt()

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.steps, self.bank.num_concepts, self.layout.num_heads)

    def start_prompt(self, prompt_indices=(0,)) -> None:
        """A new sampling run of the prompts prompt_indices (its latent rows in that order)."""
        from .estimator import sample_word_table, slot_tables
        self.prompt_indices = tuple(int(i) for i in prompt_indices)
        self.counts = None
        self.step = 0
        self._step_for = (None, None)
        self._tables = {}
        if self.estimator == "paper":
            # Every call's words for the whole run, drawn up front, and what the scorer derives from them
            # ([transformers, steps, prompts, ...]): an attention call only selects its step.
            table = torch.stack([sample_word_table(self.bank, self.seed, i, self.steps, len(self._position))
                                 for i in self.prompt_indices])                              # [B, S, T, C]
            self._tables["cpu"] = slot_tables(self.bank, table.permute(2, 1, 0, 3).contiguous())

    def end_step(self, step_index: int) -> None:
        """Sampler callback: step `step_index` is done (used only when ComfyUI gives no sample_sigmas)."""
        self.step = int(step_index) + 1

    def take_prompt_counts(self) -> torch.Tensor:
        """int64 [S, C, H] on the CPU: the votes since start_prompt()."""
        counts = torch.zeros(self.shape, dtype=torch.int64) if self.counts is None else self.counts.cpu()
        self.counts = None
        return counts

    def concept_keys(self, key, like: torch.Tensor) -> torch.Tensor:
        """attn2.to_k(embeddings) / sqrt(d), once per run and block: every bank token [T_all, heads*d] for the
        paper's estimator, one mean embedding per word [W, heads*d] for all_words."""
        keys = self._keys.get(key)
        if keys is None or keys.device != like.device:
            attn2 = self.attn_modules[key]
            d = attn2.to_k.weight.shape[0] // int(attn2.heads)
            embeddings = self.bank.tokens if self.estimator == "paper" else self.words.embeddings
            # Through the module, so ComfyUI's weight casting and LoRA patches apply.
            keys = attn2.to_k(embeddings.to(device=like.device, dtype=like.dtype)) * (1.0 / math.sqrt(d))
            if self.estimator == "paper":
                keys = keys.float()     # the scorer's dtype, cast once per run rather than per call
            self._keys[key] = keys
        return keys

    def step_tables(self, key, rows: int, step: torch.Tensor, device):
        """The scorer's SlotTables [rows, ...] of this step and transformer, on `device`.

        The run's tables move to the device once; the step is selected with a 1-element index tensor (indexing by
        a 0-dim tensor would read it on the host: a sync)."""
        from .estimator import SlotTables
        tables = self._tables.get(device)
        if tables is None:
            cpu = self._tables["cpu"]
            tables = self._tables[device] = SlotTables(*(to_device(t, device) for t in (cpu.rows, cpu.pad,
                                                                                        cpu.inv_count)))
        at = self._position[key]
        index = step.reshape(1)
        return SlotTables(*(_repeat_rows(t[at].index_select(0, index)[0], rows)
                            for t in (tables.rows, tables.pad, tables.inv_count)))

    def current_step(self, extra_options: dict, device) -> torch.Tensor:
        """int64 scalar tensor on `device`: the step whose noise level this model call runs at.

        With ComfyUI's sample_sigmas s_0 > ... > s_S, a call at sigma belongs to step i when
        sigma is s_i or lies in (s_{i+1}, s_i): the second call of a 2nd-order step at s_{i+1}
        (Heun) counts for step i+1, a midpoint call (DPM2) for step i. Computed on the device
        (no host sync) once per model call; without sample_sigmas the sampler callback decides.
        """
        sigmas, schedule = extra_options.get("sigmas"), extra_options.get("sample_sigmas")
        if sigmas is None or schedule is None:
            return torch.tensor(min(self.step, self.steps - 1), device=device)
        if sigmas is not self._step_for[0]:
            sigma = sigmas.reshape(-1)[0].to(device=device, dtype=torch.float32)
            levels = schedule[:self.steps].to(device=device, dtype=torch.float32)
            close = torch.isclose(levels, sigma, rtol=1e-4, atol=0.0)
            interval = (levels >= sigma).sum() - 1
            step = torch.where(close.any(), close.to(torch.int64).argmax(), interval).clamp(0, self.steps - 1)
            self._step_for = (sigmas, step)
        return self._step_for[1]

    def record(self, key, cond: torch.Tensor, extra_options: dict) -> None:
        """Count the votes of the projected queries cond [B, N, heads*d] of the conditionings that vote."""
        from .estimator import paper_head_votes_of_tables
        heads = int(extra_options["n_heads"])
        device = cond.device
        step = self.current_step(extra_options, device)
        if self.estimator == "paper":
            concepts = paper_head_votes_of_tables(cond, self.concept_keys(key, cond), heads, self.bank,
                                                  self.step_tables(key, cond.shape[0], step, device), self.max_elements)
        else:
            concepts = head_vote_concepts(cond, self.concept_keys(key, cond), heads,
                                          _cached(self._word_concept, device, device, lambda: self.words.word_concept),
                                          self.max_elements)                      # [Bc, heads]
        block = self.layout.block(key)
        rows = concepts.shape[0]
        columns = _cached(self._columns, (key, rows, device), device,       # int64 [rows * heads], row-major
                          lambda: torch.arange(block.first_column, block.first_column + heads).repeat(rows))
        if self.counts is None:
            self.counts = torch.zeros(self.shape, dtype=torch.int64, device=device)
        n = concepts.numel()
        ones = _cached(self._ones, (n, device), device, lambda: torch.ones(n, dtype=torch.int64))
        self.counts.index_put_((step.expand(n), concepts.reshape(-1), columns), ones, accumulate=True)


def _cached(cache: dict, cache_key, device, make) -> torch.Tensor:
    t = cache.get(cache_key)
    if t is None:
        t = cache[cache_key] = to_device(make(), device)
    return t


def _repeat_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    """t [B, ...] for `rows` voting rows: the prompts' rows repeated when a chunk holds them several times."""
    if rows == t.shape[0]:
        return t
    if rows % t.shape[0]:
        raise ValueError(f"{rows} voting rows do not match the {t.shape[0]} prompts of this run")
    return t.repeat(rows // t.shape[0], *([1] * (t.dim() - 1)))


VOTE_FEATURE = "vote"


class VoteProcessor:
    """The build as a processor of the attention core: the chunks of conditionings carrying a vote request vote."""
    feature = VOTE_FEATURE

    def __init__(self, recorder: VoteRecorder):
        self.recorder = recorder

    def process(self, call, q, k, v, chunks):
        rows = [q[c.rows] for c in chunks]
        self.recorder.record(call.key, rows[0] if len(rows) == 1 else torch.cat(rows), call.extra_options)
        return q, k, v


def install_vote_patches(model, bank, steps: int, optimized_attention=None, estimator: str = "paper", seed: int = 0,
                         max_elements: int | None = None):
    """A clone of a ComfyUI ModelPatcher with the attention core counting votes; returns (clone, recorder).

    Only the conditionings that carry a vote request (attach_request(cond, VOTE_FEATURE, True)) vote; an attn2
    replacement already on the model runs inside the core, so other attention nodes keep working.
    """
    from ..attention import install_core
    diffusion_model = model.get_model_object("diffusion_model")
    layout = layout_of_unet(diffusion_model)
    modules = cross_attention_modules(diffusion_model)
    for key, attn2 in modules.items():
        expected = attn2.to_k.weight.shape[1]
        if expected != bank.dim:
            raise ConceptWordsError(f"the concept word embeddings have {bank.dim} dims but cross-attention "
                                    f"{'.'.join(map(str, key))} expects {expected}: use the CLIP of the same checkpoint")
    recorder = VoteRecorder(layout, bank, steps, modules, estimator, seed, max_elements)
    return install_core(model, [VoteProcessor(recorder)], optimized_attention), recorder
