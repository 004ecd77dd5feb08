"""Browser fixtures: the real ComfyUI frontend in headless Debian chromium via Playwright.

    def test_timeline(browser_page):              # a booted ComfyUI page (BrowserPage)
        bp = browser_page
        bp.evaluate("() => app.graph.clear()")
        ...
        bp.screenshot("timeline")                 # -> test-artifacts/fe1.32.9-litegraph-timeline.png
        bp.assert_clean()                         # no unexpected console errors/off-host requests

Each test gets a fresh browser profile (Playwright `launch_persistent_context` on a new temp
dir, so no workflow/localStorage leaks between tests) against the session's `comfy_server`.
Override `browser_server` to point the page at another ComfyServer. Every request that does
not go to that server on 127.0.0.1 is aborted and recorded in `bp.aborted` (most never get that
far: the server's CSP blocks them first; those land in `bp.blocked`). On failure a
screenshot and the console log land in test-artifacts/.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.comfy_server import ARTIFACTS_DIR, HOST

CHROMIUM = os.environ.get("VIDEOSSM_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--no-first-run", "--disable-quic", "--disable-default-apps", "--no-default-browser-check",
]
# Console errors a fresh ComfyUI 0.3.75 + frontend 1.32.9 always prints (benign).
BENIGN_CONSOLE = (
    # user.css, userdata lists, template thumbnails ...
    "Failed to load resource: the server responded with a status of 404",
    # the setting store's onChange during load
    "Cannot read properties of undefined (reading 'id')",
    # the frontend's api.comfy.org look-ups, blocked by the server's CSP (--disable-api-nodes)
    "Connecting to 'https://api.comfy.org/",
    # comfyui-workflow-templates not installed: /templates/index.json is a 404
    "Error loading core workflow templates",
)
# off-host requests the stock frontend makes by itself (CSP-blocked, see above)
BENIGN_OFF_HOST = ("https://api.comfy.org/",)
BOOT_TIMEOUT_MS = 120_000
# booted = app object, node definitions registered and the default graph loaded
BOOTED_JS = """() => !!(window.app && window.app.graph && window.LiteGraph
    && Object.keys(window.LiteGraph.registered_node_types || {}).length > 0
    && (window.app.graph.nodes || window.app.graph._nodes || []).length > 0)"""


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")[:120] or "shot"


class BrowserPage:
    """A Playwright page on the ComfyUI frontend plus what it logged."""

    def __init__(self, context, page, base_url: str):
        self.context, self.page, self.base_url = context, page, base_url
        self.console: list[str] = []       # "type: text" for every console message
        self.page_errors: list[str] = []   # uncaught exceptions
        self.aborted: list[str] = []       # requests not to the server, aborted by our route
        self.blocked: list[str] = []       # off-host requests the page's CSP stopped first
        self.failed: list[str] = []        # every failed request, "url failure"
        self.boot_seconds: float | None = None
        # what this frontend itself logs or requests against the 0.3.75 backend (not the pack's doing):
        # console substrings and off-host URL prefixes that assert_clean lets through (see the 1.58.1 tests)
        self.allow_console: tuple[str, ...] = ()
        self.allow_off_host: tuple[str, ...] = ()
        # put before every screenshot's name: "fe<version>-<litegraph|nodes2>-", set at boot
        self.shot_prefix = ""
        self.frontend: str | None = None       # window.__COMFYUI_FRONTEND_VERSION__
        self.nodes2: bool = False              # Nodes 2.0 (Comfy.VueNodes.Enabled): nodes are DOM elements
        self._port = urlsplit(base_url).port
        page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: self.page_errors.append(str(e)))
        page.on("requestfailed", self._on_failed)

    def is_off_host(self, url: str) -> bool:
        parts = urlsplit(url)
        if parts.scheme in ("data", "blob", "about"):
            return False
        return not (parts.hostname == HOST and parts.port == self._port)

    def _on_failed(self, request) -> None:
        self.failed.append(f"{request.url} {request.failure}")
        if (self.is_off_host(request.url) and request.url not in self.aborted
                and not request.url.startswith(BENIGN_OFF_HOST)):
            self.blocked.append(request.url)

    def boot(self, path: str = "/", timeout_ms: int = BOOT_TIMEOUT_MS) -> "BrowserPage":
        """Open the app and wait until node types and the default graph are there."""
        t0 = time.monotonic()
        self.page.goto(self.base_url + path, wait_until="domcontentloaded", timeout=timeout_ms)
        self.page.wait_for_function(BOOTED_JS, timeout=timeout_ms)
        self.boot_seconds = time.monotonic() - t0
        self.frontend, self.nodes2 = self.evaluate("""() => [window.__COMFYUI_FRONTEND_VERSION__ ?? null,
            !!app.extensionManager?.setting?.get?.('Comfy.VueNodes.Enabled')]""")
        self.shot_prefix = f"fe{self.frontend}-{self.renderer}-"
        return self

    @property
    def renderer(self) -> str:
        return "nodes2" if self.nodes2 else "litegraph"

    def evaluate(self, js: str, arg=None):
        return self.page.evaluate(js, arg)

    def wait_for(self, js_predicate: str, arg=None, timeout_ms: int = 30_000):
        return self.page.wait_for_function(js_predicate, arg=arg, timeout=timeout_ms)

    def node_types(self) -> list[str]:
        return self.evaluate("() => Object.keys(LiteGraph.registered_node_types)")

    def extensions(self) -> list[str]:
        return self.evaluate("() => (app.extensions || []).map(e => e.name)")

    def screenshot(self, name: str, **kwargs) -> Path:
        """Save a PNG as <repo>/test-artifacts/<prefix><name>.png (prefix: the frontend and renderer, e.g.
        "fe1.58.1-nodes2-") and return its path."""
        ARTIFACTS_DIR.mkdir(exist_ok=True)
        path = ARTIFACTS_DIR / (_safe_name(self.shot_prefix + name.removesuffix(".png")) + ".png")
        self.page.screenshot(path=str(path), **kwargs)
        return path

    def unexpected_errors(self, allow: tuple[str, ...] = ()) -> list[str]:
        """Console errors and uncaught exceptions that are not on the benign list."""
        benign = BENIGN_CONSOLE + self.allow_console + tuple(allow)
        errors = [c for c in self.console if c.startswith("error:")]
        errors += [f"pageerror: {e}" for e in self.page_errors]
        return [e for e in errors if not any(b in e for b in benign)]

    def assert_clean(self, allow: tuple[str, ...] = ()) -> None:
        errors = self.unexpected_errors(allow)
        assert not errors, "unexpected browser errors:\n" + "\n".join(errors)
        off_host = [u for u in self.aborted + self.blocked if not u.startswith(self.allow_off_host)]
        assert not off_host, f"off-host requests were attempted: {off_host}"


def _save_evidence(bp: BrowserPage, nodeid: str) -> None:
    """Screenshot + console log of a failed test, for CI."""
    name = "FAILED-" + _safe_name(nodeid)
    try:
        bp.screenshot(name)
    except Exception:
        pass
    ARTIFACTS_DIR.mkdir(exist_ok=True)
    (ARTIFACTS_DIR / f"{_safe_name(bp.shot_prefix + name)}.console.txt").write_text(
        "\n".join(bp.console + [f"pageerror: {e}" for e in bp.page_errors]
                  + [f"aborted: {u}" for u in bp.aborted]
                  + [f"blocked: {u}" for u in bp.blocked]))


@pytest.fixture(scope="session")
def playwright_driver():
    """The Playwright driver (sync API), one per session."""
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} not found: run `bash scripts/install_comfyui.sh` "
                    "(it apt-installs Debian chromium); never `playwright install`")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        yield p


@pytest.fixture
def browser_server(comfy_server):
    """The ComfyServer the page talks to (override to use another one)."""
    return comfy_server


@pytest.fixture
def browser_page(request, browser_server, playwright_driver):
    """A fresh chromium profile with the ComfyUI app booted (see BrowserPage)."""
    base_url = browser_server.url
    profile = tempfile.mkdtemp(prefix="videossm-chromium-")
    context = playwright_driver.chromium.launch_persistent_context(
        profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
        viewport={"width": 1400, "height": 900})
    try:
        page = context.pages[0] if context.pages else context.new_page()
        bp = BrowserPage(context, page, base_url)

        def abort(route):
            bp.aborted.append(route.request.url)
            route.abort()

        context.route(bp.is_off_host, abort)
        # the "Introducing Nodes 2.0" banner (frontend 1.32) takes 40 px off the canvas
        context.add_init_script("try { localStorage.setItem('vueNodesBannerDismissed', 'true') } catch (e) {}")
        try:
            bp.boot()
        except Exception:
            _save_evidence(bp, request.node.nodeid)
            raise
        yield bp
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            _save_evidence(bp, request.node.nodeid)
    finally:
        context.close()
        shutil.rmtree(profile, ignore_errors=True)
