"""`python -m hrv eval weakening` end to end on the random-weight SD1.5 checkpoint (64x64, 1 step): images, CSV,
grid and plot PNGs, resume (a rerun samples only the rows missing from the CSV), CLIP column from a local
random-weight ViT-B-32 file."""
import csv
import os

import pytest
import torch
from PIL import Image


def rows_of(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_eval_weakening_writes_csv_grid_plot_and_resumes(random_checkpoint, official_dir, tmp_path, one_torch_thread):
    from hrv.cli import main, parser
    from hrv.eval import weakening_bench
    from hrv.eval.weakening import GRID_HEADER_H, GRID_LABEL_W, PLOT_SIZE
    out = tmp_path / "out"
    base = ["eval", "weakening", "--ckpt", random_checkpoint, "--hrv", f"{official_dir}/sd1_official.safetensors",
            "--concepts", "animals", "--words", "dog", "--seeds", "10", "--steps", "1", "--size", "64",
            "--out", str(out)]
    open_clip = pytest.importorskip("open_clip", reason="pip install open-clip-torch (requirements-test.txt)")
    weights = tmp_path / "clip.bin"
    torch.save(open_clip.create_model("ViT-B-32", pretrained=None).state_dict(), weights)
    clip_args = ["--clip-weights", str(weights), "--clip-arch", "ViT-B-32"]
    first = weakening_bench.run(parser().parse_args(base + ["--k", "0,128"] + clip_args))
    assert first["new"] == 4
    rows = rows_of(out / "weakening.csv")
    assert [(r["concept"], r["order"], r["k"], r["prompt"]) for r in rows] == [
        ("Animals", o, k, "photo of a dog") for o in ("MoRHF", "LeRHF") for k in ("0", "128")]
    assert all(-1.0 <= float(r["clip"]) <= 1.0 for r in rows)
    assert rows[0]["clip"] == rows[2]["clip"] and rows[1]["clip"] == rows[3]["clip"]    # k=0 alike, k=H alike
    before = {p: os.path.getmtime(out / "images" / p) for p in os.listdir(out / "images")}
    assert len(before) == 4
    # resume: a wider k list samples only the new k, and keeps the four rows it has
    assert main(base + ["--k", "0,1,128"] + clip_args) == 0
    rows = rows_of(out / "weakening.csv")
    assert len(rows) == 6 and sorted(r["k"] for r in rows[4:]) == ["1", "1"]
    assert all(os.path.getmtime(out / "images" / p) == t for p, t in before.items())
    again = weakening_bench.run(parser().parse_args(base + ["--k", "0,1,128"] + clip_args))
    assert again["new"] == 0 and len(rows_of(out / "weakening.csv")) == 6
    with Image.open(out / "Animals_grid.png") as grid:
        assert grid.size == (GRID_LABEL_W + 3 * 64, GRID_HEADER_H + 2 * 64)
    with Image.open(out / "Animals_plot.png") as plot:
        assert plot.size == PLOT_SIZE
    assert main(base[:-2] + ["--concepts", "NoSuchConcept", "--out", str(out)]) == 2
