"""Measure a demo generator on decoded frames: prompt following, switch latency, long-run stability.

Everything is read back from pixels with the world's own ``measure_frame``, so no learned judge is
involved:
- *prompt following*: per generated chunk, the majority colour and shape over its decoded frames must
  equal the active prompt's (chunks right after a switch are reported separately);
- *switch latency*: chunks after a switch until colour and shape match the new prompt;
- *stability*: dynamic degree (mean absolute frame difference) per minute of a long stream, relative
  to the first minute, plus the fraction of chunks where an object is found at all.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from ..config import SamplingConfig, StreamConfig
from ..demo import world
from ..sampling import PromptSegment, StreamSampler
from ..state import StreamState
from .data import tensor_to_frames


def chunk_measure(frames: np.ndarray, stride: int = 2) -> dict[str, Any]:
    """Majority colour / shape / background over some of a chunk's frames ``uint8 [T, H, W, 3]``."""
    measures = [world.measure_frame(f) for f in frames[::stride]]
    colours = Counter(m.colour for m in measures if m.colour is not None)
    shapes = Counter(m.shape for m in measures if m.shape is not None and not m.clipped)
    backgrounds = Counter(m.background for m in measures)
    return {"colour": colours.most_common(1)[0][0] if colours else None,
            "shape": shapes.most_common(1)[0][0] if shapes else None,
            "background": backgrounds.most_common(1)[0][0] if backgrounds else None,
            "found": sum(m.colour is not None for m in measures) / max(1, len(measures))}


def matches(measure: dict[str, Any], prompt: str) -> dict[str, bool]:
    spec = world.parse_prompt(prompt)
    return {"colour": measure["colour"] == spec.colour, "shape": measure["shape"] == spec.shape,
            "background": measure["background"] == spec.background}


def shape_confusion(pairs: Iterable[tuple[str, str | None]]) -> dict[str, dict[str, int]]:
    """``(prompted shape, drawn shape or None)`` pairs -> ``{prompted: {drawn or "none": count}}``: shows
    *which* wrong shape a model draws (e.g. every shape as a round blob), which an accuracy hides."""
    table: dict[str, dict[str, int]] = {}
    for prompted, drawn in pairs:
        row = table.setdefault(prompted, {})
        key = drawn or "none"
        row[key] = row.get(key, 0) + 1
    return table


def object_statistics(clips: list[np.ndarray], stride: int = 4) -> dict[str, float]:
    """Of every ``stride``-th frame of ``clips`` (each ``[T, H, W, 3]`` uint8) that shows an object:

    - ``cut_by_edge``: the fraction whose object a frame edge cuts. The world's motions keep objects on
      screen (its own renders read 0-0.4 % cut), so a cut object has drifted out of its distribution (and
      its shape cannot be read);
    - ``area``: the mean area in pixels of the whole (uncut) objects.
    """
    measures = [world.measure_frame(frame) for clip in clips for frame in clip[::stride]]
    found = [m for m in measures if m.centroid is not None]
    whole = [m.area for m in found if not m.clipped]
    return {"cut_by_edge": sum(m.clipped for m in found) / max(1, len(found)),
            "area": float(np.mean(whole)) if whole else 0.0}


def objects_beside_world(clips: list[np.ndarray], world_clips: list[np.ndarray], stride: int = 4) -> dict[str, Any]:
    """``object_statistics`` of generated ``clips`` beside the world's own renders of the same prompts:
    ``objects_cut_by_frame_edge``, ``world_objects_cut_by_frame_edge`` and ``object_area_vs_world``."""
    objects, world_objects = object_statistics(clips, stride), object_statistics(world_clips, stride)
    return {"objects_cut_by_frame_edge": round(objects["cut_by_edge"], 4),
            "world_objects_cut_by_frame_edge": round(world_objects["cut_by_edge"], 4),
            "object_area_vs_world": round(objects["area"] / world_objects["area"], 3) if world_objects["area"] else None}


