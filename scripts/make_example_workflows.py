"""Write example_workflows/*.json (UI format, loadable from ComfyUI's template browser).

    .venv/bin/python scripts/make_example_workflows.py

Small images and few steps so every example runs on CPU with the embedded random checkpoint;
the notes in each workflow say what to raise with a real checkpoint.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile

PACK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, PACK_DIR)
sys.path.insert(0, os.path.join(PACK_DIR, "tests"))  # harness/
OUT_DIR = os.path.join(PACK_DIR, "example_workflows")
CKPT = "v1-5-pruned-emaonly.safetensors"
HRV_FILE = "sd1_official.safetensors"
SIZE, STEPS, SEED, CFG = 256, 4, 1234, 7.5
SMALL_NOTE = (f"Runs fast on CPU: {SIZE}x{SIZE}, {STEPS} steps. With a real SD1.5 checkpoint set width/height to 512 "
              "and steps to 20-30. HRV files: run `python -m hrv fetch-official` once if the HRV Loader list is empty.")


def _common(wf, prompt_text, negative="blurry, low quality"):
    ckpt = wf.add("CheckpointLoaderSimple", (0, 0), ckpt_name=CKPT)
    hrv = wf.add("HRVLoader", (0, 1), hrv_name=HRV_FILE)
    text = wf.add("PrimitiveStringMultiline", (0, 2), title="Prompt (shared by CLIP and HRV)", value=prompt_text)
    positive = wf.add("CLIPTextEncode", (1, 0), title="Positive", clip=ckpt[1], text=text[0])
    negative = wf.add("CLIPTextEncode", (1, 1), title="Negative", clip=ckpt[1], text=negative)
    latent = wf.add("EmptyLatentImage", (0, 3), width=SIZE, height=SIZE, batch_size=1)
    return ckpt, hrv, text, positive, negative, latent


def _sample_decode(wf, ckpt, model, positive, negative, latent, at, title):
    sampled = wf.add("KSampler", at, title=title, model=model, positive=positive[0], negative=negative[0],
                     latent_image=latent[0], seed=SEED, steps=STEPS, cfg=CFG, sampler_name="euler", scheduler="normal")
    return wf.add("VAEDecode", (at[0], at[1] + 1), samples=sampled[0], vae=ckpt[2])


def _stitch(wf, first, second, at, direction="right"):
    return wf.add("ImageStitch", at, image1=first[0], image2=second[0], direction=direction, spacing_width=8)


def polysemy(wf):
    """'A rose-colored vase': rose should mean Color, not Plants. Baseline | adjusted, same seed; then 'Apple logo'."""
    rows = [("A rose-colored vase on a table", "rose-colored", "Color", "Plants"),
            ("An Apple logo on a white wall", "Apple", "Brand Logos", "Fruits and Vegetables")]
    ckpt = wf.add("CheckpointLoaderSimple", (0, 0), ckpt_name=CKPT)
    hrv = wf.add("HRVLoader", (0, 1), hrv_name=HRV_FILE)
    negative = wf.add("CLIPTextEncode", (0, 2), title="Negative", clip=ckpt[1], text="blurry, low quality")
    latent = wf.add("EmptyLatentImage", (0, 3), width=SIZE, height=SIZE, batch_size=1)
    pairs = []
    for r, (prompt_text, target, desired, undesired) in enumerate(rows):
        base = 4 * r
        text = wf.add("PrimitiveStringMultiline", (1, base), title=f"Prompt {r + 1}", value=prompt_text)
        positive = wf.add("CLIPTextEncode", (1, base + 1), title=f"Positive {r + 1}", clip=ckpt[1], text=text[0])
        adjusted = wf.add("HRVConceptAdjust", (2, base), title=f"{target}: {desired}, not {undesired}",
                          model=ckpt[0], clip=ckpt[1], hrv=hrv[0], prompt=text[0], target=target,
                          desired_concept=desired, undesired_concept=undesired)
        plain = _sample_decode(wf, ckpt, ckpt[0], positive, negative, latent, (3, base), "Baseline")
        steered = _sample_decode(wf, ckpt, adjusted[0], positive, negative, latent, (4, base), "HRV adjusted")
        pairs.append(_stitch(wf, plain, steered, (5, base)))
    grid = _stitch(wf, pairs[0], pairs[1], (6, 0), direction="down")
    wf.add("SaveImage", (6, 1), images=grid[0], filename_prefix="hrv_polysemy")
    wf.note("Left: plain model. Right: HRV Concept Adjust with the same seed. 'rose-colored' is steered "
            "towards Color and away from Plants; 'Apple' towards Brand Logos and away from Fruits. " + SMALL_NOTE, (0, 4))


def strengthen(wf):
    """Make the material word count: 'a bowl made of wood', Material heads strengthened."""
    ckpt, hrv, text, positive, negative, latent = _common(wf, "a bowl made of wood, studio photo")
    steered_model = wf.add("HRVConceptStrengthen", (2, 0), title="wood: strengthen Material", model=ckpt[0],
                           clip=ckpt[1], hrv=hrv[0], prompt=text[0], target="wood", concept="Material", strength=1.0)
    plain = _sample_decode(wf, ckpt, ckpt[0], positive, negative, latent, (3, 0), "Baseline")
    steered = _sample_decode(wf, ckpt, steered_model[0], positive, negative, latent, (4, 0), "Material strengthened")
    both = _stitch(wf, plain, steered, (5, 0))
    wf.add("SaveImage", (5, 1), images=both[0], filename_prefix="hrv_strengthen")
    wf.note("Left: plain model. Right: the token 'wood' rescaled in every head by its Material relevance. "
            "Raise strength for a stronger effect. " + SMALL_NOTE, (0, 4))


def weakening(wf):
    """Ordered weakening: -2 on the k most (MoRHF) vs least (LeRHF) relevant Animals heads for 'dog'."""
    ckpt, hrv, text, positive, negative, latent = _common(wf, "a photo of a dog in a park")
    rows = []
    for r, order in enumerate(("MoRHF", "LeRHF")):
        images = None
        for c, k in enumerate((8, 32)):
            model = wf.add("HRVOrderedWeakening", (2 + 2 * c, 2 * r), title=f"{order} k={k}", model=ckpt[0],
                           clip=ckpt[1], hrv=hrv[0], prompt=text[0], target="dog", concept="Animals",
                           order=order, k=k, factor=-2.0)
            image = _sample_decode(wf, ckpt, model[0], positive, negative, latent, (3 + 2 * c, 2 * r), f"{order} k={k}")
            images = image if images is None else _stitch(wf, images, image, (6, 2 * r + c))
        rows.append(images)
    plain = _sample_decode(wf, ckpt, ckpt[0], positive, negative, latent, (1, 2), "Baseline")
    grid = _stitch(wf, rows[0], rows[1], (7, 0), direction="down")
    with_baseline = _stitch(wf, plain, grid, (7, 1))
    wf.add("SaveImage", (7, 2), images=with_baseline[0], filename_prefix="hrv_ordered_weakening")
    wf.note("Left: baseline. Grid: top row MoRHF (most relevant heads first), bottom row LeRHF, k = 8 and 32 "
            "heads rescaled by -2. The dog should vanish much faster in the top row: the HRV ranks heads "
            "meaningfully. " + SMALL_NOTE, (0, 4))


def inspect(wf):
    """Where do Color and Plants live in the UNet? No sampling, runs in a second."""
    hrv = wf.add("HRVLoader", (0, 0), hrv_name=HRV_FILE)
    shown = wf.add("HRVInspect", (1, 0), hrv=hrv[0], concept="Color", compare_with="Plants", top_k=10)
    wf.add("SaveImage", (2, 0), images=shown[0], filename_prefix="hrv_inspect")
    wf.note("One row per cross-attention transformer, one cell per head; brighter = more relevant. "
            "The third panel shows Color minus Plants.", (0, 1))


EXAMPLES = {"concept_adjust_polysemy": polysemy, "concept_strengthen_material": strengthen,
            "hrv_inspect_concepts": inspect, "ordered_weakening_grid": weakening}


def main() -> int:
    from harness.ui_builder import UIWorkflow
    from scripts.demo.workflows import make_base_dir, object_info, start_comfyui
    with tempfile.TemporaryDirectory() as base:
        start_comfyui(make_base_dir(base))
        defs = object_info()
        os.makedirs(OUT_DIR, exist_ok=True)
        for name, build in EXAMPLES.items():
            wf = UIWorkflow(defs)
            build(wf)
            with open(os.path.join(OUT_DIR, f"{name}.json"), "w", encoding="utf-8") as f:
                json.dump(wf.to_json(name), f, indent=1)
                f.write("\n")
            print(os.path.join(OUT_DIR, f"{name}.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
