"""End to end on an engineered SD1.x UNet whose head h provably prefers concept pi(h).

The build runs exactly as for a real checkpoint (ComfyUI sampler, CFG, attn2 replacements);
only the weights and the concept word embeddings are engineered.
"""
import pytest
import torch

from hrv.build.run import BuildSettings, run_build
from hrv.build.sampling import ComfyPromptSampler, optimized_attention
from hrv.format.concepts import load_concept_set
from hrv.format.hrv_file import normalise_rows
from harness.engineered import engineer_head_preferences
from harness.tiny_pipeline import tiny_sd1_model
from scripts.demo.unets import build_unet
from hrv.build.estimator import ConceptTokenBank

PROMPTS = ["a photo of a cat", "a red car", "an old castle"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_text_encoder(seed=7):
    """Prompt conditioning [1, 77, 768] per prompt (no CLIP needed for the engineered model)."""
    def encode(text):
        g = torch.Generator().manual_seed(seed + sum(map(ord, text)))
        return torch.randn(1, 77, 768, generator=g), None
    return encode


@pytest.fixture(scope="module")
def engineered():
    concepts = load_concept_set()
    names = list(concepts)
    word_concept = torch.tensor([row for row, n in enumerate(names) for _ in concepts[n]])
    pi = torch.randint(len(names), (128,), generator=torch.Generator().manual_seed(3))
    unet = build_unet("sd1", "tiny", seed=5)
    embeddings = engineer_head_preferences(unet, word_concept, pi, seed=11)
    words = ConceptTokenBank.from_word_tokens(concepts, [e[None] for e in embeddings])   # one token per word
    return tiny_sd1_model(unet=unet), words, pi


def build(model, words, settings, prompts=PROMPTS):
    sampler = ComfyPromptSampler(random_text_encoder(), settings)
    return run_build(model, words, prompts, settings, sampler, optimized_attention())


def test_builder_recovers_every_head_and_exact_counts(engineered):
    model, words, pi = engineered
    settings = BuildSettings(steps=3, cfg=6.0, seed=1, width=128, height=128)
    hrv = build(model, words, settings)
    assert hrv.layout.arch == "sd1" and hrv.concepts == words.names
    recovered = hrv.matrix.argmax(0)
    assert (recovered == pi).all(), f"{(recovered != pi).sum()} of 128 heads wrong"
    # Euler: one model call per step; CFG batches cond + uncond, only cond votes -> one vote per head/step/prompt.
    expected = torch.zeros(3, len(words.names), 128, dtype=torch.int64)
    expected[:, pi, torch.arange(128)] = len(PROMPTS)
    assert torch.equal(hrv.votes, expected)
    row_heads = torch.bincount(pi, minlength=len(words.names)).double()
    expected_matrix = torch.zeros(len(words.names), 128, dtype=torch.float64)
    expected_matrix[pi, torch.arange(128)] = 128.0 / row_heads[pi]
    assert torch.equal(hrv.matrix, expected_matrix.float())
    assert torch.equal(hrv.matrix, normalise_rows(hrv.votes.sum(0)))
    for step in range(3):
        assert torch.equal(hrv.per_timestep[step], hrv.matrix)


@pytest.mark.parametrize("sampler,calls_per_step", [
    ("heun", [1, 2, 2]),   # 2nd call of step i runs at sigma_{i+1}: the noise level of step i+1; last step is Euler
    ("dpm_2", [2, 2, 1]),  # 2nd call at the midpoint of (sigma_{i+1}, sigma_i): step i; last step is Euler
])
def test_votes_go_to_the_step_of_their_noise_level(engineered, sampler, calls_per_step):
    model, words, pi = engineered
    hrv = build(model, words, BuildSettings(steps=3, cfg=6.0, seed=1, sampler=sampler, width=128, height=128), PROMPTS[:1])
    per_head_per_step = hrv.votes.sum(1)                         # [S, H]
    assert per_head_per_step.tolist() == [[n] * 128 for n in calls_per_step]
    assert (hrv.matrix.argmax(0) == pi).all()


def test_cfg_one_still_votes_once_per_step(engineered):
    # cfg 1 makes ComfyUI skip the uncond pass; the vote count must not change.
    model, words, pi = engineered
    hrv = build(model, words, BuildSettings(steps=2, cfg=1.0, seed=1, width=128, height=128), PROMPTS[:1])
    assert hrv.votes.sum(1).eq(1).all()


def test_building_changes_neither_the_model_nor_its_images(engineered):
    model, words, _ = engineered
    settings = BuildSettings(steps=2, cfg=6.0, seed=4, width=128, height=128)
    sampler = ComfyPromptSampler(random_text_encoder(), settings)
    weights = {k: v.clone() for k, v in model.model.state_dict().items()}
    options = repr(model.model_options)
    before = sampler(model, PROMPTS[0], 4, lambda i: None)
    build(model, words, settings)
    assert repr(model.model_options) == options
    assert all(torch.equal(v, weights[k]) for k, v in model.model.state_dict().items())
    after = sampler(model, PROMPTS[0], 4, lambda i: None)
    assert torch.equal(before, after)
    # The vote patches themselves attend exactly like the unpatched model: same image, bit for bit.
    from hrv.build.votes import install_vote_patches
    patched, recorder = install_vote_patches(model, words, 2, optimized_attention())
    with torch.inference_mode():
        voted = sampler(patched, PROMPTS[0], 4, recorder.end_step)
    assert torch.equal(voted, before) and recorder.counts.sum() == 2 * 128


def test_paper_estimator_recovers_heads_where_averaged_word_keys_fail():
    """Every word has two tokens. In head h the words of the planted concept have a strong first token and a sink
    second token; every other word has a noise first token and a moderate second token (tests/harness/engineered.py).

    The paper's estimator gives each token its own key and averages the word's attention after the softmax: the
    strong token carries its word. Averaging the word's embeddings into one key first (the all_words estimator)
    averages the two logits, so the sink drags every planted word below the others.
    """
    concepts = {name: words[:3] for name, words in load_concept_set().items()}
    names = list(concepts)
    token_concept = torch.tensor([row for row, n in enumerate(names) for _ in concepts[n] for _ in range(2)])
    second = torch.arange(token_concept.numel()) % 2 == 1
    pi = torch.randint(len(names), (128,), generator=torch.Generator().manual_seed(4))
    unet = build_unet("sd1", "tiny", seed=6)
    tokens = engineer_head_preferences(unet, token_concept, pi, seed=12, second_tokens=second)      # [2W, D]
    bank = ConceptTokenBank.from_word_tokens(concepts, list(tokens.view(-1, 2, tokens.shape[1])))
    model = tiny_sd1_model(unet=unet)
    settings = BuildSettings(steps=2, cfg=6.0, seed=1, width=128, height=128)
    paper = build(model, bank, settings, PROMPTS[:1])
    assert (paper.matrix.argmax(0) == pi).all()
    averaged = build(model, bank, BuildSettings(**{**settings.as_dict(), "estimator": "all_words"}), PROMPTS[:1])
    assert (averaged.matrix.argmax(0) == pi).float().mean() < 0.2
