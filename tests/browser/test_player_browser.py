"""The sampler's player and Load State's list in the real frontend, with real runs of the demo model.

Issue #21 (2), (3), (5): queued from the page (``app.queuePrompt``), the demo template (shortened) runs
on the session's ComfyUI server. During a run the sampler shows the live preview of each chunk; after
it, a looping player of the mp4 this run wrote (never the last preview, never the previous video).
A second run cancelled after two chunks shows its partial mp4 and the state that continues it; the
timeline's playhead does not stay frozen. A Load State node already on the page lists the states
both runs wrote, with no reload of the node definitions. Screenshots go to test-artifacts/.
"""
from __future__ import annotations

import json

from tests.browser.test_timeline_browser import DEMO, FPS, _open_demo
from tests.comfy_server import REPO_ROOT

# every change of the player's mode, with what it showed, in order
WATCH_JS = """(id) => {
  window.__vssmModes = [];
  const root = document.querySelector(`.vssm-player[data-node="${id}"]`);
  const note = () => window.__vssmModes.push({mode: root.dataset.mode,
    live: root.querySelector('.vssm-player-live').getAttribute('src') || '',
    video: root.querySelector('.vssm-player-video').getAttribute('src') || ''});
  new MutationObserver(note).observe(root, {attributes: true, attributeFilter: ['data-mode'],
    subtree: true});
  root.querySelector('.vssm-player-live').addEventListener('load', note);
}"""

PLAYER_JS = """(id) => {
  const root = document.querySelector(`.vssm-player[data-node="${id}"]`);
  if (!root) return null;
  const video = root.querySelector('.vssm-player-video');
  const r = video.getBoundingClientRect();
  const node = app.graph.getNodeById(id);
  return {mode: root.dataset.mode, stopped: !!root.dataset.stopped,
          note: root.querySelector('.vssm-player-note').textContent,
          src: video.getAttribute('src') || '', ready: video.readyState, error: video.error && video.error.code,
          loop: video.loop, width: r.width, height: r.height, duration: video.duration,
          builtin: (node.widgets || []).filter(w => ['video-preview', '$$canvas-image-preview'].includes(w.name))
            .length,
          saved: app.graph.serialize().nodes.find(n => String(n.id) === String(id)).widgets_values};
}"""

# a Load State node added the way a user adds one (not part of what runs: nothing links from it)
ADD_LOAD_STATE_JS = """() => {
  const n = LiteGraph.createNode('VideoSSMLoadState');
  n.pos = [40, 700];
  app.graph.add(n);
  return n.id;
}"""
STATE_LIST_JS = """(id) => app.graph.getNodeById(id).widgets.find(w => w.name === 'state_file').options.values"""

# cancel (the page's own api call, as the Cancel button makes it) once the sampler reported 2 chunks
CANCEL_AFTER_JS = """(n) => {
  let seen = 0;
  const api = window.comfyAPI.api.api;
  const on = (e) => { if (++seen === n) { api.removeEventListener('videossm.chunk', on); api.interrupt(null); } };
  api.addEventListener('videossm.chunk', on);
}"""


def _seconds(mp4) -> float:
    from videossm_core.video_io import read_video

    return read_video(mp4).shape[0] / FPS


def _set_sampler(bp, **values):
    bp.evaluate("""(values) => {
      const s = app.graph.nodes.find(n => n.type === 'VideoSSMSampler');
      for (const [k, v] of Object.entries(values)) s.widgets.find(w => w.name === k).value = v;
    }""", values)


def _queue(bp):
    bp.evaluate("() => app.queuePrompt(0, 1)")


