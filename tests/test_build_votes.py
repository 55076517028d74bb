"""The vote core on small tensors: scoring, conditional rows, counting, patch installation."""
import math

import pytest
import torch

from hrv.format.layout import known_layout
from hrv.build.votes import (VOTE_FEATURE, ConceptWords, ConceptWordsError, VoteRecorder, head_vote_concepts,
                             install_vote_patches, mean_word_attention)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def naive_mean_word_attention(q, keys, heads):
    """Loop form of the paper's definition: per head, per position, softmax over words, then the mean."""
    batch, positions, inner = q.shape
    d = inner // heads
    out = torch.zeros(batch, heads, keys.shape[0], dtype=torch.float64)
    for b in range(batch):
        for h in range(heads):
            k_h = keys[:, h * d:(h + 1) * d].double()
            for n in range(positions):
                out[b, h] += torch.softmax(k_h @ q[b, n, h * d:(h + 1) * d].double(), 0)
    return out / positions


def test_mean_word_attention_matches_the_definition_and_chunks_agree():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 37, 8 * 5, generator=g) * 3           # positions differ: mean-then-argmax matters
    keys = torch.randn(11, 8 * 5, generator=g) / math.sqrt(5)
    expected = naive_mean_word_attention(q, keys, 8)
    whole = mean_word_attention(q, keys, 8)
    chunked = mean_word_attention(q, keys, 8, max_elements=2 * 8 * 11 * 3)  # 3 positions per chunk
    assert torch.allclose(whole.double(), expected, atol=1e-6)
    assert torch.allclose(chunked, whole, atol=1e-6)
    assert torch.allclose(whole.sum(-1), torch.ones(2, 8))


def test_vote_is_argmax_of_the_mean_not_the_mean_of_argmaxes():
    # One head, 2 words, 3 positions: word 0 wins 2 positions narrowly, word 1 wins one position hugely.
    q = torch.tensor([[[1.0], [1.0], [-50.0]]])             # [1, 3, 1]
    keys = torch.tensor([[0.1], [-0.1]])                    # logits +-0.1 q
    per_position = torch.softmax(q[0] @ keys.T, -1)          # [3, 2]
    assert (per_position.argmax(-1) == 0).sum() == 2         # word 0 wins most positions...
    probs = mean_word_attention(q, keys, 1)[0, 0]
    assert probs[1] > probs[0]                               # ...but word 1 has the larger mean attention
    assert head_vote_concepts(q, keys, 1, torch.tensor([7, 9])).item() == 9


class _Linear(torch.nn.Module):
    def __init__(self, weight):
        super().__init__()
        self.weight = torch.nn.Parameter(weight)

    def forward(self, x):
        return x @ self.weight.T


class _Attn2(torch.nn.Module):
    def __init__(self, heads, inner, context):
        super().__init__()
        self.heads = heads
        self.to_k = _Linear(torch.eye(inner, context))


def _words(n_concepts=3, per=2, dim=16):
    """A token bank of one-token words whose embeddings are the unit vectors e_0, e_1, ..."""
    from hrv.build.estimator import ConceptTokenBank
    concepts = {f"c{i}": [f"w{i}_{j}" for j in range(per)] for i in range(n_concepts)}
    eye = torch.eye(n_concepts * per, dim)
    return ConceptTokenBank.from_word_tokens(concepts, [eye[i:i + 1] for i in range(n_concepts * per)])


def test_recorder_counts_the_rows_it_is_given_at_the_current_step():
    layout = known_layout("sd1")
    block = layout.blocks[0]                                 # 8 heads
    words = _words(dim=16)                                   # embeddings e_0..e_5; keys = to_k(e_w) = e_w (d = 2)
    attn = {block.key: _Attn2(8, 16, 16)}
    recorder = VoteRecorder(layout, words, steps=3, attn_modules=attn, estimator="all_words")
    # cond rows: every head's query points at word 2*h % 6 -> concept (2h % 6) // 2; uncond rows at word 5 (concept 2).
    cond = torch.zeros(1, 4, 16)
    for h in range(8):
        cond[0, :, 2 * h + (h % 2)] = 10.0                   # head h < 3 points at word 2h + h%2
    uncond = torch.zeros(1, 4, 16)
    uncond[0, :, :] = -10.0
    recorder.start_prompt()
    recorder.end_step(0)                                     # votes now go to step 1
    recorder.record(block.key, cond, {"n_heads": 8})
    counts = recorder.take_prompt_counts()
    assert counts.dtype == torch.int64 and counts.shape == (3, 3, 128)
    assert counts[0].sum() == 0 and counts[2].sum() == 0
    assert counts[1].sum() == 8                              # one vote per head
    expected = head_vote_concepts(cond, recorder.concept_keys(block.key, cond), 8, words.word_concept)[0]
    for h in range(8):
        assert counts[1, expected[h], block.first_column + h] == 1
    # keys of head h live in dims 2h, 2h+1; only words 2h, 2h+1 (h < 3) have nonzero keys there
    assert expected[:3].tolist() == [0, 1, 2]
    uncond_votes = head_vote_concepts(uncond, recorder.concept_keys(block.key, cond), 8, words.word_concept)[0]
    assert uncond_votes[0] != expected[0]                    # the uncond pass would have voted otherwise


