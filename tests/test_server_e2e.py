"""End to end as a user meets it: the real ComfyUI server (main.py --cpu) with this pack in custom_nodes/,
its node definitions on /object_info, the example workflows on the templates route, one of them queued
over HTTP and followed on the websocket until its image is written."""
import glob
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from hrv.comfy_host import PACK_DIR
from scripts.demo.checkpoint import DEFAULT_NAME
from harness.client import ComfyClient, PromptRejected
from scripts.demo.workflows import PACK_FOLDER, ui_to_api

EXAMPLES = sorted(glob.glob(os.path.join(PACK_DIR, "example_workflows", "*.json")))
EXAMPLE_NAMES = [os.path.basename(p)[:-5] for p in EXAMPLES]


@pytest.fixture(scope="module")
def client(comfy_server):
    return ComfyClient(comfy_server.url)


@pytest.fixture(scope="module")
def object_info(client):
    return client.object_info()


def test_pack_loads_without_import_errors(comfy_server, object_info):
    log = open(comfy_server.log_path, encoding="utf-8", errors="replace").read()
    pack_path = os.path.join(comfy_server.base_dir, "custom_nodes", PACK_FOLDER)
    assert f"Cannot import {pack_path}" not in log, log[-4000:]
    timings = [line for line in log.splitlines() if line.rstrip().endswith(pack_path)]
    assert timings and all("IMPORT FAILED" not in line for line in timings), log[-4000:]


def test_object_info_describes_every_node_of_ours(object_info, pack):
    ours = pack.NODE_CLASS_MAPPINGS
    assert ours, "the pack registers no nodes"
    served = {name for name, entry in object_info.items() if entry.get("python_module") == f"custom_nodes.{PACK_FOLDER}"}
    assert served == set(ours), f"server lists {sorted(served)}, the pack has {sorted(ours)}"
    for name in ours:
        entry = object_info[name]
        assert name.startswith("HRV"), name
        assert entry["category"].startswith("HRV/"), (name, entry["category"])
        assert entry["display_name"] and entry["display_name"] == pack.NODE_DISPLAY_NAME_MAPPINGS.get(name), name
        assert entry["display_name"] != name, f"{name} has no readable display name"
        assert entry["description"], f"{name} has no DESCRIPTION"
        assert len(entry["output_name"]) == len(entry["output"]) and all(entry["output_name"]), name
        assert len(entry.get("output_tooltips", [])) == len(entry["output"]), f"{name}: OUTPUT_TOOLTIPS"
        assert all(entry["output_tooltips"]), f"{name}: empty output tooltip"
        inputs = [(section, input_name, spec) for section in ("required", "optional")
                  for input_name, spec in entry["input"].get(section, {}).items()]
        assert inputs, f"{name} has no inputs"
        for section, input_name, spec in inputs:
            options = spec[1] if len(spec) > 1 else {}
            assert options.get("tooltip"), f"{name}.{input_name} ({section}) has no tooltip"


def test_hrv_loader_lists_the_files_in_models_hrv(object_info):
    choices = object_info["HRVLoader"]["input"]["required"]["hrv_name"][0]
    assert {"sd1_official.safetensors", "sdxl_official.safetensors"} <= set(choices), choices


def test_templates_route_serves_the_example_workflows(client):
    assert EXAMPLE_NAMES, "example_workflows/ is empty"
    listing = client.get_json("/workflow_templates")
    assert sorted(listing.get(PACK_FOLDER, [])) == EXAMPLE_NAMES, listing
    for path, name in zip(EXAMPLES, EXAMPLE_NAMES):
        served = client.get_json(f"/api/workflow_templates/{PACK_FOLDER}/{name}.json")
        with open(path, encoding="utf-8") as f:
            assert served == json.load(f), name
        picture = path[:-5] + ".jpg"
        if os.path.isfile(picture):  # the thumbnails; that each example has one is tested in test_example_workflows
            data = client.get_bytes(f"/api/workflow_templates/{PACK_FOLDER}/{name}.jpg")
            assert data == open(picture, "rb").read()
            assert Image.open(io.BytesIO(data)).format == "JPEG"


def _example_prompt(client, object_info, name):
    """The example as the templates route serves it, converted to the API format, on the random checkpoint."""
    workflow = client.get_json(f"/api/workflow_templates/{PACK_FOLDER}/{name}.json")
    prompt = ui_to_api(workflow, object_info)
    assert DEFAULT_NAME in object_info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0]
    loaders = [n for n in prompt.values() if n["class_type"] == "CheckpointLoaderSimple"]
    assert loaders, f"{name} has no checkpoint loader"
    for node in loaders:
        node["inputs"]["ckpt_name"] = DEFAULT_NAME
    return prompt


def _shrink(prompt, size, steps):
    """Smaller latents and fewer steps, the graph unchanged: full SD1.5 on 2 CPU cores takes seconds a step at 256x256.
    Nodes that make their own latent or sample themselves (HRV Prompt Edit, HRV Diagnose) shrink the same way."""
    for node in prompt.values():
        inputs = node["inputs"]
        if "width" in inputs and "height" in inputs and not isinstance(inputs["width"], list):
            inputs.update(width=size, height=size)
        if "steps" in inputs and not isinstance(inputs["steps"], list):
            inputs["steps"] = steps


def test_example_workflow_queued_over_http_writes_its_image(client, object_info, comfy_server):
    """concept_strengthen_material as served, queued on /prompt, followed on /ws: plain | steered side by side."""
    prompt = _example_prompt(client, object_info, "concept_strengthen_material")
    assert {"HRVLoader", "HRVConceptStrengthen"} <= {n["class_type"] for n in prompt.values()}
    size = 64
    _shrink(prompt, size, steps=2)
    result = client.run(prompt, timeout_s=900, wait="ws")
    assert result.status == "success", result.error
    images = result.images()
    assert len(images) == 1, result.outputs
    path = client.image_path(comfy_server.base_dir, images[0])
    assert os.path.isfile(path), path
    assert client.view(images[0]) == open(path, "rb").read()
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
    assert pixels.shape == (size, 2 * size + 8, 3)
    plain, steered = pixels[:, :size], pixels[:, size + 8:]
    assert plain.std() > 1.0, "the saved image is (nearly) constant"
    assert np.abs(plain - steered).mean() > 0.5, "HRV Concept Strengthen changed nothing"


def test_invalid_prompt_is_refused_with_comfyuis_message(client, object_info):
    prompt = _example_prompt(client, object_info, "concept_strengthen_material")
    for node in prompt.values():
        if node["class_type"] == "HRVLoader":
            node["inputs"]["hrv_name"] = "missing.safetensors"
    with pytest.raises(PromptRejected, match=r"HRVLoader.*missing\.safetensors"):
        client.queue(prompt)


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_every_example_runs_over_http(client, object_info, comfy_server, name):
    """Each example as the templates route serves it, queued on /prompt and followed on /ws (64x64, 2 steps): it
    succeeds and writes a picture that is not blank."""
    prompt = _example_prompt(client, object_info, name) if name != "hrv_inspect_concepts" else \
        ui_to_api(client.get_json(f"/api/workflow_templates/{PACK_FOLDER}/{name}.json"), object_info)
    _shrink(prompt, 64, steps=2)
    result = client.run(prompt, timeout_s=900, wait="ws")
    assert result.status == "success", result.error
    images = result.images()
    assert images, result.outputs
    for image in images:
        pixels = np.asarray(Image.open(client.image_path(comfy_server.base_dir, image)).convert("RGB"), np.float32)
        assert pixels.std() > 1.0, f"{name}: a saved picture is (nearly) constant"
