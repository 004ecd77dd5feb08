"""Does the global memory earn its place? Hidden-attribute recall of three memories tuned with one recipe.

    python benchmarks/bench_memory.py --hybrid runs/recall/hybrid --sink runs/recall/sink --window runs/recall/window \
        --vae runs/vae_marked [--seeds 6] [--minutes 3] [--json outputs/bench_memory.json]
    python benchmarks/bench_memory.py --small      # CI: the shipped generator under the three stream settings

``--memory-off HYBRID`` adds those weights with the memory switched off at inference: what the memory itself recalls.

For every variant and seed the generator streams a long video over a schedule of the world's memory episodes
(``world.sample_memory_episode``: revisits X -> A -> B -> A, and scenes whose object slides out of a world wider than
the frame and comes back), the video is decoded chunk by chunk and every other frame is read back with the world's
own ``measure_frame`` (no learned judge). Each scene's marking is hidden (never in the prompt) and the generator
draws one when the scene first appears; what is measured is whether the *same* marking comes back:

- **recall after a revisit**: the marking in the first 2 chunks of A's second visit equals the one A showed at the
  end of its first visit (events where A showed none are not counted; a revisit that shows none is a miss);
- **recall after a return**: in a sliding scene, the object is out of view for >= 3 s (longer than the window) and
  re-enters: the marking after equals the marking before;
- **chance**: a marking drawn afresh uniformly matches with probability 1 / (markings possible for that colour);
  beside it the variant's **own** chance, how often two of its own first-visit draws for that colour agree (a
  generator that favours some markings matches more often without remembering anything);
- **copies of the first scene** (what a sink alone would do): a revisit's marking equal to the first scene's while
  A's was another; and chunks whose colour and shape are the first scene's while the prompt asks for others;
- **dynamic degree per minute** beside the world's own for the same episodes (freezing: ratio << 1);
- **prompt accuracy** (colour and shape of the chunks that show the whole object) and **switch latency** (chunks until the new
  prompt's colour and shape show; rate within 2 chunks).

With ``--teacher-forced N`` each variant also takes the *teacher-forced* recall test on N held-out episodes
(``recall.teacher_forced_recall``): the world's true past streamed into its cache up to a revisit, the revisit's
first 2 chunks sampled, their marking read back. The first visit is the world's own there, so chance is exactly
uniform, and the test measures what the memory recalls apart from how the generator draws first visits. Beside it,
how often the revisit shows the marking of the scene in the window just before (B's, never A's): copying, not
remembering.

Rates pool the events of all seeds, with Wilson 95 % intervals. The world's own frames, passed through the same VAE,
are measured the same way (the "world" row): the ceiling of what the measurement can read.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections import Counter
from typing import Any, Sequence

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from videossm_core.demo.world import dynamic_degree_per_minute  # noqa: E402 (after the path)
from videossm_core.schedule import chunk_start_frame  # noqa: E402 (the first chunk holds 9 frames, later ones 12)

WINDOW_VIDEO_FRAMES = 48  # the local window (12 latent frames): a marking hidden longer must come from elsewhere
VARIANT_ORDER = ("hybrid", "sink", "window")


# ---------------------------------------------------------------------------------------------- statistics

def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float, float]:
    """Rate ``k / n`` with its Wilson 95 % interval ``(rate, low, high)``; NaNs for n = 0."""
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return p, max(0.0, centre - half), min(1.0, centre + half)


def majority(values: Sequence[Any]) -> Any:
    found = [v for v in values if v is not None]
    return Counter(found).most_common(1)[0][0] if found else None


# ---------------------------------------------------------------------------------------------- per-frame reading

def read_frames(frames: np.ndarray, stride: int = 2) -> list[dict[str, Any]]:
    """``world.measure_frame`` of every ``stride``-th frame as plain dicts (frame index, colour, shape, marking,
    found, clipped)."""
    from videossm_core.demo import world

    rows = []
    for t in range(0, len(frames), stride):
        m = world.measure_frame(frames[t])
        rows.append({"frame": t, "colour": m.colour, "shape": None if m.clipped else m.shape,
                     "marking": None if m.clipped else m.marking, "found": m.colour is not None,
                     "clipped": m.clipped})
    return rows


def rows_between(rows: list[dict[str, Any]], start: int, end: int) -> list[dict[str, Any]]:
    return [r for r in rows if start <= r["frame"] < end]


# ---------------------------------------------------------------------------------------------- schedule

def scenes_of(schedule: Sequence[tuple[int, str]], total_frames: int) -> list[dict[str, Any]]:
    """The schedule ``[(start video frame, prompt), ...]`` as scenes with their frame ranges and visit number."""
    seen: Counter = Counter()
    scenes = []
    bounds = [f for f, _ in schedule] + [total_frames]
    for (start, prompt), end in zip(schedule, bounds[1:]):
        scenes.append({"start": start, "end": end, "prompt": prompt, "visit": seen[prompt]})
        seen[prompt] += 1
    return scenes


def revisit_events(rows: list[dict[str, Any]], scenes: list[dict[str, Any]], chunk_frames: int = 12) -> list[dict]:
    """One record per revisited scene: the marking at the end of its previous visit (last 2 chunks), the marking in
    the first 2 chunks of the revisit, the first scene's marking, and whether the revisit recalled it."""
    first_marking = majority([r["marking"] for r in rows_between(rows, scenes[0]["start"], scenes[0]["end"])])
    out = []
    for i, scene in enumerate(scenes):
        if scene["visit"] == 0:
            continue
        previous = next(s for s in reversed(scenes[:i]) if s["prompt"] == scene["prompt"])
        hidden = scene["start"] - previous["end"]
        if hidden <= WINDOW_VIDEO_FRAMES:
            continue  # still in the window: not a memory event
        before = majority([r["marking"] for r in rows_between(
            rows, max(previous["start"], previous["end"] - 2 * chunk_frames), previous["end"])])
        after = majority([r["marking"] for r in rows_between(
            rows, scene["start"], min(scene["end"], scene["start"] + 2 * chunk_frames))])
        out.append({"frame": scene["start"], "prompt": scene["prompt"], "hidden_frames": hidden,
                    "before": before, "after": after, "first_scene": first_marking,
                    "recalled": before is not None and after == before,
                    "copied_first": (before is not None and after is not None and after == first_marking
                                     and before != first_marking)})
    return out