@torch.no_grad()
def evaluate_teacher(model, text_encoder, vae, num_clips: int, latent_shape: tuple[int, int, int, int],
                     seed: int = 0, guidance: float = 3.0, steps: int = 16, shift: float = 5.0,
                     guidance_max_sigma: float | None = None) -> dict[str, Any]:
    """Sample ``num_clips`` clips from the bidirectional teacher (Euler ODE with CFG), decode, measure.

    Returns the colour / shape / background accuracies over the clips (majority over each clip's frames),
    ``drawn_shape_by_prompted_shape``, and the object size and edge cuts beside the world's own renders of
    the same prompts (``object_statistics``; guidance enlarges objects, see ``interval_guidance``)."""
    from .data import WorldPrompts
    from .teacher import ode_sigmas, sample_ode

    prompts = [WorldPrompts().prompt(seed, 0, i) for i in range(num_clips)]
    cond = text_encoder.encode(prompts).float()
    uncond = text_encoder.encode([""] * num_clips).float()
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn((num_clips, *latent_shape), generator=gen)
    x0, _ = sample_ode(model, noise, cond, uncond, guidance, ode_sigmas(steps, shift),
                       guidance_max_sigma=guidance_max_sigma)
    frames = tensor_to_frames(vae.decode(x0.to(vae.dtype)).float())
    hits, drawn = Counter(), []
    for clip, prompt in zip(frames, prompts):
        measure = chunk_measure(clip, stride=4)
        hits.update({k: int(v) for k, v in matches(measure, prompt).items()})
        drawn.append((world.parse_prompt(prompt).shape, measure["shape"]))
    num_frames, height, width = frames.shape[1:4]
    renders = [world.render_clip(p, num_frames, height, width, seed=seed + i)[0] for i, p in enumerate(prompts)]
    return {**{f"{k}_accuracy": hits[k] / num_clips for k in ("colour", "shape", "background")},
            "drawn_shape_by_prompted_shape": shape_confusion(drawn),
            **objects_beside_world(list(frames), renders, stride=2)}


@torch.no_grad()
def word_swap_sensitivity(forward, encode, latents: Tensor, prompts: Sequence[str], sigma: float = 0.7,
                          seed: int = 0) -> dict[str, float]:
    """How much a teacher uses each kind of prompt word, measured on real clip latents.

    ``forward(x_t, timestep, context)`` is the teacher, ``encode(prompts) -> context`` its text encoder,
    ``latents`` ``[N, C, F, h, w]`` world clips and ``prompts`` their N prompts. Returns, per attribute
    (colour, shape, motion, background), the relative rise of the flow-matching loss at noise level
    ``sigma`` when that word of every prompt is swapped for another of its kind (same noise), and under
    ``"whole prompt"`` the rise with empty prompts. About 0 means the teacher ignores that word.
    """
    from .teacher import flow_matching_loss

    specs = [world.parse_prompt(p) for p in prompts]
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed))
    sigmas = torch.full((len(specs),), float(sigma))

    def loss(texts: list[str]) -> float:
        return float(flow_matching_loss(forward, latents, encode(texts), sigmas, noise))

    base = loss([s.prompt() for s in specs])
    rng = np.random.default_rng(seed)
    kinds = {"colour": list(world.COLOURS), "shape": list(world.SHAPES), "motion": list(world.MOTIONS),
             "background": list(world.BACKGROUNDS)}
    out = {}
    for kind, words in kinds.items():
        swapped = [s.replace(**{kind: rng.choice([w for w in words if w != getattr(s, kind)])}).prompt()
                   for s in specs]
        out[kind] = loss(swapped) / base - 1.0
    out["whole prompt"] = loss([""] * len(specs)) / base - 1.0
    return out


def stream_decoded_chunks(model, vae, encode, segments: Sequence[tuple[int, str]], num_chunks: int,
                          latent_hw: tuple[int, int], stream: StreamConfig, sampling: SamplingConfig,
                          seed: int = 0) -> Iterator[tuple[int, str, np.ndarray]]:
    """Generate and decode a stream chunk by chunk: yields ``(chunk, active prompt, uint8 [T, H, W, 3])``."""
    prompt_segments = []
    for start, prompt in segments:
        cond = encode(prompt)
        uncond = encode("") if sampling.guidance_scale != 1.0 else None
        prompt_segments.append(PromptSegment(start, prompt, cond, uncond))
    state = StreamState.new(model.config, stream, sampling, seed=seed)
    decoder = vae.stream_decoder()
    sampler = StreamSampler(model)
    for out in sampler.stream_chunks_inplace(state, prompt_segments, num_chunks, latent_hw):
        frames = tensor_to_frames(decoder.decode_chunk(out.latents.to(vae.device, vae.dtype)).float())[0]
        yield out.index, prompt_segments[out.segment_index].prompt, frames


