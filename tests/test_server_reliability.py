"""The real ComfyUI server under load and bad input: a 100-graph soak alternating the plain and an HRV-steered
model (determinism, resident memory), and mutated HRV files queued through HRV Loader over HTTP."""
import json
import os
import random
import time

import numpy as np
import psutil
import pytest
from PIL import Image

from scripts.demo.checkpoint import DEFAULT_NAME
from harness.client import ComfyClient
from harness.fuzz import KINDS, good_file_bytes, mutants

SOAK_GRAPHS = 100
MEMORY_FROM = 10  # the first graphs load the checkpoint and warm caches: growth is measured from here
MAX_GROWTH = 0.05
FUZZ_FILES = 1000  # about 20 ms each over HTTP: HRV Loader fails before anything heavy runs


@pytest.fixture(scope="module")
def client(comfy_server):
    return ComfyClient(comfy_server.url)


def small_graph(steered: bool, prefix: str) -> dict:
    """64x64, one step; steered: HRV Concept Strengthen ('wood' -> Material) encodes the text in place of CLIP
    Text Encode and gives the model with the HRV attention."""
    text = "a bowl made of wood"
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": DEFAULT_NAME}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": text}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "blurry"}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0],
                                                   "latent_image": ["4", 0], "seed": 7, "steps": 1, "cfg": 7.0,
                                                   "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": prefix}},
    }
    if steered:
        prompt["8"] = {"class_type": "HRVLoader", "inputs": {"hrv_name": "sd1_official.safetensors"}}
        prompt["9"] = {"class_type": "HRVConceptStrengthen", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "hrv": ["8", 0], "text": text, "target": "wood",
            "concept": "Material", "strength": 4.0, "start_percent": 0.0, "end_percent": 1.0}}
        prompt["5"]["inputs"]["model"] = ["9", 0]
        prompt["5"]["inputs"]["positive"] = ["9", 1]
    return prompt


def test_soak_100_graphs_deterministic_and_no_memory_growth(client, comfy_server, artifacts_dir):
    server = psutil.Process(comfy_server.pid)
    pixels = {False: [], True: []}
    rss = {}
    started = time.monotonic()
    for i in range(1, SOAK_GRAPHS + 1):
        steered = i % 2 == 0
        result = client.run(small_graph(steered, "soak_hrv" if steered else "soak_plain"), timeout_s=600)
        assert result.status == "success", (i, result.error)
        (image,) = result.images()
        with Image.open(client.image_path(comfy_server.base_dir, image)) as saved:
            pixels[steered].append(np.asarray(saved.convert("RGB")))
        if i in (MEMORY_FROM, SOAK_GRAPHS):
            rss[i] = server.memory_info().rss
    seconds = time.monotonic() - started
    growth = rss[SOAK_GRAPHS] / rss[MEMORY_FROM] - 1
    with open(os.path.join(artifacts_dir, "soak.json"), "w", encoding="utf-8") as f:
        json.dump({"graphs": SOAK_GRAPHS, "seconds": round(seconds, 1), "rss_mib": {k: v >> 20 for k, v in rss.items()},
                   "growth": round(growth, 4)}, f, indent=1)

    plain, steered = pixels[False], pixels[True]
    assert len(plain) == len(steered) == SOAK_GRAPHS // 2
    assert plain[0].shape == (64, 64, 3) and plain[0].std() > 1.0
    changed = [i for i, p in enumerate(plain) if not np.array_equal(p, plain[0])]
    assert not changed, f"unpatched images {changed} differ from the first one"
    changed = [i for i, p in enumerate(steered) if not np.array_equal(p, steered[0])]
    assert not changed, f"steered images {changed} differ from the first steered one"
    assert not np.array_equal(plain[0], steered[0]), "the HRV-steered model made the unpatched image"
    assert growth < MAX_GROWTH, (f"resident memory grew {growth:.1%} from graph {MEMORY_FROM} to {SOAK_GRAPHS} "
                                 f"({rss[MEMORY_FROM] >> 20} -> {rss[SOAK_GRAPHS] >> 20} MiB)")


def _loader_graph(hrv_name: str) -> dict:
    return {"1": {"class_type": "HRVLoader", "inputs": {"hrv_name": hrv_name}},
            "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 1]}}}


def test_mutated_hrv_files_fail_with_a_clear_message_and_the_server_keeps_serving(client, comfy_server, tmp_path):
    """1,000 mutants, one at a time in models/hrv/, each queued through HRV Loader over HTTP."""
    hrv_dir = os.path.join(comfy_server.base_dir, "models", "hrv")
    raw = good_file_bytes(str(tmp_path))
    seen = set()
    rejected = 0
    for n, (kind, data) in enumerate(mutants(str(tmp_path), raw, random.Random(99), FUZZ_FILES)):
        if data == raw:
            continue
        name = f"fuzz_{n:04d}.safetensors"
        path = os.path.join(hrv_dir, name)
        with open(path, "wb") as f:
            f.write(data)
        try:
            result = client.run(_loader_graph(name), timeout_s=120)
        finally:
            os.remove(path)
        error = result.error
        assert result.status == "error" and error is not None, (kind, result.outputs)
        message = error["exception_message"]
        assert error["node_type"] == "HRVLoader", (kind, error["node_type"])
        assert error["exception_type"].endswith("HRVFileError"), (kind, error["exception_type"], message)
        assert message.strip() and len(message) < 400, (kind, message)
        assert "Traceback" not in message and 'File "' not in message, (kind, message)
        assert name in message, f"{kind}: the message does not name the file: {message}"
        seen.add(kind.split(":")[0])
        rejected += 1
    assert seen == set(KINDS) and rejected >= FUZZ_FILES - 5
    # Still serving: the real file loads and its summary comes back through the output node.
    result = client.run(_loader_graph("sd1_official.safetensors"), timeout_s=120)
    assert result.status == "success", result.error
    assert "sd1_official.safetensors" in json.dumps(result.outputs)
    assert client.get_json("/system_stats")["system"]["comfyui_version"]
