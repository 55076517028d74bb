"""`python -m hrv eval edit` end to end on the random-weight SD1.5 checkpoint, with OpenCLIP's ViT-B-32 architecture
(random weights, from a local file) as the scorer: 1 pair, 1 seed, 2 steps, 64x64."""
import csv
import json
import os

import pytest
import torch

open_clip = pytest.importorskip("open_clip", reason="pip install open-clip-torch (requirements-test.txt)")


def test_eval_edit_writes_images_scores_and_summary(random_checkpoint, official_dir, tmp_path, one_torch_thread):
    from hrv.cli import main
    prompts = tmp_path / "pairs.csv"
    prompts.write_text("source_prompt,target_prompt\na blue car,a red car\na blue bench,a brown bench\n")
    weights = tmp_path / "clip.bin"
    torch.save(open_clip.create_model("ViT-B-32", pretrained=None).state_dict(), weights)
    out = tmp_path / "out"
    code = main(["eval", "edit", "--checkpoint", random_checkpoint, "--hrv", f"{official_dir}/sd1_official.safetensors",
                 "--prompts", str(prompts), "--out", str(out), "--limit", "1", "--seeds", "7", "--steps", "2",
                 "--size", "64", "--baseline", "--clip-weights", str(weights), "--clip-arch", "ViT-B-32"])
    assert code == 0
    with open(out / "results.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert row["target_prompt"] == "a red car" and row["seed"] == "7"
    for name in ("source", "hrv", "p2p"):
        assert os.path.isfile(out / row[f"{name}_image"])
        assert -1.0 <= float(row[f"clip_{name}"]) <= 1.0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pairs"] == 1 and summary["mean_clip_hrv"] == pytest.approx(float(row["clip_hrv"]))
    assert main(["eval", "edit", "--checkpoint", random_checkpoint, "--hrv", f"{official_dir}/sd1_official.safetensors",
                 "--prompts", str(weights.parent / "missing.csv"), "--out", str(out)]) == 2