def evaluate_switching(model, vae, encode, prompts: Sequence[tuple[str, str]], chunks_per_prompt: int,
                       latent_hw: tuple[int, int], stream: StreamConfig, sampling: SamplingConfig,
                       seed: int = 0) -> dict[str, Any]:
    """For each ``(first, second)`` prompt pair: a stream of ``2 * chunks_per_prompt`` chunks that switches
    at the middle. Reports per-chunk accuracy (all chunks, and excluding the 2 chunks after the
    switch) and the switch latency in chunks (None when it never matched)."""
    rows, latencies, colour_latencies = [], [], []
    for pair_index, (first, second) in enumerate(prompts):
        switch_chunk = chunks_per_prompt
        latency = colour_latency = None
        for chunk, prompt, frames in stream_decoded_chunks(
                model, vae, encode, [(0, first), (switch_chunk, second)], 2 * chunks_per_prompt, latent_hw,
                stream, sampling, seed + pair_index):
            m = chunk_measure(frames)
            ok = matches(m, prompt)
            since = chunk - switch_chunk
            rows.append({"pair": pair_index, "chunk": chunk, "since_switch": since, **{k: bool(v) for k, v in ok.items()},
                         "measured": m})
            if since >= 0 and latency is None and ok["colour"] and ok["shape"]:
                latency = since
            if since >= 0 and colour_latency is None and ok["colour"]:
                colour_latency = since
        latencies.append(latency)
        colour_latencies.append(colour_latency)

    def acc(key: str, selected: list[dict[str, Any]]) -> float:
        return sum(r[key] for r in selected) / max(1, len(selected))

    steady = [r for r in rows if not 0 <= r["since_switch"] < 2]
    both = [dict(r, both=r["colour"] and r["shape"]) for r in rows]
    steady_both = [dict(r, both=r["colour"] and r["shape"]) for r in steady]
    return {
        "chunks": len(rows),
        "colour_accuracy": acc("colour", rows), "shape_accuracy": acc("shape", rows),
        "background_accuracy": acc("background", rows), "colour_and_shape_accuracy": acc("both", both),
        "steady_colour_and_shape_accuracy": acc("both", steady_both),
        "switch_latency_chunks": latencies,
        "switch_within_2_chunks": sum(lat is not None and lat < 2 for lat in latencies) / max(1, len(latencies)),
        "steady_colour_accuracy": acc("colour", steady),
        "colour_switch_latency_chunks": colour_latencies,
        "colour_switch_within_2_chunks": sum(lat is not None and lat < 2 for lat in colour_latencies)
        / max(1, len(colour_latencies)),
        "failures": [{k: r[k] for k in ("pair", "chunk", "since_switch", "measured")}
                     for r in rows if not (r["colour"] and r["shape"])][:20],
    }


