"""Quality of the bundled demo model on the demo world, read back from the mp4 the main job writes.

    python benchmarks/bench_demo_quality.py [--minutes 5] [--switch-every 20] [--steady-motions]
                                            [--out outputs/quality.mp4] [--weights DIR]

Runs the main job (``videossm_core.generate.generate_video``, the same path as the CLI) on a schedule
that changes the prompt every ``--switch-every`` seconds, then reads the frames back from the mp4 and
measures them with the world's own pixel measurements (no learned judge):

- prompt following: per chunk, the majority foreground colour and shape against the active prompt
  (target: >= 90 % of chunks; chunks within 2 of a switch are counted too, and also reported apart);
- switch latency: chunks after each switch until colour and shape match the new prompt (0 = the
  first chunk of the new prompt already matches; target: 0 or 1, i.e. within 2 chunks). The world's own
  renders of the schedule, passed through the same demo VAE and H.264, are measured the same way beside
  it: the small VAE blurs some shapes into others (a diamond or ring read as a circle), so even the world
  itself, so decoded, misses some chunks and now and then a switch; that is the measurement's ceiling;
- stability: dynamic degree (mean absolute frame difference) per minute relative to the first minute
  (target: within 50 % — no collapse, no freezing), and the fraction of chunks with an object at all.
  The prompts name the motion, so a minute of "resting" and "floating" prompts is calmer than one of
  "bouncing" ones even in the world itself: the world's own dynamic degree for the same schedule
  (rendered with 3 seeds) is reported too, and the generator's per-minute ratio divided by the
  world's separates drift (collapse, freezing) from following the prompted motions. ``--steady-motions``
  prompts the same motions every minute (in a new order), so the raw per-minute ratio means what the
  target means;
- drift the dynamic degree does not see: the fraction of frames whose object a frame edge cuts (the
  world's motions keep objects on screen, and a cut object's shape cannot be read), and the mean object
  area, each beside the world's own for the same schedule.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from videossm_core.demo.world import dynamic_degree_per_minute  # noqa: E402 (after the path)


def build_schedule(minutes: float, switch_every: float, seed: int, steady_motions: bool = False) -> str:
    """A schedule that walks through the world's vocabulary, one change of prompt per step.

    ``steady_motions``: every minute prompts the same motions as the first, in a new order (colours, shapes
    and backgrounds stay random), so that each minute's dynamic degree is compared with a first minute
    that asked for as much motion; a random schedule may ask for resting objects all through its last minute.
    """
    from dataclasses import replace

    from videossm_core.demo import world

    rng = np.random.default_rng(seed)
    spec = world.sample_spec(rng)
    per_minute = max(1, round(60 / switch_every))  # prompts a minute
    if steady_motions:  # (drawn only then: the default schedule for a seed stays what it always was)
        motions = list(rng.choice(world.MOTIONS, per_minute, replace=per_minute > len(world.MOTIONS)))
    lines, t, step = [], 0.0, 0
    while t < minutes * 60 - 1e-9:
        if steady_motions:
            if step and step % per_minute == 0:
                motions = list(rng.permutation(motions))
            spec = replace(spec, motion=str(motions[step % per_minute]))
        lines.append(f"{t:g}s: {spec.prompt()}")
        nxt = world.sample_spec(rng)
        while (nxt.colour, nxt.shape) == (spec.colour, spec.shape):  # every switch must be visible
            nxt = world.sample_spec(rng)
        spec, t, step = nxt, t + switch_every, step + 1
    return "\n".join(lines) + "\n"


def world_renders(segments: list[tuple[str, int]], height: int, width: int, seeds=(0, 1, 2)) -> list[np.ndarray]:
    """The world itself acting out ``segments`` (prompt, frames), once per seed (each draws its own object
    sizes, speeds and paths): ``[T, H, W, 3]`` uint8 each."""
    from videossm_core.demo import world

    return [world.render_long_clip(segments, height, width, seed=seed)[0] for seed in seeds]


def mean_dynamic_degree_per_minute(clips: list[np.ndarray], fps: int) -> list[float]:
    """``dynamic_degree_per_minute`` averaged over ``clips`` (the world's renders of one schedule)."""
    runs = [dynamic_degree_per_minute(clip, fps) for clip in clips]
    return [float(np.mean(minute)) for minute in zip(*runs)]


def chunk_rows(frames: np.ndarray, schedule, total: int) -> list[dict]:
    """Per chunk of ``frames [T, H, W, 3]`` (the stream's chunks: 9 frames, then 12): what it shows against the
    prompt active there (majority colour and shape over every 2nd frame)."""
    from videossm_core.demo import world
    from videossm_core.schedule import chunk_start_frame
    from videossm_core.training.evaluate import chunk_measure, matches

    switch_chunks = [e.chunk for e in schedule.entries[1:]]
    rows = []
    for chunk in range(total):
        measure = chunk_measure(frames[chunk_start_frame(chunk):chunk_start_frame(chunk + 1)])
        prompt = schedule.prompt_at_chunk(chunk)
        ok = matches(measure, prompt)
        rows.append({"chunk": chunk, "ok": ok["colour"] and ok["shape"], "colour": ok["colour"],
                     "shape": ok["shape"], "found": measure["found"],
                     "since_switch": min([chunk - s for s in switch_chunks if s <= chunk], default=None),
                     "prompted_shape": world.parse_prompt(prompt).shape, "drawn_shape": measure["shape"]})
    return rows


def switch_latencies(ok: list[bool], switch_chunks: list[int]) -> list[int | None]:
    """Per switch: chunks until the new prompt is first matched (0 = in its first chunk), looking only up to the
    next switch (None: never matched before it). ``ok[c]``: chunk c matches its prompt."""
    ends = switch_chunks[1:] + [len(ok)]
    return [next((c - s for c in range(s, end) if ok[c]), None) for s, end in zip(switch_chunks, ends)]


def within_2_chunks(latencies: list[int | None]) -> float:
    return sum(lat is not None and lat < 2 for lat in latencies) / max(1, len(latencies))


def through_vae_and_mp4(clip: np.ndarray, vae, path: str) -> np.ndarray:
    """``clip [T, H, W, 3]`` uint8 encoded and decoded by ``vae`` chunk by chunk (9 frames, then 12), written to
    an mp4 at ``path`` and read back: the world's own frames reach the measurement the way the generator's do,
    so what the VAE and H.264 lose (a demo VAE blurs some shapes into others) shows in the world's figures too."""
    import torch

    from videossm_core.schedule import chunk_start_frame
    from videossm_core.training.data import frames_to_tensor
    from videossm_core.video_io import Mp4Writer, frames_to_uint8, read_video

    encoder, decoder = vae.stream_encoder(), vae.stream_decoder()
    with Mp4Writer(path) as writer, torch.no_grad():
        chunk = 0
        while chunk_start_frame(chunk) < len(clip):
            x = frames_to_tensor(clip[chunk_start_frame(chunk):chunk_start_frame(chunk + 1)])  # [1, 3, T, H, W]
            writer.write(frames_to_uint8(decoder.decode_chunk(encoder.encode_chunk(x.to(vae.device, vae.dtype)))))
            chunk += 1
    return read_video(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--switch-every", type=float, default=20.0, help="seconds between prompt switches")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steady-motions", action="store_true",
                        help="every minute prompts the same motions as the first, in a new order")
    parser.add_argument("--out", default="outputs/quality.mp4")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--weights", help="a folder of demo files to measure instead of the bundled ones "
                                          "(e.g. the output of `python -m videossm_core.training export`)")
    args = parser.parse_args()

    import torch

    from videossm_core.config import StreamConfig
    from videossm_core.demo.bundle import load_demo_bundle
    from videossm_core.generate import generate_video
    from videossm_core.schedule import chunk_start_frame, parse_schedule
    from videossm_core.training.evaluate import objects_beside_world, shape_confusion
    from videossm_core.video_io import read_video

    bundle = load_demo_bundle(directory=args.weights)
    schedule = parse_schedule(build_schedule(args.minutes, args.switch_every, args.seed, args.steady_motions))
    seconds = args.minutes * 60
    stream = StreamConfig(**{**bundle.stream_config.to_dict(), "position_mode": "unbounded",
                             "router_horizon_frames": round(seconds * bundle.fps / 4)})

    def encode(prompt: str):
        with torch.no_grad():
            return bundle.text_encoder.encode([prompt]).float()

    height, width = bundle.resolution
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    t0 = time.perf_counter()
    total = 0
    for event in generate_video(bundle.model, bundle.vae, encode, schedule, seconds, width, height,
                                video_path=args.out, seed=args.seed, stream=stream,
                                sampling=bundle.sampling_config):
        total = event.total
    gen_wall = time.perf_counter() - t0

    frames = read_video(args.out)  # what a viewer sees, after H.264
    switch_chunks = [e.chunk for e in schedule.entries[1:]]
    rows = chunk_rows(frames, schedule, total)
    latencies = switch_latencies([r["ok"] for r in rows], switch_chunks)
    fps = bundle.fps
    per_minute = dynamic_degree_per_minute(frames, fps)
    dd_ratio = [d / per_minute[0] for d in per_minute] if per_minute and per_minute[0] > 0 else []
    starts = [chunk_start_frame(e.chunk) for e in schedule.entries] + [len(frames)]
    world_clips = world_renders([(e.prompt, b - a) for e, a, b in zip(schedule.entries, starts, starts[1:])],
                                height, width)
    # The first render through the demo VAE and H.264, measured like the generator's frames: how often the world
    # itself, so decoded, reads right, and how soon its switches show (the measurement's ceiling with this VAE).
    # One render: encoding and decoding 5 minutes costs about as much as generating them.
    world_decoded = chunk_rows(through_vae_and_mp4(world_clips[0], bundle.vae, args.out + ".world.mp4"), schedule, total)
    world_latencies = switch_latencies([r["ok"] for r in world_decoded], switch_chunks)
    world_minute = mean_dynamic_degree_per_minute(world_clips, fps)
    world_ratio = [d / world_minute[0] for d in world_minute]
    dd_vs_world = [r / w if w > 0 else float("inf") for r, w in zip(dd_ratio, world_ratio)]
    steady = [r for r in rows if r["since_switch"] is None or r["since_switch"] >= 2]
    figures = {
        "video": args.out, "seconds": seconds, "chunks": total, "frames_read_back": int(len(frames)),
        "generation_wall_s": round(gen_wall, 1),
        "colour_and_shape_accuracy": sum(r["ok"] for r in rows) / len(rows),
        "colour_accuracy": sum(r["colour"] for r in rows) / len(rows),
        "shape_accuracy": sum(r["shape"] for r in rows) / len(rows),
        "steady_accuracy_(>=2_chunks_after_switch)": sum(r["ok"] for r in steady) / max(1, len(steady)),
        "object_found": sum(r["found"] for r in rows) / len(rows),
        "switch_latency_chunks": latencies,
        "switches_within_2_chunks": within_2_chunks(latencies),
        "world_through_vae_colour_and_shape_accuracy": sum(r["ok"] for r in world_decoded) / len(world_decoded),
        "world_through_vae_switch_latency_chunks": world_latencies,
        "world_through_vae_switches_within_2_chunks": within_2_chunks(world_latencies),
        "dynamic_degree_per_minute": [round(d, 5) for d in per_minute],
        "dynamic_degree_ratio_to_first_minute": [round(r, 3) for r in dd_ratio],
        "dynamic_degree_within_50pct": all(0.5 <= r <= 1.5 for r in dd_ratio),
        "world_dynamic_degree_ratio_to_first_minute": [round(r, 3) for r in world_ratio],
        "dynamic_degree_ratio_vs_world": [round(r, 3) for r in dd_vs_world],
        "dynamic_degree_vs_world_within_50pct": all(0.5 <= r <= 1.5 for r in dd_vs_world),
        # Drift out of the world's distribution that the dynamic degree does not see: objects pushed past a
        # frame edge (which the world's motions do not do) or drawn larger than the world draws them.
        **objects_beside_world([frames], world_clips),
        # Where the shape misses come from: per prompted shape, how many chunks drew each shape ("none": no
        # shape could be read). The schedule is random, so the prompted shapes are not equally frequent.
        "drawn_shape_by_prompted_shape": shape_confusion((r["prompted_shape"], r["drawn_shape"]) for r in rows),
    }
    print(json.dumps(figures, indent=2))
    print(f"\nprompt following: {figures['colour_and_shape_accuracy']:.1%} of chunks (target >= 90 %)")
    print(f"switches that took effect within 2 chunks: {figures['switches_within_2_chunks']:.0%} (latencies {latencies})")
    print(f"the world's own renders through the demo VAE and H.264: colour and shape "
          f"{figures['world_through_vae_colour_and_shape_accuracy']:.1%} of chunks, switches within 2 chunks "
          f"{figures['world_through_vae_switches_within_2_chunks']:.0%} (latencies {world_latencies})")
    print(f"dynamic degree per minute / first minute: {figures['dynamic_degree_ratio_to_first_minute']} "
          f"(target: each within 0.5..1.5); the world's own for the same prompts: "
          f"{figures['world_dynamic_degree_ratio_to_first_minute']}")
    print(f"dynamic degree ratio / the world's ratio (drift apart from the prompted motions): "
          f"{figures['dynamic_degree_ratio_vs_world']}")
    print(f"objects cut by a frame edge: {figures['objects_cut_by_frame_edge']:.1%} of frames (the world's own: "
          f"{figures['world_objects_cut_by_frame_edge']:.1%}); object area / the world's: "
          f"{figures['object_area_vs_world']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
