"""The quality benchmark's own measurements (the script itself runs minutes of video: not a unit test)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest


def _bench_demo_quality():
    return _bench("bench_demo_quality")


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


# ---------------------------------------------------------------------------------------------------
# speed benchmarks: their code paths at toy sizes (the figures themselves come from real runs)


def _bench(name: str):
    import sys

    path = Path(__file__).resolve().parents[2] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _numbers(line: str, label: str) -> list[float]:
    return [float(x) for x in line[len(label):].split() if x != "-"]


def test_bench_gpu_tiny_prints_every_row_with_finite_figures(tmp_path, capsys):
    """``bench_gpu.py --tiny``: all four runs (compiled ones through compile_streaming with dynamo's eager
    backend, so no C++ compiler is needed), the bf16/fp32 deviation and the write comparison, in the table
    and in the JSON."""
    import json
    import math

    import torch

    bench = _bench("bench_gpu")
    threads = torch.get_num_threads()
    try:
        # warm-up 4: the window is full after chunk 3, so the one measured chunk evicts (a memory write)
        assert bench.main(["--tiny", "--warmup", "4", "--chunks", "1", "--compile-backend", "eager",
                           "--json", str(tmp_path / "out.json")]) == 0
    finally:
        torch.set_num_threads(threads)
        torch._dynamo.reset()
    out = capsys.readouterr().out
    lines = out.splitlines()
    labels = ["window-only eager", "hybrid eager", "window-only compiled", "hybrid compiled"]
    for label in labels:
        (line,) = [ln for ln in lines if ln.startswith(label + " ")]
        values = _numbers(line, label)
        assert len(values) == 7 and all(math.isfinite(v) and v > 0 for v in values), line  # no VRAM on the CPU
        assert values[0] == 1  # measured chunks
    assert any(ln.startswith("hybrid / window-only (eager)") for ln in lines)
    assert any(ln.startswith("compiled / eager (hybrid)") for ln in lines)
    assert "chunk 4:" in out and "memory write of one eviction (48 tokens x 2 heads x 32" in out
    report = json.loads((tmp_path / "out.json").read_text())
    assert [r["label"] for r in report["rows"]] == labels
    for row in report["rows"]:
        for key in ("denoise_ms", "denoise_fps", "with_decode_ms", "with_decode_fps", "first_chunk_ms"):
            assert math.isfinite(row[key]) and row[key] > 0
        assert row["memory_writes"] == (1 if row["memory"] else 0)
    assert len(report["bf16_vs_fp32"]) == 5 and all(0 < d < 0.05 for d in report["bf16_vs_fp32"])
    write = report["write"]
    assert write["auto_resolves_to"] == "chunkwise" and write["chunkwise_vs_fp64_max_abs"] < 1e-4
    assert write["fla_ms"] is None and write["fla_missing"] == "needs CUDA"


def test_bench_gpu_without_a_gpu_says_it_needs_one():
    import os
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_gpu.py"
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 0 and "needs a CUDA GPU" in done.stdout and "--tiny" in done.stdout


def test_bench_streaming_full_dims_block_measures_both_modes_and_the_memory_parts(capsys):
    """The full-width single block at 2x2 tokens per frame: every measured hybrid chunk writes the memory."""
    import math

    import torch

    bench = _bench("bench_streaming")
    threads = torch.get_num_threads()
    try:
        result = bench.full_dims_block((2, 2), chunks=2, threads=threads)
    finally:
        torch.set_num_threads(threads)
    assert result["tokens_per_frame"] == 4 and result["memory_writes_per_chunk"] == 1.0
    assert len(result["window_ms_all"]) == len(result["hybrid_ms_all"]) == 2
    for key in ("window_ms", "hybrid_ms", "ratio", "window_cpu_ms", "hybrid_cpu_ms", "cpu_ratio"):
        assert math.isfinite(result[key]) and result[key] > 0
    assert set(result["parts_ms"]) == set(result["parts_cpu_ms"]) == {"gates", "write", "read", "out_gate"}
    assert all(v > 0 for v in result["parts_ms"].values())
    assert result["parts_ms"]["out_gate"] < result["parts_ms"]["read"]  # the out-gate runs inside the read
    bench.print_full_dims_block(result)
    out = capsys.readouterr().out
    assert "dim 1536, 12 heads, ffn 8960, 2x2 = 4 tokens" in out and "hybrid / window-only " in out


def test_bench_streaming_cache_modes_run():
    """The three cache modes' worker at the tiny preset: chunks timed, evictions into the hybrid memory only."""
    import torch

    bench = _bench("bench_streaming")
    threads = torch.get_num_threads()
    try:
        runs = {mode: bench.run_mode(mode, 6, "tiny", (4, 4), threads) for mode in ("full", "window", "hybrid")}
    finally:
        torch.set_num_threads(threads)
    assert all(len(r["times"]) == 6 and len(r["rss"]) == 6 for r in runs.values())
    assert runs["full"]["evicted_frames"] == 0
    assert runs["window"]["evicted_frames"] == runs["hybrid"]["evicted_frames"] == 6
    assert runs["window"]["memory_writes"] == 0 and runs["hybrid"]["memory_writes"] == 2


