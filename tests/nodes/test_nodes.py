"""The node suite inside one real ComfyUI (the session's server, this repository installed as the
custom-node pack ``comfyui-videossm``), driven over HTTP + websocket like the frontend drives it.

Model files: the bundled demo model ships with the suite (``videossm_core/demo/weights``); everything
else is a tiny random-weight stand-in made at test time by ``comfy_model_files`` (tests/nodes/conftest.py,
tests/nodes/model_files.py). The real-weights template names LongLive + umt5-xxl + the Wan2.1 VAE; it runs
here with the stand-ins substituted for those file names (a tiny VideoSSM generator and LoRA, a random
T5-base encoder, which ComfyUI's CLIPLoader recognises by its keys even with type "wan" and which gives
768-dim instead of umt5's 4096-dim embeddings, and a narrow Wan2.1 VAE), at 128x64 instead of 832x480.

To keep CPU time down the templates run with their video length shortened (``shorten``: the sampler's
``seconds``, the schedule's ``duration_seconds`` and its prompt times scaled alike); the tests assert
what the templates themselves say (60 s, 832x480 ...) before shortening.
"""
from __future__ import annotations

import base64
import copy
import io
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from tests.comfy_server import REPO_ROOT
from tests.demo_weights import require_demo_weights
from tests.nodes.conftest import (TINY_GENERATOR, TINY_LONGLIVE_BASE, TINY_LONGLIVE_LORA, TINY_LORA, TINY_T5,
                                  TINY_VAE, VAE_AS_GENERATOR)

WORKFLOWS = REPO_ROOT / "workflows"
API_DIR = WORKFLOWS / "api"
DEMO_TEMPLATE = "1 - Demo - 60 s video from a 3-prompt timeline (CPU)"
REAL_TEMPLATE = "2 - LongLive weights - 832x480 prompt timeline to mp4"
CONTINUE_TEMPLATE = "3 - Continue a saved stream with a new prompt"
TEMPLATES = (DEMO_TEMPLATE, REAL_TEMPLATE, CONTINUE_TEMPLATE)
PACK_MODULE = "custom_nodes.comfyui-videossm"
DEMO_CHOICE = "videossm-demo (bundled, CPU)"
CONTINUE_STATE_NAME = "demo_stream.state.safetensors"  # what the continue template loads from input/videossm
NODE_IDS = ["VideoSSMModelLoader", "VideoSSMNewStream", "VideoSSMLoadState", "VideoSSMSaveState",
            "VideoSSMInspectState", "VideoSSMPromptSchedule", "VideoSSMSampler", "VideoSSMContinueFromClip"]
RUN_TIMEOUT = 600


# ------------------------------------------------------------------ helpers
def load_api(stem: str) -> dict:
    return json.loads((API_DIR / f"{stem}.json").read_text(encoding="utf-8"))


def nodes_of(graph: dict, class_type: str) -> list[str]:
    return [nid for nid, node in graph.items() if node["class_type"] == class_type]


def one(graph: dict, class_type: str) -> str:
    ids = nodes_of(graph, class_type)
    assert len(ids) == 1, f"expected one {class_type}, found {ids}"
    return ids[0]


def shorten(graph: dict, seconds: float) -> dict:
    """A copy whose samplers make ``seconds`` of video, with every schedule's times scaled to fit."""
    from videossm_core.schedule import parse_schedule

    graph = copy.deepcopy(graph)
    for nid in nodes_of(graph, "VideoSSMPromptSchedule"):
        inputs = graph[nid]["inputs"]
        factor = seconds / inputs["duration_seconds"]
        entries = parse_schedule(inputs["schedule"]).entries
        inputs["schedule"] = "".join(f"{e.time * factor:g}s: {e.prompt}\n" for e in entries)
        inputs["duration_seconds"] = seconds
    for nid in nodes_of(graph, "VideoSSMSampler"):
        graph[nid]["inputs"]["seconds"] = seconds
    return graph


def with_stand_ins(graph: dict) -> dict:
    """The real-weights template with the tiny stand-in files substituted for the real ones (LongLive's
    in its own .pt layout, so the loader is shown to take the files LongLive publishes)."""
    graph = copy.deepcopy(graph)
    swap = {"longlive_base.pt": TINY_LONGLIVE_BASE, "lora.pt": TINY_LONGLIVE_LORA,
            "umt5_xxl_fp8_e4m3fn_scaled.safetensors": TINY_T5, "wan_2.1_vae.safetensors": TINY_VAE}
    for node in graph.values():
        for name, value in node["inputs"].items():
            if isinstance(value, str) and value in swap:
                node["inputs"][name] = swap[value]
    return graph


def chunks(seconds: float, continuing: bool = False) -> int:
    from videossm_core.schedule import chunks_for_duration

    return chunks_for_duration(seconds, continuing=continuing)


def video_frames(num_chunks: int) -> int:
    from videossm_core.schedule import video_frames_for_chunks

    return video_frames_for_chunks(num_chunks)


def read_mp4(path: Path):
    from videossm_core.video_io import read_video

    return read_video(path)


def load_state(path: Path):
    from videossm_core.state import StreamState

    return StreamState.load(path)


