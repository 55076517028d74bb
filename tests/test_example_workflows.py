"""Every example workflow runs through ComfyUI's own executor on the embedded random checkpoint."""
import glob
import json
import os

import numpy as np
import pytest
from PIL import Image

from hrv.comfy_host import PACK_DIR

EXAMPLES = sorted(glob.glob(os.path.join(PACK_DIR, "example_workflows", "*.json")))
STEERING_NODES = {"HRVTextEncode", "HRVConceptStrengthen", "HRVConceptAdjust", "HRVOrderedWeakening"}


@pytest.fixture(scope="module")
def hrv_models(comfyui, comfy_base, reference_dir):
    """The official HRVs where ComfyUI users keep them: models/hrv/."""
    from hrv.format.official import import_official
    import_official(reference_dir, os.path.join(comfy_base, "models", "hrv"))
    return comfyui


def _run(workflows, path, size=None, steps=None):
    """The example's saved image; size/steps shrink the latents and sampling, the graph unchanged."""
    from scripts.demo.checkpoint import DEFAULT_NAME
    from scripts.demo.__main__ import point_at_checkpoint
    with open(path, encoding="utf-8") as f:
        prompt = workflows.ui_to_api(json.load(f), workflows.object_info())
    point_at_checkpoint(prompt, DEFAULT_NAME)
    for node in prompt.values():
        if size and node["class_type"] == "EmptyLatentImage":
            node["inputs"].update(width=size, height=size)
        if steps and node["class_type"] == "KSampler":
            node["inputs"]["steps"] = steps
    result = workflows.run_prompt(prompt)
    assert len(result.images) == 1, result.outputs
    return np.asarray(Image.open(result.images[0])).astype(np.float32)


def _tiles(image, rows, cols, gap=8):
    h, w = (image.shape[0] - gap * (rows - 1)) // rows, (image.shape[1] - gap * (cols - 1)) // cols
    return [[image[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] for c in range(cols)]
            for r in range(rows)]


def test_examples_exist_with_pictures():
    names = {os.path.basename(p)[:-5] for p in EXAMPLES}
    assert {"concept_adjust_polysemy", "concept_strengthen_material", "ordered_weakening_grid",
            "hrv_inspect_concepts", "attention_heatmap", "diagnose_rose_colored", "attend_and_excite_animals",
            "prompt_edit_color", "prompt_edit_material"} <= names
    for path in EXAMPLES:
        assert os.path.isfile(path[:-5] + ".jpg"), f"{path} needs a picture beside it"


