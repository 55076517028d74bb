"""The paper's estimator: token bank, seeded word sampling, the vectorised scorer against a plain loop."""
import math

import pytest
import torch
from harness.oplog import OpLog

from hrv.build.estimator import (DEFAULT_ESTIMATOR, ESTIMATORS, ConceptTokenBank, all_words_head_votes,
                                 check_estimator, paper_head_votes, paper_word_attention, sample_word_indices,
                                 sample_word_indices_batch, sample_word_table, scaled_keys)
from hrv.build.votes import ConceptWordsError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# 4 concepts, 1-3 words each, 1-3 tokens per word (the count of tokens is what the test varies).
TOKENS_PER_WORD = {"A": [1, 3, 2], "B": [2], "C": [3, 1], "D": [1, 1, 2]}
DIM, HEADS, D_HEAD = 12, 4, 5


def random_word_tokens(generator):
    """{concept: [float64 [n_tokens, DIM] per word]} and the same as {concept: [word names]}."""
    tokens = {c: [torch.randn(n, DIM, generator=generator, dtype=torch.float64) for n in counts]
              for c, counts in TOKENS_PER_WORD.items()}
    names = {c: [f"{c.lower()}{j}" for j in range(len(counts))] for c, counts in TOKENS_PER_WORD.items()}
    return tokens, names


def plain_paper_votes(q, word_tokens, to_k, heads, chosen):
    """Steps (a)-(d) one head, one position, one word at a time, in float64.

    q [B, N, heads*d]; word_tokens {concept: [[n_tokens, D] per word]}; to_k [heads*d, D];
    chosen[b][c] = which word of concept c row b uses. Returns (votes [B][heads], values [B][heads][C]).
    """
    concepts = list(word_tokens)
    d = q.shape[2] // heads
    votes, values = [], []
    for b in range(q.shape[0]):
        # [heads*d, n_tokens] per concept: the keys of the word row b uses
        keys = [to_k.double() @ word_tokens[c][chosen[b][i]].T for i, c in enumerate(concepts)]
        row_votes, row_values = [], []
        for h in range(heads):
            per_concept = [0.0] * len(concepts)
            for n in range(q.shape[1]):
                q_h = q[b, n, h * d:(h + 1) * d].double()
                logits = [[float(q_h @ k[h * d:(h + 1) * d, t]) / math.sqrt(d) for t in range(k.shape[1])]
                          for k in keys]
                top = max(x for word in logits for x in word)
                total = sum(math.exp(x - top) for word in logits for x in word)
                for i, word in enumerate(logits):
                    per_concept[i] += sum(math.exp(x - top) / total for x in word) / len(word) / q.shape[1]
            row_values.append(per_concept)
            row_votes.append(max(range(len(concepts)), key=lambda i: per_concept[i]))
        votes.append(row_votes)
        values.append(row_values)
    return votes, values


def test_scorer_matches_the_plain_loop_exactly():
    g = torch.Generator().manual_seed(0)
    word_tokens, names = random_word_tokens(g)
    bank = ConceptTokenBank.from_word_tokens(names, [t for c in word_tokens for t in word_tokens[c]])
    to_k = torch.randn(HEADS * D_HEAD, DIM, generator=g, dtype=torch.float64) / math.sqrt(DIM)
    keys = (bank.tokens.double() @ to_k.T / math.sqrt(D_HEAD)).float()                # [T_all, heads*d]
    first_word = {c: sum(len(word_tokens[x]) for x in list(word_tokens)[:i]) for i, c in enumerate(word_tokens)}
    all_votes, margins = [], []
    for trial in range(12):
        q = (torch.randn(3, 7, HEADS * D_HEAD, generator=g) * 2.5).float()           # B = 3, 7 positions
        chosen = [[int(torch.randint(len(word_tokens[c]), (1,), generator=g)) for c in word_tokens] for _ in range(3)]
        indices = torch.tensor([[first_word[c] + chosen[b][i] for i, c in enumerate(word_tokens)] for b in range(3)])
        expected, values = plain_paper_votes(q, word_tokens, to_k.float(), HEADS, chosen)
        got = paper_head_votes(q, keys, HEADS, bank, indices)
        assert got.dtype == torch.int64 and got.shape == (3, HEADS)
        assert got.tolist() == expected, trial
        attention = paper_word_attention(q, keys, HEADS, bank, indices)
        assert torch.allclose(attention.double(), torch.tensor(values, dtype=torch.float64), atol=1e-5)
        # T_sel = 3 + 2 + 3 + 2 slots: 2 positions a chunk
        chunked = paper_head_votes(q, keys, HEADS, bank, indices, max_elements=3 * HEADS * 10 * 2)
        assert torch.equal(chunked, got)
        all_votes += [v for row in expected for v in row]
        top2 = torch.tensor(values).topk(2, -1).values
        margins.append((top2[..., 0] - top2[..., 1]).min())
    assert min(margins) > 1e-4                              # no near-tie decides a vote: the float32 result is exact
    assert set(all_votes) == {0, 1, 2, 3}                   # every concept wins somewhere: a constant answer would fail