def sampler_outputs(comfy, run, sampler_id: str) -> tuple[Path, Path]:
    """(mp4, state file) the sampler reported in its `executed` message."""
    out = run.outputs[sampler_id]
    item = out["images"][0]
    assert out.get("animated") == [True], out
    mp4 = comfy.output_dir / item["subfolder"] / item["filename"]
    assert mp4.suffix == ".mp4" and mp4.is_file(), mp4
    state = mp4.with_name(mp4.name[: -len(".mp4")] + ".state.safetensors")
    assert state.is_file(), f"no state file next to {mp4}"
    return mp4, state


def assert_success(run) -> None:
    assert run.success, f"run failed: {json.dumps(run.error, indent=1)[:4000] if run.error else run.types}"


def progress_of(run, node_id: str) -> list[tuple[int, int]]:
    return [(value, maximum) for node, value, maximum in run.progress if node == node_id]


def node_error_text(body: dict, node_id: str | None = None) -> str:
    """All messages/details of a rejected prompt (HTTP 400 body), optionally of one node."""
    errors = body.get("node_errors") or {}
    if node_id is not None:
        assert node_id in errors, f"node {node_id} has no error; errors: {json.dumps(body)[:3000]}"
        errors = {node_id: errors[node_id]}
    parts = [json.dumps(body.get("error", {}))]
    for err in errors.values():
        parts += [f"{e.get('message')}: {e.get('details')}" for e in err.get("errors", [])]
    return "\n".join(parts)


def demo_graph(seconds: float, prefix: str, schedule: str | None = None, seed: int = 1) -> dict:
    """Demo loader -> new stream -> schedule (demo encoder) -> sampler, ``seconds`` long."""
    schedule = schedule or "0s: a red circle bouncing on a dark background\n"
    return {
        "1": {"class_type": "VideoSSMModelLoader", "inputs": {
            "checkpoint": DEMO_CHOICE, "memory_file": "none", "lora": "none", "lora_strength": 1.0,
            "dtype": "auto", "device": "auto"}},
        "2": {"class_type": "VideoSSMNewStream", "inputs": {
            "model": ["1", 0], "window_frames": 12, "sink_frames": 3, "global_memory": True,
            "memory_update": "chunkwise", "router_horizon_seconds": 0.0, "position_mode": "unbounded",
            "guidance": 1.0}},
        "3": {"class_type": "VideoSSMPromptSchedule", "inputs": {
            "schedule": schedule, "duration_seconds": seconds, "model": ["1", 0], "negative": ""}},
        "4": {"class_type": "VideoSSMSampler", "inputs": {
            "model": ["1", 0], "state": ["2", 0], "schedule": ["3", 0], "seconds": seconds, "seed": seed,
            "steps": 4, "width": 64, "height": 64, "filename_prefix": prefix}},
    }


def tiny_graph(seconds: float, prefix: str, seed: int = 1, size=(64, 64)) -> dict:
    """The stand-in generator with native CLIPLoader + VAELoader (cheap on a CPU)."""
    return {
        "1": {"class_type": "VideoSSMModelLoader", "inputs": {
            "checkpoint": TINY_GENERATOR, "memory_file": "none", "lora": "none", "lora_strength": 1.0,
            "dtype": "auto", "device": "auto"}},
        "2": {"class_type": "CLIPLoader", "inputs": {"clip_name": TINY_T5, "type": "wan", "device": "default"}},
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": TINY_VAE}},
        "4": {"class_type": "VideoSSMNewStream", "inputs": {
            "model": ["1", 0], "window_frames": 12, "sink_frames": 3, "global_memory": True,
            "memory_update": "chunkwise", "router_horizon_seconds": 0.0, "position_mode": "unbounded",
            "guidance": 1.0}},
        "5": {"class_type": "VideoSSMPromptSchedule", "inputs": {
            "schedule": "0s: a fox in the snow\n", "duration_seconds": seconds, "clip": ["2", 0],
            "model": ["1", 0], "negative": ""}},
        "6": {"class_type": "VideoSSMSampler", "inputs": {
            "model": ["1", 0], "state": ["4", 0], "schedule": ["5", 0], "seconds": seconds, "seed": seed,
            "steps": 2, "width": size[0], "height": size[1], "filename_prefix": prefix, "vae": ["3", 0]}},
    }


def require_demo_bundle() -> None:
    require_demo_weights()


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def demo_run(comfy):
    """The demo template, shortened to 1.5 s (3 chunks, all three prompts), run once for several tests."""
    require_demo_bundle()
    graph = shorten(load_api(DEMO_TEMPLATE), 1.5)
    run = comfy.run_and_collect(graph, timeout=RUN_TIMEOUT)
    return graph, run


# ------------------------------------------------------------------ registration
def test_pack_imports_without_errors(comfy):
    assert comfy.import_errors() == []
    info = comfy.object_info()
    missing = [n for n in NODE_IDS if n not in info]
    assert not missing, f"nodes not registered: {missing}"
    for name in NODE_IDS:
        assert info[name]["python_module"] == PACK_MODULE, (name, info[name]["python_module"])
        assert info[name]["category"] == "VideoSSM"
        assert info[name]["display_name"].startswith("VideoSSM ")
    ours = sorted(n for n, v in info.items() if v["python_module"] == PACK_MODULE)
    assert ours == sorted(NODE_IDS), "the pack registers exactly the documented nodes"