def test_sampler_plays_this_runs_video_and_a_cancel_shows_the_partial_one(browser_page, browser_server):
    bp = browser_page
    schedule_id = _open_demo(bp)
    sampler = bp.evaluate("() => app.graph.nodes.find(n => n.type === 'VideoSSMSampler').id")
    bp.wait_for(f"() => document.querySelector('.vssm-player[data-node=\"{sampler}\"]')")
    first = bp.evaluate(PLAYER_JS, sampler)
    assert first["mode"] == "empty" and first["src"] == "", first
    load_state = bp.evaluate(ADD_LOAD_STATE_JS)
    listed_before = bp.evaluate(STATE_LIST_JS, load_state)
    bp.evaluate(WATCH_JS, sampler)

    # run 1: 1.5 s (3 chunks); the late prompts are skipped with a warning
    _set_sampler(bp, seconds=1.5)
    _queue(bp)
    bp.wait_for(f"""() => {{ const p = ({PLAYER_JS})({sampler});
                     return p.mode === 'video' && p.ready >= 2; }}""", timeout_ms=300_000)
    done = bp.evaluate(PLAYER_JS, sampler)
    mp4s = sorted((browser_server.output_dir / "videossm").glob("demo_[0-9]*_.mp4"))
    assert mp4s, "the run wrote no mp4"
    run1 = mp4s[-1].name
    assert f"filename={run1}" in done["src"] and "subfolder=videossm" in done["src"], done
    assert done["loop"] and done["error"] is None and done["width"] > 100 and done["height"] > 100, done
    assert abs(done["duration"] - _seconds(mp4s[-1])) < 0.1, f"the player holds a {done['duration']} s video"
    assert done["builtin"] == 0, "the frontend's own preview widget is there too"
    workflow = json.loads((REPO_ROOT / "workflows" / f"{DEMO}.json").read_text(encoding="utf-8"))
    template = next(n for n in workflow["nodes"] if n["type"] == "VideoSSMSampler")["widgets_values"]
    assert len(done["saved"]) == len(template), "the player is not saved into the workflow"
    state1 = run1[: -len(".mp4")] + ".state.safetensors [output]"
    assert f"videossm/{run1}" in done["note"] and state1 in done["note"], done["note"]
    modes = bp.evaluate("() => window.__vssmModes")
    live = [m for m in modes if m["mode"] == "live" and m["live"].startswith("blob:")]
    assert live, f"no live preview during the run: {modes}"
    assert modes[-1]["mode"] == "video" and modes.index(live[-1]) < len(modes) - 1, modes
    node = bp.page.locator(f'.vssm-player[data-node="{sampler}"]')
    bp.screenshot("sampler-player-after-run", clip=node.bounding_box())

    # the Load State node on the page lists the new state, without a reload
    assert state1 not in listed_before
    bp.wait_for(f"() => ({STATE_LIST_JS})({load_state}).includes({json.dumps(state1)})")
    chosen = bp.evaluate(f"() => app.graph.getNodeById({load_state}).widgets[0].value")
    # a new Load State picks the list's first state: the first at page load where there was one (a server
    # shared with earlier tests), else the first fetched after the run
    first = (listed_before or bp.evaluate(STATE_LIST_JS, load_state))[0]
    assert chosen == first, "an empty Load State picks the list's first state"

    # run 2: longer, cancelled after 2 chunks; the previous video is not shown while it runs
    bp.evaluate(WATCH_JS, sampler)
    _set_sampler(bp, seconds=12.0)
    bp.evaluate(CANCEL_AFTER_JS, 2)
    _queue(bp)
    bp.wait_for(f"""() => {{ const p = ({PLAYER_JS})({sampler});
                     return p.stopped && p.mode === 'video' && p.ready >= 2; }}""", timeout_ms=300_000)
    stopped = bp.evaluate(PLAYER_JS, sampler)
    mp4s = sorted((browser_server.output_dir / "videossm").glob("demo_[0-9]*_.mp4"))
    run2 = mp4s[-1].name
    assert run2 != run1 and f"filename={run2}" in stopped["src"], stopped
    state2 = run2[: -len(".mp4")] + ".state.safetensors [output]"
    assert "Cancelled at" in stopped["note"] and f"videossm/{run2}" in stopped["note"], stopped["note"]
    assert f'load "{state2}" with VideoSSM Load State' in stopped["note"], stopped["note"]
    # the chunks made before the cancel, not the whole 12 s
    assert abs(stopped["duration"] - _seconds(mp4s[-1])) < 0.1 and stopped["duration"] < 11.0, stopped
    modes = bp.evaluate("() => window.__vssmModes")
    first_live = next(i for i, m in enumerate(modes) if m["mode"] == "live")
    shown = [m["video"] for m in modes[first_live:] if m["mode"] == "video"]
    assert shown and all(f"filename={run2}" in v for v in shown), f"the old video showed during the run: {modes}"
    assert modes[-1]["mode"] == "video"

    # the timeline says where it stopped instead of a frozen playhead
    tl = bp.evaluate(f"""() => {{
      const root = document.querySelector('.vssm-tl[data-node="{schedule_id}"]');
      return {{playhead: getComputedStyle(root.querySelector('.vssm-tl-playhead')).display,
               warnings: root.querySelector('.vssm-tl-warnings').textContent}};
    }}""")
    assert tl["playhead"] == "none" and "cancelled at" in tl["warnings"], tl
    bp.wait_for(f"() => ({STATE_LIST_JS})({load_state}).includes({json.dumps(state2)})")
    bp.screenshot("sampler-player-after-cancel", clip=node.bounding_box())
    bp.screenshot("sampler-after-cancel-page")
    # the cancelled prompt is reported as interrupted by the frontend: nothing else may be in the console
    bp.assert_clean()


