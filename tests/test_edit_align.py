"""Token alignment of HRV Prompt Edit against token maps worked out by hand (ComfyUI's real SD1/SDXL tokenizers).

SD1 contexts: position 0 is the start token, the prompt's tokens follow, then the end token and padding to 77.
"bioluminescent" is five tokens; "a photo of a cat" five, "wearing a tiny hat" four more.
"""
import pytest

from harness.comfy_models import tokenizer_clip
from hrv.edit.align import AlignmentError, align_prompts, global_alignment, prompt_word_spans


@pytest.fixture(scope="module")
def sd1():
    return tokenizer_clip("sd1")


def pairs_of(alignment):
    return {(t, s): w for t, s, w in alignment.pairs}


def shifted(targets, shift):
    return {(t, t - shift): 1.0 for t in targets}


def test_replace_same_token_count_is_the_identity(sd1):
    a = align_prompts(sd1, "a blue car", "a red car", "replace")
    assert pairs_of(a) == shifted(range(77), 0) and a.own == () and a.edited == (2,)
    weighted = align_prompts(sd1, "a (blue:1.3) car", "a (red:1.3) car", "replace")
    assert pairs_of(weighted) == shifted(range(77), 0) and weighted.edited == (2,)


def test_replace_one_token_by_five_shares_the_source_column(sd1):
    a = align_prompts(sd1, "a blue car", "a bioluminescent car", "replace")
    expected = {(0, 0): 1.0, (1, 1): 1.0, (7, 3): 1.0}                       # start, "a", "car"
    expected.update({(t, 2): 1 / 5 for t in range(2, 7)})                      # each new token: blue's column / 5
    expected.update(shifted(range(8, 77), 4))                                  # end + padding, shifted by four
    assert pairs_of(a) == pytest.approx(expected) and a.edited == (2, 3, 4, 5, 6) and a.own == ()


def test_replace_five_tokens_by_one_sums_them(sd1):
    a = align_prompts(sd1, "a bioluminescent car", "a blue car", "replace")
    expected = {(0, 0): 1.0, (1, 1): 1.0, (3, 7): 1.0}
    expected.update({(2, s): 1.0 for s in range(2, 7)})                        # blue = the sum of the five columns
    expected.update(shifted(range(4, 73), -4))                                 # end + padding; 73..76 have no source
    assert pairs_of(a) == expected and a.edited == (2,) and a.own == ()


def test_refine_added_words_keep_their_own_columns(sd1):
    a = align_prompts(sd1, "a photo of a cat", "a photo of a cat wearing a tiny hat", "refine")
    expected = shifted(range(6), 0)                                            # start + the five shared tokens
    expected.update(shifted(range(10, 77), 4))                                 # end + padding after the new words
    assert pairs_of(a) == expected and a.own == (6, 7, 8, 9) and a.edited == (6, 7, 8, 9)


def test_refine_removed_words(sd1):
    a = align_prompts(sd1, "a photo of a cat wearing a tiny hat", "a photo of a cat", "refine")
    expected = shifted(range(6), 0)
    expected.update(shifted(range(6, 73), -4))                                 # end 6 <- 10; padding 73..76 unmatched
    assert pairs_of(a) == expected and a.own == (73, 74, 75, 76) and a.edited == ()


def test_refine_prefers_the_earliest_match_for_repeated_tokens(sd1):
    a = align_prompts(sd1, "a red car", "a red red car", "refine")
    assert pairs_of(a)[(2, 2)] == 1.0 and a.own == (3,) and (4, 3) in pairs_of(a)
    assert global_alignment(list("abcab"), list("xaab")) == [(0, 1), (3, 2), (4, 3)]


def test_identical_prompts_align_to_the_identity_in_both_modes(sd1):
    for mode in ("replace", "refine"):
        a = align_prompts(sd1, "a photo of a cat", "a photo of a cat", mode)
        assert pairs_of(a) == shifted(range(77), 0) and a.own == () and a.edited == ()


def test_long_prompts_align_chunk_by_chunk(sd1):
    body = "a glass vase, " + "tiny stars, " * 40
    a = align_prompts(sd1, body + "a golden crown", body + "a silver crown", "replace")
    assert a.source_length == a.target_length == 154
    assert pairs_of(a) == shifted(range(154), 0) and len(a.edited) == 1 and a.edited[0] > 77


def test_sdxl_aligns_on_its_clip_l_tokens():
    a = align_prompts(tokenizer_clip("sdxl"), "a blue car", "a red car", "replace")
    assert pairs_of(a) == shifted(range(77), 0) and a.edited == (2,)


def test_errors_name_the_fix(sd1):
    with pytest.raises(AlignmentError, match="source has 3 words and the target 4: use mode refine"):
        align_prompts(sd1, "a blue car", "a light blue car", "replace")
    with pytest.raises(AlignmentError, match="mode must be one of replace, refine"):
        align_prompts(sd1, "a", "b", "swap")


def test_prompt_words_leave_weight_syntax_out():
    text = "a (red car:1.2), [shiny] embedding:foo"
    assert [text[a:b] for a, b in prompt_word_spans(text)] == ["a", "red", "car", ",", "shiny", "embedding:foo"]