def _spec(info: dict, node: str, name: str) -> tuple[object, dict]:
    """(type or combo options, options) of one input in /object_info."""
    inputs = info[node]["input"]
    for group in ("required", "optional"):
        if name in inputs.get(group, {}):
            entry = inputs[group][name]
            kind, opts = entry[0], (entry[1] if len(entry) > 1 else {})
            if kind == "COMBO":  # V3 combos: ["COMBO", {"options": [...]}]; V1: [[...], {...}]
                kind = opts["options"]
            return kind, opts
    raise AssertionError(f"{node} has no input {name!r}: {inputs}")


def test_object_info_documents_inputs_and_outputs(comfy):
    info = {n: comfy.object_info(n) for n in NODE_IDS}

    def required(node):
        return list(info[node]["input"].get("required", {}))

    def optional(node):
        return list(info[node]["input"].get("optional", {}))

    # --- model loader: the demo first, then models/diffusion_models; LoRA and memory files optional
    assert required("VideoSSMModelLoader") == ["checkpoint", "memory_file", "lora", "lora_strength", "dtype", "device"]
    ckpts, _ = _spec(info, "VideoSSMModelLoader", "checkpoint")
    assert ckpts[0] == DEMO_CHOICE and TINY_GENERATOR in ckpts and VAE_AS_GENERATOR in ckpts
    loras, _ = _spec(info, "VideoSSMModelLoader", "lora")
    assert loras[0] == "none" and TINY_LORA in loras
    assert _spec(info, "VideoSSMModelLoader", "memory_file")[0][0] == "none"
    kind, opts = _spec(info, "VideoSSMModelLoader", "lora_strength")
    assert kind == "FLOAT" and opts["default"] == 1.0
    dtypes, opts = _spec(info, "VideoSSMModelLoader", "dtype")
    assert dtypes == ["auto", "fp32", "bf16", "fp16"] and opts.get("default") == "auto"
    assert _spec(info, "VideoSSMModelLoader", "device")[0] == ["auto", "cpu"]
    assert optional("VideoSSMModelLoader") == ["compile"]
    kind, opts = _spec(info, "VideoSSMModelLoader", "compile")
    assert kind == "BOOLEAN" and opts["default"] is False and "torch.compile" in opts["tooltip"]
    assert info["VideoSSMModelLoader"]["output"] == ["VIDEOSSM_MODEL"]

    # --- new stream
    assert required("VideoSSMNewStream") == ["model", "window_frames", "sink_frames", "global_memory",
                                             "memory_update", "router_horizon_seconds", "position_mode", "guidance"]
    assert _spec(info, "VideoSSMNewStream", "model")[0] == "VIDEOSSM_MODEL"
    kind, opts = _spec(info, "VideoSSMNewStream", "window_frames")
    assert kind == "INT" and opts["default"] == 12
    kind, opts = _spec(info, "VideoSSMNewStream", "sink_frames")
    assert kind == "INT" and opts["default"] == 3 and opts["step"] == 3
    kind, opts = _spec(info, "VideoSSMNewStream", "global_memory")
    assert kind == "BOOLEAN" and opts["default"] is True
    assert _spec(info, "VideoSSMNewStream", "memory_update")[0] == ["auto", "chunkwise", "recurrent", "fla"]
    kind, opts = _spec(info, "VideoSSMNewStream", "position_mode")
    assert kind == ["unbounded", "absolute"] and opts["default"] == "unbounded"
    assert _spec(info, "VideoSSMNewStream", "router_horizon_seconds")[1]["default"] == 0.0  # 0: the model's T
    assert _spec(info, "VideoSSMNewStream", "guidance")[1]["default"] == 1.0
    assert info["VideoSSMNewStream"]["output"] == ["VIDEOSSM_STATE"]

    # --- state files
    assert required("VideoSSMLoadState") == ["state_file"]
    assert isinstance(_spec(info, "VideoSSMLoadState", "state_file")[0], list)
    assert info["VideoSSMLoadState"]["output"] == ["VIDEOSSM_STATE"]
    assert required("VideoSSMSaveState") == ["state", "filename_prefix"]
    kind, opts = _spec(info, "VideoSSMSaveState", "filename_prefix")
    assert kind == "STRING" and opts["default"] == "videossm/state"
    assert info["VideoSSMSaveState"]["output_node"] is True and info["VideoSSMSaveState"]["output"] == []
    assert required("VideoSSMInspectState") == ["state"]
    assert info["VideoSSMInspectState"]["output"] == ["IMAGE", "STRING"]

    # --- prompt schedule: a multiline STRING (what the timeline widget edits), the video's length,
    # and either a CLIP (real models) or the model's own demo encoder
    assert required("VideoSSMPromptSchedule") == ["schedule", "duration_seconds"]
    assert optional("VideoSSMPromptSchedule") == ["clip", "model", "negative"]
    kind, opts = _spec(info, "VideoSSMPromptSchedule", "schedule")
    assert kind == "STRING" and opts["multiline"] is True
    assert opts["default"].splitlines()[0] == "0s: a red circle bouncing on a dark background"
    kind, opts = _spec(info, "VideoSSMPromptSchedule", "duration_seconds")
    assert kind == "FLOAT" and opts["default"] == 60.0
    assert _spec(info, "VideoSSMPromptSchedule", "clip")[0] == "CLIP"
    assert _spec(info, "VideoSSMPromptSchedule", "model")[0] == "VIDEOSSM_MODEL"
    assert info["VideoSSMPromptSchedule"]["output"] == ["VIDEOSSM_SCHEDULE"]

    # --- sampler
    assert required("VideoSSMSampler") == ["model", "state", "schedule", "seconds", "seed", "steps", "width",
                                           "height", "filename_prefix"]
    assert optional("VideoSSMSampler") == ["vae", "checkpoint_every"]
    kind, opts = _spec(info, "VideoSSMSampler", "checkpoint_every")
    assert kind == "FLOAT" and opts["default"] == 60.0 and opts["min"] == 0.0
    assert [_spec(info, "VideoSSMSampler", n)[0] for n in ("model", "state", "schedule", "vae")] == [
        "VIDEOSSM_MODEL", "VIDEOSSM_STATE", "VIDEOSSM_SCHEDULE", "VAE"]
    kind, opts = _spec(info, "VideoSSMSampler", "seed")
    assert kind == "INT" and opts.get("control_after_generate") is True
    expected = {"seconds": ("FLOAT", 60.0), "steps": ("INT", 4), "width": ("INT", 832), "height": ("INT", 480),
                "filename_prefix": ("STRING", "videossm/stream")}
    for name, (kind, default) in expected.items():
        got_kind, opts = _spec(info, "VideoSSMSampler", name)
        assert (got_kind, opts["default"]) == (kind, default), name
    assert info["VideoSSMSampler"]["output"] == ["VIDEOSSM_STATE", "LATENT", "VIDEO", "IMAGE"]
    assert info["VideoSSMSampler"]["output_name"] == ["state", "latent", "video", "last_frames"]
    assert info["VideoSSMSampler"]["output_node"] is True

    # --- continue from a clip
    assert required("VideoSSMContinueFromClip") == ["model", "state", "images", "schedule"]
    assert optional("VideoSSMContinueFromClip") == ["vae"]
    assert info["VideoSSMContinueFromClip"]["output"] == ["VIDEOSSM_STATE"]


