"""Command line: ``videossm generate | inspect | train`` (also ``python -m videossm_core ...``).

    # a 60-second video from a timed prompt schedule on the bundled demo model
    python -m videossm_core generate --seconds 60 --out outputs/demo.mp4

    # a real checkpoint (Self-Forcing / LongLive / ...), the Wan VAE and a local UMT5 folder
    python -m videossm_core generate --model longlive_base.pt --lora lora.pt --vae Wan2.1_VAE.pth \
        --text-encoder ./umt5-xxl --width 832 --height 480 --schedule-file prompts.txt --seconds 120
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time

DEFAULT_OUT = os.path.join("outputs", "videossm.mp4")

DEMO_SCHEDULE = """\
0s: a red circle bouncing on a dark background
20s: a blue square sliding right on a light background
40s: a yellow triangle orbiting on a striped background
"""


def _progress(total: int):
    try:
        from tqdm import tqdm

        return tqdm(total=total, unit="chunk", dynamic_ncols=True)
    except ImportError:  # tqdm comes with diffusers; fall back to plain lines
        class Lines:
            def __init__(self):
                self.n = 0

            def update(self, k):
                self.n += k
                print(f"chunk {self.n}/{total}", flush=True)

            def set_postfix_str(self, s):
                pass

            def close(self):
                pass

        return Lines()


def _load_models(args):
    """(model, vae, encode, width, height, stream, sampling) from the demo bundle or real files; the
    stream/sampling settings are the ones the model was trained for (None: the library defaults)."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    if args.model is None:
        from .demo.bundle import demo_files_present, load_demo_bundle

        if not demo_files_present():
            raise UsageError("the demo model files are missing from videossm_core/demo/weights; "
                             "reinstall the project or pass --model/--vae/--text-encoder")
        bundle = load_demo_bundle(device=args.device, dtype=dtype)
        encoder = bundle.text_encoder

        def encode(prompt: str):
            with torch.no_grad():
                return encoder.encode([prompt]).to(args.device)

        encode.prompt_warnings = encoder.prompt_warnings  # the demo vocabulary is small: say what is dropped

        height, width = bundle.resolution
        return (bundle.model, bundle.vae, encode, args.width or width, args.height or height,
                bundle.stream_config, bundle.sampling_config)
    from .checkpoints import load_model
    from .vae import load_vae

    if args.vae is None or args.text_encoder is None:
        raise UsageError("with --model, also pass --vae (Wan2.1 VAE) and --text-encoder (a local UMT5 folder)")
    model = load_model(args.model, dtype=dtype, device=args.device, memory_path=args.memory,
                       lora_path=args.lora, lora_strength=args.lora_strength)
    vae = load_vae(args.vae, dtype=dtype, device=args.device)
    from .text import UMT5TextEncoder

    umt5 = UMT5TextEncoder.from_folder(args.text_encoder, dtype=dtype, device=args.device)

    def encode(prompt: str):
        return umt5.encode([prompt]).to(args.device)

    return model, vae, encode, args.width or 832, args.height or 480, None, None


class UsageError(Exception):
    """Bad arguments: one line to the user, exit status 2."""


MAX_SECONDS = 36000.0  # 10 hours, as in the sampler node; longer runs are resumed runs


def demo_schedule(seconds: float) -> str:
    """The demo's three prompts spread over the requested length (fewer when it is too short for three)."""
    from .schedule import ScheduleError, parse_schedule

    prompts = [line.split(":", 1)[1].strip() for line in DEMO_SCHEDULE.splitlines()]
    for count in (3, 2, 1):
        text = "".join(f"{i * seconds / count:.4f}s: {prompts[i]}\n" for i in range(count))
        try:
            parse_schedule(text).check_duration(seconds)
            return text
        except ScheduleError:
            continue
    return f"0s: {prompts[0]}\n"


def _read_schedule(args) -> str:
    if args.schedule_file:
        path = args.schedule_file
        try:
            with open(path, encoding="utf-8") as f:
                return f.read()
        except FileNotFoundError:
            raise UsageError(f"--schedule-file {path}: no such file; check the path") from None
        except IsADirectoryError:
            raise UsageError(f"--schedule-file {path} is a folder; give the schedule file inside it") from None
        except UnicodeDecodeError:
            raise UsageError(f"--schedule-file {path} is not UTF-8 text; save it as UTF-8 (plain text or JSON)") from None
        except OSError as err:
            raise UsageError(f"--schedule-file {path} cannot be read ({err.strerror}); check its permissions") from None
    if args.schedule is not None:
        # Shells pass "\n" inside quotes as a backslash and an n, not a line break (the README's example).
        return args.schedule.replace("\\n", "\n")
    return demo_schedule(args.seconds)


def _state_path_for(video: str) -> str:
    return os.path.splitext(video)[0] + ".state.safetensors"