def test_examples_are_up_to_date_with_the_generator(hrv_models, tmp_path, monkeypatch):
    import importlib.util
    spec = importlib.util.spec_from_file_location("make_examples", os.path.join(PACK_DIR, "scripts", "make_example_workflows.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from harness.ui_builder import UIWorkflow
    for name, build in module.EXAMPLES.items():
        wf = UIWorkflow(hrv_models.object_info())
        build(wf)
        with open(os.path.join(PACK_DIR, "example_workflows", f"{name}.json"), encoding="utf-8") as f:
            assert json.load(f) == json.loads(json.dumps(wf.to_json(name))), f"rerun scripts/make_example_workflows.py ({name})"


def test_inspect_example(hrv_models):
    image = _run(hrv_models, os.path.join(PACK_DIR, "example_workflows", "hrv_inspect_concepts.json"))
    assert image.shape[0] > 300 and image.shape[1] > 800 and image.std() > 10


def _nodes(name):
    with open(os.path.join(PACK_DIR, "example_workflows", f"{name}.json"), encoding="utf-8") as f:
        return json.load(f)["nodes"]


def test_examples_use_the_text_encoders_without_primitive_fan_out():
    """The HRV nodes encode their own text now: no Primitive node, no old `prompt` socket, every HRV steering node
    feeds a sampler both its model and its conditioning."""
    for path in EXAMPLES:
        with open(path, encoding="utf-8") as f:
            workflow = json.load(f)
        name = os.path.basename(path)
        types = {n["type"] for n in workflow["nodes"]}
        assert not any(t.startswith("Primitive") for t in types), name
        links = {link[0]: link for link in workflow["links"]}
        by_id = {n["id"]: n for n in workflow["nodes"]}
        for node in workflow["nodes"]:
            assert "prompt" not in {i["name"] for i in node.get("inputs", [])}, (name, node["type"])
            if node["type"] in STEERING_NODES:
                model_to, cond_to = ({by_id[links[l][3]]["type"] for l in out["links"]} for out in node["outputs"])
                assert model_to == {"KSampler"} and cond_to == {"KSampler"}, (name, node["type"])


def test_polysemy_example_marks_the_words_inline():
    texts = [n["widgets_values"][0] for n in _nodes("concept_adjust_polysemy") if n["type"] == "HRVTextEncode"]
    assert texts == ["A [rose-colored:Color-Plants] vase on a table",
                     "An [Apple:Brand Logos-Fruits and Vegetables] logo on a laptop"]
    plain = [n["widgets_values"][0] for n in _nodes("concept_adjust_polysemy")
             if n["type"] == "CLIPTextEncode" and n.get("title", "").startswith("Baseline")]
    assert plain == ["A rose-colored vase on a table", "An Apple logo on a laptop"]


def test_polysemy_example_changes_only_the_steered_images(hrv_models):
    image = _run(hrv_models, os.path.join(PACK_DIR, "example_workflows", "concept_adjust_polysemy.json"))
    assert np.isfinite(image).all()
    (base1, adj1), (base2, adj2) = _tiles(image, 2, 2)
    assert base1.shape == (256, 256, 3)
    assert np.abs(base1 - adj1).mean() > 0.5 and np.abs(base2 - adj2).mean() > 0.5


def test_strengthen_example(hrv_models):
    image = _run(hrv_models, os.path.join(PACK_DIR, "example_workflows", "concept_strengthen_material.json"))
    (plain, steered), = _tiles(image, 1, 2)
    assert plain.shape == (256, 256, 3)
    assert np.abs(plain - steered).mean() > 0.5


def test_ordered_weakening_example(hrv_models):
    """Rows MoRHF and LeRHF; columns k = 0 (the same baseline in both rows) and the example's k values.
    Seven samplings: run at 128x128 and 2 steps so that a busy 2-core machine finishes it in minutes."""
    ks = [n["widgets_values"] for n in _nodes("ordered_weakening_grid") if n["type"] == "HRVOrderedWeakening"]
    assert {(w[1], w[2]) for w in ks} == {("*", "Animals")} and len(ks) >= 4
    columns = 1 + len(ks) // 2
    image = _run(hrv_models, os.path.join(PACK_DIR, "example_workflows", "ordered_weakening_grid.json"), size=128, steps=2)
    assert np.isfinite(image).all()
    tiles = _tiles(image, 2, columns)
    assert tiles[0][0].shape == (128, 128, 3) and tiles[0][0].std() > 1
    assert np.array_equal(tiles[0][0], tiles[1][0]), "both rows start from the same baseline"
    for row in tiles:
        for tile in row[1:]:
            assert np.abs(tile - row[0]).mean() > 0.5, "a weakened image equals the baseline"


@pytest.mark.parametrize("name", ["prompt_edit_color", "prompt_edit_material"])
def test_prompt_edit_examples(hrv_models, name):
    """Source | plain P2P edit | P2P-HRV edit, one seed: both edits differ from the source and from each other."""
    concepts = [n["widgets_values"][2] for n in _nodes(name) if n["type"] == "HRVPromptEdit"]
    assert concepts[0] == "none" and concepts[1] in {"Color", "Material"}
    image = _run(hrv_models, os.path.join(PACK_DIR, "example_workflows", f"{name}.json"))
    assert np.isfinite(image).all()
    (source, plain, steered), = _tiles(image, 1, 3)
    assert source.shape == (256, 256, 3) and source.std() > 1
    assert np.abs(plain - source).mean() > 0.5 and np.abs(steered - source).mean() > 0.5
    assert np.abs(steered - plain).mean() > 0.1


@pytest.mark.parametrize("name", ["diagnose_rose_colored"])
def test_map_examples_run(hrv_models, name):
    image = _run(hrv_models, os.path.join(PACK_DIR, "example_workflows", f"{name}.json"))
    assert np.isfinite(image).all() and image.std() > 1


def test_heatmap_example_shows_each_word_beside_its_image(hrv_models):
    """Two rows (top Animals heads, all heads), each: the image | 'dog' | 'hat'; the map nodes leave the image alone,
    so both rows start with the same picture and the overlays differ from it."""
    image = _run(hrv_models, os.path.join(PACK_DIR, "example_workflows", "attention_heatmap.json"), size=64, steps=2)
    rows = _tiles(image, 2, 3)
    assert rows[0][0].shape == (64, 64, 3)
    assert np.array_equal(rows[0][0], rows[1][0])
    for row in rows:
        assert all(np.abs(tile - row[0]).mean() > 1 for tile in row[1:])
    assert np.abs(rows[0][1] - rows[1][1]).mean() > 0.1, "top-k and all-heads maps of 'dog' are the same"


def test_attend_and_excite_example_changes_the_excited_image(hrv_models):
    """Plain | A&E-HRV, one seed: the excitation moves the latent, so the pictures differ (64x64, 2 steps here)."""
    image = _run(hrv_models, os.path.join(PACK_DIR, "example_workflows", "attend_and_excite_animals.json"),
                 size=64, steps=2)
    (plain, excited), = _tiles(image, 1, 2)
    assert plain.shape == (64, 64, 3) and np.isfinite(image).all()
    assert np.abs(plain - excited).mean() > 0.5
