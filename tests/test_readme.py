"""The README says what exists: node table in sync with the node definitions, every CLI subcommand,
a picture of every example workflow, the two commands, both ways to install."""
import argparse
import glob
import os
import re
import subprocess
import sys

import pytest
from PIL import Image

from hrv.comfy_host import PACK_DIR

MAX_PICTURE_BYTES = 200_000


@pytest.fixture(scope="module")
def readme():
    with open(os.path.join(PACK_DIR, "README.md"), encoding="utf-8") as f:
        return f.read()


def _section(text, heading):
    start = text.index(heading)
    following = text.find("\n## ", start + len(heading))
    return text[start:following if following != -1 else len(text)]


def test_node_reference_is_in_sync_with_the_nodes():
    done = subprocess.run([sys.executable, os.path.join(PACK_DIR, "scripts", "node_reference.py"), "--check"],
                          cwd=PACK_DIR, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_node_reference_lists_every_node(readme, pack):
    table = readme[readme.index("<!-- node-reference:begin -->"):readme.index("<!-- node-reference:end -->")]
    for node_id, display in pack.NODE_DISPLAY_NAME_MAPPINGS.items():
        assert f"### {display} (`{node_id}`," in table, node_id


def test_cli_reference_lists_every_subcommand(readme):
    from hrv.cli import parser
    (subparsers,) = [a for a in parser()._actions if isinstance(a, argparse._SubParsersAction)]
    commands = set(subparsers.choices)
    section = _section(readme, "## Command line")
    documented = set(re.findall(r"^\| `([a-z][a-z-]*)[ `]", section, flags=re.M))
    assert documented == commands, (f"README's CLI table lists {sorted(documented)}, "
                                    f"`python -m hrv --help` has {sorted(commands)}")


def test_every_example_has_a_small_picture_shown_in_the_readme(readme):
    examples = sorted(glob.glob(os.path.join(PACK_DIR, "example_workflows", "*.json")))
    assert examples
    for path in examples:
        name = os.path.basename(path)[:-5]
        picture = path[:-5] + ".jpg"
        assert os.path.isfile(picture), f"{name}: run scripts/make_example_pictures.py"
        assert os.path.getsize(picture) <= MAX_PICTURE_BYTES, f"{picture} is over {MAX_PICTURE_BYTES} bytes"
        with Image.open(picture) as image:
            assert image.format == "JPEG" and image.width >= 600, (image.format, image.size)
        assert f"](example_workflows/{name}.jpg)" in readme, f"README shows no picture of {name}"
        assert f"**`{name}`**" in readme, f"README has no line on what {name} shows"


def test_readme_gives_the_two_commands_and_both_installs(readme):
    import tomllib
    with open(os.path.join(PACK_DIR, "pyproject.toml"), "rb") as f:
        name = tomllib.load(f)["project"]["name"]
    assert "bash scripts/start.sh" in readme and "bash scripts/test.sh" in readme
    install = _section(readme, "## Install into an existing ComfyUI")
    assert "custom_nodes" in install and "requirements.txt" in install
    assert f"comfy node install {name}" in install