def test_recorder_keeps_votes_past_the_last_step_in_the_last_row():
    layout = known_layout("sd1")
    block = layout.blocks[0]
    recorder = VoteRecorder(layout, _words(), steps=2, attn_modules={block.key: _Attn2(8, 16, 16)}, estimator="all_words")
    recorder.start_prompt()
    recorder.end_step(5)
    recorder.record(block.key, torch.randn(1, 4, 16), {"n_heads": 8})
    counts = recorder.take_prompt_counts()
    assert counts[1].sum() == 8 and counts[0].sum() == 0


def test_step_of_a_model_call_follows_its_noise_level():
    layout = known_layout("sd1")
    recorder = VoteRecorder(layout, _words(), steps=3, attn_modules={})
    schedule = torch.tensor([10.0, 4.0, 1.0, 0.0])
    for sigma, step in [(10.0, 0), (7.0, 0), (4.0, 1), (4.00001, 1), (2.0, 1), (1.0, 2), (0.5, 2), (12.0, 0)]:
        got = recorder.current_step({"sigmas": torch.tensor([sigma, sigma]), "sample_sigmas": schedule}, "cpu")
        assert got.item() == step, (sigma, got)
    recorder.end_step(0)                                     # no schedule: the sampler callback decides
    assert recorder.current_step({}, "cpu").item() == 1


def test_concept_words_validation():
    with pytest.raises(ConceptWordsError, match="at least 2 concepts"):
        ConceptWords.from_embeddings({"only": ["a", "b"]}, torch.zeros(2, 4))
    with pytest.raises(ConceptWordsError, match="'b' has no words"):
        ConceptWords.from_embeddings({"a": ["x"], "b": []}, torch.zeros(1, 4))
    with pytest.raises(ConceptWordsError, match="NaN"):
        ConceptWords.from_embeddings({"a": ["x"], "b": ["y"]}, torch.tensor([[0.0], [float("nan")]]))
    with pytest.raises(ConceptWordsError, match=r"\[words=2, dim\]"):
        ConceptWords.from_embeddings({"a": ["x"], "b": ["y"]}, torch.zeros(3, 4))


def test_only_conditionings_with_a_vote_request_vote_and_existing_replacements_run_inside():
    import uuid

    from harness.tiny_pipeline import tiny_sd1_model
    from hrv.attention import COND_KEY, CORE_KEY
    from hrv.attention.run import RunState
    model = tiny_sd1_model()
    seen = []

    def other_attn2(q, k, v, extra):
        seen.append(extra["block"])
        return q

    model.set_model_attn2_replace(other_attn2, "input", 1)               # per block (2-tuple key)
    model.set_model_attn2_replace(other_attn2, "output", 3, 0)           # per transformer
    before = model.model_options["transformer_options"]["patches_replace"]["attn2"].copy()
    patched, recorder = install_vote_patches(model, _words(dim=768), 2, optimized_attention=None, estimator="all_words")
    after = model.model_options["transformer_options"]["patches_replace"]["attn2"]
    assert after == before                                                 # the input model is untouched
    replaced = patched.model_options["transformer_options"]["patches_replace"]["attn2"]
    assert set(replaced) == {b.key for b in recorder.layout.blocks} | {("input", 1)}
    voting, plain = uuid.uuid4(), uuid.uuid4()
    holder = patched.model_options["transformer_options"][CORE_KEY]
    run = RunState(holder.processors, {"positive": [{"uuid": voting, COND_KEY: {VOTE_FEATURE: True}}],
                                       "negative": [{"uuid": plain}]}, None, replaced, holder.keys)
    inner = recorder.attn_modules[("output", 3, 0)].to_k.weight.shape[0]
    q = torch.randn(2, 4, inner)
    out = replaced[("output", 3, 0)](q, None, None, {"n_heads": 8, "block": ("output", 3), "uuids": [plain, voting],
                                                     CORE_KEY: run})
    assert out is q and seen == [("output", 3)]                            # the other replacement ran inside
    assert recorder.counts.sum() == 8                                      # one vote per head, only the voting row
    expected = head_vote_concepts(q[1:], recorder.concept_keys(("output", 3, 0), q), 8, recorder.words.word_concept)[0]
    columns = recorder.layout.block(("output", 3, 0)).columns
    assert torch.equal(recorder.counts[0, :, columns].argmax(0), expected)
    replaced[("output", 3, 0)](q, None, None, {"n_heads": 8, "block": ("output", 3), "uuids": [plain, plain],
                                               CORE_KEY: run})
    assert recorder.counts.sum() == 8