def test_paper_and_all_words_disagree_where_the_paper_is_right():
    # One head of width 1 and an identity to_k, so a key is its embedding. Concept "Peaked" has one
    # token matching the query fairly well (logit 2); concept "Mixed" has one token matching very well
    # (5) and two that do not (-5). Averaging embeddings first (all_words) hides Mixed's strong token.
    bank = ConceptTokenBank.from_word_tokens({"Peaked": ["p"], "Mixed": ["m"]},
                                             [torch.tensor([[2.0]]), torch.tensor([[5.0], [-5.0], [-5.0]])])
    q = torch.ones(1, 4, 1)                                  # [B=1, N=4, heads*d=1]
    # The paper: softmax over the 4 tokens, then Mixed's value is the mean over its 3 tokens.
    z = math.exp(2) + math.exp(5) + 2 * math.exp(-5)
    peaked, mixed = math.exp(2) / z, (math.exp(5) + 2 * math.exp(-5)) / z / 3
    assert mixed > peaked                                    # 0.317 > 0.045
    values = paper_word_attention(q, bank.tokens, 1, bank, torch.tensor([[0, 1]]))
    assert torch.allclose(values, torch.tensor([[[peaked, mixed]]]), atol=1e-6)
    assert paper_head_votes(q, bank.tokens, 1, bank, torch.tensor([[0, 1]])).tolist() == [[1]]
    # all_words: one key per word = its mean embedding (2 vs -5/3) -> Peaked.
    words = bank.concept_words()
    assert torch.allclose(words.embeddings, torch.tensor([[2.0], [-5.0 / 3]]))
    assert all_words_head_votes(q, words.embeddings, 1, words.word_concept).tolist() == [[0]]


def test_padding_tokens_take_no_attention():
    # Concept A's words have 1 and 3 tokens; sampling the 1-token word leaves 2 padding slots.
    # A padding slot read as a real token would pull in the keys of the bank's row 0 (a's token).
    bank = ConceptTokenBank.from_word_tokens({"A": ["a", "aaa"], "B": ["b"]},
                                             [torch.tensor([[3.0]]), torch.zeros(3, 1), torch.tensor([[1.0]])])
    q = torch.ones(2, 1, 1)
    values = paper_word_attention(q, bank.tokens, 1, bank, torch.tensor([[0, 2], [1, 2]]))
    z = math.exp(3) + math.exp(1)
    assert torch.allclose(values[0, 0], torch.tensor([math.exp(3) / z, math.exp(1) / z]), atol=1e-6)
    z = 3 * math.exp(0) + math.exp(1)
    assert torch.allclose(values[1, 0], torch.tensor([3 / z / 3, math.exp(1) / z]), atol=1e-6)


def test_scaled_keys_divide_by_the_root_of_the_head_width():
    to_k = torch.nn.Linear(3, 8, bias=False)
    emb = torch.randn(5, 3)
    assert torch.allclose(scaled_keys(to_k, emb, 2), to_k(emb) / 2.0)     # d = 4
    with pytest.raises(ValueError, match="3 heads"):
        scaled_keys(to_k, emb, 3)


