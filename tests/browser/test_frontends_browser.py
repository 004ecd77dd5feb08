"""Every browser test of the pack on a newer frontend: comfyui-frontend-package 1.58.1 served by ComfyUI
0.3.75 (``--front-end-root``), with Nodes 2.0 (``Comfy.VueNodes.Enabled``) off and on; and on the pinned
1.32.9 with Nodes 2.0 on (off is what the other browser test modules run).

The wheel is not a dependency (ComfyUI 0.3.75 pins 1.32.9): scripts/install_comfyui.sh downloads it and
unpacks it into ``.frontends/fe-1.58.1`` (ignored by git); without it these tests fail and say so.
Each renderer gets its own server (the setting is read at boot), shared by the module's tests. The checks
are the 1.32.9 tests' own functions (test_timeline_browser, test_player_browser, test_templates_browser),
run on this page; what 1.58.1 itself logs against the 0.3.75 backend is let through (NEW_FRONTEND_CONSOLE).
Screenshots go to test-artifacts/ with the frontend and renderer in their names (``fe1.58.1-nodes2-...``).
"""
from __future__ import annotations

import inspect

import pytest

from tests.browser import test_player_browser as player
from tests.browser import test_templates_browser as templates
from tests.browser import test_timeline_browser as timeline
from tests.comfy_server import REPO_ROOT, ComfyServer

NEW_FRONTEND = "1.58.1"
NEW_FRONTEND_ROOT = REPO_ROOT / ".frontends" / f"fe-{NEW_FRONTEND}" / "comfyui_frontend_package" / "static"


PINNED_FRONTEND = "1.32.9"  # what ComfyUI 0.3.75 pins (and serves without --front-end-root)
# (frontend, Nodes 2.0): 1.58.1 with it off and on; 1.32.9 with it on (off: the other browser test modules)
CONFIGS = {"litegraph": (NEW_FRONTEND, False), "nodes2": (NEW_FRONTEND, True),
           "pinned-nodes2": (PINNED_FRONTEND, True)}


@pytest.fixture(scope="module", params=list(CONFIGS))
def browser_server(request):
    frontend, vue = CONFIGS[request.param]
    args = []
    if frontend == NEW_FRONTEND:
        if not (NEW_FRONTEND_ROOT / "index.html").is_file():
            pytest.fail(f"frontend {NEW_FRONTEND} not found at {NEW_FRONTEND_ROOT}: pip download --no-deps "
                        f"comfyui-frontend-package=={NEW_FRONTEND} -d .frontends, then unzip it into "
                        f".frontends/fe-{NEW_FRONTEND}")
        args = ["--front-end-root", str(NEW_FRONTEND_ROOT)]
    server = ComfyServer(label=f"fe{frontend}-{request.param}", extra_args=args, settings={
        "Comfy.InstalledVersion": frontend, "Comfy.VueNodes.Enabled": vue})
    server.start()
    try:
        yield server
    finally:
        server.stop()


# What 1.58.1 itself logs against the 0.3.75 backend (not this pack's doing):
NEW_FRONTEND_CONSOLE = (
    # its queue and history panels use GET /api/jobs, which ComfyUI 0.3.75 does not have (404)
    "Failed to fetch jobs: 404",
    # its default graph (a Z-Image Turbo template) asks huggingface.co about the model files it lacks;
    # the server's CSP blocks that (and the test's route would abort it)
    "https://huggingface.co/",
)
NEW_FRONTEND_OFF_HOST = ("https://huggingface.co/",)


@pytest.fixture
def browser_page(browser_page, browser_server, request):
    """The conftest page, on this module's server, checked to be the frontend and renderer it should be."""
    bp = browser_page
    config = request.node.callspec.params["browser_server"]
    assert (bp.frontend, bp.nodes2) == CONFIGS[config], (bp.frontend, bp.nodes2, config)
    if bp.frontend == NEW_FRONTEND:
        bp.allow_console = NEW_FRONTEND_CONSOLE
        bp.allow_off_host = NEW_FRONTEND_OFF_HOST
    return bp


def _call(check, browser_page, browser_server):
    """Run a 1.32.9 test function with this module's page (and server, where it takes one)."""
    args = {"browser_page": browser_page, "browser_server": browser_server}
    return check(**{name: args[name] for name in inspect.signature(check).parameters})


# the 1.32.9 tests that run here unchanged (the timeline and the player have their own tests below,
# with what Nodes 2.0 adds: the widget inside the node's DOM element, no preview of the frontend's own)
REUSED = [
    timeline.test_lane_follows_the_sampler_and_no_prompt_is_lost,
    timeline.test_inspect_state_shows_its_summary,
    timeline.test_generation_time_estimate_comes_from_the_last_runs_pace,
    timeline.test_a_run_names_the_words_the_demo_encoder_drops,
    player.test_demo_template_is_loaded_with_room_for_the_player,
    player.test_continue_template_offers_the_new_state_and_makes_one_joined_video,
    templates.test_template_list_serves_our_three,
    templates.test_templates_open_without_missing_nodes_and_round_trip,
]


