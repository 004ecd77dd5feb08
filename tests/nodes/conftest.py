"""Fixtures for node tests against the real ComfyUI (every test here is marked `comfyui`).

    def test_something(comfy):                      # comfy: tests.comfy_server.ComfyServer
        info = comfy.object_info("VideoSSMPromptSchedule")
        run = comfy.run_and_collect(graph, timeout=300)
        assert run.success, run.error

To give the server model files, override `comfy_model_files` (session scope) in a conftest.py
under tests/nodes/, e.g. with a fixture that writes a tiny random-weight checkpoint:

    @pytest.fixture(scope="session")
    def comfy_model_files(tmp_path_factory):
        path = make_tiny_checkpoint(tmp_path_factory.mktemp("models"))
        return {"diffusion_models": [path]}       # or {"folder": {"name.safetensors": path}}

Files are symlinked into <base>/models/<folder>/ of the running server (ComfyUI notices new
files; no restart). Module-level fixtures can call `comfy.add_model_files({...})` too.
"""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def comfy_model_files():
    """{"<models subfolder>": [paths] | {"<file name>": path}} for the node-test server."""
    return {}


@pytest.fixture(scope="session")
def comfy(comfy_server, comfy_model_files):
    """The session's ComfyServer (see tests/comfy_server.py) with `comfy_model_files` placed."""
    comfy_server.add_model_files(comfy_model_files)
    return comfy_server
