"""ui_to_api against ComfyUI's real node definitions: what the frontend does when it queues a workflow."""
import asyncio
import os
import random

import pytest

from scripts.demo.workflows import WorkflowError, process_dynamic_prompt, ui_to_api, widget_slots


class Graph:
    """Builds a UI-format workflow the way the editor saves it (nodes with sockets, links as arrays)."""

    def __init__(self):
        self.nodes, self.links = [], []

    def node(self, node_id, type_, widgets=(), inputs=(), outputs=(), mode=0):
        self.nodes.append({"id": node_id, "type": type_, "mode": mode, "order": len(self.nodes),
                           "inputs": [{"name": n, "type": t, "link": None} for n, t in inputs],
                           "outputs": [{"name": t, "type": t, "links": []} for t in outputs],
                           "widgets_values": list(widgets) if not isinstance(widgets, dict) else widgets})
        return node_id

    def link(self, origin, origin_slot, target, target_slot):
        link_id = len(self.links) + 1
        target_node = next(n for n in self.nodes if n["id"] == target)
        origin_node = next(n for n in self.nodes if n["id"] == origin)
        link_type = target_node["inputs"][target_slot]["type"]
        target_node["inputs"][target_slot]["link"] = link_id
        if origin_slot < len(origin_node["outputs"]):
            origin_node["outputs"][origin_slot]["links"].append(link_id)
        self.links.append([link_id, origin, origin_slot, target, target_slot, link_type])

    def workflow(self):
        return {"last_node_id": max(n["id"] for n in self.nodes), "last_link_id": len(self.links),
                "nodes": self.nodes, "links": self.links, "groups": [], "config": {}, "extra": {}, "version": 0.4}


@pytest.fixture(scope="module")
def defs(comfyui):
    return comfyui.object_info()


