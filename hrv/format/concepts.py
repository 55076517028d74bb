"""Concept sets: named visual concepts, each described by a few words."""
from __future__ import annotations

import json
import os

DEFAULT_CONCEPTS_PATH = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "default_concepts.json")


class ConceptSetError(ValueError):
    pass


def load_concept_set(path: str | None = None) -> dict[str, list[str]]:
    """{concept: [words]} in row order, from our JSON format or a text file of `Concept: word, word` lines."""
    path = path or DEFAULT_CONCEPTS_PATH
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConceptSetError(f"cannot read concept set {path}: {e.strerror}") from None
    return parse_concept_text(text, source=f"concept set {path}")


def validate_concept_set(concepts: dict) -> dict[str, list[str]]:
    if len(concepts) < 2:
        raise ConceptSetError(f"a concept set needs at least 2 concepts, got {len(concepts)}")
    clean: dict[str, list[str]] = {}
    for name, words in concepts.items():
        name = str(name).strip()
        if not name:
            raise ConceptSetError("a concept has an empty name")
        if name.lower() in {c.lower() for c in clean}:
            raise ConceptSetError(f"concept {name!r} appears twice")
        if not isinstance(words, list) or not [w for w in words if str(w).strip()]:
            raise ConceptSetError(f"concept {name!r} has no words: give it at least one")
        clean[name] = [str(w).strip() for w in words if str(w).strip()]
    return clean


def default_concept_names() -> list[str]:
    return list(load_concept_set().keys())


def parse_concept_text(text: str, source: str = "the concept text", complete: bool = True) -> dict[str, list[str]]:
    """{concept: [words]} from text typed in a node: our JSON format or `Concept: word, word` lines.

    complete=False parses concepts meant to extend another set (fewer than 2 is fine then).
    """
    check = validate_concept_set if complete else _validate_extension
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConceptSetError(f"{source} is not valid JSON: {e}") from None
        concepts = data.get("concepts", data) if isinstance(data, dict) else None
        if not isinstance(concepts, dict):
            raise ConceptSetError(f"{source} needs a \"concepts\" object of name -> [words]")
        return check(concepts)
    concepts = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, words = line.partition(":")
        if not sep:
            raise ConceptSetError(f"{source}, line {number}: expected `Concept: word, word, ...`")
        concepts[name.strip()] = [w.strip() for w in words.split(",")]
    return check(concepts)


def _validate_extension(concepts: dict) -> dict[str, list[str]]:
    if not concepts:
        raise ConceptSetError("no concepts given: write one `Concept: word, word, ...` per line")
    # Borrow the full check with a placeholder so names and words are validated the same way.
    placeholder = "\x00placeholder"
    return {k: v for k, v in validate_concept_set({**concepts, placeholder: ["x"]}).items() if k != placeholder}


def extend_concept_set(base: dict[str, list[str]], extra: dict[str, list[str]]) -> dict[str, list[str]]:
    """base plus extra concepts; an extra concept with a base concept's name is an error, not an override."""
    clash = {c.lower() for c in base} & {c.lower() for c in extra}
    if clash:
        raise ConceptSetError(f"concept(s) {', '.join(sorted(clash))} are already in the default set: rename them")
    return validate_concept_set({**base, **extra})
