"""The pack on the real ComfyUI: server start-up failure, UI workflows through ComfyUI's executor, the launcher."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

WORKFLOWS = os.path.join(os.path.dirname(__file__), "workflows")


def load_workflow(name):
    with open(os.path.join(WORKFLOWS, name), encoding="utf-8") as f:
        return json.load(f)


# --- (a) the real server (registration, templates, HTTP runs: test_server_e2e.py) --------------

def test_server_is_stopped_when_start_up_fails(tmp_path):
    from harness.server import running_server
    missing = str(tmp_path / "no-such-base")  # no custom_nodes/ in it: ComfyUI exits at start-up
    with pytest.raises(RuntimeError, match="exited with code"):
        with running_server(missing, str(tmp_path / "log.txt"), timeout_s=120):
            pass


# --- (b) UI workflow -> API prompt -> ComfyUI's executor --------------------------------------

@pytest.fixture(scope="module")
def core_run(comfyui):
    workflow = load_workflow("sd15_txt2img_core.json")
    prompt = comfyui.ui_to_api(workflow, comfyui.object_info())
    result = comfyui.run_prompt(prompt, return_nodes=["4", "8"])
    return prompt, result


def test_ui_to_api_matches_the_frontend_format(core_run):
    prompt, _ = core_run
    assert set(prompt) == {"3", "4", "5", "6", "7", "8", "9"}  # the Note is frontend-only
    assert prompt["3"] == {
        "class_type": "KSampler", "_meta": {"title": "KSampler"},
        "inputs": {"seed": 42, "steps": 2, "cfg": 7.5, "sampler_name": "euler", "scheduler": "normal", "denoise": 1,
                   "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}}
    assert prompt["5"]["inputs"] == {"width": 64, "height": 64, "batch_size": 1}
    assert prompt["6"]["inputs"] == {"text": "a red apple on a wooden table ", "clip": ["4", 1]}
    assert prompt["8"]["inputs"] == {"samples": ["3", 0], "vae": ["4", 2]}


def test_random_checkpoint_loads_as_sd15(core_run):
    _, result = core_run
    model, clip, vae = (slot[0] for slot in result.values["4"])
    assert type(model.model.model_config).__name__ == "SD15"
    assert clip is not None and vae is not None
    assert len(model.model.diffusion_model.state_dict()) == 686


def test_core_workflow_makes_a_finite_non_constant_image(core_run):
    _, result = core_run
    decoded = result.values["8"][0][0]  # [batch, H, W, 3]
    assert decoded.shape == (1, 64, 64, 3)
    assert torch.isfinite(decoded).all()
    assert len(result.images) == 1 and os.path.isfile(result.images[0])
    pixels = np.asarray(Image.open(result.images[0]), dtype=np.float32)
    assert pixels.shape == (64, 64, 3)
    assert pixels.std() > 1.0, "the saved image is (nearly) constant"


def test_validation_errors_carry_comfyuis_message(comfyui):
    prompt = comfyui.ui_to_api(load_workflow("sd15_txt2img_core.json"), comfyui.object_info())
    prompt["4"]["inputs"]["ckpt_name"] = "missing.safetensors"
    with pytest.raises(comfyui.WorkflowError, match=r"ckpt_name.*missing\.safetensors"):
        comfyui.run_prompt(prompt)


def test_execution_errors_name_the_failing_node(comfyui):
    prompt = comfyui.ui_to_api(load_workflow("sd15_txt2img_core.json"), comfyui.object_info())
    # The SD1.5 VAE cannot decode a 16-channel SD3 latent: fails inside VAEDecode, at run time.
    prompt["10"] = {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
    prompt["8"]["inputs"]["samples"] = ["10", 0]
    with pytest.raises(comfyui.WorkflowError, match=r"node #8 \(VAEDecode\) failed: RuntimeError"):
        comfyui.run_prompt(prompt)


def test_headless_demo_writes_images_to_the_output_folder(comfy_base, comfyui, tmp_path):
    import scripts.demo.__main__ as demo
    out = tmp_path / "out"
    images = demo.run(comfy_base, os.path.join(WORKFLOWS, "sd15_txt2img_core.json"), str(out))
    assert len(images) == 1 and images[0].startswith(str(out)) and os.path.isfile(images[0])


def test_demo_prepare_falls_back_to_the_random_checkpoint_only_without_a_real_one(tmp_path, random_checkpoint):
    from safetensors.torch import save_file

    import scripts.demo.__main__ as demo
    from scripts.demo.checkpoint import DEFAULT_NAME
    base = str(tmp_path / "base")
    name, is_random = demo.prepare(base)
    assert (name, is_random) == (DEFAULT_NAME, True)
    assert os.path.realpath(os.path.join(base, "models", "checkpoints", DEFAULT_NAME)) == os.path.realpath(random_checkpoint)
    save_file({"x": torch.zeros(1)}, os.path.join(base, "models", "checkpoints", "mine.safetensors"))
    assert demo.prepare(base) == ("mine.safetensors", False)
    elsewhere = tmp_path / "elsewhere.safetensors"
    save_file({"x": torch.zeros(1)}, str(elsewhere))
    assert demo.prepare(base, ckpt=str(elsewhere)) == ("elsewhere.safetensors", False)
    assert os.path.realpath(os.path.join(base, "models", "checkpoints", "elsewhere.safetensors")) == str(elsewhere)
    with pytest.raises(FileNotFoundError, match="no such file"):
        demo.prepare(base, ckpt=str(tmp_path / "missing.safetensors"))


def test_random_checkpoint_has_original_ldm_key_names(random_checkpoint):
    from safetensors import safe_open

    from scripts.demo.checkpoint import is_random_checkpoint
    prefixes = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer.text_model.")
    with safe_open(random_checkpoint, framework="pt") as f:
        keys = list(f.keys())
        assert {p for p in prefixes if any(k.startswith(p) for k in keys)} == set(prefixes)
        assert all(k.startswith(prefixes) for k in keys)
        assert "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight" in keys
        assert "cond_stage_model.transformer.text_model.final_layer_norm.weight" in keys
        assert "first_stage_model.post_quant_conv.weight" in keys
        assert torch.all(f.get_tensor("model.diffusion_model.out.0.weight") == 1)  # GroupNorm scale
        assert torch.all(f.get_tensor("model.diffusion_model.out.0.bias") == 0)
        conv = f.get_tensor("model.diffusion_model.input_blocks.0.0.weight").float()  # [320, 4, 3, 3]
        assert torch.isfinite(conv).all() and abs(conv.std().item() - 1 / 6) < 0.02  # LeCun: 1/sqrt(4*3*3)
    assert is_random_checkpoint(random_checkpoint)


@pytest.mark.parametrize("stop_signal", ["SIGINT", "SIGTERM"])
def test_start_script_launcher_stops_comfyui_on_signals(comfy_base, tmp_path, stop_signal):
    """scripts/run_comfyui.py (what start.sh execs): both signals stop the server through its own shutdown,
    even when SIGINT arrives ignored, as for a job started in the background by a non-interactive shell."""
    import signal
    import subprocess
    import sys
    import time

    from hrv.comfy_host import comfyui_dir
    from harness.server import free_port, get_json, log_tail, stop_process_group
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    port = free_port()
    log_path = str(tmp_path / "server.log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, os.path.join(repo, "scripts", "run_comfyui.py"), "--cpu", "--listen", "127.0.0.1",
             "--port", str(port), "--base-directory", comfy_base, "--database-url", "sqlite:///:memory:"],
            env={**os.environ, "COMFYUI_DIR": comfyui_dir()}, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, log_tail(log_path)
            try:
                get_json(f"http://127.0.0.1:{port}/system_stats", timeout=5)
                break
            except OSError:
                assert time.monotonic() < deadline, log_tail(log_path)
                time.sleep(0.5)
        proc.send_signal(getattr(signal, stop_signal))
        assert proc.wait(60) == 0, log_tail(log_path)
        assert "Stopped server" in log_tail(log_path)
    finally:
        stop_process_group(proc)