def txt2img(ckpt="hrv_random_sd15_NOISE_ONLY.safetensors"):
    g = Graph()
    g.node(1, "CheckpointLoaderSimple", [ckpt], outputs=("MODEL", "CLIP", "VAE"))
    g.node(2, "CLIPTextEncode", ["a cat"], inputs=[("clip", "CLIP")], outputs=("CONDITIONING",))
    g.node(3, "CLIPTextEncode", [""], inputs=[("clip", "CLIP")], outputs=("CONDITIONING",))
    g.node(4, "EmptyLatentImage", [64, 64, 1], outputs=("LATENT",))
    g.node(5, "KSampler", [7, "randomize", 1, 5.0, "euler", "normal", 1.0],
           inputs=[("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("latent_image", "LATENT")],
           outputs=("LATENT",))
    g.link(1, 1, 2, 0)
    g.link(1, 1, 3, 0)
    g.link(1, 0, 5, 0)
    g.link(2, 0, 5, 1)
    g.link(3, 0, 5, 2)
    g.link(4, 0, 5, 3)
    g.node(6, "VAEDecode", [], inputs=[("samples", "LATENT"), ("vae", "VAE")], outputs=("IMAGE",))
    g.node(7, "SaveImage", ["convert_test"], inputs=[("images", "IMAGE")])
    g.link(5, 0, 6, 0)
    g.link(1, 2, 6, 1)
    g.link(6, 0, 7, 0)
    return g


def validate(prompt):
    import execution
    valid, error, outputs, node_errors = asyncio.run(execution.validate_prompt("test", prompt, None))
    return valid, error, node_errors


def test_widget_order_follows_inputs_with_seed_control(defs):
    assert widget_slots(defs["KSampler"]) == ["seed", None, "steps", "cfg", "sampler_name", "scheduler", "denoise"]
    assert widget_slots(defs["EmptyLatentImage"]) == ["width", "height", "batch_size"]
    assert widget_slots(defs["VAEDecode"]) == []
    assert widget_slots(defs["LoadImage"]) == ["image", None]  # the upload button keeps a value too


def test_widgets_and_links_map_to_api_inputs(defs):
    prompt = ui_to_api(txt2img().workflow(), defs)
    assert prompt["5"]["inputs"] == {"seed": 7, "steps": 1, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal",
                                     "denoise": 1.0, "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0],
                                     "latent_image": ["4", 0]}
    assert prompt["2"]["inputs"] == {"text": "a cat", "clip": ["1", 1]}


def test_reroutes_and_bypassed_nodes_are_followed(defs):
    g = txt2img()
    g.node(20, "Reroute", [], inputs=[("", "*")], outputs=("CLIP",))
    g.node(21, "CLIPSetLastLayer", [-2], inputs=[("clip", "CLIP")], outputs=("CLIP",), mode=4)
    g.link(1, 1, 20, 0)      # loader.CLIP -> reroute
    g.link(20, 0, 21, 0)     # reroute -> bypassed CLIPSetLastLayer
    g.link(21, 0, 2, 0)      # bypassed node -> positive encoder
    prompt = ui_to_api(g.workflow(), defs)
    assert "20" not in prompt and "21" not in prompt
    assert prompt["2"]["inputs"]["clip"] == ["1", 1]
    assert validate(prompt)[0], validate(prompt)


def test_muted_nodes_are_dropped_with_their_links(defs):
    g = txt2img()
    g.nodes[5]["mode"] = 2  # VAEDecode muted
    g.node(20, "PreviewImage", [], inputs=[("images", "IMAGE")], mode=2)
    g.link(6, 0, 20, 0)
    prompt = ui_to_api(g.workflow(), defs)
    assert "20" not in prompt
    assert "6" not in prompt and "images" not in prompt["7"]["inputs"]
    valid, error, node_errors = validate(prompt)
    assert not valid and "images" in str(node_errors["7"])  # ComfyUI then names the missing input


def test_primitive_node_feeds_a_widget_turned_input(defs):
    g = txt2img()
    g.node(20, "PrimitiveNode", [1234, "fixed"], outputs=("INT",))
    sampler = g.nodes[4]
    sampler["inputs"].append({"name": "seed", "type": "INT", "link": None, "widget": {"name": "seed"}})
    g.link(20, 0, 5, 4)
    # Newer frontends save a socket for every widget; an unlinked one keeps the widget value.
    sampler["inputs"].append({"name": "steps", "type": "INT", "link": None, "widget": {"name": "steps"}})
    prompt = ui_to_api(g.workflow(), defs)
    assert "20" not in prompt
    assert prompt["5"]["inputs"]["seed"] == 1234 and prompt["5"]["inputs"]["steps"] == 1


def test_frontend_only_nodes_are_skipped(defs):
    g = txt2img()
    g.node(20, "Note", ["remember"])
    g.node(21, "MarkdownNote", ["# remember"])
    assert set(ui_to_api(g.workflow(), defs)) == {"1", "2", "3", "4", "5", "6", "7"}


def test_dict_widget_values(defs):
    g = txt2img()
    g.nodes[3]["widgets_values"] = {"width": 128, "height": 96, "batch_size": 2}
    assert ui_to_api(g.workflow(), defs)["4"]["inputs"] == {"width": 128, "height": 96, "batch_size": 2}


def test_dynamic_prompts_as_the_frontend():
    rng = random.Random(0)
    assert process_dynamic_prompt("a {red|red} cat // trailing", rng) == "a red cat "
    assert process_dynamic_prompt("a /* hidden */cat", rng) == "a cat"
    assert process_dynamic_prompt(r"literal \{braces\}", rng) == "literal {braces}"
    assert process_dynamic_prompt("{a|{b|b}}", random.Random(1)) in ("a", "b")
    picks = {process_dynamic_prompt("{x|y}", rng) for _ in range(50)}
    assert picks == {"x", "y"}


def test_errors_name_the_fix(defs):
    g = txt2img()
    g.node(20, "NotInstalledNode", [])
    with pytest.raises(WorkflowError, match="NotInstalledNode.*install"):
        ui_to_api(g.workflow(), defs)
    g = txt2img()
    g.nodes[4]["widgets_values"] = [7, "fixed", 1]
    with pytest.raises(WorkflowError, match="KSampler.*3 widget values"):
        ui_to_api(g.workflow(), defs)
    with pytest.raises(WorkflowError, match="already an API-format prompt"):
        ui_to_api(ui_to_api(txt2img().workflow(), defs), defs)
    workflow = txt2img().workflow()
    workflow["definitions"] = {"subgraphs": [{"id": "x"}]}
    with pytest.raises(WorkflowError, match="subgraphs"):
        ui_to_api(workflow, defs)


@pytest.fixture(scope="module")
def defs_with_hrvs(comfyui, comfy_base, reference_dir):
    """Node definitions with the official HRVs in models/hrv/, so HRV Loader validates."""
    from hrv.format.official import import_official
    import_official(reference_dir, os.path.join(comfy_base, "models", "hrv"))
    return comfyui.object_info()


def test_hrv_text_encode_replaces_clip_text_encode(defs_with_hrvs):
    """An HRV text encoder in the place of the positive CLIP Text Encode: its widgets (marks kept as typed, they are
    no dynamic-prompt syntax) and its model and conditioning outputs map to the sampler, and ComfyUI accepts it."""
    defs = defs_with_hrvs
    assert widget_slots(defs["HRVTextEncode"]) == ["text", "preset", "w_desired", "w_undesired", "offset", "clamp",
                                                   "start_percent", "end_percent"]
    g = txt2img()
    text = r"A [rose-colored:Color-Plants] vase, (detailed:1.2), \[literal\] {red|red} // comment"
    g.node(20, "HRVLoader", ["sd1_official.safetensors"], outputs=("HRV", "STRING"))
    g.node(21, "HRVTextEncode", [text, "auto", 1.0, 1.0, 1.0, 0.0, 0.0, 1.0],
           inputs=[("model", "MODEL"), ("clip", "CLIP"), ("hrv", "HRV")], outputs=("MODEL", "CONDITIONING"))
    g.link(1, 0, 21, 0)
    g.link(1, 1, 21, 1)
    g.link(20, 0, 21, 2)
    g.link(21, 0, 5, 0)      # sampler.model <- HRV Text Encode.model
    g.link(21, 1, 5, 1)      # sampler.positive <- HRV Text Encode.conditioning
    prompt = ui_to_api(g.workflow(), defs)
    assert prompt["21"]["inputs"] == {"text": r"A [rose-colored:Color-Plants] vase, (detailed:1.2), \[literal\] red ",
                                      "preset": "auto", "w_desired": 1.0, "w_undesired": 1.0, "offset": 1.0,
                                      "clamp": 0.0, "start_percent": 0.0, "end_percent": 1.0,
                                      "model": ["1", 0], "clip": ["1", 1], "hrv": ["20", 0]}
    assert prompt["5"]["inputs"]["model"] == ["21", 0] and prompt["5"]["inputs"]["positive"] == ["21", 1]
    assert validate(prompt)[0], validate(prompt)