def test_install_rejects_embeddings_of_another_text_encoder():
    from harness.tiny_pipeline import tiny_sd1_model
    with pytest.raises(ConceptWordsError, match="1280 dims but cross-attention .* expects 768"):
        install_vote_patches(tiny_sd1_model(), _words(dim=1280), 2, optimized_attention=None)


def test_paper_estimator_votes_with_the_words_drawn_for_each_prompt_step_and_transformer():
    from hrv.build.estimator import paper_head_votes, sample_word_indices
    layout = known_layout("sd1")
    block = layout.blocks[3]                                 # the 4th transformer: word draws use index 3
    bank = _words(n_concepts=3, per=3, dim=16)
    recorder = VoteRecorder(layout, bank, steps=4, attn_modules={block.key: _Attn2(8, 16, 16)}, seed=11)
    g = torch.Generator().manual_seed(5)
    q = torch.randn(2, 6, 16, generator=g) * 3               # two prompts of one batched run
    schedule = torch.tensor([9.0, 5.0, 2.0, 1.0, 0.0])
    recorder.start_prompt([7, 2])
    recorder.record(block.key, q, {"n_heads": 8, "sigmas": torch.tensor([2.0, 2.0]), "sample_sigmas": schedule})
    counts = recorder.take_prompt_counts()
    keys = recorder.concept_keys(block.key, q)
    words = torch.stack([sample_word_indices(bank, 11, p, 2, 3) for p in (7, 2)])
    expected = paper_head_votes(q, keys, 8, bank, words)     # [2, 8]
    assert counts.sum() == 16 and counts[2].sum() == 16      # step 2 (sigma 2.0), one vote per head and prompt
    for h in range(8):
        column = counts[2, :, block.first_column + h]
        assert column.sum() == 2 and all(column[c] >= 1 for c in expected[:, h].tolist())


def test_a_vote_call_reads_nothing_on_the_host_and_runs_few_ops():
    """The paper estimator's per-call work, once the run's tables exist: no value read on the host (no
    aten._local_scalar_dense, so no GPU sync) and a short, fixed op sequence (a GPU step is launch-bound)."""
    from harness.oplog import OpLog
    layout = known_layout("sd1")
    block = layout.blocks[3]
    recorder = VoteRecorder(layout, _words(n_concepts=3, per=3, dim=16), steps=4,
                            attn_modules={block.key: _Attn2(8, 16, 16)}, seed=11)
    q = torch.randn(2, 6, 16, generator=torch.Generator().manual_seed(2))
    schedule = torch.tensor([9.0, 5.0, 2.0, 1.0, 0.0])
    recorder.start_prompt([7, 2])
    recorder.record(block.key, q, {"n_heads": 8, "sigmas": torch.tensor([2.0, 2.0]), "sample_sigmas": schedule})
    options = {"n_heads": 8, "sigmas": torch.tensor([2.0, 2.0]), "sample_sigmas": schedule}
    recorder.record(block.key, q, options)                      # this model call's step is now known
    with OpLog() as log:
        recorder.record(block.key, q, options)                  # another transformer of the same model call
    assert not log.host_reads_or_copies(), log.ops
    assert len(log.work()) <= 16, log.work()
    assert recorder.take_prompt_counts()[2].sum() == 3 * 16
