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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=500)
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--latent", type=int, nargs=2, default=(16, 16), metavar=("H", "W"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--modes", nargs="+", default=["full", "window", "hybrid"])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
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
