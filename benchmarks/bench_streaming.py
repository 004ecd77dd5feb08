"""Per-chunk cost and memory of a long stream in three cache modes, measured in one run.

    python benchmarks/bench_streaming.py [--chunks 500] [--preset demo] [--latent 16 16]

Modes: ``full`` (a growing cache, as in Self-Forcing / ComfyUI core), ``window`` (sink + rolling window,
as in LongLive) and ``hybrid`` (window + gated delta-rule global memory, VideoSSM). Each mode runs in
its own process (so peak RSS is its own) through the real sampler: 4 denoising steps + the clean pass
per chunk. Printed: median wall time per chunk early (chunks 10-60) and late (the last 50), their
ratio per mode, the hybrid/window ratio, and resident memory early/late/peak.

The demo preset patchifies 4x4 latent pixels, so ``--latent 16 16`` is 16 tokens per latent frame
(the demo's 64x64 video) and ``--latent 32 32`` is 64.

Targets (issue "Core"): hybrid late/early <= 1.05, hybrid over window <= 1.15, RSS flat.

    python benchmarks/bench_streaming.py --full-dims-block [--block-grid 30 52] [--block-chunks 5]

The full-dims single-block mode: one WanBlock at Wan2.1-1.3B's width (dim 1536, 12 heads, ffn 8960, 512 text
tokens) in a one-layer model, driven through the real sampler at ``--block-grid`` tokens per latent frame
(30x52 = 1560 is 832x480). Both streams are first filled to the window (12 latent frames, sink 3), so every
measured chunk (4 steps + clean pass) evicts one chunk into the hybrid stream's memory; window-only and
hybrid chunks alternate (ABBA) in one process. Printed: median ms per chunk of each, their ratio (target
<= 1.05) and the memory's own parts per chunk (gates, write, read and the read's out-gate projection; the rest
of the difference is "other"), each in wall and process CPU time (the CPU time is steadier on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_mode(mode: str, chunks: int, preset: str, latent_hw: tuple[int, int], threads: int) -> dict:
    import torch

    from videossm_core.config import StreamConfig, get_preset
    from videossm_core.model.transformer import CausalWanModel
    from videossm_core.sampling import PromptSegment, StreamSampler
    from videossm_core.state import StreamState

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = get_preset(preset)
    model = CausalWanModel(config).eval()
    stream = StreamConfig(memory=mode == "hybrid", full_cache=mode == "full", position_mode="unbounded",
                          router_horizon_frames=3 * chunks)
    state = StreamState.new(config, stream, seed=0)
    segments = [PromptSegment(0, "benchmark", torch.randn(1, config.text_len, config.text_dim))]
    times, rss = [], []
    sampler = StreamSampler(model)
    gen = sampler.stream_chunks_inplace(state, segments, chunks, latent_hw)
    while True:
        t0 = time.perf_counter()
        try:
            next(gen)
        except StopIteration:
            break
        times.append(time.perf_counter() - t0)
        rss.append(rss_mib())
    return {"mode": mode, "times": times, "rss": rss, "state_mib": state.nbytes() / 2**20,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "evicted_frames": state.counters["evicted_frames"], "memory_writes": state.counters["memory_writes"]}


def full_dims_block(grid_hw: tuple[int, int], chunks: int, threads: int, warmup: int = 1) -> dict:
    """Window-only vs hybrid per-chunk time of one full-width WanBlock (see the module docstring)."""
    import torch

    from videossm_core.config import StreamConfig, get_preset
    from videossm_core.model.transformer import CausalWanModel
    from videossm_core.sampling import PromptSegment, StreamSampler
    from videossm_core.state import StreamState

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = get_preset("wan2.1-t2v-1.3b").replace(num_layers=1)
    model = CausalWanModel(config).eval()
    memory = model.blocks[0].self_attn.memory
    with torch.no_grad():  # an active memory (a fresh one adds exactly zero; the cost is the same either way)
        torch.nn.init.normal_(memory.out_gate.weight, std=0.02)
    _, ph, pw = config.patch_size
    latent_hw = (grid_hw[0] * ph, grid_hw[1] * pw)
    tokens = grid_hw[0] * grid_hw[1]

    # Time the memory's parts where the model calls them (the sampler and the model code are untouched):
    # wall and process CPU time of HybridMemory.gates / write / read, and of the read's out-gate projection.
    parts = {name: [0.0, 0.0] for name in ("gates", "write", "read", "out_gate")}

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            t0, c0 = time.perf_counter(), time.process_time()
            out = fn(*args, **kwargs)
            parts[name][0] += time.perf_counter() - t0
            parts[name][1] += time.process_time() - c0
            return out
        return wrapper

    for name in ("gates", "write", "read"):
        setattr(memory, name, timed(name, getattr(memory, name)))
    memory.out_gate.forward = timed("out_gate", memory.out_gate.forward)

    sampler = StreamSampler(model)
    segment = PromptSegment(0, "benchmark", torch.randn(1, config.text_len, config.text_dim))
    states = {}
    for mode in ("window", "hybrid"):
        stream = StreamConfig(memory=mode == "hybrid", position_mode="unbounded")
        states[mode] = StreamState.new(config, stream, seed=0)
        # fill the window with clean frames (one clean pass per chunk): from here on every chunk evicts
        sampler.prefill_inplace(states[mode], torch.randn(1, config.in_dim, stream.window_frames, *latent_hw),
                                segment)
        print(f"filled the {mode} stream's window", file=sys.stderr, flush=True)
    # wall time, and process CPU time (less sensitive to other processes on a shared machine)
    times = {mode: {"wall": [], "cpu": []} for mode in ("window", "hybrid")}
    part_times = {name: {"wall": [], "cpu": []} for name in parts}
    writes_before = states["hybrid"].counters["memory_writes"]
    for i in range(warmup + chunks):
        order = ("window", "hybrid") if i % 2 == 0 else ("hybrid", "window")  # ABBA against drift
        measured, hybrid_parts = {}, {}
        for mode in order:
            for name in parts:
                parts[name] = [0.0, 0.0]
            t0, c0 = time.perf_counter(), time.process_time()
            sampler.generate_chunk_inplace(states[mode], [segment], latent_hw)
            measured[mode] = (time.perf_counter() - t0, time.process_time() - c0)
            if mode == "hybrid":
                hybrid_parts = {name: tuple(v) for name, v in parts.items()}
        if i >= warmup:
            for mode, (wall, cpu) in measured.items():
                times[mode]["wall"].append(wall)
                times[mode]["cpu"].append(cpu)
            for name, (wall, cpu) in hybrid_parts.items():
                part_times[name]["wall"].append(wall)
                part_times[name]["cpu"].append(cpu)
        print(f"chunk {i + 1}/{warmup + chunks}{' (warm-up)' if i < warmup else ''}: "
              + ", ".join(f"{mode} {w * 1e3:.0f} ms (cpu {c * 1e3:.0f})" for mode, (w, c) in measured.items())
              + "; hybrid's " + ", ".join(f"{k} {w * 1e3:.0f} (cpu {c * 1e3:.0f})" for k, (w, c) in hybrid_parts.items()),
              file=sys.stderr, flush=True)
    writes = states["hybrid"].counters["memory_writes"] - writes_before

    def med(values: list[float]) -> float:
        return statistics.median(values) * 1e3

    result = {"tokens_per_frame": tokens, "grid": list(grid_hw), "chunks": chunks, "threads": threads,
              "memory_writes_per_chunk": writes / (warmup + chunks)}
    for clock in ("wall", "cpu"):
        suffix = "" if clock == "wall" else "_cpu"
        window, hybrid = med(times["window"][clock]), med(times["hybrid"][clock])
        part_ms = {name: med(v[clock]) for name, v in part_times.items()}
        result.update({f"window{suffix}_ms": window, f"hybrid{suffix}_ms": hybrid,
                       f"{'ratio' if clock == 'wall' else 'cpu_ratio'}": hybrid / window,
                       f"parts{suffix}_ms": part_ms,
                       f"other{suffix}_ms": hybrid - window - sum(part_ms[k] for k in ("gates", "write", "read"))})
        result[f"window{suffix}_ms_all"] = [t * 1e3 for t in times["window"][clock]]
        result[f"hybrid{suffix}_ms_all"] = [t * 1e3 for t in times["hybrid"][clock]]
    return result


def print_full_dims_block(r: dict) -> None:
    print(f"\nVideoSSM full-dims single block: dim 1536, 12 heads, ffn 8960, {r['grid'][0]}x{r['grid'][1]} = "
          f"{r['tokens_per_frame']} tokens per latent frame, window 12 (sink 3), chunk 3 frames, 4 steps + clean "
          f"pass, {r['chunks']} chunks each after warm-up, {r['threads']} threads, "
          f"{r['memory_writes_per_chunk']:.0f} memory write per hybrid chunk (medians over the chunks)")
    print(f"{'':28} {'wall ms':>10} {'CPU ms':>10}")
    rows = [("window-only chunk", "window"), ("hybrid chunk", "hybrid")]
    for label, key in rows:
        print(f"{label:28} {r[key + '_ms']:10.1f} {r[key + '_cpu_ms']:10.1f}")
    print(f"{'hybrid / window-only':28} {r['ratio']:10.3f} {r['cpu_ratio']:10.3f}   (target <= 1.05)")
    for name, label in (("gates", "gates"), ("write", "write (one eviction)"), ("read", "read"),
                        ("out_gate", "  of which out-gate linear")):
        print(f"{'hybrid ' + label:28} {r['parts_ms'][name]:10.1f} {r['parts_cpu_ms'][name]:10.1f}")
    print(f"{'other (hybrid-window-parts)':28} {r['other_ms']:10.1f} {r['other_cpu_ms']:10.1f}"
          "   (gate caching, router, the read's add, noise)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=500)
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--latent", type=int, nargs=2, default=(16, 16), metavar=("H", "W"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--modes", nargs="+", default=["full", "window", "hybrid"])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--full-dims-block", action="store_true",
                        help="window-only vs hybrid per-chunk time of one full-width WanBlock")
    parser.add_argument("--block-grid", type=int, nargs=2, default=(30, 52), metavar=("H", "W"),
                        help="tokens per latent frame of --full-dims-block as a grid (30x52 = 1560, 832x480)")
    parser.add_argument("--block-chunks", type=int, default=5, help="measured chunks per mode of --full-dims-block")
    args = parser.parse_args()
    if args.full_dims_block:
        print_full_dims_block(full_dims_block(tuple(args.block_grid), args.block_chunks, args.threads))
        return
    if args.worker:
        print(json.dumps(run_mode(args.worker, args.chunks, args.preset, tuple(args.latent), args.threads)))
        return
    if args.chunks < 120:
        parser.error("use at least 120 chunks (the early and late windows are 50 chunks each)")
    results = {}
    for mode in args.modes:
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", mode, "--chunks", str(args.chunks),
               "--preset", args.preset, "--latent", *map(str, args.latent), "--threads", str(args.threads)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results[mode] = json.loads(out.strip().splitlines()[-1])
        print(f"ran {mode}: {sum(results[mode]['times']):.1f} s", file=sys.stderr)

    def med(values, lo, hi):
        return statistics.median(values[lo:hi])

    n = args.chunks
    print(f"\nVideoSSM streaming benchmark: preset {args.preset}, latent {args.latent[0]}x{args.latent[1]}, "
          f"{n} chunks (4 steps + clean pass each), {args.threads} threads")
    print(f"{'mode':8} {'early ms':>9} {'late ms':>9} {'late/early':>10} {'rss early':>10} {'rss late':>9} "
          f"{'peak rss':>9} {'state MiB':>9}")
    summary = {}
    for mode, r in results.items():
        early, late = med(r["times"], 10, 60), med(r["times"], n - 50, n)
        rss_early, rss_late = med(r["rss"], 10, 60), med(r["rss"], n - 50, n)
        summary[mode] = {"early": early, "late": late, "ratio": late / early,
                         "rss_early": rss_early, "rss_late": rss_late}
        print(f"{mode:8} {early * 1e3:9.2f} {late * 1e3:9.2f} {late / early:10.3f} {rss_early:9.0f}M "
              f"{rss_late:8.0f}M {r['peak_rss_mib']:8.0f}M {r['state_mib']:9.2f}")
    if "hybrid" in summary and "window" in summary:
        h = summary["hybrid"]
        overhead = statistics.median(results["hybrid"]["times"][10:]) / statistics.median(results["window"]["times"][10:])
        print(f"\nhybrid late/early: {h['ratio']:.3f} (target <= 1.05)")
        print(f"hybrid / window-only per chunk (median over chunks 10..{n}): {overhead:.3f} (target <= 1.15)")
        print(f"hybrid RSS late - early: {h['rss_late'] - h['rss_early']:+.1f} MiB (target: flat)")
    if "full" in summary:
        print(f"full-cache late/early: {summary['full']['ratio']:.2f} (grows with video length)")


if __name__ == "__main__":
    main()
