"""The ComfyUI web page in headless Chromium, as a user meets it: our example workflows in the templates menu,
one loaded from there (screenshot in test-artifacts/), its nodes on the canvas and in the DOM, and the
HRV Inspect example run from the page's Run button until its picture shows in the graph."""
import glob
import json
import os

import pytest
from PIL import Image

from hrv.comfy_host import PACK_DIR
from harness import browser
from harness.client import ComfyClient
from scripts.demo.workflows import PACK_FOLDER, ui_to_api

REASON = browser.unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"no headless browser: {REASON}")

EXAMPLE_NAMES = sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(PACK_DIR, "example_workflows", "*.json")))


def _example(name):
    with open(os.path.join(PACK_DIR, "example_workflows", f"{name}.json"), encoding="utf-8") as f:
        return json.load(f)


def _titles(workflow, object_info):
    """(type, title) of each node as the page should show it: its own title, else the display name."""
    return {(n["type"], n.get("title") or object_info.get(n["type"], {}).get("display_name") or n["type"])
            for n in workflow["nodes"]}


def test_templates_menu_lists_our_examples_with_their_pictures(comfy_server, artifacts_dir):
    with browser.comfyui_page(comfy_server.url) as page:
        browser.open_templates_browser(page, PACK_FOLDER)
        for name in EXAMPLE_NAMES:
            page.locator(f"h3[title='{name}']").wait_for()
        page.screenshot(path=os.path.join(artifacts_dir, "browser_templates_menu.png"))
        shown = {name: browser.template_thumbnail(page, name) for name in EXAMPLE_NAMES}
    for name, data in shown.items():
        with open(os.path.join(PACK_DIR, "example_workflows", f"{name}.jpg"), "rb") as f:
            assert data == f.read(), f"the templates menu does not show example_workflows/{name}.jpg"


def test_example_loaded_from_the_templates_menu_shows_our_nodes(comfy_server, artifacts_dir):
    name = "concept_adjust_polysemy"
    workflow = _example(name)
    object_info = ComfyClient(comfy_server.url).object_info()
    expected = _titles(workflow, object_info)
    ours = {(t, title) for t, title in expected if t.startswith("HRV")}
    assert {t for t, _ in ours} == {"HRVLoader", "HRVTextEncode"}
    screenshot = os.path.join(artifacts_dir, f"browser_{name}.png")
    with browser.comfyui_page(comfy_server.url) as page:
        browser.open_template_from_menu(page, PACK_FOLDER, name)
        page.wait_for_timeout(500)
        page.screenshot(path=screenshot)
        on_canvas = {(n["type"], n["title"]) for n in browser.graph_nodes(page)}
        prompt_in_page = browser.graph_to_prompt(page)
        # Nodes 2.0 draws nodes as DOM elements: their titles must be on the page as text.
        browser.set_setting(page, "Comfy.VueNodes.Enabled", True)
        page.get_by_text(next(iter(ours))[1], exact=True).first.wait_for()
        in_dom = {title for _, title in ours if page.get_by_text(title, exact=True).count() >= 1}
        errors = [e for e in page.console_errors if "comfyui-hrv" in e or "HRV" in e]
    assert on_canvas == expected, f"canvas {sorted(on_canvas ^ expected)}"
    assert in_dom == {title for _, title in ours}
    # The frontend's own conversion of the loaded graph is the prompt our converter makes from the file.
    assert prompt_in_page == ui_to_api(workflow, object_info)
    assert not errors, errors
    with Image.open(screenshot) as image:
        assert image.size == (1600, 1000)
        assert len(image.convert("L").resize((64, 40)).getcolors(4096)) > 20, "the screenshot is (nearly) blank"


def test_inspect_example_runs_from_the_page(comfy_server, artifacts_dir):
    """Run button -> ComfyUI executes HRV Loader -> HRV Inspect -> Save Image -> the heat map shows in the graph."""
    name = "hrv_inspect_concepts"
    with browser.comfyui_page(comfy_server.url) as page:
        browser.open_template_from_menu(page, PACK_FOLDER, name)
        page.get_by_role("button", name="Run", exact=True).click()
        size = page.wait_for_function(browser.SAVED_IMAGE_SHOWN, timeout=300_000).json_value()
        browser.show_graph_only(page)
        page.screenshot(path=os.path.join(artifacts_dir, f"browser_{name}_run.png"))
    width, height = size
    assert width > 800 and height > 300, size