# ------------------------------------------------------------------ templates
def test_templates_have_api_sources_and_say_what_they_do():
    from videossm_core.schedule import parse_schedule

    for stem in TEMPLATES:
        assert (API_DIR / f"{stem}.json").is_file(), stem
        assert (WORKFLOWS / f"{stem}.json").is_file(), f"UI template {stem}.json missing (scripts/build_workflows.py)"
        assert (WORKFLOWS / f"{stem}.jpg").is_file(), f"thumbnail {stem}.jpg missing"

    demo = load_api(DEMO_TEMPLATE)
    loader, sched, sampler = (demo[one(demo, t)]["inputs"] for t in
                              ("VideoSSMModelLoader", "VideoSSMPromptSchedule", "VideoSSMSampler"))
    assert loader["checkpoint"] == DEMO_CHOICE
    assert sampler["seconds"] == 60 and sched["duration_seconds"] == 60
    assert (sampler["width"], sampler["height"]) == (64, 64)
    assert [e.time for e in parse_schedule(sched["schedule"]).entries] == [0, 20, 40]
    assert sched["model"] == [one(demo, "VideoSSMModelLoader"), 0] and "clip" not in sched

    real = load_api(REAL_TEMPLATE)
    # the files LongLive-1.3B publishes (models/longlive_base.pt, models/lora.pt), under their own names
    assert real[one(real, "VideoSSMModelLoader")]["inputs"]["checkpoint"] == "longlive_base.pt"
    assert real[one(real, "VideoSSMModelLoader")]["inputs"]["lora"] == "lora.pt"
    assert real[one(real, "CLIPLoader")]["inputs"] == {"clip_name": "umt5_xxl_fp8_e4m3fn_scaled.safetensors",
                                                       "type": "wan", "device": "default"}
    assert real[one(real, "VAELoader")]["inputs"]["vae_name"] == "wan_2.1_vae.safetensors"
    sampler_id = one(real, "VideoSSMSampler")
    s = real[sampler_id]["inputs"]
    assert (s["width"], s["height"]) == (832, 480) and s["vae"] == [one(real, "VAELoader"), 0]
    assert real[one(real, "VideoSSMPromptSchedule")]["inputs"]["clip"] == [one(real, "CLIPLoader"), 0]
    assert real[one(real, "SaveVideo")]["inputs"]["video"] == [sampler_id, 2]

    cont = load_api(CONTINUE_TEMPLATE)
    assert cont[one(cont, "VideoSSMLoadState")]["inputs"]["state_file"] == CONTINUE_STATE_NAME
    assert cont[one(cont, "VideoSSMSampler")]["inputs"]["state"] == [one(cont, "VideoSSMLoadState"), 0]
    assert len(parse_schedule(cont[one(cont, "VideoSSMPromptSchedule")]["inputs"]["schedule"]).entries) == 1
    # the sampler writes the stream's state next to its video: a Save State would write a second, identical one
    assert not [n for n in cont.values() if n["class_type"] == "VideoSSMSaveState"]


