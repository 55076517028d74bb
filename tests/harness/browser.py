"""Drive the ComfyUI web page in headless Chromium (Debian's package) with Playwright.

No browser is downloaded: Playwright is pointed at the system Chromium (`apt-get install chromium`).
Used by the browser test and by scripts/make_example_pictures.py.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile

log = logging.getLogger("harness.browser")

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# What works as root in a container: no sandbox, no GPU, nothing reaching out to the network by itself.
CHROMIUM_FLAGS = ("--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage")
APP_READY = "() => !!(window.app && window.app.graph && window.app.vueAppReady)"
# [width, height] of the first image a Save Image node shows once a run has finished, else null.
# Both renderers: LiteGraph keeps it in node.imgs, Nodes 2.0 in an <img> of the page.
SAVED_IMAGE_SHOWN = """() => {
    const node = (window.app.graph.nodes || window.app.graph._nodes).find(n => n.type === 'SaveImage');
    const output = node && window.app.nodeOutputs && window.app.nodeOutputs[String(node.id)];
    const file = output && output.images && output.images[0] && output.images[0].filename;
    if (!file) return null;
    const candidates = [...(node.imgs || []), ...document.querySelectorAll('img')];
    const img = candidates.find(i => i.src && i.src.includes(encodeURIComponent(file)) && i.complete && i.naturalWidth > 0);
    return img ? [img.naturalWidth, img.naturalHeight] : null;
}"""
GRAPH_NODES = """() => (window.app.graph.nodes || window.app.graph._nodes).map(
    n => ({id: n.id, type: n.type, title: n.title, mode: n.mode}))"""


def find_chromium() -> str | None:
    """$HRV_CHROMIUM, else the first Chromium/Chrome on PATH."""
    explicit = os.environ.get("HRV_CHROMIUM")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    for name in CHROMIUM_CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def unavailable_reason() -> str | None:
    """Why no browser test can run here, or None when Chromium and Playwright are both installed."""
    if find_chromium() is None:
        return ("Chromium is not installed (Debian: `apt-get install chromium`; `bash scripts/test.sh` installs it "
                "where apt-get works) and HRV_CHROMIUM is not set")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the Python package playwright is not installed (it is in requirements-test.txt)"
    return None


@contextlib.contextmanager
def comfyui_page(url: str, width: int = 1600, height: int = 1000, timeout_s: float = 120.0, step_timeout_s: float = 30.0):
    """Yield a Playwright page showing the ComfyUI web app at url, ready to use; the browser always closes.

    Each call starts Chromium with a fresh profile directory, removed afterwards. The page starts in the
    default LiteGraph renderer (the setting lives on the server, so an earlier page may have changed it).
    page.console_errors collects the page's console errors for failure messages. timeout_s bounds start-up,
    step_timeout_s every later wait that is not given its own timeout.
    """
    from playwright.sync_api import sync_playwright
    chromium = find_chromium()
    if chromium is None:
        raise RuntimeError(unavailable_reason())
    with tempfile.TemporaryDirectory(prefix="hrv-chromium-") as profile, sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile, executable_path=chromium, headless=True, args=list(CHROMIUM_FLAGS),
            viewport={"width": width, "height": height}, timeout=timeout_s * 1000)
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.console_errors = []
            page.on("console", lambda m: m.type == "error" and page.console_errors.append(m.text[:300]))
            page.goto(url, wait_until="domcontentloaded", timeout=timeout_s * 1000)
            page.wait_for_function(APP_READY, timeout=timeout_s * 1000)
            context.set_default_timeout(step_timeout_s * 1000)
            set_setting(page, "Comfy.VueNodes.Enabled", False)
            yield page
        finally:
            context.close()


def open_templates_browser(page, pack_folder: str) -> None:
    """Open the templates browser (sidebar button) on this pack's page under Extensions.

    On a new user's first visit the browser opens by itself a moment after start-up, so wait for
    that first and press the sidebar button only when it does not come.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    entry = page.get_by_role("button", name=pack_folder, exact=True)
    for wait_ms in (5_000, 10_000, 10_000):
        try:
            entry.wait_for(state="visible", timeout=wait_ms)
            break
        except PlaywrightTimeout:
            page.locator("button.templates-tab-button").click()
    entry.click()


def open_template_from_menu(page, pack_folder: str, name: str) -> None:
    """Load an example workflow the way a user does: Templates sidebar -> Extensions -> pack -> its card."""
    open_templates_browser(page, pack_folder)
    page.locator(f"h3[title='{name}']").click()
    page.wait_for_function("name => document.title.includes(name) && (window.app.graph.nodes || window.app.graph._nodes).length > 0",
                           arg=name)
    log.info("template %s/%s loaded through the templates menu", pack_folder, name)


def template_thumbnail(page, name: str) -> bytes | None:
    """The bytes of the picture the open templates browser shows on name's card, once it has loaded.

    The frontend fetches each thumbnail and shows it from a blob: URL, falling back to a default picture
    when the pack has none; reading the bytes back tells which one the user sees.
    """
    import base64
    # The cards' pictures load lazily: bring the card into view first (with many examples it is below the fold).
    page.locator(f"h3[title='{name}']").first.scroll_into_view_if_needed()
    page.locator(f"img[alt='{name}']").first.wait_for()
    page.wait_for_function(
        "alt => [...document.querySelectorAll('img')].some(i => i.alt === alt && i.complete && i.naturalWidth > 0)",
        arg=name)
    encoded = page.evaluate("""async alt => {
        const img = [...document.querySelectorAll('img')].find(i => i.alt === alt && i.complete && i.naturalWidth > 0);
        const bytes = new Uint8Array(await (await fetch(img.src)).arrayBuffer());
        let text = '';
        for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
        return btoa(text);
    }""", name)
    return base64.b64decode(encoded) if encoded else None


def graph_nodes(page) -> list[dict]:
    """Nodes of the graph shown in the page: id, type, title, mode."""
    return page.evaluate(GRAPH_NODES)


def graph_to_prompt(page) -> dict:
    """The API prompt the page would queue for its graph (the frontend's own app.graphToPrompt())."""
    return page.evaluate("async () => (await window.app.graphToPrompt()).output")


def run_command(page, command_id: str) -> None:
    page.evaluate("id => window.app.extensionManager.command.execute(id)", command_id)


def set_setting(page, key: str, value) -> None:
    page.evaluate("([k, v]) => window.app.extensionManager.setting.set(k, v)", [key, value])


def show_graph_only(page) -> None:
    """Hide menus, sidebars, minimap and canvas info, draw text at any zoom, fit the graph into the window."""
    for key, value in (("Comfy.Minimap.Visible", False), ("Comfy.Graph.CanvasInfo", False),
                       ("Comfy.Graph.CanvasMenu", False), ("LiteGraph.Canvas.MinFontSizeForLOD", 1),
                       ("LiteGraph.Canvas.LowQualityRenderingZoomThreshold", 0.1)):
        set_setting(page, key, value)
    page.keyboard.press("Escape")
    if page.locator("button.templates-tab-button").is_visible():
        run_command(page, "Workspace.ToggleFocusMode")
    run_command(page, "Comfy.Canvas.FitView")
    page.evaluate("() => window.app.graph.setDirtyCanvas(true, true)")
    page.wait_for_timeout(500)
