"""The prompt-timeline widget of VideoSSMPromptSchedule in the real frontend (headless chromium).

Opens the demo template, checks the timeline renders on the schedule node (one block per prompt, a
drag handle on every block but the first), drags the second prompt's boundary with the real mouse
(Playwright's pointer events, through whatever the canvas puts on top) and checks what reaches the API
prompt: ``app.graphToPrompt()`` carries the new time, snapped to a chunk boundary, in the schedule
STRING, and nothing else changed. A screenshot of the node is kept in test-artifacts/.
"""
from __future__ import annotations

import json

from tests.comfy_server import REPO_ROOT

DEMO = "1 - Demo - 60 s video from a 3-prompt timeline (CPU)"
FPS = 16

OPEN_JS = """async (workflow) => {
  await app.loadGraphData(workflow, true, true, 'timeline test');
  const node = app.graph.nodes.find(n => n.type === 'VideoSSMPromptSchedule');
  return node.id;
}"""

TIMELINE_JS = """(id) => {
  const root = document.querySelector(`.vssm-tl[data-node="${id}"]`);
  if (!root) return null;
  const r = root.getBoundingClientRect();
  return {
    visible: r.width > 100 && r.height > 50 && getComputedStyle(root).visibility !== 'hidden',
    blocks: [...root.querySelectorAll('.vssm-tl-block .vssm-tl-label')].map(e => e.textContent),
    handles: root.querySelectorAll('.vssm-tl-handle').length,
    info: root.querySelector('.vssm-tl-info')?.textContent,
    errors: root.querySelector('.vssm-tl-errors')?.textContent,
  };
}"""

PROMPT_SCHEDULE_JS = """async (id) => {
  const p = await app.graphToPrompt();
  return {prompt: p.output[String(id)].inputs.schedule,
          saved: p.workflow.nodes.find(n => String(n.id) === String(id)).widgets_values[0]};
}"""


def _entries(text: str) -> list[tuple[float, str]]:
    from videossm_core.schedule import parse_schedule

    return [(e.time, e.prompt) for e in parse_schedule(text).entries]


def _is_clean(seconds: float) -> bool:
    """Written as a clean time (at most two decimals), as the timeline writes what it snaps."""
    return abs(seconds * 100 - round(seconds * 100)) < 1e-9


