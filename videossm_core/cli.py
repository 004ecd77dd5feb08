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
import os
import sys
import time

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
            raise SystemExit("the demo model files are missing from videossm_core/demo/weights; "
                             "reinstall the project or pass --model/--vae/--text-encoder")
        bundle = load_demo_bundle(device=args.device, dtype=dtype)
        encoder = bundle.text_encoder

        def encode(prompt: str):
            with torch.no_grad():
                return encoder.encode([prompt]).to(args.device)

        height, width = bundle.resolution
        return (bundle.model, bundle.vae, encode, args.width or width, args.height or height,
                bundle.stream_config, bundle.sampling_config)
    from .checkpoints import load_model
    from .vae import load_vae

    if args.vae is None or args.text_encoder is None:
        raise SystemExit("with --model, also pass --vae (Wan2.1 VAE) and --text-encoder (a local UMT5 folder)")
    model = load_model(args.model, dtype=dtype, device=args.device, memory_path=args.memory,
                       lora_path=args.lora, lora_strength=args.lora_strength)
    vae = load_vae(args.vae, dtype=dtype, device=args.device)
    from .text import UMT5TextEncoder

    umt5 = UMT5TextEncoder.from_folder(args.text_encoder, dtype=dtype, device=args.device)

    def encode(prompt: str):
        return umt5.encode([prompt]).to(args.device)

    return model, vae, encode, args.width or 832, args.height or 480, None, None


def cmd_generate(args) -> int:
    from .config import SamplingConfig, StreamConfig
    from .generate import generate_video
    from .schedule import ScheduleError, parse_schedule
    from .state import StreamState

    if args.schedule_file:
        with open(args.schedule_file, encoding="utf-8") as f:
            text = f.read()
    else:
        text = args.schedule or DEMO_SCHEDULE
    try:
        schedule = parse_schedule(text)
        schedule.check_duration(args.seconds)
    except ScheduleError as err:
        where = args.schedule_file or "the schedule"
        print(f"error in {where}, {err}", file=sys.stderr)
        return 2
    model, vae, encode, width, height, stream, sampling = _load_models(args)
    state = None
    if args.resume:
        state = StreamState.load(args.resume)
    stream = (stream or StreamConfig()).replace(router_horizon_frames=args.horizon or max(3, round(args.seconds * 4)))
    for field, value in (("memory", False if args.no_memory else None), ("position_mode", args.positions),
                         ("window_frames", args.window), ("sink_frames", args.sink)):
        if value is not None:
            stream = stream.replace(**{field: value})
    sampling = sampling or SamplingConfig()
    if args.guidance is not None:
        sampling = dataclasses.replace(sampling, guidance_scale=args.guidance)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    state_path = args.state_out or os.path.splitext(args.out)[0] + ".state.safetensors"
    if args.compile:
        model.compile_streaming()
    events = generate_video(model, vae, encode, schedule, args.seconds, width, height, video_path=args.out,
                            state=state, seed=args.seed, stream=stream, sampling=sampling,
                            negative_prompt=args.negative, state_path=state_path,
                            checkpoint_seconds=args.checkpoint_every)
    bar = None
    started = time.perf_counter()
    try:
        for event in events:
            if bar is None:
                bar = _progress(event.total)
            bar.update(1)
            bar.set_postfix_str(event.prompt[:40])
    except KeyboardInterrupt:
        print(f"\nstopped: {args.out} holds what was made; continue with --resume {state_path}", file=sys.stderr)
        return 130
    finally:
        events.close()  # a stop saves the state of what the video holds, now rather than at garbage collection
        if bar is not None:
            bar.close()
    elapsed = time.perf_counter() - started
    print(f"wrote {args.out} ({args.seconds:g} s requested, {elapsed:.1f} s wall time); "
          f"stream state: {state_path}")
    return 0


def cmd_inspect(args) -> int:
    from .state import StreamState

    print(StreamState.load(args.state).summary())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="videossm", description="VideoSSM long-video generation")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="generate a video from a prompt schedule")
    gen.add_argument("--schedule", help="schedule text, e.g. '0s: a red circle ...\\n20s: ...'")
    gen.add_argument("--schedule-file", help="a file with one 'TIME: PROMPT' per line (or JSON)")
    gen.add_argument("--seconds", type=float, default=60.0, help="video length (default 60)")
    gen.add_argument("--out", default="outputs/videossm.mp4", help="mp4 to write (default outputs/videossm.mp4)")
    gen.add_argument("--state-out", help="stream state file (default: next to the video)")
    gen.add_argument("--resume", help="continue the stream saved in this state file")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--model", help="generator checkpoint (any supported layout); default: the demo model")
    gen.add_argument("--memory", help="a VideoSSM memory file to apply on top of --model")
    gen.add_argument("--lora", help="a LoRA (e.g. LongLive's) to merge into --model")
    gen.add_argument("--lora-strength", type=float, default=1.0)
    gen.add_argument("--vae", help="Wan2.1 VAE (Wan2.1_VAE.pth, wan_2.1_vae.safetensors or a diffusers folder)")
    gen.add_argument("--text-encoder", help="a local UMT5-XXL folder (needs `pip install transformers sentencepiece`)")
    gen.add_argument("--negative", help="negative prompt (with --guidance > 1)")
    gen.add_argument("--guidance", type=float, help="classifier-free guidance scale (1 = off; default: the model's)")
    gen.add_argument("--width", type=int)
    gen.add_argument("--height", type=int)
    gen.add_argument("--window", type=int, help="cached latent frames incl. the sink (default 12)")
    gen.add_argument("--sink", type=int, help="sink latent frames (default 3)")
    gen.add_argument("--no-memory", action="store_true", help="window attention only (LongLive behaviour)")
    gen.add_argument("--positions", choices=["absolute", "unbounded"], default="unbounded",
                     help="RoPE frame positions (default unbounded); absolute stops at 1024 latent frames (~256 s)")
    gen.add_argument("--horizon", type=int, help="router horizon T in latent frames (default: the video length)")
    gen.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    gen.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32",
                     help="compute dtype (bf16 on a GPU; the memory state stays float32)")
    gen.add_argument("--compile", action="store_true",
                     help="torch.compile the streaming block (the first chunks compile, then run faster)")
    gen.add_argument("--checkpoint-every", type=float, default=60.0, metavar="SECONDS",
                     help="save the stream state after this much wall time (default 60; further apart if a save "
                          "is slow, so saving stays under 5%% of the run; 0 = after every chunk); it is always "
                          "saved at the end and on a stop")
    gen.set_defaults(func=cmd_generate)

    ins = sub.add_parser("inspect", help="summarise a saved stream state")
    ins.add_argument("state")
    ins.set_defaults(func=cmd_inspect)

    tr = sub.add_parser("train", help="train the teacher / stage 1 / stage 2 (see videossm_core/training/README.md)",
                        add_help=False)
    tr.add_argument("rest", nargs=argparse.REMAINDER)
    tr.set_defaults(func=lambda a: __import__("videossm_core.training.cli", fromlist=["main"]).main(a.rest))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