def test_demo_template_is_loaded_with_room_for_the_player(browser_page):
    """The sampler of every template is big enough for its widgets and the player."""
    bp = browser_page
    workflow = json.loads((REPO_ROOT / "workflows" / f"{DEMO}.json").read_text(encoding="utf-8"))
    sampler = next(n for n in workflow["nodes"] if n["type"] == "VideoSSMSampler")
    _open_demo(bp)
    need = bp.evaluate("() => app.graph.nodes.find(n => n.type === 'VideoSSMSampler').computeSize()[1]")
    assert sampler["size"][1] >= need - 1, (sampler["size"], need)


CONTINUE = "3 - Continue a saved stream with a new prompt"


def _video_file(src: str) -> str:
    """The filename a player's /view?filename=...&subfolder=... URL shows."""
    from urllib.parse import parse_qs, urlsplit

    q = parse_qs(urlsplit(src).query)
    return "/".join(x for x in (q.get("subfolder", [""])[0], q["filename"][0]) if x)


def _wait_for_video(bp, sampler, not_src: str = ""):
    bp.wait_for(f"""() => {{ const p = ({PLAYER_JS})({sampler});
                     return p.mode === 'video' && p.ready >= 2 && p.src !== {json.dumps(not_src)}; }}""",
                timeout_ms=300_000)
    return bp.evaluate(PLAYER_JS, sampler)


def test_continue_template_offers_the_new_state_and_makes_one_joined_video(browser_page, browser_server):
    """Issue #21: a first run (the demo template, 0.5 s: one chunk) writes a video and its state; the
    "Continue a saved stream" template, opened afterwards in the same page (no reload), lists that state
    in its Load State node; chosen and queued (0.75 s more: one continued chunk), the sampler makes one
    video, the first run's frames then the new ones, and plays it; the list then offers the new state."""
    bp = browser_page
    from videossm_core.video_io import read_video

    _open_demo(bp)
    sampler = bp.evaluate("() => app.graph.nodes.find(n => n.type === 'VideoSSMSampler').id")
    bp.wait_for(f"() => document.querySelector('.vssm-player[data-node=\"{sampler}\"]')")
    _set_sampler(bp, seconds=0.5)
    _queue(bp)
    first = _wait_for_video(bp, sampler)
    first_mp4 = browser_server.output_dir / _video_file(first["src"])
    first_frames = read_video(first_mp4).shape[0]
    assert first_frames == 9, f"0.5 s of the demo model is one 9-frame chunk, the mp4 has {first_frames}"
    state1 = first_mp4.name[: -len(".mp4")] + ".state.safetensors [output]"

    # open the Continue template in the same page
    workflow = json.loads((REPO_ROOT / "workflows" / f"{CONTINUE}.json").read_text(encoding="utf-8"))
    bp.evaluate("async (w) => { await app.loadGraphData(w, true, true, 'continue test'); }", workflow)
    load_state = bp.evaluate("() => app.graph.nodes.find(n => n.type === 'VideoSSMLoadState').id")
    sampler = bp.evaluate("() => app.graph.nodes.find(n => n.type === 'VideoSSMSampler').id")
    bp.wait_for(f"() => ({STATE_LIST_JS})({load_state}).includes({json.dumps(state1)})")
    # the user picks it in the combo (the template names a file this server does not have)
    bp.evaluate("""([id, value]) => {
      const w = app.graph.getNodeById(id).widgets.find(w => w.name === 'state_file');
      w.value = value;
      w.callback?.(value);
    }""", [load_state, state1])
    _set_sampler(bp, seconds=0.75)
    bp.wait_for(f"() => document.querySelector('.vssm-player[data-node=\"{sampler}\"]')")
    _queue(bp)
    joined = _wait_for_video(bp, sampler, first["src"])
    joined_mp4 = browser_server.output_dir / _video_file(joined["src"])
    assert joined_mp4.name.startswith("demo_continued_"), joined["src"]
    frames = read_video(joined_mp4).shape[0]
    # a continued stream's chunks are 12 frames each: the first run's 9, then 12 new ones
    assert frames == first_frames + 12, (first_frames, frames)
    assert abs(joined["duration"] - frames / FPS) < 0.1, joined
    state2 = joined_mp4.name[: -len(".mp4")] + ".state.safetensors [output]"
    assert state2 in joined["note"], joined["note"]
    bp.wait_for(f"() => ({STATE_LIST_JS})({load_state}).includes({json.dumps(state2)})")
    node = bp.page.locator(f'.vssm-player[data-node="{sampler}"]')
    bp.screenshot("continue-joined-video", clip=node.bounding_box())
    bp.screenshot("continue-page")
    bp.assert_clean()