def test_ui_templates_fixed_seeds_and_model_metadata():
    """The generated UI templates: seeds "fixed", properties.models on the real-weights loaders."""
    for stem in TEMPLATES:
        ui = json.loads((WORKFLOWS / f"{stem}.json").read_text(encoding="utf-8"))
        api = load_api(stem)
        assert {n["id"] for n in ui["nodes"] if n["type"] != "MarkdownNote"} == {int(k) for k in api}
        for node in ui["nodes"]:
            if node["type"] == "VideoSSMSampler":
                values = node["widgets_values"]
                seed_at = 1  # seconds, seed, control_after_generate, steps, ...
                assert values[seed_at] == api[str(node["id"])]["inputs"]["seed"]
                assert values[seed_at + 1] == "fixed", f"{stem}: seed control is {values[seed_at + 1]!r}"
        for node in ui["nodes"]:  # sized for their content (scripts/build_workflows.py MIN_SIZES)
            if node["type"] == "PreviewImage":
                assert node["size"][0] >= 420 and node["size"][1] >= 330, (stem, node["size"])
            if node["type"] in ("VideoSSMInspectState", "VideoSSMSaveState"):
                assert node["size"][0] >= 360, (stem, node["type"], node["size"])
        link_ids = [link[0] for link in ui["links"]]
        assert link_ids == list(range(1, len(link_ids) + 1)) and ui["last_link_id"] == len(link_ids)
    ui = json.loads((WORKFLOWS / f"{REAL_TEMPLATE}.json").read_text(encoding="utf-8"))
    models = {n["type"]: n["properties"].get("models") for n in ui["nodes"]}
    longlive = "https://huggingface.co/Efficient-Large-Model/LongLive-1.3B/resolve/main/models/"
    assert models["VideoSSMModelLoader"] == [
        {"name": "longlive_base.pt", "url": longlive + "longlive_base.pt", "directory": "diffusion_models"},
        {"name": "lora.pt", "url": longlive + "lora.pt", "directory": "loras"}]
    assert models["CLIPLoader"] == [{
        "name": "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "directory": "text_encoders",
        "url": "https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files/"
               "text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors"}]
    assert models["VAELoader"] == [{
        "name": "wan_2.1_vae.safetensors", "directory": "vae",
        "url": "https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files/vae/"
               "wan_2.1_vae.safetensors"}]
    assert all(m["url"].startswith("https://huggingface.co/") for ms in models.values() if ms for m in ms)


def test_demo_template_runs_with_progress_and_previews(comfy, demo_run):
    """The demo template (bundled model, 3 prompts) runs; the websocket shows one progress step and one
    `videossm.chunk` event with a preview JPEG per chunk (and no image on ComfyUI's own preview channel,
    which frontend 1.58's Nodes 2.0 would draw under the player), and the mp4 holds exactly the chunks'
    frames."""
    graph, run = demo_run
    assert_success(run)
    sampler = one(graph, "VideoSSMSampler")
    n = chunks(1.5)
    assert n == 3
    assert progress_of(run, sampler) == [(k, n) for k in range(1, n + 1)]
    assert run.preview_frames == 0, f"{run.preview_frames} images on ComfyUI's preview channel"
    events = [d for d in run.of_type("videossm.chunk") if d.get("node") == sampler]
    assert [e["done"] for e in events] == list(range(1, n + 1))
    for e in events:
        assert e["preview"]["type"] == "image/jpeg", e["preview"]
        with Image.open(io.BytesIO(base64.b64decode(e["preview"]["data"]))) as preview:
            assert preview.format == "JPEG" and preview.size == (64, 64), (preview.format, preview.size)
    mp4, state_path = sampler_outputs(comfy, run, sampler)
    frames = read_mp4(mp4)
    assert frames.shape == (video_frames(n), 64, 64, 3)
    assert frames.std() > 1.0, "the video is blank"
    assert comfy.view(mp4.name, "videossm")[:12].find(b"ftyp") == 4, "not an mp4 served by /view"
    state = load_state(state_path)
    assert state.next_frame == 3 * n
    assert state.prompt == "a yellow triangle orbiting on a striped background"  # the third prompt ran
    summary = run.outputs[one(graph, "VideoSSMInspectState")]["text"][0]
    assert f"chunks: {n}" in summary
    assert run.outputs[one(graph, "PreviewImage")]["images"], "inspect plot not previewed"


