"""Stream-state size and the cost of checkpointing it, at the real model's size and on the demo.

    python benchmarks/bench_state.py [--dir outputs/bench_state] [--demo-seconds 60] [--no-vae-cache]

1. The full-size state: Wan2.1-1.3B (30 blocks, 12 heads x 128) at 832x480 (1560 tokens per latent
   frame), the default window (12 latent frames, sink included), caches in bf16, memory and gates in
   float32, the 512-token prompt's cross-attention K/V, and the Wan2.1 VAE decoder's causal caches
   (the real decoder config with random weights, one chunk decoded). No model runs: the tensors have
   the shapes and dtypes a real stream holds. Printed: size per part, save and load time, and the
   saves' share of generation time at one save per 60 s and at the default policy (every 60 s, or
   further apart when a save is slow, so that saving stays under 5 %).
2. The demo model through ``generate_video``: wall time with the default policy and with a checkpoint
   after every chunk (the old behaviour), the time spent in checkpoints (the mp4's flush to disk and
   the state's save) and its share.

Target (issue #22): a save at the default policy costs <= 5 % of generation time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def full_size_state(with_vae_cache: bool, preset: str = "wan2.1-t2v-1.3b", grid: tuple[int, int] = (30, 52)):
    import torch

    from videossm_core.config import SamplingConfig, StreamConfig, get_preset
    from videossm_core.state import StreamState

    config, stream = get_preset(preset), StreamConfig()
    tokens = grid[0] * grid[1]  # 832x480 -> 104x60 latents -> 52x30 tokens
    latent_hw = (grid[0] * config.patch_size[1], grid[1] * config.patch_size[2])
    slots = stream.window_frames * tokens
    h, d = config.num_heads, config.head_dim
    state = StreamState.new(config, stream, SamplingConfig(), seed=0)
    gen = torch.Generator().manual_seed(0)

    def bf16(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.bfloat16)

    branch = state.branches["cond"]
    branch.slot_frames = list(range(stream.window_frames))
    branch.text_embedding = torch.randn(1, config.text_len, config.text_dim, generator=gen)
    for layer in branch.layers:
        layer.k, layer.v = bf16(1, slots, h, d), bf16(1, slots, h, d)
        layer.g = -torch.rand(1, slots, h, generator=gen) * 1e-4
        layer.beta = torch.rand(1, slots, h, generator=gen)
        layer.memory = torch.randn(1, h, d, d, generator=gen)
        layer.text_k, layer.text_v = bf16(1, config.text_len, h, d), bf16(1, config.text_len, h, d)
    state.next_frame = 3 * 40
    state.latent_shape = (config.in_dim, *latent_hw)
    state.recent_latents = torch.randn(1, config.in_dim, stream.window_frames - stream.sink_frames, *latent_hw,
                                       generator=gen)
    if with_vae_cache:
        from videossm_core.generate import store_decoder
        from videossm_core.vae import WAN21_VAE_CONFIG, build_vae

        print("decoding one chunk with the Wan2.1 VAE config (random weights) for its caches ...", flush=True)
        vae = build_vae(WAN21_VAE_CONFIG, seed=0)
        decoder = vae.stream_decoder()
        with torch.no_grad():
            decoder.decode_chunk(torch.randn(1, 16, 3, *latent_hw, generator=gen))
        store_decoder(state, decoder)
        state.vae_cache = {k: v.bfloat16() if v.is_floating_point() else v for k, v in state.vae_cache.items()}
    return state


def part_sizes(state) -> dict[str, float]:
    from videossm_core.state import LayerCache

    sizes: dict[str, float] = {}
    for branch in state.branches.values():
        for layer in branch.layers:
            for name in LayerCache.TENSOR_FIELDS:
                t = getattr(layer, name)
                if t is not None:
                    sizes[name] = sizes.get(name, 0.0) + t.nbytes / 2**20
    sizes["vae_cache"] = sum(t.nbytes for t in state.vae_cache.values()) / 2**20
    return sizes


def bench_full_size(folder: str, with_vae_cache: bool, policy_seconds: float, preset: str,
                    grid: tuple[int, int]) -> dict:
    from videossm_core.generate import MAX_CHECKPOINT_SHARE
    from videossm_core.state import StreamState

    state = full_size_state(with_vae_cache, preset, grid)
    sizes = part_sizes(state)
    path = os.path.join(folder, "full.state.safetensors")
    t0 = time.perf_counter()
    state.save(path)
    save_s = time.perf_counter() - t0
    file_mib = os.path.getsize(path) / 2**20
    del state
    t0 = time.perf_counter()
    loaded = StreamState.load(path)
    loaded.nbytes()
    load_s = time.perf_counter() - t0
    os.remove(path)
    # The default policy saves every 60 s, or every save_s * 19 s when that is longer (5 % cap).
    interval = max(policy_seconds, save_s * (1 - MAX_CHECKPOINT_SHARE) / MAX_CHECKPOINT_SHARE)
    return {"sizes_mib": sizes, "file_mib": file_mib, "save_s": save_s, "load_s": load_s,
            "save_mib_per_s": file_mib / save_s, "share_every_60_s": save_s / (policy_seconds + save_s),
            "default_interval_s": interval, "share_at_default_policy": save_s / (interval + save_s)}


def bench_demo(folder: str, seconds: float) -> dict:
    from unittest import mock

    from videossm_core import generate
    from videossm_core.cli import DEMO_SCHEDULE
    from videossm_core.demo.bundle import load_demo_bundle
    from videossm_core.schedule import parse_schedule

    bundle = load_demo_bundle()
    schedule = parse_schedule(DEMO_SCHEDULE if seconds >= 60 else "0s: a red circle bouncing on a dark background")

    def encode(prompt):
        return bundle.text_encoder.encode([prompt])

    out = {}
    for label, every in (("default", None), ("every_chunk", 0.0)):
        spent = {"s": 0.0, "n": 0}
        real_checkpoint = generate.save_checkpoint

        def timed_checkpoint(state, path, writer):  # the mp4's flush and the state's save
            t = time.perf_counter()
            real_checkpoint(state, path, writer)
            spent["s"] += time.perf_counter() - t
            spent["n"] += 1

        kwargs = {} if every is None else {"checkpoint_seconds": every}
        height, width = bundle.resolution
        t0 = time.perf_counter()
        with mock.patch.object(generate, "save_checkpoint", timed_checkpoint):
            for _ in generate.generate_video(bundle.model, bundle.vae, encode, schedule, seconds, width, height,
                                    video_path=os.path.join(folder, f"{label}.mp4"),
                                    stream=bundle.stream_config, sampling=bundle.sampling_config,
                                    state_path=os.path.join(folder, f"{label}.state.safetensors"), **kwargs):
                pass
        wall = time.perf_counter() - t0
        out[label] = {"wall_s": wall, "saves": spent["n"], "save_s": spent["s"], "share": spent["s"] / wall}
        print(f"  demo {label}: {wall:.1f} s, {spent['n']} checkpoints, {spent['s']:.2f} s in them "
              f"({100 * spent['s'] / wall:.1f} %)", flush=True)
    return out


def main(argv=None) -> int:
    from videossm_core.generate import DEFAULT_CHECKPOINT_SECONDS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="outputs/bench_state", help="where the files are written (a real disk)")
    parser.add_argument("--demo-seconds", type=float, default=60.0, help="length of the demo runs (0: skip)")
    parser.add_argument("--no-vae-cache", action="store_true", help="skip the Wan VAE decoder caches (faster)")
    parser.add_argument("--preset", default="wan2.1-t2v-1.3b", help="model shape (tests use 'tiny')")
    parser.add_argument("--grid", type=int, nargs=2, default=(30, 52), metavar=("H", "W"),
                        help="tokens per latent frame (default 30 52: 832x480)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    os.makedirs(args.dir, exist_ok=True)
    try:
        full = bench_full_size(args.dir, not args.no_vae_cache, DEFAULT_CHECKPOINT_SECONDS, args.preset,
                               tuple(args.grid))
        demo = bench_demo(args.dir, args.demo_seconds) if args.demo_seconds > 0 else {}
    finally:
        shutil.rmtree(args.dir, ignore_errors=True)
    print(f"\nstream state ({args.preset}, {args.grid[0]}x{args.grid[1]} tokens per frame, window 12, bf16 caches), "
          "MiB by part:")
    for name, mib in full["sizes_mib"].items():
        print(f"  {name:<10} {mib:10.1f}")
    print(f"  {'file':<10} {full['file_mib']:10.1f}")
    print(f"save {full['save_s']:.2f} s ({full['save_mib_per_s']:.0f} MiB/s, fsynced), load {full['load_s']:.2f} s "
          "(memory-mapped)")
    print(f"a save every {DEFAULT_CHECKPOINT_SECONDS:.0f} s would cost {100 * full['share_every_60_s']:.1f} % of the "
          f"run; the default policy saves every {full['default_interval_s']:.0f} s here: "
          f"{100 * full['share_at_default_policy']:.1f} % (target <= 5 %)")
    if demo:
        print(f"demo, {args.demo_seconds:g} s of video: saves cost {100 * demo['default']['share']:.1f} % of the run "
              f"at the default policy ({demo['default']['saves']} saves) and {100 * demo['every_chunk']['share']:.1f} % "
              f"saving after every chunk ({demo['every_chunk']['saves']} saves)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"full_size": full, "demo": demo}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
