"""Inline marks: [word:Concept], [word:Concept:strength], [word:Desired-Undesired]."""
import pytest

from hrv.format.concepts import default_concept_names
from hrv.steering.marks import Mark, MarkError, parse_marks

CONCEPTS = default_concept_names()


def test_marks_are_removed_and_keep_their_spans():
    parsed = parse_marks("A [rose-colored:Color-Plants] vase with a [golden:Material:1.5] rim, [cat:animals]", CONCEPTS)
    assert parsed.text == "A rose-colored vase with a golden rim, cat"
    assert [parsed.text[m.start:m.end] for m in parsed.marks] == ["rose-colored", "golden", "cat"]
    assert parsed.marks[0] == Mark(2, 14, "rose-colored", "Color", "Plants", None)
    assert parsed.marks[1].desired == "Material" and parsed.marks[1].strength == 1.5 and parsed.marks[1].undesired is None
    assert parsed.marks[2].desired == "Animals"   # concept names match case-insensitively, spelled as the HRV spells them


def test_hyphenated_concept_names_and_adjust_between_them():
    parsed = parse_marks("[Paris:Geo-locations] and [Apple:Brand Logos-Fruits and Vegetables]", CONCEPTS)
    assert (parsed.marks[0].desired, parsed.marks[0].undesired) == ("Geo-locations", None)
    assert (parsed.marks[1].desired, parsed.marks[1].undesired) == ("Brand Logos", "Fruits and Vegetables")
    assert parse_marks("[x:Color-Geo-locations]", CONCEPTS).marks[0].undesired == "Geo-locations"


def test_comfy_syntax_inside_and_around_marks_is_kept():
    parsed = parse_marks("a ([red:Color] car:1.2), [(shiny:1.3):Texture], embedding:foo \\(x\\)", CONCEPTS)
    assert parsed.text == "a (red car:1.2), (shiny:1.3), embedding:foo \\(x\\)"
    assert [m.word for m in parsed.marks] == ["red", "(shiny:1.3)"]
    assert parsed.text[parsed.marks[1].start:parsed.marks[1].end] == "(shiny:1.3)"


def test_plain_and_escaped_brackets_stay_text():
    parsed = parse_marks("a [sketch] of \\[red:Color\\] and [[blue:Color]] [unclosed:Color", CONCEPTS)
    assert parsed.text == "a [sketch] of [red:Color] and [blue] [unclosed:Color"
    assert [m.word for m in parsed.marks] == ["blue"]
    assert parse_marks("no marks at all", CONCEPTS).marks == ()


def test_bad_marks_are_clear_errors():
    with pytest.raises(MarkError, match="concept 'Colour', which this HRV does not have. Its concepts: Animals"):
        parse_marks("a [red:Colour] car", CONCEPTS)
    with pytest.raises(MarkError, match="has no word"):
        parse_marks("a [:Color] car", CONCEPTS)
    with pytest.raises(MarkError, match="spaces around its word"):
        parse_marks("a [ red :Color] car", CONCEPTS)
    with pytest.raises(MarkError, match="takes no strength"):
        parse_marks("a [rose:Color-Plants:2] car", CONCEPTS)
    with pytest.raises(MarkError, match="same concept"):
        parse_marks("a [rose:Color-color] car", CONCEPTS)
    with pytest.raises(MarkError, match="finite"):
        parse_marks("a [rose:Color:inf] car", CONCEPTS)


def test_custom_concepts_of_a_built_hrv():
    parsed = parse_marks("a [fluffy:Softness-Shape]", ["Softness", "Shape"])
    assert (parsed.marks[0].desired, parsed.marks[0].undesired) == ("Softness", "Shape")
    with pytest.raises(MarkError, match="Its concepts: Softness, Shape"):
        parse_marks("a [fluffy:Color]", ["Softness", "Shape"])
