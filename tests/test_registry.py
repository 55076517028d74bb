"""Ready for the Comfy Registry and for ComfyUI's loader: pyproject.toml by the registry's rules (and by
comfy-cli's own `comfy node validate`), a clean import with no side effects, the node list, version, license."""
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
from PIL import Image

from hrv.comfy_host import PACK_DIR

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

COMFY_CLI = os.path.join(PACK_DIR, ".venv-tools", "bin", "comfy")
FIRST_NODES = {"HRVLoader", "HRVInspect", "HRVTextEncode", "HRVConceptStrengthen", "HRVConceptAdjust", "HRVOrderedWeakening"}
# Registry node id: < 100 characters; letters, digits, '-', '_', '.'; no two special characters in a row;
# starts with a letter (https://docs.comfy.org/registry/specifications).
NODE_ID = re.compile(r"^[A-Za-z][A-Za-z0-9]*(?:[-_.][A-Za-z0-9]+)*$")
PUBLISHER_ID = re.compile(r"^[a-z][a-z0-9-]*$")
SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$")


@pytest.fixture(scope="module")
def pyproject():
    with open(os.path.join(PACK_DIR, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def test_project_section_follows_the_registry_rules(pyproject):
    project = pyproject["project"]
    name = project["name"]
    assert len(name) < 100 and NODE_ID.match(name), name
    assert SEMVER.match(project["version"]), f"version {project['version']!r} is not X.Y.Z"
    assert project.get("description", "").strip()
    # The registry takes {file = ...} or {text = ...}; a bare string is rejected there.
    assert project["license"] == {"file": "LICENSE"}
    assert "license-files" not in project, "license-files cannot be combined with a license table"
    with open(os.path.join(PACK_DIR, "requirements.txt"), encoding="utf-8") as f:
        required = {re.split(r"[<>=!~ ;\[]", line.strip())[0].lower() for line in f if line.strip() and not line.startswith("#")}
    declared = {re.split(r"[<>=!~ ;\[]", d)[0].lower() for d in project["dependencies"]}
    assert declared == required, "pyproject dependencies and requirements.txt disagree"
    assert "torch" not in declared, "ComfyUI brings torch; a dependency on it can replace the user's CUDA build"


def test_tool_comfy_section(pyproject):
    comfy = pyproject["tool"]["comfy"]
    assert PUBLISHER_ID.match(comfy["PublisherId"]), comfy["PublisherId"]
    assert comfy["DisplayName"].strip()
    icon = comfy["Icon"]
    if not icon.startswith("https://"):
        path = os.path.join(PACK_DIR, icon)
        assert os.path.isfile(path), f"Icon {icon!r} is neither an https URL nor a file in the repository"
        with Image.open(path) as image:
            assert image.format in ("PNG", "JPEG", "WEBP") and image.width == image.height <= 400, (image.format, image.size)
    assert isinstance(comfy.get("includes", []), list)


def test_comfy_cli_node_validate_passes():
    """comfy-cli's own check (the one `comfy node publish` runs), offline, no prompts, no telemetry."""
    if not os.access(COMFY_CLI, os.X_OK):
        pytest.skip("comfy-cli is not installed in .venv-tools/ (bash scripts/test.sh installs it there)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON"))}
    env["HOME"] = os.path.join(PACK_DIR, ".venv-tools", "home")  # its config file, not in the user's home
    done = subprocess.run([COMFY_CLI, "--skip-prompt", "--no-enable-telemetry", "node", "validate"], cwd=PACK_DIR,
                          env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "All validation checks passed" in output, output
    assert "Warning" not in output and "Error" not in output, output


# Runs in a fresh interpreter: torch and numpy first (ComfyUI has them loaded before any custom node),
# then an audit hook that records (and refuses) network, process and file-system side effects, then
# the pack exactly as ComfyUI imports it.
IMPORT_PROBE = textwrap.dedent('''
    import importlib.util, json, os, sys
    import numpy, torch
    pack_dir, report = sys.argv[1], sys.argv[2]
    events = []
    WRITE = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
    MODELS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".npy", ".gguf", ".onnx")
    REFUSED = ("socket.", "urllib.Request", "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.fork")
    CHANGES = ("os.mkdir", "os.rename", "os.remove", "os.rmdir", "os.symlink", "os.link", "os.chmod", "shutil.")

    def hook(event, args):
        if event == "open":
            path, mode, flags = args
            if isinstance(flags, int) and flags & WRITE or isinstance(mode, str) and any(c in mode for c in "wax+"):
                events.append(["write", str(path)])
            elif str(path).endswith(MODELS):
                events.append(["model file read", str(path)])
        elif event.startswith(REFUSED):
            events.append([event, repr(args)[:200]])
            raise PermissionError(f"side effect at import: {event}")
        elif event.startswith(CHANGES):
            events.append([event, repr(args)[:200]])

    before = set(sys.modules)
    sys.addaudithook(hook)
    spec = importlib.util.spec_from_file_location("comfyui_hrv_probe", os.path.join(pack_dir, "__init__.py"),
                                                  submodule_search_locations=[pack_dir])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    new = sorted({name.split(".")[0] for name in set(sys.modules) - before} - {spec.name})
    result = {"events": list(events), "new_modules": new, "nodes": sorted(module.NODE_CLASS_MAPPINGS),
              "display": module.NODE_DISPLAY_NAME_MAPPINGS}  # copied before the report itself is written
    with open(report, "w") as f:
        json.dump(result, f)
''')


@pytest.fixture(scope="module")
def import_report(tmp_path_factory):
    work = tmp_path_factory.mktemp("import_probe")
    probe, report = work / "probe.py", work / "report.json"
    probe.write_text(IMPORT_PROBE)
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTHONPATH", None)
    done = subprocess.run([sys.executable, str(probe), PACK_DIR, str(report)], cwd=str(work), env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    with open(report, encoding="utf-8") as f:
        result = json.load(f)
    result.update(stdout=done.stdout, stderr=done.stderr, files=sorted(os.listdir(work)))
    return result


def test_import_has_no_side_effects(import_report):
    assert import_report["events"] == [], "importing the pack must not write, download, spawn or load models"
    assert import_report["stdout"] == "", "the pack prints at import (use a logger)"
    assert import_report["stderr"] == "", import_report["stderr"]
    assert import_report["files"] == ["probe.py", "report.json"]


def test_import_needs_nothing_beyond_torch_and_numpy(import_report):
    """Heavy or optional modules (PIL, safetensors, ComfyUI's own, network clients) load when a node runs."""
    heavy = {"PIL", "safetensors", "matplotlib", "ray", "scipy", "transformers", "diffusers", "cv2", "sklearn",
             "pandas", "requests", "aiohttp", "huggingface_hub", "comfy", "folder_paths", "nodes", "server",
             "execution", "tqdm"}
    assert not heavy & set(import_report["new_modules"]), import_report["new_modules"]


def test_node_list_matches_the_registered_nodes(import_report, pack):
    nodes = set(import_report["nodes"])
    assert FIRST_NODES <= nodes, f"missing {FIRST_NODES - nodes}"
    assert nodes == set(pack.NODE_CLASS_MAPPINGS) == set(import_report["display"])
    for name, cls in pack.NODE_CLASS_MAPPINGS.items():
        assert name.startswith("HRV") and cls.CATEGORY.startswith("HRV/"), name
        for attribute in ("INPUT_TYPES", "RETURN_TYPES", "FUNCTION", "DESCRIPTION"):
            assert getattr(cls, attribute, None), f"{name} lacks {attribute}"
        assert callable(getattr(cls, cls.FUNCTION)), f"{name}.{cls.FUNCTION} is not a method"
        assert len(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)) == len(cls.RETURN_TYPES), name


def test_license_is_gpl3_everywhere(pyproject):
    with open(os.path.join(PACK_DIR, "LICENSE"), encoding="utf-8") as f:
        text = f.read()
    assert text.lstrip().startswith("GNU GENERAL PUBLIC LICENSE") and "Version 3, 29 June 2007" in text[:200]
    assert "License :: OSI Approved :: GNU General Public License v3 or later (GPLv3+)" in pyproject["project"]["classifiers"]
    with open(os.path.join(PACK_DIR, "README.md"), encoding="utf-8") as f:
        assert "GPL-3.0-or-later" in f.read()
