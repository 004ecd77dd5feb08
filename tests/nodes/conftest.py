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


# Names of the tiny stand-in files in the server's model folders (see tests/nodes/model_files.py).
TINY_GENERATOR = "tiny-videossm-generator.safetensors"
TINY_LORA = "tiny-videossm-lora.safetensors"
TINY_T5 = "tiny-t5-base-encoder.safetensors"
TINY_VAE = "tiny-wan21-vae.safetensors"
VAE_AS_GENERATOR = "tiny-wan21-vae-not-a-generator.safetensors"  # a VAE put in diffusion_models
# the same generator and LoRA in LongLive's own .pt layout (what the real-weights template names)
TINY_LONGLIVE_BASE = "tiny-longlive_base.pt"
TINY_LONGLIVE_LORA = "tiny-longlive-lora.pt"


@pytest.fixture(scope="session")
def comfy_model_files(tmp_path_factory):
    """{"<models subfolder>": [paths] | {"<file name>": path}} for the node-test server: tiny random-weight
    stand-ins synthesised here (nothing is committed or downloaded), see tests/nodes/model_files.py."""
    from tests.nodes import model_files

    folder = tmp_path_factory.mktemp("videossm-models")
    vae = model_files.make_wan_vae(folder / TINY_VAE)
    generator = model_files.make_generator(folder / TINY_GENERATOR)
    lora = model_files.make_lora(folder / TINY_LORA)
    base_pt, lora_pt = model_files.make_longlive_pt(generator, lora, folder)
    return {
        "diffusion_models": {TINY_GENERATOR: generator, VAE_AS_GENERATOR: vae, TINY_LONGLIVE_BASE: base_pt},
        "loras": {TINY_LORA: lora, TINY_LONGLIVE_LORA: lora_pt},
        "text_encoders": {TINY_T5: model_files.make_t5_base(folder / TINY_T5)},
        "vae": {TINY_VAE: vae},
    }


@pytest.fixture(scope="session")
def comfy(comfy_server, comfy_model_files):
    """The session's ComfyServer (see tests/comfy_server.py) with `comfy_model_files` placed."""
    comfy_server.add_model_files(comfy_model_files)
    return comfy_server