def test_demo_template_matches_bundled_model():
    """The demo template asks for the resolution and stream settings the shipped demo was trained with."""
    require_demo_bundle()
    from videossm_core.config import StreamConfig
    from videossm_core.demo.bundle import (DEFAULT_STREAM, DEMO_DIR, GENERATOR_FILE, META_DEMO, META_STREAM,
                                           read_generator_metadata)

    meta = read_generator_metadata(DEMO_DIR / GENERATOR_FILE)
    demo = json.loads(meta.get(META_DEMO, "{}"))
    height, width = demo.get("resolution", [64, 64])
    stream = StreamConfig.from_dict(json.loads(meta[META_STREAM])) if META_STREAM in meta else DEFAULT_STREAM
    api = load_api(DEMO_TEMPLATE)
    sampler = api[one(api, "VideoSSMSampler")]["inputs"]
    assert (sampler["width"], sampler["height"]) == (width, height)
    new = api[one(api, "VideoSSMNewStream")]["inputs"]
    assert (new["window_frames"], new["sink_frames"], new["global_memory"], new["position_mode"]) == (
        stream.window_frames, stream.sink_frames, stream.memory, stream.position_mode)
    assert new["router_horizon_seconds"] == 0  # the router's T: the one the model was trained with


def test_real_weights_template_runs_with_stand_ins(comfy):
    graph = with_stand_ins(shorten(load_api(REAL_TEMPLATE), 1.5))
    sampler = one(graph, "VideoSSMSampler")
    graph[sampler]["inputs"].update(width=128, height=64)
    run = comfy.run_and_collect(graph, timeout=RUN_TIMEOUT)
    assert_success(run)
    n = chunks(1.5)
    assert progress_of(run, sampler) == [(k, n) for k in range(1, n + 1)]
    mp4, state_path = sampler_outputs(comfy, run, sampler)
    assert read_mp4(mp4).shape == (video_frames(n), 64, 128, 3)
    state = load_state(state_path)
    assert state.next_frame == 3 * n
    assert state.model_config.text_dim == 768  # the CLIP's embeddings reached the model
    saved = run.outputs[one(graph, "SaveVideo")]["images"][0]
    copy_path = comfy.output_dir / saved["subfolder"] / saved["filename"]
    assert saved["subfolder"] == "video" and copy_path.is_file()
    assert read_mp4(copy_path).shape[0] == video_frames(n)


def test_continue_template_continues_a_saved_state(comfy, demo_run):
    """The continue template loads a state saved by a previous run (the demo run's, copied to
    input/videossm under the template's name) and adds video after it with a new prompt."""
    graph0, run0 = demo_run
    assert_success(run0)
    _, saved_state = sampler_outputs(comfy, run0, one(graph0, "VideoSSMSampler"))
    before = load_state(saved_state)
    (comfy.input_dir / "videossm").mkdir(exist_ok=True)
    shutil.copy(saved_state, comfy.input_dir / "videossm" / CONTINUE_STATE_NAME)

    def continued_states():  # (the session's server may hold earlier tests' continuations, e.g. the browser's)
        return {p.name for p in (comfy.output_dir / "videossm").glob("demo_continued*.safetensors")}

    earlier = continued_states()
    graph = shorten(load_api(CONTINUE_TEMPLATE), 1.5)
    run = comfy.run_and_collect(graph, timeout=RUN_TIMEOUT)
    assert_success(run)
    sampler = one(graph, "VideoSSMSampler")
    n = chunks(1.5, continuing=True)
    assert n == 2
    assert progress_of(run, sampler) == [(k, n) for k in range(1, n + 1)]
    mp4, state_path = sampler_outputs(comfy, run, sampler)
    # one video: the demo run's frames, then the continuation (a continued stream's chunks are all 12 frames)
    assert read_mp4(mp4).shape == (video_frames(3) + 12 * n, 64, 64, 3)
    after = load_state(state_path)
    assert after.video["frames"] == video_frames(3) + 12 * n
    assert after.next_frame == before.next_frame + 3 * n
    assert after.prompt == "a green ring zigzagging on a gradient background"
    # the one state this run wrote is the sampler's own, next to its video (no duplicate from a Save State)
    assert continued_states() - earlier == {state_path.name}
    assert load_state(comfy.input_dir / "videossm" / CONTINUE_STATE_NAME).next_frame == before.next_frame


def test_continue_from_clip(comfy):
    """ContinueFromClip: 9 frames (a solid image repeated) prefill a new stream, the sampler goes on."""
    require_demo_bundle()
    graph = demo_graph(1.0, "videossm/from_clip")
    graph["7"] = {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1,
                                                         "color": 0x2050D0}}
    graph["8"] = {"class_type": "VideoSSMContinueFromClip", "inputs": {
        "model": ["1", 0], "state": ["2", 0], "images": ["7", 0], "schedule": ["3", 0]}}
    graph["4"]["inputs"]["state"] = ["8", 0]
    run = comfy.run_and_collect(graph, timeout=RUN_TIMEOUT)
    assert_success(run)
    mp4, state_path = sampler_outputs(comfy, run, "4")
    n = chunks(1.0, continuing=True)
    assert read_mp4(mp4).shape[0] == 12 * n
    assert load_state(state_path).next_frame == 3 + 3 * n  # the clip's 3 latent frames + the new chunks


