"""Word positions in the cross-attention context, with ComfyUI's real SD1 / SDXL tokenizers (no weights)."""
import pytest
import torch

from harness.comfy_models import tokenizer_clip
from hrv.steering.positions import WordPositionError, locate_span, token_stream, whole_word_spans


class ClipWithoutWordIds:
    """A minimal third-party CLIP wrapper: tokenize(text) -> (token, weight) pairs only."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def tokenize(self, text):
        return self.tokenizer.tokenize_with_weights(text)


@pytest.fixture(scope="module")
def sd1():
    return tokenizer_clip("sd1")


@pytest.fixture(scope="module")
def sdxl():
    return tokenizer_clip("sdxl")


def vocab_id(clip, piece):
    return clip.tokenizer.clip_l.tokenizer.get_vocab()[piece]


def flat_ids(clip, prompt, encoder="l"):
    return [int(t[0]) if isinstance(t[0], int) else -1 for chunk in clip.tokenize(prompt)[encoder] for t in chunk]


def locate(clip, text, word, occurrence=0):
    start, end = whole_word_spans(text, word)[occurrence]
    return locate_span(clip, text, start, end)


def test_single_and_multi_token_words(sd1):
    text = "a photo of a red rose in a vase"
    assert locate(sd1, text, "rose") == (6,)
    assert flat_ids(sd1, text)[6] == vocab_id(sd1, "rose</w>")
    text = "a rose-colored car"
    assert locate(sd1, text, "rose-colored") == (2, 3, 4)
    assert [flat_ids(sd1, text)[p] for p in (2, 3, 4)] == [vocab_id(sd1, "rose</w>"), vocab_id(sd1, "-</w>"),
                                                           vocab_id(sd1, "colored</w>")]


def test_weights_and_nesting_do_not_move_tokens(sd1):
    assert locate(sd1, "a (rose-colored:1.2) car", "rose-colored") == (2, 3, 4)
    text = "a ((bioluminescent)) jellyfish, [glowing]"
    n = len(token_stream(sd1, "bioluminescent").keys)
    assert n > 1 and locate(sd1, text, "bioluminescent") == tuple(range(2, 2 + n))


def test_repeated_words_each_occurrence_is_its_own(sd1):
    text = "a red rose beside a red red vase"
    reds = [i for i, t in enumerate(flat_ids(sd1, text)) if t == vocab_id(sd1, "red</w>")]
    assert [locate(sd1, text, "red", i) for i in range(3)] == [(r,) for r in reds]


def test_whole_words_only():
    assert whole_word_spans("a bunch of roses, a rosewood table, rose-colored", "rose") == []
    assert whole_word_spans("a Rose, a rose.", "rose") == [(2, 6), (10, 14)]


def test_span_inside_a_word_is_an_error(sd1):
    text = "a superman cape"
    with pytest.raises(WordPositionError, match="part of a longer word"):
        locate_span(sd1, text, 7, 10)   # "man" inside "superman"
    with pytest.raises(WordPositionError, match="no word tokens"):
        locate_span(sd1, "a , car", 2, 3) if not token_stream(sd1, ",").keys else locate_span(sd1, "a  car", 2, 2)


def test_longer_than_77_tokens(sd1):
    filler = ", ".join(["a small green leaf"] * 20)
    text = f"a glass vase, {filler}, a golden crown"
    chunks = sd1.tokenize(text)["l"]
    assert len(chunks) >= 2 and token_stream(sd1, text).context_length == 77 * len(chunks)
    assert locate(sd1, text, "vase") == (3,)
    (crown,) = locate(sd1, text, "crown")
    chunk, index = divmod(crown, 77)
    assert crown >= 77 and chunks[chunk][index][0] == vocab_id(sd1, "crown</w>")


def test_sdxl_both_encoders_and_padding(sdxl):
    text = "a red car! parked by a (white house:1.1)"
    assert token_stream(sdxl, text).context_length == 77
    assert locate(sdxl, text, "car") == (3,) and locate(sdxl, text, "white house") == (8, 9)
    assert locate(sdxl, text, "!") == (4,)   # CLIP-G pads with token 0, which is also "!": padding never matches
    long = " ".join(["tall pine tree"] * 30) + " and a lighthouse"
    (position,) = locate(sdxl, long, "lighthouse")
    chunk, index = divmod(position, 77)
    for encoder in ("g", "l"):
        assert sdxl.tokenize(long)[encoder][chunk][index][0] == vocab_id(sdxl, "lighthouse</w>")


def test_textual_inversion_embedding_shifts_positions(tmp_path):
    from safetensors.torch import save_file
    save_file({"emb_params": torch.randn(3, 768)}, str(tmp_path / "mystyle.safetensors"))
    clip = tokenizer_clip("sd1", embedding_directory=str(tmp_path))
    text = "a embedding:mystyle red rose"
    assert locate(clip, text, "rose") == (6,) and locate(clip, text, "red") == (5,)   # start, a, 3 vectors, red, rose
    assert token_stream(clip, text).positions == (1, 2, 3, 4, 5, 6)


def test_wrapper_without_word_ids_gives_the_same_positions(sd1):
    text = "a red rose-colored car, " + "tiny stars, " * 30 + "a red moon"
    plain = ClipWithoutWordIds(sd1.tokenizer)
    for word, i in (("red", 0), ("rose-colored", 0), ("red", 1)):
        assert locate(plain, text, word, i) == locate(sd1, text, word, i)
    with pytest.raises(WordPositionError, match="no tokenizer"):
        token_stream(object(), "a rose")
