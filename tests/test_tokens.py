"""Target-word positions with ComfyUI's real SD1 / SDXL tokenizers (vocab files only, no weights)."""
import pytest
import torch

from harness.comfy_models import tokenizer_clip
from hrv.steering.tokens import TargetWordError, find_target_positions, split_targets


class ClipWithoutWordIds:
    """A minimal third-party CLIP wrapper: tokenize(text) -> (token, weight) pairs only."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def tokenize(self, text):
        return self.tokenizer.tokenize_with_weights(text)


@pytest.fixture(scope="module")
def sd1():
    # ComfyUI's own CLIP class, so .tokenize() is exactly what nodes receive; no encoder weights needed.
    return tokenizer_clip("sd1")


@pytest.fixture(scope="module")
def sdxl():
    return tokenizer_clip("sdxl")


def vocab_id(clip, piece):
    return clip.tokenizer.clip_l.tokenizer.get_vocab()[piece]


def flat_ids(clip, prompt, encoder="l"):
    return [int(t[0]) for chunk in clip.tokenize(prompt)[encoder] for t in chunk]


def test_single_word_position_is_its_index_after_the_start_token(sd1):
    found = find_target_positions(sd1, "a photo of a red rose in a vase", "rose")
    assert found.positions == (6,)
    assert found.context_length == 77
    assert flat_ids(sd1, "a photo of a red rose in a vase")[6] == vocab_id(sd1, "rose</w>")


def test_comma_separated_targets_and_repeated_words(sd1):
    prompt = "a red rose beside a white rose, in a red vase"
    found = find_target_positions(sd1, prompt, " rose ,vase,, ")
    ids = flat_ids(sd1, prompt)
    rose = [i for i, t in enumerate(ids) if t == vocab_id(sd1, "rose</w>")]
    vase = [i for i, t in enumerate(ids) if t == vocab_id(sd1, "vase</w>")]
    assert len(rose) == 2 and len(vase) == 1
    assert found.words == {"rose": tuple(rose), "vase": tuple(vase)}
    assert found.positions == tuple(sorted(rose + vase))


def test_multi_token_word_gets_all_its_tokens_and_weights_are_ignored(sd1):
    plain = find_target_positions(sd1, "a rose-colored car", "rose-colored")
    assert plain.positions == (2, 3, 4)  # rose, -, colored
    weighted = find_target_positions(sd1, "a (rose-colored:1.2) car", "rose-colored")
    assert weighted.positions == plain.positions
    nested = find_target_positions(sd1, "a ((bioluminescent)) jellyfish, [glowing]", "bioluminescent")
    n_tokens = len(split_word_tokens(sd1, "bioluminescent"))
    assert n_tokens > 1 and nested.positions == tuple(range(2, 2 + n_tokens))


def split_word_tokens(clip, word):
    return [t for t, _, wid in clip.tokenize(word, return_word_ids=True)["l"][0] if wid]


def test_whole_words_only(sd1):
    for prompt in ("a bunch of roses", "a rosewood table"):
        with pytest.raises(TargetWordError, match="'rose' is not in the prompt"):
            find_target_positions(sd1, prompt, "rose")


def test_prompt_longer_than_77_tokens_uses_flat_chunk_positions(sd1):
    filler = ", ".join(["a small green leaf"] * 20)  # ~100 tokens
    prompt = f"a glass vase, {filler}, a golden crown"
    found = find_target_positions(sd1, prompt, "vase, crown")
    chunks = sd1.tokenize(prompt)["l"]
    assert len(chunks) >= 2 and found.context_length == 77 * len(chunks)
    vase, crown = found.words["vase"], found.words["crown"]
    assert vase == (3,)
    assert len(crown) == 1 and crown[0] >= 77
    chunk, index = divmod(crown[0], 77)
    assert chunks[chunk][index][0] == vocab_id(sd1, "crown</w>")


def test_missing_word_error_names_the_word_and_shows_the_prompt(sd1):
    with pytest.raises(TargetWordError) as e:
        find_target_positions(sd1, "a (red:1.3) rose in a vase", "rose, tulip")
    message = str(e.value)
    assert "'tulip' is not in the prompt" in message
    assert "Prompt words: a, red, rose, in, a, vase" in message
    assert "Prompt tokens: a red rose in a vase" in message
    with pytest.raises(TargetWordError, match="no target word"):
        find_target_positions(sd1, "a rose", " , ")
    with pytest.raises(TargetWordError, match="no tokenizer"):
        find_target_positions(object(), "a rose", "rose")


def test_sdxl_both_encoders_agree_and_padding_is_never_matched(sdxl):
    prompt = "a red car! parked by a (white house:1.1)"
    found = find_target_positions(sdxl, prompt, "car, white house")
    assert found.context_length == 77
    assert found.words["car"] == (3,) and found.words["white house"] == (8, 9)
    # CLIP-G pads with token 0, which is also "!": only the prompt's own "!" may match.
    bang = find_target_positions(sdxl, prompt, "!")
    assert bang.positions == (4,)
    assert flat_ids(sdxl, prompt, "g")[20] == 0 and flat_ids(sdxl, prompt, "l")[20] != 0


def test_sdxl_long_prompt(sdxl):
    prompt = " ".join(["tall pine tree"] * 30) + " and a lighthouse"
    found = find_target_positions(sdxl, prompt, "lighthouse")
    assert found.context_length == 154 and found.positions[0] > 77
    chunk, index = divmod(found.positions[0], 77)
    for encoder in ("g", "l"):
        assert sdxl.tokenize(prompt)[encoder][chunk][index][0] == vocab_id(sdxl, "lighthouse</w>")


def test_wrapper_without_word_ids_gives_the_same_positions(sd1):
    prompt = "a red rose-colored car, " + "tiny stars, " * 30 + "a red moon"
    plain = ClipWithoutWordIds(sd1.tokenizer)
    assert find_target_positions(plain, prompt, "red, rose-colored") == find_target_positions(sd1, prompt, "red, rose-colored")


def test_textual_inversion_embedding_shifts_positions(tmp_path):
    from safetensors.torch import save_file
    save_file({"emb_params": torch.randn(3, 768)}, str(tmp_path / "mystyle.safetensors"))
    clip = tokenizer_clip("sd1", embedding_directory=str(tmp_path))
    found = find_target_positions(clip, "a embedding:mystyle red rose", "rose, red")
    assert found.words == {"rose": (6,), "red": (5,)}  # start, a, 3 embedding vectors, red, rose


def test_split_targets():
    assert split_targets("rose, red vase ,,") == ["rose", "red vase"]
