"""Example workflows of the map and Attend-and-Excite nodes, as generator functions in the style of
scripts/make_example_workflows.py (UI format through tests/harness/ui_builder.py).

    .venv/bin/python scripts/example_workflows_maps.py --out DIR     # writes DIR/<name>.json

To ship them: add EXAMPLES below to the EXAMPLES of make_example_workflows.py, write them into example_workflows/
with a picture each (scripts/make_example_pictures.py) and a README entry.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

PACK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, PACK_DIR)
sys.path.insert(0, os.path.join(PACK_DIR, "tests"))  # harness/
CKPT = "v1-5-pruned-emaonly.safetensors"
HRV_FILE = "sd1_official.safetensors"
SIZE, STEPS, SEED, CFG = 256, 4, 1234, 7.5
SMALL_NOTE = (f"Runs fast on CPU: {SIZE}x{SIZE}, {STEPS} steps. With a real SD1.5 checkpoint set width/height to 512 "
              "and steps to 20-30. HRV files: run `python -m hrv fetch-official` once if the HRV Loader list is empty.")


def _loaders(wf):
    ckpt = wf.add("CheckpointLoaderSimple", (0, 0), ckpt_name=CKPT)
    hrv = wf.add("HRVLoader", (0, 1), hrv_name=HRV_FILE)
    return ckpt, hrv


def heatmap(wf):
    """Where do 'dog' and 'hat' land? The top 25% Animals heads vs every head (DAAM), same sampling run each."""
    ckpt, hrv = _loaders(wf)
    text = "a photo of a dog wearing a red hat in a park"
    negative = wf.add("CLIPTextEncode", (0, 2), title="Negative", clip=ckpt[1], text="blurry, low quality")
    latent = wf.add("EmptyLatentImage", (0, 3), width=SIZE, height=SIZE, batch_size=1)
    panels = []
    for r, (heads, concept, title) in enumerate((("top_k", "Animals", "top 25% Animals heads"),
                                                 ("all", "auto", "all heads (DAAM)"))):
        mapped = wf.add("HRVAttentionMap", (1, 2 * r), title=f"Map: {title}", model=ckpt[0], clip=ckpt[1], hrv=hrv[0],
                        text=text, words="dog, hat", concept=concept, heads=heads, top_k=0.25)
        sampled = wf.add("KSampler", (2, 2 * r), model=mapped[0], positive=mapped[1], negative=negative[0],
                         latent_image=latent[0], seed=SEED, steps=STEPS, cfg=CFG, sampler_name="euler",
                         scheduler="normal")
        image = wf.add("VAEDecode", (2, 2 * r + 1), samples=sampled[0], vae=ckpt[2])
        row = image
        for c, word in enumerate(("dog", "hat")):
            # One render per word: the overlay is a batch (word by word), a row wants them side by side.
            shown = wf.add("HRVAttentionMapRender", (3, 2 * r + c), title=f"Render '{word}': {title}",
                           conditioning=mapped[1], images=image[0], threshold=0.0, word=word, samples=sampled[0])
            row = wf.add("ImageStitch", (4 + c, 2 * r), image1=row[0], image2=shown[1], direction="right",
                         spacing_width=8)
        panels.append(row)
    both = wf.add("ImageStitch", (6, 0), image1=panels[0][0], image2=panels[1][0], direction="down", spacing_width=8)
    wf.add("SaveImage", (6, 1), images=both[0], filename_prefix="hrv_heatmap")
    wf.note("Each row: the image, then the maps of 'dog' and 'hat' over it. Top: the 25% of heads the HRV ties most "
            "to Animals. Bottom: all heads alike (DAAM). The map nodes do not change the image. " + SMALL_NOTE, (0, 4))


def diagnose(wf):
    """How is 'rose-colored' read? Color or Plants, with the mark that fixes it, then the steered image."""
    ckpt, hrv = _loaders(wf)
    text = "a rose-colored vase on a wooden table"
    diagnosis = wf.add("HRVDiagnose", (1, 0), model=ckpt[0], clip=ckpt[1], hrv=hrv[0], text=text, word="rose-colored",
                       intended_concept="Color", other_concept="auto", top_k=0.25, seed=SEED, steps=STEPS, cfg=CFG,
                       sampler_name="euler", scheduler="normal", width=SIZE, height=SIZE, vae=ckpt[2])
    wf.add("SaveImage", (2, 0), images=diagnosis[0], filename_prefix="hrv_diagnose")
    wf.add("PreviewAny", (2, 1), source=diagnosis[1])
    wf.note("Left to right: the word's map from the top Color heads, from the heads of the concept it is read as "
            "besides (auto), and from all heads. The text gives the reading and the mark to paste into HRV Text "
            "Encode, e.g. [rose-colored:Color-Plants]. " + SMALL_NOTE, (0, 2))


def attend_and_excite(wf):
    """'A black cat and a white dog': plain sampling drops a subject; A&E-HRV excites both Animals words."""
    ckpt, hrv = _loaders(wf)
    text = "a black cat and a white dog"
    positive = wf.add("CLIPTextEncode", (1, 0), title="Positive (plain)", clip=ckpt[1], text=text)
    negative = wf.add("CLIPTextEncode", (1, 1), title="Negative", clip=ckpt[1], text="")
    latent = wf.add("EmptyLatentImage", (0, 2), width=SIZE, height=SIZE, batch_size=1)
    excited = wf.add("HRVAttendAndExcite", (1, 2), model=ckpt[0], clip=ckpt[1], text=text,
                     subjects="cat:Animals, dog:Animals", excite_until=0.5, scale_factor=20.0, max_refinement=20,
                     smooth="auto", hrv=hrv[0])
    images = []
    for r, (model, cond, title) in enumerate(((ckpt[0], positive[0], "Baseline"), (excited[0], excited[1], "A&E-HRV"))):
        sampled = wf.add("KSampler", (2, 2 * r), title=title, model=model, positive=cond, negative=negative[0],
                         latent_image=latent[0], seed=SEED, steps=STEPS, cfg=CFG, sampler_name="euler",
                         scheduler="normal")
        images.append(wf.add("VAEDecode", (2, 2 * r + 1), samples=sampled[0], vae=ckpt[2]))
    both = wf.add("ImageStitch", (3, 0), image1=images[0][0], image2=images[1][0], direction="right", spacing_width=8)
    wf.add("SaveImage", (3, 1), images=both[0], filename_prefix="hrv_attend_and_excite")
    wf.note("Left: plain sampling. Right: HRV Attend and Excite, same seed: in the first half of the steps the latent "
            "is nudged until both 'cat' and 'dog' get strong attention in their Animals heads. Disconnect the HRV for "
            "the original Attend-and-Excite. Several times slower in the excited steps (gradient passes). " + SMALL_NOTE,
            (0, 4))


EXAMPLES = {"attention_heatmap": heatmap, "diagnose_rose_colored": diagnose, "attend_and_excite_animals": attend_and_excite}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for the .json files")
    args = parser.parse_args()
    from harness.ui_builder import UIWorkflow

    from scripts.demo.workflows import make_base_dir, object_info, start_comfyui
    with tempfile.TemporaryDirectory() as base:
        start_comfyui(make_base_dir(base))
        defs = object_info()
        os.makedirs(args.out, exist_ok=True)
        for name, build in EXAMPLES.items():
            wf = UIWorkflow(defs)
            build(wf)
            path = os.path.join(args.out, f"{name}.json")
            with open(path, "w", encoding="utf-8") as f:
                json.dump(wf.to_json(name), f, indent=1)
                f.write("\n")
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
