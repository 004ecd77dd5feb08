"""The shipped workflow templates in the real ComfyUI frontend (headless chromium, loopback only).

- ComfyUI offers them: ``/api/workflow_templates`` lists the three under the pack's folder name, their
  JSON and ``.jpg`` thumbnails are served, the template browser shows them under the pack, and a
  click on a card opens that template.
- Each opens with no missing node types (``app.loadGraphData(workflow)``, the call the template
  browser makes): no missing-nodes dialog, every node type registered. The real-weights template's
  loaders carry ``properties.models``, so the frontend names the four files as missing (this server has
  none of them): frontend 1.32.9 asks its missing-models dialog (not opened, see SPY_JS); 1.58.1 has no
  such call, its missing-model pipeline leaves the candidates on the workflow (``pendingWarnings``) for
  its dialog and Issues tab.
- Round trip: ``app.graphToPrompt().output`` of each loaded template equals its API source in
  workflows/api/ (same node ids, class types, titles and every input). Not compared: the seed's
  ``control_after_generate`` value ("fixed"), which is a UI-only widget that never reaches the API
  prompt, and the MarkdownNote, a frontend-only node.
"""
from __future__ import annotations

import json
import urllib.parse

from scripts.build_workflows import prompt_differences
from tests.comfy_server import PACK_DIR_NAME, REPO_ROOT

WORKFLOWS = REPO_ROOT / "workflows"
TEMPLATES = ("1 - Demo - 60 s video from a 3-prompt timeline (CPU)",
             "2 - LongLive weights - 832x480 prompt timeline to mp4",
             "3 - Continue a saved stream with a new prompt")
REAL_MODELS = {"diffusion_models / longlive_base.pt", "loras / lora.pt",
               "text_encoders / umt5_xxl_fp8_e4m3fn_scaled.safetensors", "vae / wan_2.1_vae.safetensors"}

# Record what the app's missing-nodes / missing-models dialogs are asked to show. The missing-nodes
# dialog still opens (the test checks the DOM too); the missing-models one is only recorded: it would
# HEAD every model url (huggingface.co) for the file size, and this browser must not leave the machine.
SPY_JS = """() => {
  window.__vssmMissing = {nodes: [], models: []};
  const nodes = app.showMissingNodesError.bind(app);
  app.showMissingNodesError = (types, ...rest) => {
    window.__vssmMissing.nodes.push(types);
    return nodes(types, ...rest);
  };
  // 1.32.9; 1.58.1 has no such method (see LOAD_JS)
  window.__vssmMissing.modelDialog = typeof app.showMissingModelsError === 'function';
  app.showMissingModelsError = (models) => { window.__vssmMissing.models.push(models); };
}"""

LOAD_JS = """async ({url, name}) => {
  window.__vssmMissing.nodes = []; window.__vssmMissing.models = [];
  const res = await fetch(url);   // the URL the template browser fetches
  if (!res.ok) return {status: res.status};
  const workflow = await res.json();
  await app.loadGraphData(workflow, true, true, name);
  if (!window.__vssmMissing.modelDialog) {
    // 1.58.1: the missing models its pipeline found, as it keeps them for its dialog / Issues tab
    const found = (app.extensionManager.workflow.activeWorkflow?.pendingWarnings?.missingModelCandidates ?? [])
      .filter(m => m.isMissing).map(({name, directory, url}) => ({name, directory, url}));
    if (found.length) window.__vssmMissing.models.push(found);
  }
  const registered = LiteGraph.registered_node_types;
  return {
    status: res.status,
    types: workflow.nodes.map(n => n.type),
    unregistered: workflow.nodes.map(n => n.type).filter(t => !(t in registered)),
    loaded: app.graph.nodes.map(n => n.type),
    missing: window.__vssmMissing,
    // e.g. "Invalid workflow against zod schema" (the frontend validates every workflow it loads)
    toasts: [...document.querySelectorAll('.p-toast-message')].map(e => e.innerText),
    prompt: (await app.graphToPrompt()).output,
  };
}"""

DIALOG_TEXT_JS = """(selector) => [...document.querySelectorAll(selector)].map(e => e.innerText).join('\\n')"""


