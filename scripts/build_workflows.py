#!/usr/bin/env python3
"""Generate the UI-format workflow templates in workflows/ from their API-format sources.

    python scripts/build_workflows.py            # (re)writes workflows/<name>.json and <name>.jpg
    python scripts/build_workflows.py --check    # exit 1 if a generated file is missing or stale

Source of truth: ``workflows/api/<name>.json`` (ComfyUI API format, hand-written). For each of them this
script drives the REAL ComfyUI frontend (the one installed with ComfyUI, in headless Debian chromium via
Playwright, every non-loopback request aborted) against a throw-away ComfyUI server that has this pack
installed (``tests.comfy_server.ComfyServer``):

1. ``app.loadApiJson(api, name)`` builds the graph exactly as a user's "Open" of the API file would
   (frontend 1.32.9 has this name; it creates the nodes, links and widget values and calls
   ``app.graph.arrange()``);
2. every ``control_after_generate`` widget is set to "fixed" (the frontend default is "randomize",
   which would change the seed of a template each run);
3. the loader nodes get ``properties.models`` from MODELS below (name, url, directory: what the
   frontend's missing-models dialog shows; nothing is downloaded here), and a MarkdownNote from NOTES is
   added next to the graph (a frontend-only node: it is not part of the API prompt);
4. the graph is laid out again (``app.graph.arrange(60)``: one column per topological level) and
   serialised with ``app.graph.serialize()``; the workflow ``id`` is made deterministic;
5. the canvas is fitted to the graph and screenshotted (DOM widgets such as the prompt timeline
   included), then scaled to a 512x384 JPEG thumbnail with Pillow (the template browser shows
   ``<name>.jpg``);
6. ``app.graphToPrompt()`` of the built graph must equal the API source (same node ids, class types,
   titles and inputs) or the script fails: the template runs exactly what the API file says.

ComfyUI lists the templates at ``/api/workflow_templates`` (top level of ``workflows/`` only, so the
``api/`` sub-folder is not offered as templates). Files are only rewritten when their content changes,
so running the script twice leaves the tree unchanged. Needs what the browser tests need: ComfyUI
(``bash scripts/install_comfyui.sh``), playwright (pip) and /usr/bin/chromium; never
``playwright install``.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.comfy_server import HOST, ComfyServer  # noqa: E402

WORKFLOWS = REPO / "workflows"
API_DIR = WORKFLOWS / "api"
THUMB_SIZE = (512, 384)
CHROMIUM = "/usr/bin/chromium"
# the browser fixture's launch arguments (tests/browser/conftest.py)
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--no-first-run", "--disable-quic", "--disable-default-apps", "--no-default-browser-check",
]

WAN_REPACKAGED = "https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files"
# LongLive publishes longlive_base.pt and lora.pt under models/ of its Hugging Face repo: direct file
# links, which the missing-models dialog offers to download (nothing is downloaded at run time)
LONGLIVE_FILES = "https://huggingface.co/Efficient-Large-Model/LongLive-1.3B/resolve/main/models"

# properties.models per (class_type, file name in the widget): what the missing-models dialog lists.
MODELS: dict[tuple[str, str], dict] = {
    ("VideoSSMModelLoader", "longlive_base.pt"): {
        "name": "longlive_base.pt", "url": f"{LONGLIVE_FILES}/longlive_base.pt", "directory": "diffusion_models"},
    ("VideoSSMModelLoader", "lora.pt"): {
        "name": "lora.pt", "url": f"{LONGLIVE_FILES}/lora.pt", "directory": "loras"},
    ("CLIPLoader", "umt5_xxl_fp8_e4m3fn_scaled.safetensors"): {
        "name": "umt5_xxl_fp8_e4m3fn_scaled.safetensors",
        "url": f"{WAN_REPACKAGED}/text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors",
        "directory": "text_encoders"},
    ("VAELoader", "wan_2.1_vae.safetensors"): {
        "name": "wan_2.1_vae.safetensors", "url": f"{WAN_REPACKAGED}/vae/wan_2.1_vae.safetensors",
        "directory": "vae"},
}

NOTES: dict[str, str] = {
    "1 - Demo - 60 s video from a 3-prompt timeline (CPU)": (
        "## VideoSSM demo\n"
        "A 60 s, 64x64 video from a 3-prompt timeline, on the small demo model that ships with the suite "
        "(its own VAE and demo-only text encoder). Runs on a CPU.\n\n"
        "- Drag a block on the timeline to retime a prompt (it snaps to chunks).\n"
        "- The video's length is the sampler's `seconds`: the timeline follows it; prompts after the end "
        "are shaded and skipped, and **Fit to length** moves them inside.\n"
        "- The demo only knows its toy world: *a {colour} {shape} {motion} on a {background} background*.\n"
        "- The mp4 and the stream state go to `output/videossm/` as each chunk is made; Cancel keeps both."),
    "2 - LongLive weights - 832x480 prompt timeline to mp4": (
        "## VideoSSM with real weights\n"
        "- `diffusion_models/longlive_base.pt` and `loras/lora.pt`: the LongLive 1.3B generator and its "
        "LoRA, as Efficient-Large-Model/LongLive-1.3B publishes them under `models/` (the missing-models "
        "dialog links both). A Self-Forcing generator works too.\n"
        "- `text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors` and `vae/wan_2.1_vae.safetensors` from "
        "Comfy-Org/Wan_2.1_ComfyUI_repackaged.\n\n"
        "The sampler streams the video to `output/videossm/` chunk by chunk (constant memory); Save Video "
        "copies the finished mp4 to `output/video/`."),
    "3 - Continue a saved stream with a new prompt": (
        "## Continue a stream\n"
        "Put a `.state.safetensors` file (written next to every video in `output/videossm/`) into "
        "`input/videossm/` as `demo_stream.state.safetensors`, or pick any state in the list "
        "(`[output]` entries are read from `output/videossm/`). The sampler continues that video "
        "seamlessly with the new prompt, into one video; schedule times count from where the stream "
        "stopped.\n\nThe sampler saves this stream's new state next to its video (listed as "
        "`[output]`): pick it in Load State to continue again; no Save State is needed."),
}

# nodes whose content needs more than their default size: the plot preview shows the 768x480 plot
# readably; Inspect / Save State leave room for the summary text they show after a run
MIN_SIZES = {"PreviewImage": [420, 330], "VideoSSMInspectState": [360, 120], "VideoSSMSaveState": [360, 120]}

# no minimap or canvas statistics over the graph in the thumbnails
UI_SETTINGS = {"Comfy.Minimap.Visible": False, "Comfy.Graph.CanvasInfo": False}

BOOTED_JS = """() => !!(window.app && window.app.graph && window.LiteGraph
    && Object.keys(window.LiteGraph.registered_node_types || {}).length > 0
    && (window.app.graph.nodes || window.app.graph._nodes || []).length > 0
    && (window.app.extensions || []).some(e => e.name === 'videossm.timeline'))"""

BUILD_JS = """async ({api, name, models, note, minSizes}) => {
  app.loadApiJson(api, name);
  await new Promise(r => setTimeout(r, 300));
  const g = app.graph;
  for (const node of g.nodes) {
    for (const w of node.widgets ?? []) {
      if (w.name === 'control_after_generate') w.value = 'fixed';
    }
    const values = (node.widgets ?? []).map(w => w.value);
    const found = models.filter(m => m.type === node.type && values.includes(m.model.name)).map(m => m.model);
    if (found.length) node.properties.models = found;
    const size = node.computeSize(), min = minSizes[node.type] ?? [0, 0];
    node.setSize([Math.max(node.size[0], size[0], min[0]), Math.max(node.size[1], size[1], min[1])]);
  }
  g.arrange(60);
  if (note) {
    const n = LiteGraph.createNode('MarkdownNote');
    n.title = 'About this template';
    const w = n.widgets?.find(w => w.name === 'text') ?? n.widgets?.[0];
    if (w) w.value = note;
    g.add(n);
    let x0 = Infinity, y1 = -Infinity;
    for (const m of g.nodes) {
      if (m === n) continue;
      x0 = Math.min(x0, m.pos[0]);
      y1 = Math.max(y1, m.pos[1] + m.size[1]);
    }
    n.pos = [x0, y1 + 80];
    n.setSize([520, 200]);
  }
  g.setDirtyCanvas(true, true);
}"""

# Fit the graph into the part of the window no UI chrome covers (left tool bar, tabs and Run button on
# top, zoom buttons at the bottom), and return a 4:3 box around it for the thumbnail.
FIT_JS = """() => {
  const c = app.canvas, g = app.graph, T = LiteGraph.NODE_TITLE_HEIGHT;
  let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
  for (const n of g.nodes) {
    x0 = Math.min(x0, n.pos[0]); y0 = Math.min(y0, n.pos[1] - T);
    x1 = Math.max(x1, n.pos[0] + n.size[0]); y1 = Math.max(y1, n.pos[1] + n.size[1]);
  }
  const rect = c.canvas.getBoundingClientRect();
  const safe = {left: 80, top: 110, right: rect.width - 20, bottom: rect.height - 70};
  const w = safe.right - safe.left, h = safe.bottom - safe.top, pad = 16;
  const scale = Math.min(w / (x1 - x0 + 2 * pad), h / (y1 - y0 + 2 * pad), 1.2);
  c.ds.scale = scale;
  const sw = (x1 - x0) * scale, sh = (y1 - y0) * scale;
  const sx = safe.left + (w - sw) / 2, sy = safe.top + (h - sh) / 2;
  c.ds.offset = [sx / scale - x0, sy / scale - y0];
  c.setDirty(true, true);
  c.draw(true, true);
  // a 4:3 box around the graph, inside the safe area
  let bw = sw + 2 * pad * scale, bh = sh + 2 * pad * scale;
  if (bw / bh > 4 / 3) bh = Math.min(h, bw * 3 / 4); else bw = Math.min(w, bh * 4 / 3);
  const cx = sx + sw / 2, cy = sy + sh / 2;
  return {x: rect.left + cx - bw / 2, y: rect.top + cy - bh / 2, width: bw, height: bh};
}"""

PROMPT_JS = "async () => (await app.graphToPrompt()).output"
# through JSON in the page: fields the frontend leaves undefined must be absent, not null
SERIALIZE_JS = "() => JSON.parse(JSON.stringify(app.graph.serialize()))"


def api_sources() -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted(API_DIR.glob("*.json"))}


def comparable(prompt: dict) -> dict:
    """An API prompt with ids as strings, for comparing graphToPrompt() output with a source."""
    return {str(k): {"class_type": v["class_type"], "inputs": v["inputs"],
                     "title": (v.get("_meta") or {}).get("title")} for k, v in prompt.items()}


def prompt_differences(got: dict, want: dict) -> list[str]:
    got, want = comparable(got), comparable(want)
    out = []
    for nid in sorted(set(got) | set(want), key=lambda s: (len(s), s)):
        if nid not in got:
            out.append(f"node {nid} ({want[nid]['class_type']}) missing from the UI graph")
        elif nid not in want:
            out.append(f"node {nid} ({got[nid]['class_type']}) is not in the API source")
        elif got[nid] != want[nid]:
            out.append(f"node {nid}: UI gives {got[nid]}, the source says {want[nid]}")
    return out


def node_packs(server) -> dict[str, tuple[str, str]]:
    """class_type -> (cnr_id, version) for the properties Manager uses to find a missing node pack."""
    import re

    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    name = re.search(r'^name\s*=\s*"([^"]+)"', pyproject, re.M).group(1)
    version = re.search(r'^version\s*=\s*"([^"]+)"', pyproject, re.M).group(1)
    comfy_version = re.search(r'"([^"]+)"', (server.comfy_dir / "comfyui_version.py").read_text()).group(1)
    packs = {}
    for class_type, info in server.object_info().items():
        module = info.get("python_module", "")
        if module.startswith("custom_nodes."):
            if module.split(".", 1)[1] == "comfyui-videossm":
                packs[class_type] = (name, version)
        else:
            packs[class_type] = ("comfy-core", comfy_version)
    return packs


def finish_workflow(workflow: dict, name: str, packs: dict[str, tuple[str, str]]) -> dict:
    """Make the serialised graph independent of what the page did before: a fixed workflow id,
    links numbered 1..n, and cnr_id / ver on every node that comes from a pack."""
    workflow["id"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"comfyui-videossm/workflows/{name}"))
    workflow["revision"] = 0
    renumber = {link[0]: i for i, link in enumerate(sorted(workflow["links"], key=lambda l: l[0]), start=1)}
    workflow["links"] = sorted(([renumber[l[0]], *l[1:]] for l in workflow["links"]), key=lambda l: l[0])
    workflow["last_link_id"] = len(renumber)
    for node in workflow["nodes"]:
        for inp in node.get("inputs") or []:
            if inp.get("link") is not None:
                inp["link"] = renumber[inp["link"]]
        for out in node.get("outputs") or []:
            if out.get("links"):
                out["links"] = [renumber[l] for l in out["links"]]
        if node["type"] in packs:
            cnr_id, ver = packs[node["type"]]
            node["properties"] = {**node.get("properties", {}), "cnr_id": cnr_id, "ver": ver}
    return workflow


def thumbnail(png: bytes, background=(32, 32, 36)) -> bytes:
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    img.thumbnail(THUMB_SIZE, Image.LANCZOS)
    out = Image.new("RGB", THUMB_SIZE, background)
    out.paste(img, ((THUMB_SIZE[0] - img.width) // 2, (THUMB_SIZE[1] - img.height) // 2))
    buf = io.BytesIO()
    out.save(buf, "JPEG", quality=85, optimize=True)
    return buf.getvalue()


def build(names: list[str] | None = None, log=print) -> dict[str, tuple[bytes, bytes]]:
    """{name: (UI json bytes, jpg bytes)} for the API sources (all, or ``names``)."""
    from playwright.sync_api import sync_playwright

    sources = api_sources()
    if names:
        sources = {k: v for k, v in sources.items() if k in names}
    models = [{"type": t, "model": m} for (t, _), m in MODELS.items()]
    results = {}
    with ComfyServer(label="build-workflows", settings=UI_SETTINGS) as server, sync_playwright() as p:
        profile = tempfile.mkdtemp(prefix="videossm-build-")
        ctx = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True,
                                                   args=CHROMIUM_ARGS, viewport={"width": 1400, "height": 900})
        port = server.port

        def off_host(url: str) -> bool:
            from urllib.parse import urlsplit

            parts = urlsplit(url)
            return parts.scheme not in ("data", "blob", "about") and not (
                parts.hostname == HOST and parts.port == port)

        ctx.route(off_host, lambda route: route.abort())
        ctx.add_init_script("try { localStorage.setItem('vueNodesBannerDismissed', 'true') } catch (e) {}")
        try:
            page = ctx.pages[0] if ctx.pages else ctx.new_page()
            page.goto(server.url + "/", wait_until="domcontentloaded", timeout=120_000)
            page.wait_for_function(BOOTED_JS, timeout=120_000)
            for name, api in sources.items():
                log(f"building {name!r}")
                page.evaluate(BUILD_JS, {"api": api, "name": name, "models": models, "note": NOTES.get(name, ""),
                                         "minSizes": MIN_SIZES})
                diff = prompt_differences(page.evaluate(PROMPT_JS), api)
                if diff:
                    raise SystemExit(f"{name}: the UI graph does not round-trip to its API source:\n  "
                                     + "\n  ".join(diff))
                box = page.evaluate(FIT_JS)
                page.wait_for_timeout(400)
                png = page.screenshot(clip=box)
                workflow = finish_workflow(page.evaluate(SERIALIZE_JS), name, node_packs(server))
                text = json.dumps(workflow, indent=2, ensure_ascii=False) + "\n"
                results[name] = (text.encode("utf-8"), thumbnail(png))
        finally:
            ctx.close()
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true",
                    help="do not write; exit 1 if a UI template differs from what would be generated")
    ap.add_argument("names", nargs="*", help="template stems (default: every workflows/api/*.json)")
    args = ap.parse_args(argv)
    results = build(args.names or None)
    stale = []
    for name, (ui, jpg) in results.items():
        json_path, jpg_path = WORKFLOWS / f"{name}.json", WORKFLOWS / f"{name}.jpg"
        if not json_path.exists() or json_path.read_bytes() != ui:
            stale.append(json_path)
            if not args.check:
                json_path.write_bytes(ui)
        # --check does not compare thumbnail pixels (they may differ between chromium builds)
        if not jpg_path.exists() or (not args.check and jpg_path.read_bytes() != jpg):
            stale.append(jpg_path)
            if not args.check:
                jpg_path.write_bytes(jpg)
    for path in stale:
        print(("stale: " if args.check else "wrote ") + str(path.relative_to(REPO)))
    if not stale:
        print("workflows/ is up to date")
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