# ------------------------------------------------------------------ interrupt and resume
def test_interrupt_keeps_partial_video_and_state_then_continue(comfy):
    require_demo_bundle()
    total = 10
    seconds = video_frames(total) / 16
    assert chunks(seconds) == total
    graph = demo_graph(seconds, "videossm/interrupted")
    interrupted_after = 2
    seen = []

    def on_message(msg):
        data = msg.get("data") or {}
        if msg["type"] == "progress" and data.get("node") == "4":
            seen.append(data["value"])
            if len(seen) == interrupted_after:
                comfy.interrupt()

    run = comfy.run_and_collect(graph, timeout=RUN_TIMEOUT, on_message=on_message)
    assert run.interrupted and not run.success, run.types
    assert len(seen) >= interrupted_after

    folder = comfy.output_dir / "videossm"
    mp4s = sorted(folder.glob("interrupted_*_.mp4"))
    states = sorted(folder.glob("interrupted_*_.state.safetensors"))
    assert len(mp4s) == 1 and len(states) == 1, (mp4s, states)
    assert states[0].name == mp4s[0].name[: -len(".mp4")] + ".state.safetensors"
    state = load_state(states[0])
    done = state.next_frame // 3
    assert interrupted_after <= done < total, f"{done} chunks finished before the interrupt"
    assert read_mp4(mp4s[0]).shape[0] == video_frames(done), "the partial mp4 must hold every finished chunk"
    assert state.video["frames"] == video_frames(done)  # the state knows what its video holds
    first_bytes = mp4s[0].read_bytes()
    # the browser is told which partial video and state to show (ComfyUI sends no `executed` on Cancel)
    stopped = run.of_type("videossm.stopped")
    assert stopped == [{"node": "4", "video": {"filename": mp4s[0].name, "subfolder": "videossm", "type": "output"},
                        "seconds": video_frames(done) / 16, "state_file": f"{states[0].name} [output]",
                        "state_path": f"videossm/{states[0].name}"}], stopped
    # and Load State's list, fetched again by the page, offers that state at once
    assert f"{states[0].name} [output]" in comfy.get_json("/videossm/states")

    # the rest of the video from that state, loaded from output/ (" [output]")
    rest_seconds = 12 * (total - done) / 16
    rest = demo_graph(rest_seconds, "videossm/interrupted_rest")
    rest["2"] = {"class_type": "VideoSSMLoadState", "inputs": {"state_file": f"{states[0].name} [output]"}}
    run2 = comfy.run_and_collect(rest, timeout=RUN_TIMEOUT)
    assert_success(run2)
    assert progress_of(run2, "4") == [(k, total - done) for k in range(1, total - done + 1)]
    mp4b, state_b = sampler_outputs(comfy, run2, "4")
    assert load_state(state_b).next_frame == 3 * total
    # one video: the new file starts with the stream so far; the interrupted one is left as it was
    assert read_mp4(mp4b).shape[0] == video_frames(total) == load_state(state_b).video["frames"]
    assert mp4s[0].read_bytes() == first_bytes


# ------------------------------------------------------------------ no mutation through the cache
def test_cached_state_input_is_not_mutated(comfy):
    """NewStream -> Sampler twice; the second prompt differs only in the sampler's seed, so ComfyUI
    serves NewStream's state from its cache. Both runs must start from frame 0."""
    graph = tiny_graph(1.0, "videossm/nomutate", seed=1)
    first = comfy.run_and_collect(graph, timeout=RUN_TIMEOUT)
    assert_success(first)
    graph["6"]["inputs"]["seed"] = 2
    second = comfy.run_and_collect(graph, timeout=RUN_TIMEOUT)
    assert_success(second)
    cached = {n for d in second.of_type("execution_cached") for n in d.get("nodes", [])}
    assert "4" in cached, f"NewStream was not served from the cache ({cached})"
    a, b = (load_state(sampler_outputs(comfy, r, "6")[1]).next_frame for r in (first, second))
    n = chunks(1.0)
    assert (a, b) == (3 * n, 3 * n), f"the second run started at frame {b - 3 * n}, not 0"
    mp4a, mp4b = (sampler_outputs(comfy, r, "6")[0] for r in (first, second))
    assert read_mp4(mp4a).shape[0] == read_mp4(mp4b).shape[0] == video_frames(n)


# ------------------------------------------------------------------ bad inputs
def test_bad_schedule_line_is_named(comfy):
    graph = demo_graph(2.0, "videossm/bad", schedule="0s: a\nbanana\n")
    prompt_id, body = comfy.queue_prompt(graph)
    assert prompt_id is None
    text = node_error_text(body, "3")
    assert "line 2" in text and "banana" in text, text


def test_prompts_after_the_end_are_skipped_with_a_warning(comfy):
    """The sampler owns the length: the schedule node's duration says 60 s, the sampler makes 1 s; the
    20 s prompt never starts, the run succeeds and the sampler says which prompt it skipped."""
    graph = tiny_graph(60.0, "videossm/short_run")
    graph["5"]["inputs"]["schedule"] = "0s: a fox in the snow\n20s: a fox asleep\n"
    graph["6"]["inputs"]["seconds"] = 1.0
    run = comfy.run_and_collect(graph, timeout=RUN_TIMEOUT)
    assert_success(run)
    mp4, _ = sampler_outputs(comfy, run, "6")
    assert read_mp4(mp4).shape[0] == video_frames(chunks(1.0))
    text = "\n".join(run.outputs["6"]["text"])
    assert "line 2" in text and "20s" in text and "skipped" in text, text