def _same_file(a: str, b: str | None) -> bool:
    if not b:
        return False
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def _lock(path: str, locks: list, explicit: bool = True) -> bool:
    """Hold the output lock of ``path`` for this run; False (or a UsageError when the name was chosen by
    the user) when another run holds it."""
    from .locks import OutputBusyError, OutputLock

    lock = OutputLock(path)
    try:
        lock.acquire()
    except OutputBusyError as err:
        if explicit:
            raise UsageError(f"{err}; wait for it to finish or choose another --out") from None
        return False
    except OSError as err:
        raise UsageError(f"cannot write next to {path} ({err.strerror}); choose a writable --out") from None
    locks.append(lock)
    return True


def _plan_outputs(args, state, locks: list) -> tuple[str, str, bool, str | None]:
    """(video path, state path, append to the video?, video to copy the stream's frames from first).

    Nothing that exists is replaced silently: a new run without --out takes the next free numbered
    name; an existing --out is refused unless it is the resumed stream's own video (then appended)
    or --overwrite is given. A lock next to the video keeps two runs off one output."""
    from .generate import stream_video_frames

    if state is None:
        if args.out is None:
            base, ext = os.path.splitext(DEFAULT_OUT)
            for n in range(100000):
                out = DEFAULT_OUT if n == 0 else f"{base}_{n:04d}{ext}"
                state_path = args.state_out or _state_path_for(out)
                if os.path.exists(out) or (not args.state_out and os.path.exists(state_path)):
                    continue
                _make_folder(out)
                if _lock(out, locks, explicit=False):
                    if os.path.exists(out):  # made by a run that finished meanwhile
                        locks.pop().release()
                        continue
                    break
            else:
                raise UsageError(f"no free numbered name next to {DEFAULT_OUT}; pass --out")
        else:
            out = args.out
            state_path = args.state_out or _state_path_for(out)
            _make_folder(out)
            _lock(out, locks)
            taken = [p for p in (out, state_path) if os.path.exists(p)]
            if taken and not args.overwrite:
                hint = f"continue it with --resume {state_path}, " if os.path.exists(state_path) else ""
                raise UsageError(f"{taken[0]} already exists; {hint}choose another --out, or pass --overwrite "
                                 "to replace it")
        return out, state_path, False, None
    recorded = state.video.get("path") if isinstance(state.video.get("path"), str) else None
    stream_video = recorded or os.path.splitext(args.resume)[0].removesuffix(".state") + ".mp4"
    moved = os.path.join(os.path.dirname(os.path.abspath(args.resume)), os.path.basename(stream_video))
    if not os.path.exists(stream_video) and os.path.exists(moved):
        stream_video = moved  # the video and its state were moved together
    out = args.out or stream_video
    _make_folder(out)
    _lock(out, locks)
    if os.path.exists(out):
        if not _same_file(out, stream_video):
            raise UsageError(f"{out} already exists and is not this stream's video ({stream_video}); choose a new "
                             "--out for the continued video, or leave --out away to append to the stream's video")
        append, copy_from = True, None
    elif os.path.exists(stream_video):
        append, copy_from = True, stream_video  # a new file: the stream so far, then the continuation
    else:
        append, copy_from = False, None
        if stream_video_frames(state) > 0:
            print(f"note: this stream's video {stream_video} is not there, so {out} will hold only the "
                  "continuation", file=sys.stderr)
    resumed_here = append and copy_from is None
    state_path = args.state_out or (args.resume if resumed_here else _state_path_for(out))
    if os.path.exists(state_path) and not _same_file(state_path, args.resume) and not args.overwrite:
        raise UsageError(f"{state_path} already exists; choose another --out or --state-out, or pass --overwrite")
    return out, state_path, append, copy_from


