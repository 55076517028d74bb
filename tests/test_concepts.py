"""Concept files: our JSON object form, the published list form, `Concept: word` lines, and their errors."""
import json

import pytest

from hrv.format.concepts import ConceptSetError, load_concept_set, parse_concept_text


def test_published_concept_file_reads_in_row_order(reference_dir):
    path = f"{reference_dir}/concepts.json"
    raw = json.load(open(path, encoding="utf-8"))["concepts"]       # [{"name", "words"}, ...]
    concepts = load_concept_set(path)
    assert list(concepts) == [entry["name"] for entry in raw]
    assert len(concepts) == 34 and all(len(words) == 10 for words in concepts.values())
    assert concepts["Animals"][:2] == ["Dog", "Cat"] and "Oak tree" in concepts["Plants"]
    # The same 34 concepts and words as the pack's default set (our object form).
    assert concepts == load_concept_set()


def test_list_form_inline_and_equal_to_the_other_forms():
    listed = parse_concept_text(json.dumps({"source": "x", "concepts": [
        {"name": " Color ", "words": ["red", " dark green", ""]}, {"name": "Animals", "words": ["cat"]}]}))
    assert listed == {"Color": ["red", "dark green"], "Animals": ["cat"]}
    assert list(listed) == ["Color", "Animals"]
    assert parse_concept_text(json.dumps({"concepts": {"Color": ["red", "dark green"], "Animals": ["cat"]}})) == listed
    assert parse_concept_text(json.dumps({"Color": ["red", "dark green"], "Animals": ["cat"]})) == listed
    assert parse_concept_text("Color: red, dark green\n# comment\nAnimals: cat\n") == listed
    extension = parse_concept_text(json.dumps({"concepts": [{"name": "Fabric", "words": ["silk"]}]}), complete=False)
    assert extension == {"Fabric": ["silk"]}


@pytest.mark.parametrize("entries,message", [
    ([{"name": "A", "words": ["a"]}, ["B", ["b"]]], r"concept #2: expected \{\"name\""),
    ([{"name": "A", "words": ["a"]}, {"name": "B"}], r"concept #2: expected"),
    ([{"words": ["a"]}, {"name": "B", "words": ["b"]}], r"concept #1: expected"),
    ([{"name": 3, "words": ["a"]}, {"name": "B", "words": ["b"]}], r"concept #1: \"name\" must be a string"),
    ([{"name": "A", "words": "a, b"}, {"name": "B", "words": ["b"]}], r"concept 'A': \"words\" must be a list"),
    ([{"name": "A", "words": ["a", 1]}, {"name": "B", "words": ["b"]}], r"concept 'A': \"words\" must be a list"),
    ([{"name": "A", "words": ["a"]}, {"name": " a ", "words": ["b"]}], r"'a' appears twice"),
    ([{"name": "A", "words": ["a"]}, {"name": "B", "words": []}], r"'B' has no words"),
    ([{"name": "A", "words": ["a"]}], r"at least 2 concepts"),
])
def test_malformed_list_entries_are_named(entries, message):
    with pytest.raises(ConceptSetError, match=message):
        parse_concept_text(json.dumps({"concepts": entries}), source="my file")


def test_other_json_shapes_still_fail_clearly():
    with pytest.raises(ConceptSetError, match="an object of name -> \\[words\\] or a list"):
        parse_concept_text(json.dumps({"concepts": "Color: red"}))
    with pytest.raises(ConceptSetError, match="not valid JSON"):
        parse_concept_text("{\"concepts\": [")
