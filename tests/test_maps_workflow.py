"""The map and Attend-and-Excite nodes in ComfyUI's own executor (inference mode, cache) on the random SD1.5
checkpoint: maps reach the render node through the conditioning, re-runs with a new seed or a new threshold read the
right run, and Attend-and-Excite gets its gradients from weights loaded under inference mode."""
import json
import os

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def workflows(comfyui, comfy_base, reference_dir):
    from hrv.format.official import import_official
    import_official(reference_dir, os.path.join(comfy_base, "models", "hrv"))
    return comfyui


def map_prompt(seed=1, threshold=0.4):
    from scripts.demo.checkpoint import DEFAULT_NAME
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": DEFAULT_NAME}},
        "2": {"class_type": "HRVLoader", "inputs": {"hrv_name": "sd1_official.safetensors"}},
        "3": {"class_type": "HRVAttentionMap", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "hrv": ["2", 0], "text": "a red car parked by the sea",
            "words": "car, sea", "concept": "Vehicles", "heads": "top_k", "top_k": 0.25, "start_percent": 0.0,
            "end_percent": 1.0}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "blurry"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 2}},
        "6": {"class_type": "KSampler", "inputs": {
            "model": ["3", 0], "positive": ["3", 1], "negative": ["4", 0], "latent_image": ["5", 0], "seed": seed,
            "steps": 2, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
        "8": {"class_type": "HRVAttentionMapRender", "inputs": {
            "conditioning": ["3", 1], "images": ["7", 0], "threshold": threshold, "word": "", "samples": ["6", 0]}},
        "9": {"class_type": "PreviewImage", "inputs": {"images": ["8", 1]}},
    }


def test_maps_reach_the_render_node_and_reruns_read_their_own_run(workflows):
    from hrv.maps.render import word_masks
    first = workflows.run_prompt(map_prompt(seed=1), return_nodes=("3", "6", "8"))
    request = first.values["3"][1][0][0][1]["hrv_requests"]["maps"]
    latent = first.values["6"][0][0]["samples"]
    masks, overlay, info = (v[0] for v in first.values["8"])
    assert masks.shape == (4, 64, 64) and overlay.shape == (4, 64, 64, 3)
    assert info.splitlines()[0] == "car: top 32 of 128 heads of Vehicles"
    recorded = request.holder.find(latent)
    assert recorded.fingerprint is not None and recorded is request.holder.runs[-1]
    expected = word_masks(recorded.latent_maps(), (64, 64), 0.4)
    assert torch.equal(masks, expected.transpose(0, 1).reshape(4, 64, 64))

    second = workflows.run_prompt(map_prompt(seed=2), return_nodes=("3", "6", "8"))
    assert second.values["3"][1][0][0][1]["hrv_requests"]["maps"] is request        # the encoder node was cached
    rerun = request.holder.find(second.values["6"][0][0]["samples"])
    assert rerun is request.holder.runs[-1] and rerun is not recorded
    soft = word_masks(rerun.latent_maps(), (64, 64), 0.4)
    assert torch.equal(second.values["8"][0][0], soft.transpose(0, 1).reshape(4, 64, 64))

    # Only the threshold changes: the sampler's output is cached and the render node reads that same run.
    third = workflows.run_prompt(map_prompt(seed=2, threshold=0.0), return_nodes=("8",))
    soft = word_masks(rerun.latent_maps(), (64, 64), 0.0)
    assert len(request.holder.runs) == 2
    assert torch.equal(third.values["8"][0][0], soft.transpose(0, 1).reshape(4, 64, 64))


def test_attend_and_excite_runs_in_the_executor(workflows):
    from scripts.demo.checkpoint import DEFAULT_NAME
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": DEFAULT_NAME}},
        "2": {"class_type": "HRVLoader", "inputs": {"hrv_name": "sd1_official.safetensors"}},
        "3": {"class_type": "HRVAttendAndExcite", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "hrv": ["2", 0], "text": "a black cat and a white dog",
            "subjects": "cat:Animals, dog:Animals", "excite_until": 0.5, "scale_factor": 20.0, "max_refinement": 1,
            "smooth": "auto"}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "KSampler", "inputs": {
            "model": ["3", 0], "positive": ["3", 1], "negative": ["4", 0], "latent_image": ["5", 0], "seed": 3,
            "steps": 2, "cfg": 5.0, "sampler_name": "euler_ancestral", "scheduler": "normal", "denoise": 1.0}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
        "8": {"class_type": "PreviewImage", "inputs": {"images": ["7", 0]}},
    }
    result = workflows.run_prompt(prompt, return_nodes=("3",))
    request = result.values["3"][1][0][0][1]["hrv_requests"]["ae"]
    (record,) = request.runs[-1]
    assert record.step == 0 and record.update_norm > 0 and len(result.images) == 1


def test_example_generators_build_valid_workflows(workflows):
    import asyncio
    import importlib.util

    import execution
    from harness.ui_builder import UIWorkflow

    from hrv.comfy_host import PACK_DIR
    from scripts.demo.__main__ import point_at_checkpoint
    from scripts.demo.checkpoint import DEFAULT_NAME
    spec = importlib.util.spec_from_file_location("maps_examples", os.path.join(PACK_DIR, "scripts",
                                                                                "example_workflows_maps.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name, build in module.EXAMPLES.items():
        wf = UIWorkflow(workflows.object_info())
        build(wf)
        prompt = workflows.ui_to_api(json.loads(json.dumps(wf.to_json(name))), workflows.object_info())
        point_at_checkpoint(prompt, DEFAULT_NAME)
        valid = asyncio.run(execution.validate_prompt(name, prompt, None))
        assert valid[0], (name, valid[1], valid[3])