def _template_url(base: str, stem: str, ext: str) -> str:
    # the frontend builds `${api_base}/workflow_templates/${module}/${name}.json` without escaping;
    # the browser percent-encodes the spaces itself
    return f"{base}/api/workflow_templates/{PACK_DIR_NAME}/{stem}.{ext}"


def test_template_list_serves_our_three(browser_page, browser_server):
    listing = browser_server.get_json("/api/workflow_templates")
    assert sorted(listing.get(PACK_DIR_NAME, [])) == sorted(TEMPLATES), listing
    for stem in TEMPLATES:
        quoted = urllib.parse.quote(f"/api/workflow_templates/{PACK_DIR_NAME}/{stem}")
        served = json.loads(browser_server.get_bytes(quoted + ".json"))
        assert served == json.loads((WORKFLOWS / f"{stem}.json").read_text(encoding="utf-8"))
        jpg = browser_server.get_bytes(quoted + ".jpg")
        assert jpg[:3] == b"\xff\xd8\xff", f"{stem}.jpg is not a JPEG"

    # the template browser lists them under the pack (the sidebar entry is the folder name)
    bp = browser_page
    bp.evaluate("() => app.extensionManager.command.execute('Comfy.BrowseTemplates')")
    bp.page.get_by_text(PACK_DIR_NAME, exact=True).first.click(timeout=30_000)
    for stem in TEMPLATES:
        bp.page.get_by_text(stem, exact=True).first.wait_for(state="visible", timeout=30_000)
    bp.screenshot("templates-browser")

    # clicking a card opens the template (the frontend fetches and loads the UI json)
    demo = json.loads((WORKFLOWS / f"{TEMPLATES[0]}.json").read_text(encoding="utf-8"))
    bp.page.get_by_text(TEMPLATES[0], exact=True).first.click()
    want = sorted(n["type"] for n in demo["nodes"])
    bp.wait_for("(want) => JSON.stringify(app.graph.nodes.map(n => n.type).sort()) === JSON.stringify(want)",
                arg=want)
    bp.assert_clean()


def test_templates_open_without_missing_nodes_and_round_trip(browser_page):
    bp = browser_page
    bp.evaluate(SPY_JS)
    for stem in TEMPLATES:
        api = json.loads((WORKFLOWS / "api" / f"{stem}.json").read_text(encoding="utf-8"))
        got = bp.evaluate(LOAD_JS, {"url": _template_url(bp.base_url, stem, "json"), "name": stem})
        assert got["status"] == 200, f"{stem}: HTTP {got['status']}"
        assert got["unregistered"] == [], f"{stem}: node types not registered: {got['unregistered']}"
        assert got["missing"]["nodes"] == [], f"{stem}: missing nodes dialog: {got['missing']['nodes']}"
        assert bp.evaluate(DIALOG_TEXT_JS, ".comfy-missing-nodes") == ""
        assert sorted(got["loaded"]) == sorted(got["types"])
        assert got["toasts"] == [], f"{stem}: the frontend complained: {got['toasts']}"
        diff = prompt_differences(got["prompt"], api)
        assert not diff, f"{stem}: graphToPrompt() differs from workflows/api/{stem}.json:\n" + "\n".join(diff)

        if stem.startswith("2 - "):
            assert len(got["missing"]["models"]) == 1, got["missing"]
            listed = {f"{m['directory']} / {m['name']}" for m in got["missing"]["models"][0]}
            assert listed == REAL_MODELS
            assert all(m["url"].startswith("https://huggingface.co/") for m in got["missing"]["models"][0])
        elif stem.startswith("3 - ") and not got["missing"]["modelDialog"]:
            # 1.58.1 checks every combo's value against its list: the saved stream the template loads
            # (input/videossm/demo_stream.state.safetensors) is not on this server; no model is missing
            state = json.loads((WORKFLOWS / "api" / f"{stem}.json").read_text(encoding="utf-8"))["2"]
            assert got["missing"]["models"] == [[{"name": state["inputs"]["state_file"], "directory": None,
                                                  "url": None}]], got["missing"]
        else:
            assert got["missing"]["models"] == [], f"{stem}: {got['missing']['models']}"
        bp.page.keyboard.press("Escape")  # close a dialog, if any
        bp.page.wait_for_timeout(200)
    bp.assert_clean()
