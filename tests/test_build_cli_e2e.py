"""`python -m hrv build` on a real checkpoint file, as a user runs it: a subprocess, ComfyUI's loader, a progress bar."""
import os
import re
import subprocess
import sys

import torch

from hrv.comfy_host import PACK_DIR
from hrv.format.hrv_file import load


def test_cli_builds_from_a_checkpoint_file_and_merges(random_checkpoint, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red apple\na blue car\na wooden chair\n")
    concepts = tmp_path / "concepts.txt"
    concepts.write_text("Color: red, blue, green\nMaterial: wood, metal, glass\nFruits: apple, banana\n")
    common = [sys.executable, "-m", "hrv", "build", "--ckpt", random_checkpoint, "--prompts", str(prompts),
              "--no-imagenet", "--concepts", str(concepts), "--steps", "2", "--width", "64", "--height", "64", "--cpu"]
    env = {**os.environ, "PYTHONPATH": PACK_DIR}
    full = subprocess.run(common + ["--out", str(tmp_path / "full.safetensors")], cwd=PACK_DIR, env=env,
                          capture_output=True, text=True, timeout=600)
    assert full.returncode == 0, full.stderr[-2000:]
    built = load(str(tmp_path / "full.safetensors"))
    assert built.arch == "sd1" and built.concepts == ["Color", "Material", "Fruits"]
    assert built.votes.shape == (2, 3, 128)
    assert int(built.votes.sum()) == 3 * 2 * 128          # prompts x steps x heads, one vote each
    assert re.search(r"HRV build: 100%.*6/6 \[[0-9:]+<[0-9:]+, .*/step\]", full.stderr)  # tqdm bar, rate, ETA
    for i in range(2):
        part = subprocess.run(common + ["--shard", f"{i}/2", "--out", str(tmp_path / f"part{i}.safetensors")],
                              cwd=PACK_DIR, env=env, capture_output=True, text=True, timeout=600)
        assert part.returncode == 0, part.stderr[-2000:]
    merged = subprocess.run([sys.executable, "-m", "hrv", "merge", str(tmp_path / "merged.safetensors"),
                             str(tmp_path / "part0.safetensors"), str(tmp_path / "part1.safetensors")],
                            cwd=PACK_DIR, env=env, capture_output=True, text=True, timeout=120)
    assert merged.returncode == 0, merged.stderr[-2000:]
    assert torch.equal(load(str(tmp_path / "merged.safetensors")).votes, built.votes)