def test_bench_state_saves_a_state_of_the_asked_shape_and_reports_the_policy(tmp_path, capsys):
    """``bench_state.py`` at a toy shape: the state file is written and read back, every part is
    sized, and the default policy's share is the capped one (<= 5 %) with the interval it implies."""
    import json

    bench = _bench("bench_state")
    out = tmp_path / "figures.json"
    assert bench.main(["--dir", str(tmp_path / "files"), "--preset", "tiny", "--grid", "2", "2", "--no-vae-cache",
                       "--demo-seconds", "0", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())["full_size"]
    assert set(figures["sizes_mib"]) >= {"k", "v", "g", "beta", "memory", "text_k", "text_v"}
    assert figures["file_mib"] > 0 and figures["save_s"] > 0
    assert figures["default_interval_s"] >= 60 and figures["share_at_default_policy"] <= 0.05 + 1e-9
    assert "default policy saves every" in capsys.readouterr().out
    assert not (tmp_path / "files").exists()  # the benchmark cleans up its files


# ---------------------------------------------------------------------------------------------- bench_memory

def _bench_memory():
    return _bench("bench_memory")


def _forgetful(episode):
    """The episode's frames with every hidden marking that comes back replaced by another candidate: from a
    revisit's first frame, and from a return's first fully visible frame (the same motion, rendered again)."""
    import copy

    from videossm_core.demo import world

    alt = copy.copy(episode)
    alt.states = [st.copy() for st in episode.states]
    frames = episode.frames.copy()
    starts = [s for s, _ in episode.schedule] + [len(frames)]
    changed = []
    for i, (start, prompt) in enumerate(episode.schedule):
        events = [e for e in episode.events if start <= e.frame < starts[i + 1]]
        if events:
            colour = world.parse_prompt(prompt).colour
            other = next(m for m in world.marking_candidates(colour) if m != episode.markings[prompt])
            alt.states[i].markings = {**alt.states[i].markings, prompt: other}
            changed.append((i, events[0].frame))
    rendered = world.render_memory_episode(alt, len(frames))
    for i, frame in changed:
        frames[frame:starts[i + 1]] = rendered[frame:starts[i + 1]]
    return frames


def test_memory_bench_reads_every_recall_on_the_world_and_none_when_the_world_forgets():
    """The benchmark's recall reads the world's own episodes right (every revisit and return found and recalled,
    every chunk's prompt matched at once), and reads no recall at all when each returning marking is swapped."""
    from collections import Counter

    from videossm_core.demo import world

    bench = _bench_memory()
    episode = world.sample_memory_episode(np.random.default_rng(4), 1 + 4 * (90 * 16 // 4))  # 90 s: 3 of each
    kinds = Counter(e.kind for e in episode.events)
    assert kinds["revisit"] >= 2 and kinds["return"] >= 2, kinds
    seen = bench.measure_video(episode.frames, episode.schedule)
    assert len(seen["revisits"]) == kinds["revisit"] and all(e["recalled"] for e in seen["revisits"])
    assert len(seen["returns"]) == kinds["return"] and all(e["recalled"] for e in seen["returns"])
    assert seen["prompt_ok"] == seen["prompt_n"] > 0 and set(seen["switch_latencies"]) == {0}
    assert seen["sink_copy_chunks"] == 0
    assert len(seen["first_markings"]) == len({p for _, p in episode.schedule})  # every scene's first visit
    assert all(m in world.marking_candidates(c) for c, m in seen["first_markings"])
    forgot = bench.measure_video(_forgetful(episode), episode.schedule)
    assert len(forgot["revisits"]) == kinds["revisit"] and not any(e["recalled"] for e in forgot["revisits"])
    assert len(forgot["returns"]) == kinds["return"] and not any(e["recalled"] for e in forgot["returns"])
    # the first scene's marking where A's was another: what copying the sink looks like
    copied = bench.measure_video(episode.frames, episode.schedule)["revisits"][0]
    assert copied["copied_first"] is False


def test_own_chance_is_how_often_a_generators_own_draws_agree():
    """A generator that gives red scenes marking A three times in four matches itself half the time (unbiased
    sum of p^2: 3*2 / (4*3)), well above the uniform 1/3 or 1/4; a colour seen fewer than twice falls back to
    uniform."""
    from videossm_core.demo import world

    bench = _bench_memory()
    red, blue = "a red circle bouncing on a dark background", "a blue ring resting on a light background"
    a, b = world.marking_candidates("red")[:2]
    drawn = [("red", a), ("red", a), ("red", a), ("red", b), ("blue", world.marking_candidates("blue")[0])]
    assert bench.own_chance(drawn, [red]) == 0.5
    assert bench.own_chance(drawn, [blue]) == bench.chance_of(blue)
    assert bench.own_chance(drawn, [red, blue]) == (0.5 + bench.chance_of(blue)) / 2
    assert bench.own_chance([("red", a), ("red", b)] * 2, [red]) == pytest.approx(1 / 3)  # 2 of each: (2+2)/12


def test_wilson_intervals():
    bench = _bench_memory()
    rate, low, high = bench.wilson(0, 10)
    assert rate == 0 and low == 0 and abs(high - 0.2775) < 1e-3
    rate, low, high = bench.wilson(10, 10)
    assert rate == 1 and abs(low - 0.7225) < 1e-3 and high == 1
    rate, low, high = bench.wilson(30, 60)
    assert low < 0.5 < high and abs((high - low) - 0.2458) < 2e-3
    assert all(x != x for x in bench.wilson(0, 0))


def test_memory_bench_small_mode_prints_the_table(tmp_path, capsys):
    """CI's run of bench_memory: one seed, 40 s, the shipped generator under the three stream settings. The world's
    own episodes through the shipped VAE are the measurement's ceiling: recall read right on every counted event."""
    import json

    bench = _bench_memory()
    assert bench.main(["--small", "--json", str(tmp_path / "memory.json")]) == 0
    out = capsys.readouterr().out
    for name in ("world", "hybrid", "sink", "window", "revisit recall", "return recall", "prompt acc"):
        assert name in out
    results = json.loads((tmp_path / "memory.json").read_text())["results"]
    assert set(results) == {"world", "hybrid", "sink", "window"}
    world_row = results["world"]
    assert world_row["revisit_counted"] + world_row["return_counted"] >= 1
    for key in ("revisit_recall", "return_recall"):
        if world_row[key.replace("recall", "counted")]:
            assert world_row[key][0] >= 0.99, (key, world_row[key])
    # The teacher-forced test runs too: every variant scored on the same held-out revisits.
    forced = json.loads((tmp_path / "memory.json").read_text())["teacher_forced"]
    assert "teacher-forced recall" in out and set(forced["results"]) == {"hybrid", "sink", "window"}
    counts = {r["events"] for r in forced["results"].values()}
    assert len(counts) == 1 and counts.pop() >= 1
    assert all(row["kind"] == "revisit" for rows in forced["rows"].values() for row in rows)
