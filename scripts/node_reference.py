"""Write (or --check) the README's node reference table from the node definitions themselves."""
from __future__ import annotations

import argparse
import os
import sys

PACK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, PACK_DIR)
README = os.path.join(PACK_DIR, "README.md")
BEGIN, END = "<!-- node-reference:begin -->", "<!-- node-reference:end -->"


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _input_type(spec) -> str:
    kind = spec[0]
    if isinstance(kind, (list, tuple)):
        if not kind:
            return "file name (from its model folder)"
        shown = ", ".join(map(str, kind[:4])) + (", ..." if len(kind) > 4 else "")
        return f"choice ({shown})"
    return str(kind)


def render_table(mappings: dict, display_names: dict) -> str:
    lines = [BEGIN, ""]
    for node_id, cls in sorted(mappings.items(), key=lambda kv: (kv[1].CATEGORY, kv[0])):
        lines += [f"### {display_names.get(node_id, node_id)} (`{node_id}`, {cls.CATEGORY})", "",
                  _cell(getattr(cls, "DESCRIPTION", "")), "", "| input | type | what it does |", "|---|---|---|"]
        for group in ("required", "optional"):
            for name, spec in cls.INPUT_TYPES().get(group, {}).items():
                options = spec[1] if len(spec) > 1 else {}
                lines.append(f"| `{name}` | {_cell(_input_type(spec))} | {_cell(options.get('tooltip', ''))} |")
        names = getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)
        tips = getattr(cls, "OUTPUT_TOOLTIPS", [""] * len(names))
        lines += ["", "| output | type | what it is |", "|---|---|---|"]
        lines += [f"| `{n}` | {t} | {_cell(tip)} |" for n, t, tip in zip(names, cls.RETURN_TYPES, tips)]
        lines.append("")
    lines.append(END)
    return "\n".join(lines)


def current_table() -> str:
    from hrv.comfy_host import import_pack, use_comfyui
    use_comfyui()
    pack = import_pack()
    import folder_paths
    # File choices (HRV files, checkpoints) depend on what this machine has: list none, so the table is
    # the same everywhere.
    listing = folder_paths.get_filename_list
    folder_paths.get_filename_list = lambda folder_name: []
    try:
        return render_table(pack.NODE_CLASS_MAPPINGS, pack.NODE_DISPLAY_NAME_MAPPINGS)
    finally:
        folder_paths.get_filename_list = listing


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the README's table is out of date")
    args = parser.parse_args()
    text = open(README, encoding="utf-8").read()
    if BEGIN not in text or END not in text:
        print(f"README.md lacks the {BEGIN} ... {END} markers", file=sys.stderr)
        return 1
    updated = text[:text.index(BEGIN)] + current_table() + text[text.index(END) + len(END):]
    if args.check:
        if updated != text:
            print("README.md node reference is out of date: run `python scripts/node_reference.py`", file=sys.stderr)
            return 1
        return 0
    open(README, "w", encoding="utf-8").write(updated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