def _make_folder(path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise UsageError(f"cannot create the folder {folder} ({err.strerror}); choose another --out") from None
    if not os.access(folder, os.W_OK):
        raise UsageError(f"cannot write to {folder} (read-only or no permission); choose another --out")


def cmd_generate(args) -> int:
    from .config import SamplingConfig, StreamConfig
    from .generate import generate_video
    from .schedule import ScheduleError, parse_schedule
    from .state import StreamState
    from .video_io import copy_mp4_prefix

    text = _read_schedule(args)
    try:
        schedule = parse_schedule(text)
        schedule.check_duration(args.seconds, continuing=bool(args.resume))
    except ScheduleError as err:
        where = args.schedule_file or "the schedule"
        raise UsageError(f"error in {where}, {err}") from None
    if args.sink is not None and args.window is not None and args.window < args.sink + 3:
        raise UsageError(f"--window {args.window} must hold the --sink ({args.sink}) plus one chunk (3 latent "
                         f"frames): use --window {args.sink + 3} or more")
    state = StreamState.load(args.resume) if args.resume else None
    locks: list = []
    try:
        out, state_path, append, copy_from = _plan_outputs(args, state, locks)
        model, vae, encode, width, height, stream, sampling = _load_models(args)
        for prompt in dict.fromkeys(schedule.prompts + ([args.negative] if args.negative else [])):
            for warning in getattr(encode, "prompt_warnings", lambda p: [])(prompt):
                print(f"videossm: warning: {warning}", file=sys.stderr)
        if state is not None:
            state.check_compatible(model.config)
        stream = stream or StreamConfig()
        if args.horizon:  # else the model's own T: not the video's length, so a resumed stream matches one run
            stream = stream.replace(router_horizon_frames=args.horizon)
        changes = {field: value for field, value in (
            ("memory", False if args.no_memory else None), ("position_mode", args.positions),
            ("window_frames", args.window), ("sink_frames", args.sink)) if value is not None}
        try:
            stream = stream.replace(**changes)
        except ValueError as err:
            raise UsageError(f"--window/--sink: {err}") from None
        sampling = sampling or SamplingConfig()
        if args.guidance is not None:
            sampling = dataclasses.replace(sampling, guidance_scale=args.guidance)
        if args.overwrite and state is None and os.path.exists(state_path):
            os.remove(state_path)  # the old stream's state must not outlive its replaced video
        if copy_from is not None:
            from .generate import stream_video_frames

            copy_mp4_prefix(copy_from, out, stream_video_frames(state))
        if args.compile:
            model.compile_streaming()
        return _run(args, generate_video(model, vae, encode, schedule, args.seconds, width, height, video_path=out,
                                         state=state, seed=args.seed, stream=stream, sampling=sampling,
                                         negative_prompt=args.negative, state_path=state_path,
                                         checkpoint_seconds=args.checkpoint_every, append_video=append),
                    out, state_path)
    finally:
        for lock in reversed(locks):
            lock.release()


def _run(args, events, out: str, state_path: str) -> int:
    bar = None
    started = time.perf_counter()
    last = None
    try:
        for event in events:
            if bar is None:
                bar = _progress(event.total)
            last = event
            bar.update(1)
            bar.set_postfix_str(event.prompt[:40])
    except KeyboardInterrupt:
        events.close()  # keep the video and a state of every finished chunk
        print(f"\nstopped: {out} holds what was made; continue it with --resume {state_path}", file=sys.stderr)
        return 130
    except OSError as err:  # a full disk: say where to continue from
        if bar is not None:
            bar.close()
            bar = None
        hint = f"; then continue with --resume {state_path}" if os.path.exists(state_path) else ""
        print(f"\nvideossm: error: {_one_line(err)}{hint}", file=sys.stderr)
        return 1
    finally:
        events.close()  # a stop saves the state of what the video holds, now rather than at garbage collection
        if bar is not None:
            bar.close()
    elapsed = time.perf_counter() - started
    frames = 0 if last is None else last.frames_written
    print(f"wrote {out} ({frames} frames = {frames / 16:g} s in the file, {elapsed:.1f} s wall time); "
          f"stream state: {state_path}")
    return 0


def cmd_inspect(args) -> int:
    """A stream state's summary, or what a checkpoint holds (format, shape, memory, LoRA)."""
    from .checkpoints import _peek_metadata, describe_checkpoint
    from .state import StreamState

    if not os.path.exists(args.file):
        raise UsageError(f"{args.file}: no such file or folder")
    if "videossm" in _peek_metadata(args.file):  # StreamState.save's metadata key
        print(StreamState.load(args.file).summary())
    else:
        print(describe_checkpoint(args.file))
    return 0


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not the usage block
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(kind=float, low: float | None = None, high: float | None = None, above: float | None = None):
    """An argparse type: a finite number of ``kind`` in [low, high] (and > above)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {'whole number' if kind is int else 'number'}")
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text} is not a finite number")
        if above is not None and value <= above:
            raise argparse.ArgumentTypeError(f"must be more than {above:g}, got {text}")
        if low is not None and value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low:g}, got {text}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high:g}, got {text}")
        return value
    parse.__name__ = kind.__name__
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="videossm", description="VideoSSM long-video generation")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="generate a video from a prompt schedule")
    gen.add_argument("--schedule", help="schedule text, one 'TIME: PROMPT' per line; in a shell write "
                                        "\"0s: A\\n1.5s: B\" (a literal \\n separates lines)")
    gen.add_argument("--schedule-file", help="a file with one 'TIME: PROMPT' per line (or JSON)")
    gen.add_argument("--seconds", type=_number(float, above=0, high=MAX_SECONDS), default=60.0,
                     help=f"video length this run adds (default 60, at most {MAX_SECONDS:g})")
    gen.add_argument("--out", help="mp4 to write (default: outputs/videossm.mp4, or the next free numbered name; "
                                   "with --resume: the stream's own video, appended to)")
    gen.add_argument("--overwrite", action="store_true", help="replace an existing --out and its state")
    gen.add_argument("--state-out", help="stream state file (default: next to the video)")
    gen.add_argument("--resume", help="continue the stream saved in this state file (its video grows)")
    gen.add_argument("--seed", type=_number(int, low=0, high=2**63 - 1), default=0)
    gen.add_argument("--model", help="generator checkpoint (any supported layout); default: the demo model")
    gen.add_argument("--memory", help="a VideoSSM memory file to apply on top of --model")
    gen.add_argument("--lora", help="a LoRA (e.g. LongLive's) to merge into --model")
    gen.add_argument("--lora-strength", type=_number(float, low=-10, high=10), default=1.0)
    gen.add_argument("--vae", help="Wan2.1 VAE (Wan2.1_VAE.pth, wan_2.1_vae.safetensors or a diffusers folder)")
    gen.add_argument("--text-encoder", help="a local UMT5-XXL folder (needs `pip install transformers sentencepiece`)")
    gen.add_argument("--negative", help="negative prompt (with --guidance > 1)")
    gen.add_argument("--guidance", type=_number(float, low=0, high=100),
                     help="classifier-free guidance scale (1 = off; default: the model's)")
    gen.add_argument("--width", type=_number(int, low=16, high=4096), help="pixels, a multiple of 8 or 16")
    gen.add_argument("--height", type=_number(int, low=16, high=4096), help="pixels, a multiple of 8 or 16")
    gen.add_argument("--window", type=_number(int, low=1, high=4096),
                     help="cached latent frames incl. the sink (default 12)")
    gen.add_argument("--sink", type=_number(int, low=0, high=4096), help="sink latent frames (default 3)")
    gen.add_argument("--no-memory", action="store_true", help="window attention only (LongLive behaviour)")
    gen.add_argument("--positions", choices=["absolute", "unbounded"], default="unbounded",
                     help="RoPE frame positions (default unbounded); absolute stops at 1024 latent frames (~256 s)")
    gen.add_argument("--horizon", type=_number(int, low=1, high=10**7),
                     help="router horizon T in latent frames (default: the one the model was trained with)")
    gen.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    gen.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32",
                     help="compute dtype (bf16 on a GPU; the memory state stays float32)")
    gen.add_argument("--compile", action="store_true",
                     help="torch.compile the streaming block (the first chunks compile, then run faster)")
    gen.add_argument("--checkpoint-every", type=_number(float, low=0, high=86400), default=60.0, metavar="SECONDS",
                     help="save the stream state after this much wall time (default 60; further apart if a save "
                          "is slow, so saving stays under 5%% of the run; 0 = after every chunk); it is always "
                          "saved at the end and on a stop")
    gen.set_defaults(func=cmd_generate)

    ins = sub.add_parser("inspect", help="summarise a saved stream state or a checkpoint (model, memory, LoRA)")
    ins.add_argument("file")
    ins.set_defaults(func=cmd_inspect)

    tr = sub.add_parser("train", help="train the teacher / stage 1 / stage 2 (see videossm_core/training/README.md)",
                        add_help=False)
    tr.add_argument("rest", nargs=argparse.REMAINDER)
    tr.set_defaults(func=lambda a: __import__("videossm_core.training.cli", fromlist=["main"]).main(a.rest))
    return parser


def _one_line(err: BaseException) -> str:
    text = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
    if isinstance(err, OSError) and err.filename is not None:
        text = f"{err.filename}: {text}"
    text = " ".join(text.split())
    return text if len(text) <= 2000 else text[:2000] + " ..."


def main(argv: list[str] | None = None) -> int:
    """Run a command; bad input ends in one line on stderr and exit status 2 (1 for failures such as a
    full disk, 130 for Ctrl-C), never in a traceback (VIDEOSSM_DEBUG=1 shows one)."""
    from .errors import CheckpointError
    from .schedule import ScheduleError
    from .state import StateFileError
    from .video_io import VideoFileError

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # --help, or a usage error argparse already printed in one line
        return done.code if isinstance(done.code, int) else 2
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        print("\nstopped", file=sys.stderr)
        return 130
    except (UsageError, CheckpointError, StateFileError, ScheduleError, VideoFileError) as err:
        print(f"videossm: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - the last guard against a traceback for the user
        if os.environ.get("VIDEOSSM_DEBUG"):
            raise
        if isinstance(err, OSError):
            message = _one_line(err)
        else:
            message = f"{_one_line(err)} ({type(err).__name__}; set VIDEOSSM_DEBUG=1 for the details)"
        print(f"videossm: error: {message}", file=sys.stderr)
        return 2 if isinstance(err, ValueError) else 1


if __name__ == "__main__":
    sys.exit(main())
