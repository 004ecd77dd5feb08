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
          saved: p.workflow.nodes.find(n => n.id === id).widgets_values[0]};
}"""


def _entries(text: str) -> list[tuple[float, str]]:
    from videossm_core.schedule import parse_schedule

    return [(e.time, e.prompt) for e in parse_schedule(text).entries]


def _is_chunk_boundary(seconds: float) -> bool:
    frames = seconds * FPS
    return abs(frames - round(frames)) < 1e-6 and round(frames) >= 9 and (round(frames) - 9) % 12 == 0


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
    assert tl["info"].startswith("3 prompts · 60s · 81 chunks"), tl["info"]
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
    assert _is_chunk_boundary(moved), f"{moved} s is not a chunk boundary"
    assert after["saved"] == after["prompt"], "the saved workflow and the API prompt disagree"
    tl = bp.evaluate(TIMELINE_JS, node_id)
    assert tl["blocks"] == [p for _, p in old] and not tl["errors"]
    bp.screenshot("timeline-demo-template")
    bp.assert_clean()