@pytest.mark.parametrize("check", REUSED, ids=[f.__name__.removeprefix("test_") for f in REUSED])
def test_new_frontend(check, browser_page, browser_server):
    _call(check, browser_page, browser_server)


def test_new_frontend_timeline_renders_drags_and_serialises(browser_page, browser_server):
    bp = browser_page
    # the same checks as on 1.32.9: rendered, dragged with the mouse, serialised into the API prompt
    timeline.test_timeline_renders_and_a_mouse_drag_retimes_the_prompt(bp)
    # Nodes 2.0 draws nodes as DOM elements: the timeline must sit inside the schedule node's element
    inside = bp.evaluate("""() => {
      const tl = document.querySelector('.vssm-tl');
      const node = tl && tl.closest('[data-node-id]');
      return node ? node.getAttribute('data-node-id') : null;
    }""")
    schedule = bp.evaluate("() => String(app.graph.nodes.find(n => n.type === 'VideoSSMPromptSchedule').id)")
    assert (inside == schedule) if bp.nodes2 else inside is None, (bp.nodes2, inside)
    bp.screenshot("timeline")



# Every <img>/<video> that appears inside a sampler's node element (Nodes 2.0 draws nodes as DOM) and is
# not part of our player, from now on: the frontend's own previews (its live preview image, its video of
# the node's output). Recorded as they appear, so one that is shown during a run and gone later counts.
WATCH_FOREIGN_MEDIA_JS = """() => {
  window.__vssmForeignMedia = [];
  const isSampler = (el) => {
    const host = el.closest('[data-node-id]');
    if (!host) return false;
    const id = host.getAttribute('data-node-id');
    const node = app.graph.getNodeById(id) ?? app.graph.getNodeById(Number(id));
    return node?.type === 'VideoSSMSampler';
  };
  const check = (el) => {
    if (el.closest('.vssm-player') || !isSampler(el)) return;
    window.__vssmForeignMedia.push({tag: el.tagName.toLowerCase(), src: el.getAttribute('src') || '',
                                    cls: el.getAttribute('class') || ''});
  };
  const scan = (root) => {
    if (!(root instanceof Element)) return;
    if (root.matches('img, video')) check(root);
    root.querySelectorAll('img, video').forEach(check);
  };
  new MutationObserver((records) => {
    for (const r of records) {
      if (r.type === 'attributes') scan(r.target);
      else r.addedNodes.forEach(scan);
    }
  }).observe(document.body, {childList: true, subtree: true, attributes: true, attributeFilter: ['src']});
}"""
# the media inside the sampler's node element that are not our player's (Nodes 2.0; none in litegraph)
FOREIGN_MEDIA_NOW_JS = """() => {
  const s = app.graph.nodes.find(n => n.type === 'VideoSSMSampler');
  const host = document.querySelector(`[data-node-id="${s.id}"]`);
  if (!host) return null;
  return [...host.querySelectorAll('img, video')].filter(e => !e.closest('.vssm-player'))
    .map(e => ({tag: e.tagName.toLowerCase(), src: e.getAttribute('src') || ''}));
}"""


def test_new_frontend_sampler_player(browser_page, browser_server):
    """The sampler's player, live preview, Cancel and Load State's list (test_player_browser) on 1.58.1
    (Nodes 2.0 off and on) and on 1.32.9 with Nodes 2.0 on.
    With Nodes 2.0 the node shows our player only: no preview of its own (live image or output video)."""
    bp = browser_page
    bp.evaluate(WATCH_FOREIGN_MEDIA_JS)
    player.test_sampler_plays_this_runs_video_and_a_cancel_shows_the_partial_one(bp, browser_server)
    bp.screenshot("player")
    sampler = bp.evaluate("() => String(app.graph.nodes.find(n => n.type === 'VideoSSMSampler').id)")
    in_node = bp.evaluate(f"() => !!document.querySelector('[data-node-id=\"{sampler}\"] .vssm-player')")
    assert in_node is bp.nodes2, "the player is not inside the node's element"
    now = bp.evaluate(FOREIGN_MEDIA_NOW_JS)
    assert now is None if not bp.nodes2 else now == [], f"the node draws its own preview: {now}"
    seen = bp.evaluate("() => window.__vssmForeignMedia")
    assert seen == [], f"the node drew its own preview during the runs: {seen}"