def test_timeline_renders_and_a_mouse_drag_retimes_the_prompt(browser_page):
    bp = browser_page
    workflow = json.loads((REPO_ROOT / "workflows" / f"{DEMO}.json").read_text(encoding="utf-8"))
    api = json.loads((REPO_ROOT / "workflows" / "api" / f"{DEMO}.json").read_text(encoding="utf-8"))
    original = next(n for n in api.values() if n["class_type"] == "VideoSSMPromptSchedule")["inputs"]["schedule"]
    node_id = bp.evaluate(OPEN_JS, workflow)
    bp.wait_for(f"() => document.querySelectorAll('.vssm-tl[data-node=\"{node_id}\"] .vssm-tl-block').length === 3")

    tl = bp.evaluate(TIMELINE_JS, node_id)
    assert tl["visible"], tl
    assert tl["blocks"] == [p for _, p in _entries(original)]
    assert tl["handles"] == 2
    assert tl["info"].startswith("3 prompts · 60s (sampler) · 81 chunks"), tl["info"]
    assert not tl["errors"]
    before = bp.evaluate(PROMPT_SCHEDULE_JS, node_id)
    assert before["prompt"] == original == before["saved"]

    # drag the second prompt's left edge (20 s) to about 30 s with the mouse
    root = bp.page.locator(f'.vssm-tl[data-node="{node_id}"]')
    handle = root.locator('.vssm-tl-handle[data-index="1"]')
    track = root.locator(".vssm-tl-track").bounding_box()
    box = handle.bounding_box()
    assert box and track, "timeline handle/track not laid out"
    start = (box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    target_x = track["x"] + track["width"] * 30.0 / 60.0
    bp.page.mouse.move(*start)
    bp.page.mouse.down()
    for i in range(1, 11):
        bp.page.mouse.move(start[0] + (target_x - start[0]) * i / 10, start[1])
    bp.page.mouse.up()
    bp.page.wait_for_timeout(200)
    bp.screenshot("timeline-after-drag", clip=root.bounding_box())

    after = bp.evaluate(PROMPT_SCHEDULE_JS, node_id)
    entries = _entries(after["prompt"])
    old = _entries(original)
    assert [p for _, p in entries] == [p for _, p in old], "the prompts themselves must not change"
    assert entries[0][0] == 0 and entries[2][0] == old[2][0] == 40
    moved = entries[1][0]
    assert abs(moved - 30.0) <= 1.0, f"dragged to about 30 s, the schedule says {moved} s"
    assert _is_clean(moved), f"{moved} s is not written as a clean time"
    from videossm_core.schedule import chunk_start_seconds, snap_to_chunk
    assert abs(chunk_start_seconds(snap_to_chunk(moved)) - moved) <= 3 / FPS, "more than a quarter chunk off"
    assert after["saved"] == after["prompt"], "the saved workflow and the API prompt disagree"
    tl = bp.evaluate(TIMELINE_JS, node_id)
    assert tl["blocks"] == [p for _, p in old] and not tl["errors"]
    bp.screenshot("timeline-demo-template")
    bp.assert_clean()


SET_SECONDS_JS = """(seconds) => {
  const s = app.graph.nodes.find(n => n.type === 'VideoSSMSampler');
  s.widgets.find(w => w.name === 'seconds').value = seconds;
  app.graph.setDirtyCanvas(true, true);
}"""

LANE_JS = """(id) => {
  const root = document.querySelector(`.vssm-tl[data-node="${id}"]`);
  const blocks = [...root.querySelectorAll('.vssm-tl-block')];
  const track = root.querySelector('.vssm-tl-track').getBoundingClientRect();
  return {
    blocks: blocks.map(b => {
      const r = b.getBoundingClientRect();
      return {label: b.querySelector('.vssm-tl-label').textContent, late: b.classList.contains('late'),
              left: r.left - track.left, right: r.right - track.left, colour: b.style.background};
    }),
    trackWidth: track.width,
    past: !!root.querySelector('.vssm-tl-past'),
    fitDisabled: root.querySelector('.vssm-tl-fit').disabled,
    warnings: root.querySelector('.vssm-tl-warnings').textContent,
    info: root.querySelector('.vssm-tl-info').textContent,
    handleWidths: [...root.querySelectorAll('.vssm-tl-handle')].map(h => h.offsetWidth),  // CSS px, unzoomed
  };
}"""

# what the app does with a node's `executed` message (the websocket event ComfyUI sends after a run)
EXECUTED_JS = """({id, text}) => {
  const node = app.graph.getNodeById(id);
  node.onExecuted({text});
}"""


def _open_demo(bp):
    workflow = json.loads((REPO_ROOT / "workflows" / f"{DEMO}.json").read_text(encoding="utf-8"))
    node_id = bp.evaluate(OPEN_JS, workflow)
    bp.wait_for(f"() => document.querySelectorAll('.vssm-tl[data-node=\"{node_id}\"] .vssm-tl-block').length === 3")
    return node_id


def test_lane_follows_the_sampler_and_no_prompt_is_lost(browser_page):
    """Issue #21 (1)(4)(6): the sampler's seconds set the lane's length; prompts after the end stay on the
    lane (shaded, marked late) with a warning; Fit to length moves them inside with clean times; colours
    do not change when a prompt is added; a block's body can be dragged; handles are >= 12 px."""
    bp = browser_page
    node_id = _open_demo(bp)
    lane = bp.evaluate(LANE_JS, node_id)
    assert all(w >= 12 for w in lane["handleWidths"]) and len(lane["handleWidths"]) == 2, lane
    colours = [b["colour"] for b in lane["blocks"]]

    bp.evaluate(SET_SECONDS_JS, 10.0)
    bp.wait_for(f"() => document.querySelector('.vssm-tl[data-node=\"{node_id}\"] .vssm-tl-info')"
                ".textContent.includes('10s (sampler)')")
    lane = bp.evaluate(LANE_JS, node_id)
    assert [b["late"] for b in lane["blocks"]] == [False, True, True], lane
    assert lane["past"] and not lane["fitDisabled"], lane
    assert "2 prompts start after the video ends" in lane["warnings"], lane["warnings"]
    for b in lane["blocks"]:  # every block on the lane, none squashed at the right edge
        assert 0 <= b["left"] < b["right"] <= lane["trackWidth"] + 3 and b["right"] - b["left"] > 8, lane
    root = bp.page.locator(f'.vssm-tl[data-node="{node_id}"]')
    bp.screenshot("timeline-late-prompts", clip=root.bounding_box())

    root.locator(".vssm-tl-fit").click()
    bp.page.wait_for_timeout(200)
    text = bp.evaluate(PROMPT_SCHEDULE_JS, node_id)["prompt"]
    entries = _entries(text)
    assert [p for _, p in entries] == [p for _, p in _entries(json.loads(
        (REPO_ROOT / "workflows" / "api" / f"{DEMO}.json").read_text())["3"]["inputs"]["schedule"])], text
    assert all(t < 10 and _is_clean(t) for t, _ in entries) and entries[1][0] > 0, text
    lane = bp.evaluate(LANE_JS, node_id)
    assert not any(b["late"] for b in lane["blocks"]) and not lane["past"] and lane["fitDisabled"], lane
    assert [b["colour"] for b in lane["blocks"]] == colours, "colours follow the prompts"
    bp.screenshot("timeline-after-fit", clip=root.bounding_box())

    # drag the third block by its body (not its handle) a tenth of the lane to the left
    block = root.locator('.vssm-tl-block[data-index="2"]').bounding_box()
    x, y = block["x"] + block["width"] * 0.6, block["y"] + block["height"] / 2
    track = root.locator(".vssm-tl-track").bounding_box()
    before = entries[2][0]
    bp.page.mouse.move(x, y)
    bp.page.mouse.down()
    for i in range(1, 9):
        bp.page.mouse.move(x - track["width"] * 0.1 * i / 8, y)
    bp.page.mouse.up()
    bp.page.wait_for_timeout(200)
    after = _entries(bp.evaluate(PROMPT_SCHEDULE_JS, node_id)["prompt"])
    assert before - 1.6 < after[2][0] < before - 0.5 and _is_clean(after[2][0]), (before, after)
    assert after[1][0] == entries[1][0], "only the dragged prompt moves"

    # adding a prompt leaves the colours of the others as they were
    root.locator(".vssm-tl-add").click()
    bp.page.wait_for_timeout(200)
    lane = bp.evaluate(LANE_JS, node_id)
    assert len(lane["blocks"]) == 4
    by_label = {b["label"]: b["colour"] for b in lane["blocks"]}
    old_labels = [p for _, p in entries]
    assert [by_label[p] for p in old_labels] == colours, lane
    assert by_label["new prompt"] not in colours

    # the run's warnings appear on the node (schedule: words dropped; sampler: prompts skipped)
    bp.evaluate(EXECUTED_JS, {"id": node_id, "text": ["warning: the demo text encoder does not know dragon"]})
    sampler = bp.evaluate("() => app.graph.nodes.find(n => n.type === 'VideoSSMSampler').id")
    bp.evaluate(EXECUTED_JS, {"id": sampler, "text": ["warning: line 3: the prompt at 40s is skipped"]})
    bp.page.wait_for_timeout(200)
    warnings = bp.evaluate(LANE_JS, node_id)["warnings"]
    assert "does not know dragon" in warnings and "40s is skipped" in warnings, warnings
    bp.screenshot("timeline-warnings", clip=root.bounding_box())
    bp.assert_clean()


def test_inspect_state_shows_its_summary(browser_page):
    """The Inspect State node's summary (its ui text) is shown on the node, which is sized for it."""
    bp = browser_page
    _open_demo(bp)
    inspect = bp.evaluate("() => app.graph.nodes.find(n => n.type === 'VideoSSMInspectState').id")
    bp.evaluate(EXECUTED_JS, {"id": inspect, "text": ["chunks: 81\nnext frame: 243\nmemory: on"]})
    # present, then laid out (a DOM widget takes its size at the next frame; on 1.58.1 it starts a few px wide)
    bp.wait_for(f"() => document.querySelector('.vssm-text[data-node=\"{inspect}\"]')"
                f"?.getBoundingClientRect().width > 100")
    shown = bp.evaluate(f"""() => {{
      const box = document.querySelector('.vssm-text[data-node="{inspect}"]');
      const r = box.getBoundingClientRect();
      const node = app.graph.getNodeById({inspect});
      return {{value: box.value, width: r.width, height: r.height, size: [...node.size],
               widgets: (node.widgets || []).length,
               saved: app.graph.serialize().nodes.find(n => n.id === {inspect}).widgets_values}};
    }}""")
    assert shown["value"] == "chunks: 81\nnext frame: 243\nmemory: on", shown
    assert shown["width"] > 100 and shown["height"] > 40 and shown["size"][0] >= 360, shown
    assert not shown["saved"], "the summary box is not saved into the workflow"
    bp.screenshot("inspect-state-summary")
    bp.assert_clean()


def test_generation_time_estimate_comes_from_the_last_runs_pace(browser_page):
    """No estimate before a run; after the sampler's chunk events (sent here through the frontend's api
    object, as the websocket delivers them) the info line estimates the length at the measured pace."""
    bp = browser_page
    node_id = _open_demo(bp)
    info = bp.evaluate(LANE_JS, node_id)["info"]
    assert "pace" not in info, info
    sampler = bp.evaluate("() => app.graph.nodes.find(n => n.type === 'VideoSSMSampler').id")
    for chunk in range(4):
        bp.evaluate("""([node, chunk]) => window.comfyAPI.api.api.dispatchEvent(new CustomEvent('videossm.chunk',
            {detail: {node: String(node), chunk, done: chunk + 1, total: 81, seconds: (9 + 12 * chunk) / 16}}))""",
                    [sampler, chunk])
        bp.page.wait_for_timeout(500)
    info = bp.evaluate(LANE_JS, node_id)["info"]
    # 81 chunks at ~0.5 s each: about 40 s (the page's timers are not exact on a busy machine)
    assert "at the last run's pace" in info, info
    estimate = int(info.split("~")[1].split(" s")[0])
    assert 30 <= estimate <= 70, info
    bp.assert_clean()


def test_a_run_names_the_words_the_demo_encoder_drops(browser_page):
    """A real run (the demo template, 0.5 s): the first prompt, typed in the timeline's prompt editor, has
    two words the demo text encoder does not know; after the run the schedule node lists them in its
    warning line (the run itself succeeds, the sampler plays its video)."""
    bp = browser_page
    node_id = _open_demo(bp)
    root = bp.page.locator(f'.vssm-tl[data-node="{node_id}"]')
    root.locator('.vssm-tl-block[data-index="0"]').click()
    root.locator(".vssm-tl-prompt").fill("a golden dragon bouncing on a dark background")
    text = bp.evaluate(PROMPT_SCHEDULE_JS, node_id)["prompt"]
    assert _entries(text)[0] == (0, "a golden dragon bouncing on a dark background"), text
    assert "does not know" not in bp.evaluate(LANE_JS, node_id)["warnings"]

    sampler = bp.evaluate("() => app.graph.nodes.find(n => n.type === 'VideoSSMSampler').id")
    bp.evaluate(SET_SECONDS_JS, 0.5)
    bp.evaluate("() => app.queuePrompt(0, 1)")
    bp.wait_for(f"""() => document.querySelector('.vssm-tl[data-node="{node_id}"] .vssm-tl-warnings')
                   .textContent.includes('does not know')""", timeout_ms=300_000)
    warnings = bp.evaluate(LANE_JS, node_id)["warnings"]
    assert "does not know dragon, golden" in warnings and "ignores them" in warnings, warnings
    # a warning, not an error: the run went on and the sampler shows its video
    bp.wait_for(f"""() => document.querySelector('.vssm-player[data-node="{sampler}"]')?.dataset.mode === 'video'""",
                timeout_ms=120_000)
    bp.screenshot("timeline-unknown-words", clip=root.bounding_box())
    bp.assert_clean()
