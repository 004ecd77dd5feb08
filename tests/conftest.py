"""Suite-wide fixtures: the one ComfyUI server shared by node and browser tests.

At most one server runs at a time: `comfy_server` is session scoped and started lazily by the
first test that needs it (tests/nodes via `comfy`, tests/browser via `browser_page`). Tests
under tests/nodes/ get the `comfyui` marker, tests under tests/browser/ `browser` and `comfyui`,
so e.g. `python -m pytest -m "not browser"` skips the Chromium part.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.comfy_server import ComfyServer
from tests.demo_weights import require_demo_weights

TESTS_DIR = Path(__file__).resolve().parent


@pytest.fixture
def demo_weights() -> None:
    """The shipped demo weights (see tests/demo_weights.py): fails, with what to do, when missing."""
    require_demo_weights()


@pytest.fixture(scope="session")
def comfy_server():
    """A running ComfyServer with this repository's pack loaded and no model files.

    Add model files with `comfy_server.add_model_files({...})` (node tests do this through
    the `comfy_model_files` fixture). Fails - does not skip - when ComfyUI is not installed.
    """
    server = ComfyServer(label="session")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def pytest_collection_modifyitems(config, items):
    for item in items:
        path = Path(str(item.fspath)).resolve()
        if TESTS_DIR / "nodes" in path.parents:
            item.add_marker(pytest.mark.comfyui)
        elif TESTS_DIR / "browser" in path.parents:
            item.add_marker(pytest.mark.comfyui)
            item.add_marker(pytest.mark.browser)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    # keep each phase's report on the item (browser_page saves a screenshot on failure)
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