def _bank(words_per_concept=(3, 1, 5, 2)):
    concepts = {f"c{i}": [f"w{i}_{j}" for j in range(n)] for i, n in enumerate(words_per_concept)}
    return ConceptTokenBank.from_word_tokens(concepts, [torch.ones(1, 4)] * sum(words_per_concept))


def test_sampling_repeats_for_the_same_call_and_varies_between_calls():
    bank = _bank()
    first = sample_word_indices(bank, 7, 3, 10, 5)
    assert first.dtype == torch.int64 and first.shape == (4,)
    assert torch.equal(sample_word_indices(_bank(), 7, 3, 10, 5), first)            # another bank object, same words
    draws = torch.stack([sample_word_indices(bank, 7, 3, s, t) for s in range(20) for t in range(16)])   # [320, C]
    starts = [0, 3, 4, 9]
    for c, n in enumerate((3, 1, 5, 2)):
        picked = draws[:, c] - starts[c]
        assert picked.min() >= 0 and picked.max() < n                 # entry c is always a word of concept c
        counts = torch.bincount(picked, minlength=n)
        assert (counts > 0.6 * 320 / n).all(), counts                 # every word drawn, roughly uniformly
    assert len({tuple(r) for r in draws.tolist()}) == 3 * 1 * 5 * 2   # every combination of words occurs
    changed = (draws[1:] != draws[:-1]).any(1).float().mean()
    assert changed > 0.9                                              # the next call almost always draws others
    # Another seed or prompt draws other words; swapping seed and prompt is another call too.
    table = sample_word_table(bank, 7, 3, steps=4, num_transformers=4)
    for other in (sample_word_table(bank, 8, 3, 4, 4), sample_word_table(bank, 7, 4, 4, 4),
                  sample_word_table(bank, 3, 7, 4, 4)):
        assert not torch.equal(other, table)


def test_batched_and_table_sampling_equal_the_per_call_draws():
    bank = _bank()
    batch = sample_word_indices_batch(bank, 1, [4, 0, 9, 4], 6, 2)
    assert batch.shape == (4, 4)
    for row, prompt in enumerate([4, 0, 9, 4]):
        assert torch.equal(batch[row], sample_word_indices(bank, 1, prompt, 6, 2))
    table = sample_word_table(bank, 1, 9, steps=3, num_transformers=5)
    assert table.shape == (3, 5, 4)
    for s in range(3):
        for t in range(5):
            assert torch.equal(table[s, t], sample_word_indices(bank, 1, 9, s, t))


def test_bank_layout_and_validation():
    tokens = [torch.full((n, 2), float(i)) for i, n in enumerate((2, 1, 3))]
    bank = ConceptTokenBank.from_word_tokens({"A": ["x y", "z"], "B": ["u v w"]}, tokens)
    assert bank.tokens.shape == (6, 2) and bank.tokens[:, 0].tolist() == [0, 0, 1, 2, 2, 2]
    assert bank.token_start.tolist() == [0, 2, 3] and bank.token_count.tolist() == [2, 1, 3]
    assert bank.word_concept.tolist() == [0, 0, 1] and bank.as_dict() == {"A": ["x y", "z"], "B": ["u v w"]}
    assert torch.equal(bank.word_tokens(2), tokens[2])
    with pytest.raises(ConceptWordsError, match="at least 2 concepts"):
        ConceptTokenBank.build({"A": ["x"]}, lambda w: torch.ones(1, 2))
    with pytest.raises(ConceptWordsError, match="'B' has no words"):
        ConceptTokenBank.build({"A": ["x"], "B": []}, lambda w: torch.ones(1, 2))
    with pytest.raises(ConceptWordsError, match="concept 'B': the word 'y' has no tokens"):
        ConceptTokenBank.build({"A": ["x"], "B": ["y"]}, lambda w: torch.ones(1 if w == "x" else 0, 2))
    with pytest.raises(ConceptWordsError, match="NaN"):
        ConceptTokenBank.build({"A": ["x"], "B": ["y"]}, lambda w: torch.full((1, 2), float("nan")))
    with pytest.raises(ConceptWordsError, match="'y' has 3-dim tokens"):
        ConceptTokenBank.build({"A": ["x"], "B": ["y"]}, lambda w: torch.ones(1, 2 if w == "x" else 3))


