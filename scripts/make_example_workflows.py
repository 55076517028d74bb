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
SMALL_NOTE = (f"Small so that it runs on a CPU: {SIZE}x{SIZE}, {STEPS} steps. With a real SD1.5 checkpoint raise "
              "width/height (Empty Latent Image) to 512 and steps (every KSampler) to 20-30; keep the seeds equal. "
              "SDXL: load sdxl_official in HRV Loader and use 1024x1024. HRV Loader list empty? Run "
              "`python -m hrv fetch-official` once in the pack's folder.")
NEGATIVE = "blurry, low quality"

from scripts.example_workflows_maps import EXAMPLES as MAP_EXAMPLES  # noqa: E402  attention maps, Attend-and-Excite


def _inputs(wf, at=(0, 0)):
    """Load Checkpoint and HRV Loader stacked in one cell, the shared negative prompt and latent in the cell below."""
    column, row = at
    ckpt = wf.add("CheckpointLoaderSimple", (column, row), ckpt_name=CKPT)
    hrv = wf.add("HRVLoader", (column, row), hrv_name=HRV_FILE)
    negative = wf.add("CLIPTextEncode", (column, row + 1), title="Negative", clip=ckpt[1], text=NEGATIVE)
    latent = wf.add("EmptyLatentImage", (column, row + 1), width=SIZE, height=SIZE, batch_size=1)
    return ckpt, hrv, negative, latent


def _sample_decode(wf, ckpt, model, positive, negative, latent, at, title, decode_at=None):
    """KSampler (same seed everywhere) and VAE Decode; the decoder goes to decode_at, else below the sampler."""
    sampled = wf.add("KSampler", at, title=title, model=model, positive=positive, negative=negative[0],
                     latent_image=latent[0], seed=SEED, steps=STEPS, cfg=CFG, sampler_name="euler", scheduler="normal")
    return wf.add("VAEDecode", decode_at or at, samples=sampled[0], vae=ckpt[2])


def _stitch(wf, first, second, at, direction="right", match_image_size=True):
    return wf.add("ImageStitch", at, image1=first[0], image2=second[0], direction=direction,
                  match_image_size=match_image_size, spacing_width=8)


def polysemy(wf):
    """Words with two meanings, marked inline in HRV Text Encode; each beside plain CLIP Text Encode, same seed."""
    rows = [("A rose-colored vase on a table", "A [rose-colored:Color-Plants] vase on a table"),
            ("An Apple logo on a laptop", "An [Apple:Brand Logos-Fruits and Vegetables] logo on a laptop")]
    ckpt, hrv, negative, latent = _inputs(wf)
    pairs = []
    for r, (plain_text, marked_text) in enumerate(rows):
        top = 2 * r
        plain = wf.add("CLIPTextEncode", (1, top), title=f"Baseline prompt {r + 1}", clip=ckpt[1], text=plain_text)
        steered = wf.add("HRVTextEncode", (1, top + 1), model=ckpt[0], clip=ckpt[1], hrv=hrv[0], text=marked_text,
                         preset="auto")
        base_image = _sample_decode(wf, ckpt, ckpt[0], plain[0], negative, latent, (2, top), "Baseline",
                                    decode_at=(3, top))
        steered_image = _sample_decode(wf, ckpt, steered[0], steered[1], negative, latent, (2, top + 1), "HRV steered",
                                       decode_at=(3, top + 1))
        pairs.append(_stitch(wf, base_image, steered_image, (4, top)))
    grid = _stitch(wf, pairs[0], pairs[1], (4, 1), direction="down")
    wf.add("SaveImage", (4, 1), images=grid[0], filename_prefix="hrv_polysemy")
    wf.note("HRV Text Encode replaces CLIP Text Encode: a mark [word:Desired-Undesired] steers that word towards one "
            "concept and away from the other, and is removed before encoding. Its model output goes to the sampler "
            "too. Saved image: left the plain prompt, right the marked one, same seed; top 'rose-colored' as a Color, "
            "not roses; bottom 'Apple' the brand, not the fruit.\n\n" + SMALL_NOTE, (0, 2))


def strengthen(wf):
    """Make the material word count: 'a bowl made of wood', the word wood strengthened in the Material heads."""
    text = "a bowl made of wood, studio photo"
    ckpt, hrv, negative, latent = _inputs(wf)
    plain = wf.add("CLIPTextEncode", (1, 0), title="Baseline prompt", clip=ckpt[1], text=text)
    steered = wf.add("HRVConceptStrengthen", (1, 1), title="wood: strengthen Material", model=ckpt[0], clip=ckpt[1],
                     hrv=hrv[0], text=text, target="wood", concept="Material", strength=1.0)
    base_image = _sample_decode(wf, ckpt, ckpt[0], plain[0], negative, latent, (2, 0), "Baseline", decode_at=(3, 0))
    steered_image = _sample_decode(wf, ckpt, steered[0], steered[1], negative, latent, (2, 1), "Material strengthened",
                                   decode_at=(3, 1))
    both = _stitch(wf, base_image, steered_image, (4, 0))
    wf.add("SaveImage", (4, 0), images=both[0], filename_prefix="hrv_strengthen")
    wf.note("HRV Concept Strengthen encodes the text like CLIP Text Encode and gives the word 'wood' more weight in the "
            "attention heads that care about Material. Saved image: left plain, right strengthened, same seed. "
            "Raise strength for a stronger effect.\n\n" + SMALL_NOTE, (4, 1))


WEAKENING_K = (8, 32, 64)


