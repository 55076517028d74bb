"""Concept sets: named visual concepts, each described by a few words."""
from __future__ import annotations

import json
import os

DEFAULT_CONCEPTS_PATH = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "default_concepts.json")


class ConceptSetError(ValueError):
    pass


def load_concept_set(path: str | None = None) -> dict[str, list[str]]:
    """{concept: [words]} in row order, from a JSON concept file (see parse_concept_text) or `Concept: word, word` lines."""
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
    """{concept: [words]} from text typed in a node: JSON or `Concept: word, word` lines.

    JSON: {"concepts": {name: [words]}} (our format), a bare {name: [words]}, or the published
    list form {"concepts": [{"name": ..., "words": [...]}, ...]} (SNU-DRL/HRV's concepts.json).

    complete=False parses concepts meant to extend another set (fewer than 2 is fine then).
    """
    check = validate_concept_set if complete else _validate_extension
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConceptSetError(f"{source} is not valid JSON: {e}") from None
        concepts = data.get("concepts", data) if isinstance(data, dict) else None
        if isinstance(concepts, list):
            concepts = _concepts_from_list(concepts, source)
        if not isinstance(concepts, dict):
            raise ConceptSetError(f"{source} needs \"concepts\": an object of name -> [words] "
                                  f"or a list of {{\"name\": ..., \"words\": [...]}}")
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


def _concepts_from_list(entries: list, source: str) -> dict:
    """{name: words} from the published file's list form, [{"name": ..., "words": [...]}, ...], in list order."""
    concepts: dict = {}
    for number, entry in enumerate(entries, 1):
        if not isinstance(entry, dict) or "name" not in entry or "words" not in entry:
            raise ConceptSetError(f"{source}, concept #{number}: expected {{\"name\": ..., \"words\": [...]}}, "
                                  f"got {json.dumps(entry)[:80]}")
        name, words = entry["name"], entry["words"]
        if not isinstance(name, str):
            raise ConceptSetError(f"{source}, concept #{number}: \"name\" must be a string, got {json.dumps(name)[:80]}")
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise ConceptSetError(f"{source}, concept {name!r}: \"words\" must be a list of strings")
        # A repeated name would silently replace the earlier entry in a dict: say so instead.
        if name.strip().lower() in {str(c).strip().lower() for c in concepts}:
            raise ConceptSetError(f"concept {name.strip()!r} appears twice")
        concepts[name] = words
    return concepts


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
