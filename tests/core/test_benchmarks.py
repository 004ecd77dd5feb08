"""The quality benchmark's own measurements (the script itself runs minutes of video: not a unit test)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np


def _bench_demo_quality():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_demo_quality.py"
    spec = importlib.util.spec_from_file_location("bench_demo_quality", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_world_acting_out_the_schedule_is_the_reference_for_its_dynamic_degree():
    """A minute of "resting" prompts is still in the world itself: the benchmark's reference dynamic degree
    follows the prompted motions, minute by minute (fps 1 here, so a "minute" is 60 frames)."""
    bench = _bench_demo_quality()
    segments = [("a red circle bouncing on a dark background", 70), ("a red circle resting on a dark background", 90)]
    moving, mixed, still = bench.mean_dynamic_degree_per_minute(bench.world_renders(segments, 64, 64), fps=1)
    assert moving > 0.002 and still == 0.0 and still < mixed < moving
    frames = np.zeros((130, 8, 8, 3), np.uint8)
    frames[1::2] = 255  # every frame differs from the last by the full range
    assert bench.dynamic_degree_per_minute(frames, fps=1) == [1.0, 1.0]  # the 10-frame tail is no minute
    assert bench.dynamic_degree_per_minute(frames[:100], fps=1) == [1.0, 1.0]


def test_a_steady_motion_schedule_prompts_the_same_motions_every_minute():
    """The dynamic-degree target compares each minute with the first: with ``steady_motions`` every minute
    asks for the same motions (in a new order), while colours and shapes still change at every switch."""
    from videossm_core.demo import world
    from videossm_core.schedule import parse_schedule

    bench = _bench_demo_quality()
    assert bench.build_schedule(5, 20, seed=0) == bench.build_schedule(5, 20, seed=0, steady_motions=False)
    for seed in range(4):
        specs = [world.parse_prompt(e.prompt) for e in parse_schedule(bench.build_schedule(5, 20, seed, True)).entries]
        assert len(specs) == 15
        minutes = [sorted(s.motion for s in specs[i:i + 3]) for i in range(0, 15, 3)]
        assert all(m == minutes[0] for m in minutes)
        assert all((a.colour, a.shape) != (b.colour, b.shape) for a, b in zip(specs, specs[1:]))
    random_minutes = [sorted(s.motion for s in (world.parse_prompt(e.prompt) for e in
                      parse_schedule(bench.build_schedule(5, 20, seed=0)).entries[i:i + 3])) for i in range(0, 15, 3)]
    assert any(m != random_minutes[0] for m in random_minutes)  # which a random schedule does not do


def test_objects_pushed_past_a_frame_edge_are_counted_and_the_world_keeps_its_own_whole():
    """The benchmark's out-of-distribution measure: an object a frame edge cuts counts as cut, a whole one
    does not, and the world acting out a schedule keeps its objects whole."""
    from videossm_core.training.evaluate import object_statistics

    bench = _bench_demo_quality()
    segments = [("a red square bouncing on a dark background", 40), ("a blue ring floating on a dark background", 40)]
    world_clip = bench.world_renders(segments, height=64, width=64, seeds=(0,))[0]
    whole = object_statistics([world_clip], stride=2)
    assert whole["cut_by_edge"] == 0.0 and 150 < whole["area"] < 600

    # The same frames with the picture moved 40 rows down (the top filled with the background's first row):
    # the object now sits across the bottom edge, or past it, in every frame.
    shifted = np.concatenate([np.repeat(world_clip[:, :1], 40, axis=1), world_clip[:, :-40]], axis=1)
    measured = object_statistics([shifted], stride=2)
    assert measured["cut_by_edge"] == 1.0


def test_switch_latency_counts_chunks_until_the_new_prompt_shows_before_the_next_switch():
    bench = _bench_demo_quality()
    ok = [True, True, False, False, True, True, False, False, False, True]
    #     switch at 2: shows at 4 (2 late); at 6: never before the switch at 8; at 8: shows at 9
    assert bench.switch_latencies(ok, [2, 6, 8]) == [2, None, 1]
    assert bench.within_2_chunks([2, None, 1, 0]) == 0.5


def test_the_worlds_own_frames_reach_the_measurement_through_the_vae_and_the_mp4(tmp_path):
    """The switch reference: the world's render of a schedule, decoded by the demo VAE chunk by chunk and read
    back from an mp4, keeps its length and (for a clear scene) still reads as its prompt, switch included."""
    import pytest

    from videossm_core.demo.bundle import demo_files_present, load_demo_bundle
    from videossm_core.schedule import parse_schedule

    if not demo_files_present():
        pytest.skip("demo weights not present")
    bench = _bench_demo_quality()
    vae = load_demo_bundle().vae
    schedule = parse_schedule("0s: a red circle floating on a dark background\n"
                              "1.5s: a blue square floating on a dark background\n")  # chunk 2 of 4
    clip = bench.world_renders([("a red circle floating on a dark background", 21),
                                ("a blue square floating on a dark background", 24)], 64, 64, seeds=(0,))[0]
    decoded = bench.through_vae_and_mp4(clip, vae, str(tmp_path / "world.mp4"))
    assert decoded.shape == clip.shape and (tmp_path / "world.mp4").is_file()
    assert np.abs(decoded.astype(int) - clip.astype(int)).mean() > 0  # it really went through the VAE
    rows = bench.chunk_rows(decoded, schedule, total=4)
    assert [r["ok"] for r in rows] == [True, True, True, True]
    assert bench.switch_latencies([r["ok"] for r in rows], [2]) == [0]
