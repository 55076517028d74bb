"""Write example_workflows/<name>.jpg: a picture of each example workflow as the ComfyUI web page shows it.

    .venv/bin/python scripts/make_example_pictures.py [--only NAME] [--out-dir DIR]

Starts the real ComfyUI server (CPU) on a free port with this pack, opens each example from the
templates menu in headless Chromium (Debian's `chromium` package, driven by Playwright), and
screenshots the graph. Examples that need no checkpoint (HRV Inspect) are run from the page first,
so their picture shows the result inside the graph. ComfyUI serves the pictures as template
thumbnails. Needs the official HRVs (HRV_REFERENCE_DIR, ../shared/hrv_reference or data/hrv_vectors/).
"""
from __future__ import annotations

import argparse
import glob
import io
import logging
import os
import shutil
import sys
import tempfile

PACK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, PACK_DIR)
sys.path.insert(0, os.path.join(PACK_DIR, "tests"))  # harness/
EXAMPLES_DIR = os.path.join(PACK_DIR, "example_workflows")
MAX_BYTES = 200_000
MARGIN = 24  # CSS pixels around the graph

log = logging.getLogger("make_example_pictures")

# Screen rectangle [x, y, width, height] of all nodes (title bars included) in the canvas's current view.
GRAPH_BOX = """() => {
    const ds = window.app.canvas.ds, rect = window.app.canvas.canvas.getBoundingClientRect();
    let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
    for (const n of (window.app.graph.nodes || window.app.graph._nodes)) {
        const b = n.getBounding();
        x0 = Math.min(x0, b[0]); y0 = Math.min(y0, b[1]); x1 = Math.max(x1, b[0] + b[2]); y1 = Math.max(y1, b[1] + b[3]);
    }
    const sx = v => (v + ds.offset[0]) * ds.scale + rect.left, sy = v => (v + ds.offset[1]) * ds.scale + rect.top;
    return [sx(x0), sy(y0), sx(x1) - sx(x0), sy(y1) - sy(y0)];
}"""
# Make the Save Image node large enough to read the picture it shows.
ENLARGE_SAVED_IMAGE = """([width, aspect]) => {
    const node = (window.app.graph.nodes || window.app.graph._nodes).find(n => n.type === 'SaveImage');
    node.setSize([width, Math.round(width * aspect) + 110]);
    window.app.graph.setDirtyCanvas(true, true);
}"""


def official_hrv_source() -> tuple[str, str] | None:
    """("npy", folder) of the published .npy files, or ("safetensors", folder) of imported ones, or None."""
    reference = os.environ.get("HRV_REFERENCE_DIR", os.path.join(PACK_DIR, "..", "shared", "hrv_reference"))
    if os.path.isdir(reference):
        return "npy", reference
    vectors = os.path.join(PACK_DIR, "data", "hrv_vectors")
    if glob.glob(os.path.join(vectors, "*_official.safetensors")):
        return "safetensors", vectors
    return None


def prepare_base(base: str) -> None:
    from scripts.demo.workflows import make_base_dir
    make_base_dir(base)
    hrv_dir = os.path.join(base, "models", "hrv")
    source = official_hrv_source()
    if source is None:
        log.warning("no official HRVs found: examples are pictured without running them")
        return
    kind, folder = source
    if kind == "npy":
        from hrv.format.official import import_official
        import_official(folder, hrv_dir)
    else:
        os.makedirs(hrv_dir, exist_ok=True)
        for path in glob.glob(os.path.join(folder, "*_official.safetensors")):
            shutil.copy(path, hrv_dir)


def to_jpeg(png: bytes, max_width: int) -> bytes:
    """Scale down to max_width and compress until the file is at most MAX_BYTES."""
    from PIL import Image
    image = Image.open(io.BytesIO(png)).convert("RGB")
    if image.width > max_width:
        image = image.resize((max_width, round(image.height * max_width / image.width)), Image.LANCZOS)
    for quality in (88, 82, 75, 68, 60, 50, 40):
        out = io.BytesIO()
        image.save(out, "JPEG", quality=quality, optimize=True, progressive=True)
        if out.tell() <= MAX_BYTES:
            return out.getvalue()
    image = image.resize((image.width * 3 // 4, image.height * 3 // 4), Image.LANCZOS)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=60, optimize=True, progressive=True)
    return out.getvalue()


def picture(page, name: str, workflow: dict, run: bool) -> bytes:
    """PNG screenshot of one example's graph, loaded from the templates menu (and run from the page if run)."""
    from harness import browser
    from scripts.demo.workflows import PACK_FOLDER
    browser.open_template_from_menu(page, PACK_FOLDER, name)
    if run:
        page.get_by_role("button", name="Run", exact=True).click()
        width, height = page.wait_for_function(browser.SAVED_IMAGE_SHOWN, timeout=600_000).json_value()
        page.evaluate(ENLARGE_SAVED_IMAGE, [720, height / width])
    browser.show_graph_only(page)
    x, y, w, h = page.evaluate(GRAPH_BOX)
    view = page.viewport_size
    left, top = max(0, x - MARGIN), max(0, y - MARGIN)
    clip = {"x": left, "y": top, "width": min(view["width"], x + w + MARGIN) - left,
            "height": min(view["height"], y + h + MARGIN) - top}
    return page.screenshot(clip=clip)


def runnable_in_page(workflow: dict, have_hrvs: bool) -> bool:
    """Run only what is quick and meaningful without a real checkpoint: HRV-only graphs ending in Save Image."""
    types = {n["type"] for n in workflow["nodes"]}
    return have_hrvs and "SaveImage" in types and not any("Checkpoint" in t or "Sampler" in t for t in types)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", action="append", help="example name (repeatable); default: every example")
    p.add_argument("--out-dir", default=EXAMPLES_DIR)
    p.add_argument("--max-width", type=int, default=1280, help="width of the written pictures at most (pixels)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")

    import json

    from hrv.comfy_host import use_comfyui
    from harness import browser
    from harness.server import comfyui_server
    use_comfyui()
    reason = browser.unavailable_reason()
    if reason:
        print(f"error: {reason}", file=sys.stderr)
        return 2
    names = sorted(os.path.basename(f)[:-5] for f in glob.glob(os.path.join(EXAMPLES_DIR, "*.json")))
    if args.only:
        unknown = set(args.only) - set(names)
        if unknown:
            print(f"error: no example named {sorted(unknown)}; examples: {names}", file=sys.stderr)
            return 2
        names = [n for n in names if n in args.only]
    os.makedirs(args.out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hrv-pictures-") as tmp:
        base = os.path.join(tmp, "base")
        prepare_base(base)
        have_hrvs = bool(glob.glob(os.path.join(base, "models", "hrv", "*.safetensors")))
        with comfyui_server(base, os.path.join(tmp, "comfyui.log")) as server:
            for name in names:
                with open(os.path.join(EXAMPLES_DIR, f"{name}.json"), encoding="utf-8") as f:
                    workflow = json.load(f)
                with browser.comfyui_page(server.url, width=2000, height=1250) as page:
                    png = picture(page, name, workflow, runnable_in_page(workflow, have_hrvs))
                jpeg = to_jpeg(png, args.max_width)
                out = os.path.join(args.out_dir, f"{name}.jpg")
                with open(out, "wb") as f:
                    f.write(jpeg)
                print(f"{out} ({len(jpeg) // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