def weakening(wf):
    """The paper's ordered weakening: every word x -2 in the k most (MoRHF) vs least (LeRHF) relevant Animals heads."""
    text = "a photo of a dog"
    ckpt, hrv, negative, latent = _inputs(wf)
    plain = wf.add("CLIPTextEncode", (1, 0), title="Baseline prompt (k = 0)", clip=ckpt[1], text=text)
    baseline = _sample_decode(wf, ckpt, ckpt[0], plain[0], negative, latent, (1, 1), "Baseline (k = 0)")
    rows, stitch_column = [], 2 + len(WEAKENING_K)
    for r, order in enumerate(("MoRHF", "LeRHF")):
        images = baseline
        for c, k in enumerate(WEAKENING_K):
            column = 2 + c
            steered = wf.add("HRVOrderedWeakening", (column, 2 * r), title=f"{order} k={k}", model=ckpt[0],
                             clip=ckpt[1], hrv=hrv[0], text=text, target="*", concept="Animals", order=order, k=k,
                             factor=-2.0)
            image = _sample_decode(wf, ckpt, steered[0], steered[1], negative, latent, (column, 2 * r + 1),
                                   f"{order} k={k}")
            images = _stitch(wf, images, image, (stitch_column, 2 * r + min(c, 1)))
        rows.append(images)
    grid = _stitch(wf, rows[0], rows[1], (stitch_column + 1, 1), direction="down")
    wf.add("SaveImage", (stitch_column + 1, 1), images=grid[0], filename_prefix="hrv_ordered_weakening")
    wf.note("The paper's test of the ranking: every word of the prompt (target *) multiplied by -2 in the k heads most "
            f"relevant to Animals (MoRHF, top row) or least relevant (LeRHF, bottom row); columns k = 0 (baseline), "
            f"{', '.join(map(str, WEAKENING_K))} of SD1.x's 128 heads. The dog should fade much sooner in the top row.\n\n"
            + SMALL_NOTE, (0, 2))


def inspect(wf):
    """Where do Color and Plants live in the UNet? No sampling, runs in a second."""
    hrv = wf.add("HRVLoader", (0, 0), hrv_name=HRV_FILE)
    shown = wf.add("HRVInspect", (1, 0), hrv=hrv[0], concept="Color", compare_with="Plants", top_k=10)
    wf.add("SaveImage", (2, 0), images=shown[0], filename_prefix="hrv_inspect")
    wf.note("One row per cross-attention transformer, one cell per head; brighter = more relevant. "
            "The third panel shows Color minus Plants. No checkpoint needed. HRV Loader list empty? Run "
            "`python -m hrv fetch-official` once in the pack's folder.", (0, 1))


def _prompt_edit(source_text, target_text, concept, prefix, note):
    """Prompt-to-Prompt pair (source, edit) drawn twice with the same seed: plain P2P (concept none) and P2P-HRV.
    Saved image: source | plain P2P edit | P2P-HRV edit."""
    def build(wf):
        ckpt = wf.add("CheckpointLoaderSimple", (0, 0), ckpt_name=CKPT)
        hrv = wf.add("HRVLoader", (0, 0), hrv_name=HRV_FILE)
        negative = wf.add("CLIPTextEncode", (0, 1), title="Negative", clip=ckpt[1], text=NEGATIVE)
        decoded = []
        for r, (chosen, title) in enumerate((("none", "Plain P2P (concept none)"), (concept, f"P2P-HRV ({concept})"))):
            edit = wf.add("HRVPromptEdit", (1, r), title=title, model=ckpt[0], clip=ckpt[1], hrv=hrv[0],
                          source_text=source_text, target_text=target_text, concept=chosen, mode="replace",
                          width=SIZE, height=SIZE, pairs=1)
            sampled = wf.add("KSampler", (2, r), title=title, model=edit[0], positive=edit[1], negative=negative[0],
                             latent_image=edit[2], seed=SEED, steps=STEPS, cfg=CFG, sampler_name="euler",
                             scheduler="normal")
            decoded.append(wf.add("VAEDecode", (3, r), title=f"{title}: source, edit", samples=sampled[0],
                                  vae=ckpt[2]))
        source = wf.add("ImageFromBatch", (4, 0), title="Source image", image=decoded[0][0], batch_index=0, length=1)
        plain = wf.add("ImageFromBatch", (4, 0), title="Plain P2P edit", image=decoded[0][0], batch_index=1, length=1)
        steered = wf.add("ImageFromBatch", (4, 1), title="P2P-HRV edit", image=decoded[1][0], batch_index=1, length=1)
        pair = _stitch(wf, source, plain, (5, 0))
        row = _stitch(wf, pair, steered, (5, 0))
        wf.add("SaveImage", (5, 1), images=row[0], filename_prefix=prefix)
        wf.note(f"HRV Prompt Edit makes the latent pair (source, edit) and one conditioning of both prompts: "
                f"'{source_text}' -> '{target_text}'. KSampler draws both, VAE Decode gives the batch (source, edit). "
                f"Top: plain Prompt-to-Prompt (concept none). Bottom: P2P-HRV, the edited word strengthened in the "
                f"{concept} heads, same seed. Saved image: source | plain P2P edit | P2P-HRV edit. {note}\n\n"
                + SMALL_NOTE.replace("width/height (Empty Latent Image)", "width/height (HRV Prompt Edit)"), (0, 2))
    return build


edit_color = _prompt_edit("a blue car", "a red car", "Color", "hrv_edit_color",
                          "The car's shape and the scene should stay, only its colour change.")
edit_material = _prompt_edit("a wooden chair", "a golden chair", "Material", "hrv_edit_material",
                             "The chair's shape should stay, only its material change.")

EXAMPLES = {"concept_adjust_polysemy": polysemy, "concept_strengthen_material": strengthen,
            "hrv_inspect_concepts": inspect, "ordered_weakening_grid": weakening,
            **MAP_EXAMPLES, "prompt_edit_color": edit_color, "prompt_edit_material": edit_material}


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