def evaluate_long_run(model, vae, encode, schedule: Sequence[tuple[int, str]], num_chunks: int,
                      latent_hw: tuple[int, int], stream: StreamConfig, sampling: SamplingConfig, fps: int = 16,
                      seed: int = 0) -> dict[str, Any]:
    """One long stream: per-minute dynamic degree, object presence and prompt accuracy."""
    frames_per_minute = 60 * fps
    minutes: list[dict[str, Any]] = []
    current: dict[str, Any] = {"frames": 0, "dd_sum": 0.0, "chunks": 0, "found": 0.0, "ok": 0, "colour_ok": 0}
    previous = None
    for chunk, prompt, frames in stream_decoded_chunks(model, vae, encode, schedule, num_chunks, latent_hw,
                                                       stream, sampling, seed):
        if previous is not None:
            frames_all = np.concatenate([previous[None], frames])
        else:
            frames_all = frames
        diffs = np.abs(np.diff(frames_all.astype(np.float32), axis=0)).mean(axis=(1, 2, 3)) / 255.0
        previous = frames[-1]
        m = chunk_measure(frames, stride=3)
        ok = matches(m, prompt)
        current["frames"] += len(frames)
        current["dd_sum"] += float(diffs.sum())
        current["dd_n"] = current.get("dd_n", 0) + len(diffs)
        current["chunks"] += 1
        current["found"] += m["found"]
        current["ok"] += int(ok["colour"] and ok["shape"])
        current["colour_ok"] += int(ok["colour"])
        if current["frames"] >= frames_per_minute:
            minutes.append(current)
            current = {"frames": 0, "dd_sum": 0.0, "chunks": 0, "found": 0.0, "ok": 0, "colour_ok": 0}
    if current["chunks"]:
        minutes.append(current)
    per_minute = [{"dynamic_degree": m["dd_sum"] / max(1, m.get("dd_n", 1)),
                   "object_found": m["found"] / m["chunks"], "accuracy": m["ok"] / m["chunks"],
                   "colour_accuracy": m["colour_ok"] / m["chunks"],
                   "seconds": m["frames"] / fps} for m in minutes]
    first = per_minute[0]["dynamic_degree"] if per_minute else 0.0
    ratios = [pm["dynamic_degree"] / first if first > 0 else float("nan") for pm in per_minute]
    return {"per_minute": per_minute, "dd_ratio_to_first_minute": ratios,
            "dd_within_50pct": all(0.5 <= r <= 1.5 for r in ratios if r == r),
            "accuracy": sum(m["ok"] for m in minutes) / max(1, sum(m["chunks"] for m in minutes)),
            "colour_accuracy": sum(m["colour_ok"] for m in minutes) / max(1, sum(m["chunks"] for m in minutes))}


def _pairs(num: int, seed: int) -> list[tuple[str, str]]:
    from .data import WorldPrompts

    source = WorldPrompts()
    out = []
    for i in range(num):
        first = source.prompt(seed, 9999, i)
        out.append((first, source.switch(first, seed, 9999, i)))
    return out


def evaluate_bundle(weights: str | Path | None = None, generator: str | Path | None = None, seconds: float = 20.0,
                    long_seconds: float = 0.0, num_prompts: int = 4, seed: int = 0) -> dict[str, Any]:
    """Evaluate the demo files in ``weights`` (default: the shipped ones), optionally with another generator."""
    from ..demo.bundle import load_demo_bundle, load_demo_generator

    bundle = load_demo_bundle(directory=weights)
    model = bundle.model
    if generator is not None:
        model, _ = load_demo_generator(generator)
    encoder = bundle.text_encoder

    def encode(prompt: str) -> Tensor:
        with torch.no_grad():
            return encoder.encode([prompt]).float()

    h, w = bundle.resolution
    latent_hw = (h // bundle.vae.spatial_stride, w // bundle.vae.spatial_stride)
    chunk_seconds = bundle.stream_config.chunk_frames * 4 / bundle.fps
    chunks_per_prompt = max(3, int(round(seconds / 2 / chunk_seconds)))
    t0 = time.time()
    results: dict[str, Any] = {"switching": evaluate_switching(
        model, bundle.vae, encode, _pairs(num_prompts, seed), chunks_per_prompt, latent_hw, bundle.stream_config,
        bundle.sampling_config, seed)}
    results["switching_wall_s"] = round(time.time() - t0, 1)
    if long_seconds > 0:
        t0 = time.time()
        num_chunks = int(round(long_seconds / chunk_seconds))
        pairs = _pairs(max(1, int(long_seconds // 30)), seed + 1)
        schedule, chunk, prompt = [], 0, pairs[0][0]
        step = max(1, num_chunks // len(pairs))
        for i in range(len(pairs)):  # a new prompt every ``step`` chunks, each a variation of the last
            schedule.append((chunk, prompt))
            prompt = pairs[i][1] if i + 1 < len(pairs) else prompt
            chunk += step
        results["long_run"] = evaluate_long_run(model, bundle.vae, encode, schedule, num_chunks, latent_hw,
                                                bundle.stream_config, bundle.sampling_config, bundle.fps, seed)
        results["long_run"]["schedule"] = schedule
        results["long_run_wall_s"] = round(time.time() - t0, 1)
    return results