def test_demo_schedule_warns_about_words_it_drops(comfy):
    """Unknown words and words past the demo encoder's 16 are named on the node; the run goes on."""
    require_demo_bundle()
    long_prompt = "a red circle bouncing on a dark background " * 3
    graph = demo_graph(0.5, "videossm/warn", schedule=f"0s: a purple dragon flying\n0.6s: {long_prompt}\n")
    run = comfy.run_and_collect(graph, timeout=RUN_TIMEOUT)
    assert_success(run)
    text = "\n".join(run.outputs["3"]["text"])
    assert "purple" in text and "dragon" in text and "ignores them" in text, text
    assert "24 words" in text and "first 16" in text, text


def test_every_input_has_a_plain_words_tooltip(comfy):
    missing, jargon = [], []
    for node in NODE_IDS:
        info = comfy.object_info(node)
        for group in ("required", "optional"):
            for name, entry in info["input"].get(group, {}).items():
                tooltip = (entry[1] if len(entry) > 1 else {}).get("tooltip", "")
                if len(tooltip.strip()) < 15:
                    missing.append(f"{node}.{name}")
                if any(word in tooltip for word in ("WY", "delta-rule", "router")):
                    jargon.append(f"{node}.{name}: {tooltip}")
    assert not missing, f"inputs without a tooltip: {missing}"
    assert not jargon, f"research jargon in tooltips: {jargon}"


def _traversal_graphs() -> dict[str, tuple[dict, str]]:
    """One graph per path input, each with a single output node, so the bad path is all that fails."""
    sampler = demo_graph(2.0, "../../etc/passwd")
    save = {k: v for k, v in demo_graph(2.0, "videossm/ok").items() if k in ("1", "2")}
    save["5"] = {"class_type": "VideoSSMSaveState",
                 "inputs": {"state": ["2", 0], "filename_prefix": "../../etc/passwd"}}
    load = {"6": {"class_type": "VideoSSMLoadState", "inputs": {"state_file": "../../etc/passwd"}},
            "7": {"class_type": "VideoSSMSaveState", "inputs": {"state": ["6", 0], "filename_prefix": "videossm/ok"}}}
    return {"sampler filename_prefix": (sampler, "4"), "save-state filename_prefix": (save, "5"),
            "load-state state_file": (load, "6")}


@pytest.mark.parametrize("case", list(_traversal_graphs()))
def test_path_traversal_is_refused(comfy, case):
    graph, node_id = _traversal_graphs()[case]
    prompt_id, body = comfy.queue_prompt(graph)
    assert prompt_id is None, f"{case}: a path with '..' was accepted"
    text = node_error_text(body, node_id)
    assert "'..'" in text and "not allowed" in text, text


def test_out_of_range_values_are_refused(comfy):
    """ComfyUI's own min/max checks still apply to the inputs a node's validate_inputs does not name."""
    for field, value, words in (("steps", 0, "smaller than min of 1"), ("seconds", -5.0, "smaller than min")):
        graph = demo_graph(2.0, "videossm/range")
        graph["4"]["inputs"][field] = value
        prompt_id, body = comfy.queue_prompt(graph)
        assert prompt_id is None, f"{field}={value} was accepted"
        text = node_error_text(body, "4")
        assert words in text and field in text, text


def test_linked_widget_inputs_validate_and_run(comfy):
    """Widget inputs fed by other nodes (here core primitives) are unknown while ComfyUI validates the
    prompt (validate_inputs sees None); the nodes check them when they run instead."""
    require_demo_bundle()
    graph = demo_graph(0.5, "videossm/linked")
    graph["9"] = {"class_type": "PrimitiveStringMultiline",
                  "inputs": {"value": "0s: a white diamond floating on a light background\n"}}
    graph["10"] = {"class_type": "PrimitiveInt", "inputs": {"value": 64}}
    graph["11"] = {"class_type": "PrimitiveFloat", "inputs": {"value": 0.5}}
    graph["12"] = {"class_type": "PrimitiveString", "inputs": {"value": "videossm/linked"}}
    graph["3"]["inputs"].update(schedule=["9", 0], duration_seconds=["11", 0])
    graph["4"]["inputs"].update(width=["10", 0], height=["10", 0], filename_prefix=["12", 0])
    run = comfy.run_and_collect(graph, timeout=RUN_TIMEOUT)
    assert_success(run)
    mp4, state_path = sampler_outputs(comfy, run, "4")
    assert mp4.name.startswith("linked_")
    assert read_mp4(mp4).shape == (video_frames(1), 64, 64, 3)
    assert load_state(state_path).prompt == "a white diamond floating on a light background"


def test_wrong_checkpoint_type_is_named(comfy):
    graph = tiny_graph(1.0, "videossm/wrong_type")
    graph["1"]["inputs"]["checkpoint"] = VAE_AS_GENERATOR
    run = comfy.run_and_collect(graph, timeout=RUN_TIMEOUT)
    assert not run.success and run.error is not None
    assert run.error["node_id"] == "1" and run.error["node_type"] == "VideoSSMModelLoader"
    message = run.error["exception_message"]
    assert VAE_AS_GENERATOR in message and "this is a VAE" in message, message