def test_estimator_names():
    assert ESTIMATORS == ("paper", "all_words") and DEFAULT_ESTIMATOR == "paper"
    assert check_estimator("all_words") == "all_words"
    with pytest.raises(ValueError, match="paper, all_words"):
        check_estimator("mean")


# --- The bank from a real ComfyUI CLIP (tiny random weights, real tokenizers) ----------------------

def _semantic_rows(clip, word):
    """The word tokenized alone, encoded alone; rows whose word id is not 0 (start/end/padding)."""
    tokens = clip.tokenize(word, return_word_ids=True)
    section = tokens[sorted(tokens)[0]][0]
    positions = [i for i, token in enumerate(section) if token[2] != 0]
    return clip.encode_from_tokens(tokens)[0, positions].float()


@pytest.mark.parametrize("arch,dim", [("sd1", 768), ("sdxl", 2048)])
def test_bank_from_a_comfyui_clip(arch, dim):
    from harness.tiny_pipeline import tiny_sd1_clip, tiny_sdxl_clip
    from hrv.build.concept_embed import encode_concept_tokens, encode_concept_words, encode_word_tokens
    clip = tiny_sd1_clip() if arch == "sd1" else tiny_sdxl_clip()
    concepts = {"Color": ["red", "dark green"], "Plants": ["Oak tree"], "Animals": ["cat", "dog"]}
    bank = encode_concept_tokens(clip, concepts, words_per_call=3)         # packed: 2 encoder calls
    assert bank.tokens.shape == (7, dim) and bank.token_count.tolist() == [1, 2, 2, 1, 1]
    for w, word in enumerate(bank.words):
        assert torch.allclose(bank.word_tokens(w), _semantic_rows(clip, word), atol=1e-5), word
    one_by_one = ConceptTokenBank.build(concepts, lambda word: encode_word_tokens(clip, word))
    assert torch.allclose(one_by_one.tokens, bank.tokens, atol=1e-5)
    words = encode_concept_words(clip, concepts)
    assert torch.allclose(bank.concept_words().embeddings, words.embeddings, atol=1e-5)


def _scorer_ops(heads, n_concepts, batch=3, positions=16):
    """The aten ops of one paper_head_votes call (the bank's index tensors already made)."""
    g = torch.Generator().manual_seed(1)
    concepts = {f"c{i}": [f"w{i}_{j}" for j in range(1 + i % 3)] for i in range(n_concepts)}
    tokens = [torch.randn(1 + (i + j) % 3, 8, generator=g)
              for i, c in enumerate(concepts) for j in range(len(concepts[c]))]
    bank = ConceptTokenBank.from_word_tokens(concepts, tokens)
    keys = bank.tokens @ torch.randn(heads * 2, 8, generator=g).T / math.sqrt(2)
    q = torch.randn(batch, positions, heads * 2, generator=g)
    indices = sample_word_indices_batch(bank, 0, list(range(batch)), 0, 0)
    paper_head_votes(q, keys, heads, bank, indices)                     # makes the bank's index tensors once
    with OpLog() as log:
        paper_head_votes(q, keys, heads, bank, indices)                 # 16 positions: one chunk
    return log.ops


def test_scorer_reads_nothing_on_the_host_and_runs_the_same_ops_for_any_size():
    small, large = _scorer_ops(heads=4, n_concepts=3), _scorer_ops(heads=20, n_concepts=34)
    assert not [op for op in large if "local_scalar_dense" in op or "nonzero" in op], large
    # No loop over heads, concepts or words: 20 heads and 34 concepts run the ops of 4 and 3.
    assert large == small
    views = {"aten.view", "aten._unsafe_view", "aten.expand", "aten.alias", "aten.unsqueeze", "aten.transpose",
             "aten.permute", "aten.clone"}
    assert len([op for op in large if op not in views]) <= 25, large