def return_events(rows: list[dict[str, Any]], scenes: list[dict[str, Any]], window: int = 12) -> list[dict]:
    """In each scene whose object slides: the first time its marking is out of view for longer than the local
    window, with the object wholly gone for a while in between (it left the frame), and comes back. The marking of
    the last ``window`` frames before (fully visible frames only) against the first ``window`` after."""
    out = []
    for scene in scenes:
        if "sliding" not in scene["prompt"]:
            continue
        seen = rows_between(rows, scene["start"], scene["end"])
        readable = [k for k, r in enumerate(seen) if r["found"] and not r["clipped"]]
        for a, b in zip(readable, readable[1:]):
            gone = any(not r["found"] for r in seen[a + 1:b])
            if gone and seen[b]["frame"] - seen[a]["frame"] > WINDOW_VIDEO_FRAMES:
                before = majority([seen[k]["marking"] for k in readable if k <= a][-window // 2:])
                after = majority([seen[k]["marking"] for k in readable if k >= b][:window // 2])
                out.append({"frame": seen[b]["frame"], "prompt": scene["prompt"],
                            "hidden_frames": seen[b]["frame"] - seen[a]["frame"], "before": before, "after": after,
                            "recalled": before is not None and after == before})
                break
    return out


def chance_of(prompt: str) -> float:
    from videossm_core.demo import world

    return 1.0 / len(world.marking_candidates(world.parse_prompt(prompt).colour))


def own_chance(first_markings: Sequence[tuple[str, str]], prompts: Sequence[str]) -> float:
    """Chance that two independent draws of a generator's own marking agree, for the colours of ``prompts``: per
    colour, the unbiased estimate of sum_m p_m^2 from the markings it gave scenes of that colour on their first visit
    (``first_markings``: (colour, marking) pairs); the uniform chance where fewer than 2 were seen. A generator that
    favours some markings matches more often than uniform without remembering anything."""
    from videossm_core.demo import world

    counts: dict[str, Counter] = {}
    for colour, marking in first_markings:
        counts.setdefault(colour, Counter())[marking] += 1
    out = []
    for prompt in prompts:
        colour = world.parse_prompt(prompt).colour
        c = counts.get(colour, Counter())
        n = sum(c.values())
        out.append(sum(k * (k - 1) for k in c.values()) / (n * (n - 1)) if n >= 2 else chance_of(prompt))
    return float(np.mean(out)) if out else float("nan")


def chunk_table(rows: list[dict[str, Any]], scenes: list[dict[str, Any]], total_frames: int) -> list[dict[str, Any]]:
    """Per chunk: the active prompt, what shows (majority colour and shape), chunks since the scene started."""
    from videossm_core.demo import world

    table, chunk = [], 0
    while chunk_start_frame(chunk) < total_frames:
        a, b = chunk_start_frame(chunk), chunk_start_frame(chunk + 1)
        scene = next(s for s in scenes if s["start"] <= a < s["end"])
        part = rows_between(rows, a, b)
        spec = world.parse_prompt(scene["prompt"])
        colour, shape = majority([r["colour"] for r in part]), majority([r["shape"] for r in part])
        # In view: most of its frames show the whole object (not a chunk where it slides out of a wider world).
        in_view = sum(r["found"] and not r["clipped"] for r in part) * 2 >= len(part)
        table.append({"chunk": chunk, "prompt": scene["prompt"], "scene_start": scene["start"],
                      "found": any(r["found"] for r in part), "in_view": in_view, "colour": colour, "shape": shape,
                      "ok": colour == spec.colour and shape == spec.shape})
        chunk += 1
    return table


def measure_video(frames: np.ndarray, schedule: Sequence[tuple[int, str]]) -> dict[str, Any]:
    """Every measurement of one video against its schedule (video frames)."""
    from videossm_core.demo import world

    rows = read_frames(frames)
    scenes = scenes_of(schedule, len(frames))
    table = chunk_table(rows, scenes, len(frames))
    first = world.parse_prompt(scenes[0]["prompt"])
    latencies = []
    for scene in scenes[1:]:
        chunks = [c for c in table if c["scene_start"] == scene["start"]]
        latencies.append(next((i for i, c in enumerate(chunks) if c["ok"]), None))
    shown = [c for c in table if c["in_view"]]
    later = [c for c in table if c["scene_start"] > 0]
    sink_copies = [c for c in later if (c["colour"], c["shape"]) == (first.colour, first.shape)
                   and (world.parse_prompt(c["prompt"]).colour, world.parse_prompt(c["prompt"]).shape)
                   != (first.colour, first.shape)]
    # the marking each scene got on its first visit: how often a generator draws each one (own_chance)
    first_markings = [(world.parse_prompt(sc["prompt"]).colour,
                       majority([r["marking"] for r in rows_between(rows, sc["start"], sc["end"])]))
                      for sc in scenes if sc["visit"] == 0]
    return {"revisits": revisit_events(rows, scenes), "returns": return_events(rows, scenes),
            "first_markings": [(c, m) for c, m in first_markings if m is not None],
            "prompt_ok": sum(c["ok"] for c in shown), "prompt_n": len(shown),
            "found": sum(c["found"] for c in table) / max(1, len(table)),
            "switch_latencies": latencies, "sink_copy_chunks": len(sink_copies), "later_chunks": len(later),
            "dynamic_degree_per_minute": dynamic_degree_per_minute(frames)}


# ---------------------------------------------------------------------------------------------- generation

def episode_schedule(seed: int, seconds: float, height: int = 64, width: int = 64, fps: int = 16):
    """The world's memory episodes for ``seconds`` of video: ``(frames, schedule)``, frames its own render."""
    from videossm_core.demo import world

    num_frames = 1 + 4 * (int(seconds * fps) // 4)
    episode = world.sample_memory_episode(np.random.default_rng(10_000 + seed), num_frames, height, width)
    return episode.frames, [(int(f), p) for f, p in episode.schedule]


def generate(model, vae, encoder, schedule, num_frames: int, stream, sampling, seed: int) -> np.ndarray:
    """Stream the generator over ``schedule`` (video frames, switches on chunk starts) and decode: uint8 frames."""
    import torch

    from videossm_core.training.evaluate import stream_decoded_chunks

    def encode(prompt: str):
        with torch.no_grad():
            return encoder.encode([prompt]).float()

    segments = [(0 if f == 0 else (f + 3) // 12, p) for f, p in schedule]  # video frame -> chunk
    num_chunks = -(-(num_frames + 3) // 12)  # ceil: the last chunk may run past the end
    parts = [frames for _, _, frames in stream_decoded_chunks(model, vae, encode, segments, num_chunks, (16, 16),
                                                              stream, sampling, seed)]
    return np.concatenate(parts)[:num_frames]


def through_vae(frames: np.ndarray, vae) -> np.ndarray:
    """The world's own frames encoded and decoded chunk by chunk by ``vae`` (what the measurement can read)."""
    import torch

    from videossm_core.training.data import frames_to_tensor, tensor_to_frames

    encoder, decoder = vae.stream_encoder(), vae.stream_decoder()
    out, chunk = [], 0
    with torch.no_grad():
        while chunk_start_frame(chunk) < len(frames):
            x = frames_to_tensor(frames[chunk_start_frame(chunk):chunk_start_frame(chunk + 1)])
            out.append(tensor_to_frames(decoder.decode_chunk(encoder.encode_chunk(x.to(vae.device, vae.dtype))).float())[0])
            chunk += 1
    return np.concatenate(out)[:len(frames)]


# ---------------------------------------------------------------------------------------------- summary

def summarise(videos: list[dict[str, Any]], world_dd: list[list[float]]) -> dict[str, Any]:
    """Pool the per-seed measurements of one variant."""
    rev = [e for v in videos for e in v["revisits"]]
    ret = [e for v in videos for e in v["returns"]]
    rev_counted = [e for e in rev if e["before"] is not None]
    ret_counted = [e for e in ret if e["before"] is not None]
    lat = [x for v in videos for x in v["switch_latencies"]]
    drawn = [pair for v in videos for pair in v["first_markings"]]
    dd_ratio = [g / w for v, wd in zip(videos, world_dd) for g, w in zip(v["dynamic_degree_per_minute"], wd) if w > 0]
    out = {
        "revisit_recall": wilson(sum(e["recalled"] for e in rev_counted), len(rev_counted)),
        "revisit_events": len(rev), "revisit_counted": len(rev_counted),
        "revisit_chance": float(np.mean([chance_of(e["prompt"]) for e in rev_counted])) if rev_counted else float("nan"),
        "revisit_own_chance": own_chance(drawn, [e["prompt"] for e in rev_counted]),
        "revisit_copied_first": wilson(sum(e["copied_first"] for e in rev_counted), len(rev_counted)),
        "return_recall": wilson(sum(e["recalled"] for e in ret_counted), len(ret_counted)),
        "return_events": len(ret), "return_counted": len(ret_counted),
        "return_own_chance": own_chance(drawn, [e["prompt"] for e in ret_counted]),
        "return_chance": float(np.mean([chance_of(e["prompt"]) for e in ret_counted])) if ret_counted else float("nan"),
        "prompt_accuracy": wilson(sum(v["prompt_ok"] for v in videos), sum(v["prompt_n"] for v in videos)),
        "object_found": float(np.mean([v["found"] for v in videos])),
        "switch_within_2": wilson(sum(x is not None and x < 2 for x in lat), len(lat)),
        "sink_copy_chunks": wilson(sum(v["sink_copy_chunks"] for v in videos), sum(v["later_chunks"] for v in videos)),
        "dd_ratio_to_world": (float(np.mean(dd_ratio)), float(np.min(dd_ratio)), float(np.max(dd_ratio)))
        if dd_ratio else (float("nan"),) * 3,
    }
    return out


def _fmt(rate) -> str:
    p, lo, hi = rate
    return "   n/a          " if p != p else f"{100 * p:5.1f} [{100 * lo:4.1f}-{100 * hi:5.1f}]"


def _chances(r: dict[str, Any], kind: str) -> str:
    """Uniform chance / the variant's own (how often its own marking draws agree), in %."""
    uniform, own = r[f"{kind}_chance"], r[f"{kind}_own_chance"]
    return "n/a" if uniform != uniform else f"{100 * uniform:4.0f}/{100 * own:3.0f}%"


def print_table(results: dict[str, dict[str, Any]]) -> None:
    head = (f"{'variant':10} | {'revisit recall %':18} {'chance/own':11} {'n':>4} | {'return recall %':18} {'chance/own':11} "
            f"{'n':>4} | {'copied 1st %':18} | {'prompt acc %':18} | {'switch<=2 %':18} | {'sink-copy chunks %':18} | "
            f"dd/world (min-max)")
    print(head)
    print("-" * len(head))
    for name, r in results.items():
        dd = r["dd_ratio_to_world"]
        print(f"{name:10} | {_fmt(r['revisit_recall']):18} {_chances(r, 'revisit'):11} {r['revisit_counted']:4d} | "
              f"{_fmt(r['return_recall']):18} {_chances(r, 'return'):11} {r['return_counted']:4d} | "
              f"{_fmt(r['revisit_copied_first']):18} | {_fmt(r['prompt_accuracy']):18} | {_fmt(r['switch_within_2']):18} | "
              f"{_fmt(r['sink_copy_chunks']):18} | {dd[0]:.2f} ({dd[1]:.2f}-{dd[2]:.2f})")


def load_variant(path: str):
    """A generator file or run folder and the stream settings it records (its own sink/window/memory)."""
    import json as _json
    from pathlib import Path

    from videossm_core.config import SamplingConfig, StreamConfig
    from videossm_core.demo.bundle import META_SAMPLING, META_STREAM, load_demo_generator, read_generator_metadata

    p = Path(path)
    if p.is_dir():
        p = next(p / n for n in ("student.safetensors", "generator.safetensors") if (p / n).is_file())
    meta = read_generator_metadata(p)
    model, _ = load_demo_generator(p)
    return (model.eval(), StreamConfig.from_dict(_json.loads(meta[META_STREAM])),
            SamplingConfig.from_dict(_json.loads(meta[META_SAMPLING])))


def teacher_forced_task(task: dict[str, Any]) -> dict[str, Any]:
    """One variant's teacher-forced recall on the held-out episodes in ``task["episodes"]``."""
    import torch

    from videossm_core.demo.bundle import load_demo_bundle
    from videossm_core.training.data import EpisodeDataset, TextConditioner
    from videossm_core.training.recall import teacher_forced_recall

    torch.set_num_threads(1)
    t0 = time.time()
    bundle = load_demo_bundle(directory=task["weights"])
    model, stream, sampling = _variant_model(task, bundle)
    vae = _vae(task, bundle)
    rows = teacher_forced_recall(model, stream, sampling, TextConditioner(bundle.text_encoder, model.config.text_len),
                                 vae, EpisodeDataset.load(task["episodes"]), seed=task["seed"])
    return {"name": task["name"], "rows": rows, "wall_s": time.time() - t0}


def summarise_teacher_forced(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"recall": wilson(sum(r["hit"] for r in rows), len(rows)), "events": len(rows),
            "chance": float(np.mean([r["chance"] for r in rows])) if rows else float("nan"),
            "none_drawn": sum(r["drawn"] is None for r in rows),
            # the marking of the scene in the window (B, never A's) drawn on A: copying, not remembering
            "window_copied": wilson(sum(r["drawn"] is not None and r["drawn"] == r["window_marking"] for r in rows),
                                    len(rows))}


def _vae(task: dict[str, Any], bundle):
    if not task["vae"]:
        return bundle.vae
    from videossm_core.training.vae_training import load_trained_vae

    return load_trained_vae(task["vae"])


def _variant_model(task: dict[str, Any], bundle):
    """``(model, stream, sampling)`` of a task's variant: its file's own, or the shipped generator under the variant's
    memory; "hybrid-off" is the hybrid's weights with the memory switched off at inference."""
    from videossm_core.config import StreamConfig
    from videossm_core.training.recall import VARIANTS

    if task["path"]:
        model, stream, sampling = load_variant(task["path"])
        if task["name"] == "hybrid-off":
            stream = stream.replace(memory=False)
        return model, stream, sampling
    stream = StreamConfig(**{**bundle.stream_config.to_dict(), **VARIANTS[task["name"]], "router_horizon_frames": None})
    return bundle.model, stream, bundle.sampling_config


def run_task(task: dict[str, Any]) -> dict[str, Any]:
    """One video: the world's own episode through the VAE (``task["name"] == "world"``) or a variant's generation,
    measured. Loads what it needs itself, so tasks can run in worker processes."""
    import torch

    from videossm_core.demo.bundle import load_demo_bundle

    if task.get("episodes"):
        return teacher_forced_task(task)
    torch.set_num_threads(1)
    t0 = time.time()
    bundle = load_demo_bundle(directory=task["weights"])
    vae = _vae(task, bundle)
    frames, schedule = episode_schedule(task["seed"], task["seconds"])
    if task["name"] == "world":
        video = through_vae(frames, vae)
    else:
        model, stream, sampling = _variant_model(task, bundle)
        video = generate(model, vae, bundle.text_encoder, schedule, len(frames), stream, sampling, task["seed"])
    return {"name": task["name"], "seed": task["seed"], "measured": measure_video(video, schedule),
            "world_dd": dynamic_degree_per_minute(frames), "wall_s": time.time() - t0}


HELD_OUT_SEED = 7000  # recall tuning encodes its episodes with seed 2000 (its --seed + 2000)


def encode_held_out(num_episodes: int, path: str, vae_path: str | None, weights: str | None) -> None:
    """``num_episodes`` memory episodes the recall stage never trains on, encoded (16 s each) into ``path``; revisits
    only (the teacher-forced test scores those)."""
    from videossm_core.demo.bundle import load_demo_bundle
    from videossm_core.training.data import encode_memory_episodes

    vae = _vae({"vae": vae_path}, load_demo_bundle(directory=weights))
    encode_memory_episodes(vae, num_episodes, 66, 64, 64, HELD_OUT_SEED, kinds=("revisit",)).save(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in VARIANT_ORDER:
        parser.add_argument(f"--{name}", help=f"the {name} variant: a recall run folder or generator file")
    parser.add_argument("--vae", help="VAE file or run (default: the shipped demo VAE)")
    parser.add_argument("--weights", help="demo files folder for the text encoder (and the VAE; default: shipped)")
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--minutes", type=float, default=3.0, help="video length (>= 10x the 16 s training episodes)")
    parser.add_argument("--memory-off", metavar="HYBRID",
                        help="also run these hybrid weights with the memory switched off at inference (row "
                             "'hybrid-off': what the memory itself contributes)")
    parser.add_argument("--no-world", action="store_true",
                        help="skip the world's own row (the ceiling), e.g. when another run of the same seeds has it")
    parser.add_argument("--teacher-forced", type=int, default=0, metavar="N",
                        help="also the teacher-forced recall test on N held-out episodes of 16 s (0: skip)")
    parser.add_argument("--generated", action=argparse.BooleanOptionalAction, default=True,
                        help="the generated long videos (--no-generated: the teacher-forced test alone)")
    parser.add_argument("--jobs", type=int, default=1, help="videos generated at once (worker processes, 1 thread each)")
    parser.add_argument("--small", action="store_true",
                        help="CI: one seed, 40 s, the shipped generator under each variant's stream settings")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)

    names = [n for n in VARIANT_ORDER if getattr(args, n) or args.small]
    paths = {n: getattr(args, n) for n in VARIANT_ORDER}
    if args.memory_off:
        names.append("hybrid-off")
        paths["hybrid-off"] = args.memory_off
    if not names:
        parser.error("give --hybrid/--sink/--window generator files, or --small")
    seeds = 1 if args.small else args.seeds
    seconds = 40.0 if args.small else args.minutes * 60
    rows = names if args.no_world else ["world", *names]
    rows = rows if args.generated else []
    tasks = [{"name": name, "path": paths.get(name), "seed": seed, "seconds": seconds, "vae": args.vae,
              "weights": args.weights} for name in rows for seed in range(seeds)]
    t0 = time.time()
    num_tf = 2 if args.small and not args.teacher_forced else args.teacher_forced
    tmp = None
    if num_tf:
        import tempfile

        tmp = tempfile.TemporaryDirectory(prefix="bench_memory_")
        episodes = os.path.join(tmp.name, "episodes.safetensors")
        encode_held_out(num_tf, episodes, args.vae, args.weights)
        # First: a variant's whole test is longer than one video, and a pool finishes sooner with its longest tasks first.
        tasks = [{"name": name, "path": paths.get(name), "seed": 0, "vae": args.vae, "weights": args.weights,
                  "episodes": episodes} for name in names] + tasks
    if args.jobs > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            done = list(pool.map(run_task, tasks))
    else:
        done = [run_task(task) for task in tasks]
    if tmp is not None:
        tmp.cleanup()
    forced = {d["name"]: d for d in done if "rows" in d}
    done = [d for d in done if "rows" not in d]
    results, walls = {}, {}
    for name in rows:
        runs = sorted((d for d in done if d["name"] == name), key=lambda d: d["seed"])
        results[name] = summarise([d["measured"] for d in runs], [d["world_dd"] for d in runs])
        walls[name] = round(sum(d["wall_s"] for d in runs), 1)
    print(f"bench_memory: {seeds} seed(s), {seconds:g} s videos, {time.time() - t0:.0f} s wall "
          f"(seconds per variant, all seeds: {walls})")
    if results:
        print_table(results)
    tf_results = {name: summarise_teacher_forced(d["rows"]) for name, d in forced.items()}
    if tf_results:
        print(f"teacher-forced recall after a revisit ({num_tf} held-out episodes; wall s: "
              f"{ {n: round(d['wall_s']) for n, d in forced.items()} })")
        for name, r in tf_results.items():
            print(f"{name:10} | {_fmt(r['recall']):18} chance {100 * r['chance']:3.0f}% | n {r['events']:3d} | "
                  f"window's marking copied {_fmt(r['window_copied'])} | none drawn {r['none_drawn']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"seeds": seeds, "seconds": seconds, "wall_s": walls, "results": results,
                       "teacher_forced": {"episodes": num_tf, "results": tf_results,
                                          "rows": {n: d["rows"] for n, d in forced.items()}}}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
