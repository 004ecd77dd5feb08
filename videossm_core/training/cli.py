"""``videossm train ...`` / ``python -m videossm_core.training ...``: the training command line.

Subcommands (each resumes from its own latest checkpoint in ``--workdir`` when one exists):

    vae        train the demo VAE on the procedural world (or continue one with --init)
    vae-decoder  sharpen a trained VAE's decoder with its encoder (latent space) frozen
    teacher    flow-matching bidirectional teacher (+ the demo text encoder, trained jointly)
    stage1     causal few-step student: optional ODE warm start, then Self-Forcing DMD
    stage2     long self-rollout DMD with the window and global memory live, prompt switches
    recall     supervised streaming tuning on the world's memory episodes (hybrid / sink / window variants)
    export     write the shipped demo files (generator / vae / text encoder) from finished runs
    evaluate   generate, decode and measure prompt following, switches and long-run stability
    evaluate-teacher  sample clips from a trained teacher, decode and measure them (which shapes it draws)
    demo       everything above, in order, into one run folder

Run data-parallel with ``torchrun --nproc_per_node N -m videossm_core.training <subcommand> ...``.
See ``videossm_core/training/README.md`` for the demo recipe and the real-scale (Wan2.1) command.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from .common import configure_threads


def _add_common(p: argparse.ArgumentParser, steps: int, batch: int, lr: float) -> None:
    p.add_argument("--workdir", required=True, help="run folder (checkpoints, logs, outputs)")
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--batch-size", type=int, default=batch, help="global batch (split over processes)")
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads per process (1: on shared or oversubscribed cores more threads are much slower)")
    p.add_argument("--fixed-batch", action="store_true", help="reuse the step-0 batch every step (debugging)")
    p.add_argument("--stop-after", type=int, default=None,
                   help="stop this process after this step (run in slices; rerun the same command to continue)")


def _add_autocast(p: argparse.ArgumentParser) -> None:
    p.add_argument("--autocast", choices=["bf16"], default=None,
                   help="run the forward passes under torch.autocast in bf16 (weights, gradients, optimizer and the "
                        "memory state stay float32); default: float32 throughout")


def _add_model_source(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(f"--{what}", required=True,
                   help=f"{what} weights: a run folder of the previous stage, a .safetensors written by "
                        "this trainer, or any checkpoint videossm_core.checkpoints.load_model reads")


def _add_critic_warmup(p: argparse.ArgumentParser) -> None:
    p.add_argument("--critic-warmup", type=int, default=0,
                   help="DMD steps that train only the critic first (a critic started from the teacher, e.g. "
                        "when distilling further from an exported generator)")


def _add_conditioning(p: argparse.ArgumentParser) -> None:
    p.add_argument("--text-encoder", default=None,
                   help="demo text encoder file, or a local UMT5 folder (real scale); default: the teacher run's")
    p.add_argument("--prompts", default=None, help="prompt file, one per line (default: the demo world's prompts)")
    p.add_argument("--latent-frames", type=int, default=21, help="latent frames of a training clip/window")
    p.add_argument("--latent-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="latent height and width (default: from the teacher run; 16 16 for the demo)")
    p.add_argument("--compile", action="store_true", help="torch.compile the one-shot model passes")
    _add_autocast(p)
    p.add_argument("--eval-vae", default=None, help="demo: VAE run/file to decode and measure the result with")
    p.add_argument("--device", default="cpu", help="cpu, or cuda (each rank takes cuda:<local rank>)")


def _add_guidance_interval(p: argparse.ArgumentParser) -> None:
    p.add_argument("--guidance-max-sigma", type=float, default=None,
                   help="apply the teacher's CFG only at noise levels sigma <= this (guidance interval; "
                        "default: at every level)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="videossm train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("vae", help="train the demo VAE")
    _add_common(p, steps=500, batch=4, lr=3e-4)
    p.add_argument("--image-steps", type=int, default=800, help="phase A: steps on single whole frames")
    p.add_argument("--image-batch-size", type=int, default=16)
    p.add_argument("--video-lr", type=float, default=2e-4, help="phase B (--steps on clips) learning rate")
    p.add_argument("--ring", type=int, default=3, help="pixels around the object weighted like the object")
    p.add_argument("--init", default=None, help="continue from this trained VAE (file or run folder)")
    p.add_argument("--crop", type=int, default=32)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--full-frame-every", type=int, default=0)
    p.add_argument("--frames", type=int, default=21, help="video frames per training clip (1 + 4k); long enough "
                   "that the causal caches reach their steady state, as in a long stream")
    p.add_argument("--size", type=int, default=64, help="video height = width in pixels")
    p.add_argument("--kl-weight", type=float, default=1e-4)
    p.add_argument("--fg-weight", type=float, default=30.0)
    p.add_argument("--eval-clips", type=int, default=16)
    p.set_defaults(func=cmd_vae)

    p = sub.add_parser("vae-decoder", help="sharpen the demo VAE's decoder with its encoder frozen")
    _add_common(p, steps=600, batch=4, lr=2e-4)
    p.add_argument("--vae", required=True, help="the VAE run folder or file")
    p.add_argument("--frames", type=int, default=21)
    p.add_argument("--crop", type=int, default=32)
    p.add_argument("--latent-noise", type=float, default=0.05)
    p.add_argument("--markings", action="store_true",
                   help="objects carry the world's hidden per-scene marking (the memory benchmark's world)")
    p.add_argument("--eval-clips", type=int, default=12)
    p.set_defaults(func=cmd_vae_decoder)

    p = sub.add_parser("teacher", help="train the bidirectional flow-matching teacher and the demo text encoder")
    _add_common(p, steps=800, batch=8, lr=3e-4)
    p.add_argument("--vae", required=True, help="the VAE run folder or file (encodes the world clips)")
    p.add_argument("--preset", default="demo")
    p.add_argument("--clips", type=int, default=512, help="world clips to encode into the latent cache")
    p.add_argument("--clip-latent-frames", type=int, default=27, help="latent frames per cached clip")
    p.add_argument("--latent-frames", type=int, default=21)
    p.add_argument("--prompt-dropout", type=float, default=0.1)
    p.add_argument("--shift", type=float, default=5.0,
                   help="timestep shift of the training noise levels (Wan: 5; lower trains more at mid/low noise)")
    p.add_argument("--object-weight", type=float, default=0.0,
                   help="demo: extra flow-loss weight on the latent pixels the object touches")
    p.add_argument("--object-dilate", type=int, default=0, help="grow the weighted region by this many latent pixels")
    p.add_argument("--markings", action="store_true",
                   help="demo: train on the marked world (each scene's hidden marking), the teacher recall tuning needs")
    p.add_argument("--ema", type=float, default=0.995)
    p.add_argument("--compile", action="store_true")
    _add_autocast(p)
    p.add_argument("--init", default=None,
                   help="start from these weights (load_model) instead of scratch: a teacher, or a distilled "
                        "generator to recover a teacher from (with --init-text-encoder)")
    p.add_argument("--init-text-encoder", default=None,
                   help="demo: start the text encoder from this file and keep it frozen (the encoder the --init "
                        "generator was distilled with, e.g. videossm_core/demo/weights/text_encoder.safetensors)")
    p.add_argument("--continue-from", default=None,
                   help="continue this teacher run's newest checkpoint (step, weights, optimizer, EMA) on this "
                        "run's own clips (give a new --seed for new ones); --steps extends its schedule")
    p.add_argument("--device", default="cpu", help="cpu, or cuda (each rank takes cuda:<local rank>)")
    p.set_defaults(func=cmd_teacher)

    p = sub.add_parser("stage1", help="causal few-step distillation (ODE warm start + Self-Forcing DMD)")
    _add_common(p, steps=200, batch=8, lr=2e-4)
    _add_model_source(p, "teacher")
    _add_conditioning(p)
    p.add_argument("--student", default=None, help="student init (default: the teacher)")
    p.add_argument("--ode-pairs", type=int, default=256, help="teacher ODE trajectories for the warm start (0: skip)")
    p.add_argument("--ode-steps", type=int, default=300, help="warm-start regression steps")
    p.add_argument("--ode-lr", type=float, default=3e-4)
    p.add_argument("--ode-solver-steps", type=int, default=16)
    p.add_argument("--guidance", type=float, default=3.0, help="teacher CFG scale in DMD (real score)")
    _add_guidance_interval(p)
    p.add_argument("--critic-lr", type=float, default=2e-4)
    p.add_argument("--critic-ratio", type=int, default=2, help="critic updates per generator update")
    _add_critic_warmup(p)
    p.add_argument("--same-exit-step", action=argparse.BooleanOptionalAction, default=True)
    p.set_defaults(func=cmd_stage1)

    p = sub.add_parser("stage2", help="long self-rollout DMD with live memory and prompt switches")
    _add_common(p, steps=200, batch=4, lr=1e-4)
    _add_model_source(p, "teacher")
    _add_model_source(p, "student")
    _add_conditioning(p)
    p.add_argument("--critic", default=None, help="critic init (default: the stage-1 run's critic, else the teacher)")
    p.add_argument("--rollout-frames", type=int, default=105, help="latent frames of one long rollout")
    p.add_argument("--router-horizon-frames", type=int, default=None,
                   help="T of the memory router, stored with the student for generation (default: --rollout-frames)")
    p.add_argument("--memory-bptt-windows", type=int, default=4,
                   help="training windows the memory state and cached gates keep their graph across (the write side "
                        "learns only through evictions, which come windows after a chunk is written)")
    p.add_argument("--switch-prob", type=float, default=0.5, help="probability of a prompt switch per window")
    p.add_argument("--guidance", type=float, default=3.0, help="teacher CFG scale in DMD (real score)")
    _add_guidance_interval(p)
    p.add_argument("--critic-lr", type=float, default=1e-4)
    p.add_argument("--critic-ratio", type=int, default=2)
    _add_critic_warmup(p)
    p.add_argument("--base-lr-scale", type=float, default=0.3,
                   help="LR of the non-memory student parameters relative to --lr (0 freezes them)")
    p.set_defaults(func=cmd_stage2)

    p = sub.add_parser("recall", help="supervised streaming tuning on memory episodes (hybrid / sink / window)")
    _add_common(p, steps=300, batch=4, lr=1e-3)
    _add_model_source(p, "student")
    p.add_argument("--text-encoder", required=True, help="the demo text encoder file the student was trained with")
    p.add_argument("--variant", choices=["hybrid", "sink", "window"], default="hybrid",
                   help="hybrid: sink + window + global memory; sink: LongLive-like (no memory); window: "
                        "Self-Forcing-like (the same recent frames, no sink, no memory)")
    p.add_argument("--episodes", default=None,
                   help="memory-episode cache (default: <workdir>/episodes.safetensors; encoded with --vae if missing; "
                        "share one between variants)")
    p.add_argument("--vae", default=None, help="the VAE run or file that encodes the episodes")
    p.add_argument("--num-episodes", type=int, default=256)
    p.add_argument("--episode-frames", type=int, default=66, help="latent frames per episode (66 = 22 chunks, 16 s)")
    p.add_argument("--base-lr-scale", type=float, default=0.05,
                   help="LR of the non-memory parameters relative to --lr (the memory and router train at --lr; "
                        "0: they alone train, the rest stays frozen)")
    p.add_argument("--object-weight", type=float, default=4.0, help="extra loss weight on the object's latent pixels")
    p.add_argument("--base-params", nargs="+", default=(),
                   help="only the non-memory parameters whose names contain one of these train (default: all), e.g. "
                        "self_attn.q. self_attn.k. self_attn.norm_q self_attn.norm_k: the memory's keys and queries")
    p.add_argument("--retention-frames", type=int, default=None,
                   help="re-initialise the memory's decay for this half-life in latent frames before tuning")
    p.add_argument("--marking-weight", type=float, default=0.0,
                   help="extra loss weight on the latent pixels of the hidden marking's band")
    p.add_argument("--event-weight", type=float, default=4.0,
                   help="loss weight of the chunks from a revisit or return on")
    p.add_argument("--other-weight", type=float, default=1.0,
                   help="loss weight of every other chunk (0: the loss only where only the memory can know)")
    _add_autocast(p)
    p.add_argument("--device", default="cpu", help="cpu, or cuda (each rank takes cuda:<local rank>)")
    p.set_defaults(func=cmd_recall)

    p = sub.add_parser("export", help="write the demo files (generator, vae, text encoder)")
    p.add_argument("--generator", required=True, help="stage-2 (or stage-1) run folder or generator file")
    p.add_argument("--vae", required=True)
    p.add_argument("--text-encoder", required=True, help="teacher run folder or text encoder file")
    p.add_argument("--out", default=None, help="default: videossm_core/demo/weights")
    p.add_argument("--dtype", choices=["fp16", "fp32"], default="fp16")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("evaluate", help="measure prompt following, switch latency and long-run stability")
    p.add_argument("--weights", default=None, help="folder with the three demo files (default: the shipped ones)")
    p.add_argument("--generator", default=None, help="override the generator file")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--long-seconds", type=float, default=0.0, help="also run one long video of this length")
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=cmd_evaluate)
    p = sub.add_parser("evaluate-teacher", help="sample clips from a teacher, decode and measure colour/shape/background")
    p.add_argument("--teacher", required=True,
                   help="teacher run folder (finished, or still training: its newest checkpoint), "
                        "or teacher.safetensors")
    p.add_argument("--text-encoder", default=None, help="default: the teacher run's text_encoder.safetensors")
    p.add_argument("--vae", required=True, help="the VAE run folder or file the teacher was trained with")
    p.add_argument("--clips", type=int, default=40)
    p.add_argument("--frames", type=int, default=21, help="latent frames per clip")
    p.add_argument("--guidance", type=float, default=3.0)
    _add_guidance_interval(p)
    p.add_argument("--steps", type=int, default=16, help="Euler steps of the flow ODE")
    p.add_argument("--seed", type=int, default=1000, help="picks the prompts and the noise")
    p.add_argument("--swap-clips", type=int, default=64,
                   help="cached clips for the word-swap probe (from the run's latents.safetensors; 0 skips)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.set_defaults(func=cmd_evaluate_teacher)
    p = sub.add_parser("demo", help="the whole demo recipe: vae, teacher, stage1, stage2, export, evaluate")
    p.add_argument("--workdir", required=True)
    p.add_argument("--out", default=None, help="where the demo files go (default: videossm_core/demo/weights)")
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(func=cmd_demo)
    return parser


# Both stage-2 runs; they differ only in rollout length. Guidance 4 here (2 in stage 1): the stronger real score
# keeps more of the teacher's shapes (training/NOTES.md).
_STAGE2 = ["--latent-frames", "6", "--steps", "300", "--batch-size", "4", "--lr", "1e-3", "--base-lr-scale", "0.05",
           "--critic-lr", "1e-4", "--critic-ratio", "2", "--switch-prob", "0.5", "--guidance", "4.0",
           "--checkpoint-every", "50", "--router-horizon-frames", "240"]  # (the shipped weights' T: 60 s)

# The demo recipe (what videossm_core/demo/weights/CARD.md reports); each stage resumes if interrupted.
DEMO_RECIPE = {
    # VAE phase A (single frames) + B (clips), object-weighted; then a fine-tune with the ring weighting. (The
    # shipped VAE was trained so on the world's first, smaller objects; NOTES.md measures it on today's.)
    "vae": ["--image-steps", "800", "--steps", "500", "--batch-size", "4", "--frames", "21", "--fg-weight", "30",
            "--ring", "0", "--checkpoint-every", "100"],
    "vae2": ["--image-steps", "0", "--steps", "900", "--video-lr", "2e-4", "--fg-weight", "10", "--ring", "3",
             "--batch-size", "4", "--frames", "21", "--checkpoint-every", "150"],
    # The teacher: the 2x2-patch preset (Wan's own patch size; 4x4 patches left the shapes to the output
    # projection and never bound the shape word, NOTES.md), 1024 cached clips, one 40000-step schedule run in
    # two legs: 10500 steps on 3-latent-frame windows (cheap; colour, background and most of the shape
    # binding), then 6-frame windows (the 2 chunks stages 1-2 score) to the end of the schedule.
    "teacher": ["--preset", "demo-patch2", "--batch-size", "8", "--lr", "4e-4", "--clips", "1024",
                "--checkpoint-every", "500"],
    "teacher_legs": [["--steps", "40000", "--latent-frames", "3", "--stop-after", "10500"],
                     ["--steps", "40000", "--latent-frames", "6"]],
    # Stages 1-2 score windows of 6 latent frames (2 chunks), the teacher's window.
    "stage1": ["--latent-frames", "6", "--ode-pairs", "96", "--ode-steps", "120", "--ode-solver-steps", "12",
               "--steps", "400", "--batch-size", "4", "--lr", "5e-5", "--critic-lr", "1e-4", "--critic-ratio", "2",
               "--guidance", "2.0", "--checkpoint-every", "50"],
    "stage2": [*_STAGE2, "--rollout-frames", "105"],
    # Stage 2 again from its own student and critic, on rollouts of 1200 latent frames (5 minutes): windows are
    # scored at every depth a long video reaches (NOTES.md: from the finished teacher, benchmark seed 1, random
    # schedule 87.8 -> 99.3 % colour and shape, the late switch 10 -> 2 chunks; steady 94.8 -> 94.5 %, 7 -> 4).
    "stage2_deep": [*_STAGE2, "--rollout-frames", "1200"],
}


def cmd_demo(args) -> int:
    root = Path(args.workdir)
    main(["vae", "--workdir", str(root / "vae"), *DEMO_RECIPE["vae"]])
    main(["vae", "--workdir", str(root / "vae2"), "--init", str(root / "vae"), *DEMO_RECIPE["vae2"]])
    teacher = ["teacher", "--workdir", str(root / "teacher"), "--vae", str(root / "vae2"), *DEMO_RECIPE["teacher"]]
    for leg in DEMO_RECIPE["teacher_legs"]:
        main(teacher + leg)
    main(["stage1", "--workdir", str(root / "stage1"), "--teacher", str(root / "teacher"),
          "--eval-vae", str(root / "vae2"), *DEMO_RECIPE["stage1"]])
    main(["stage2", "--workdir", str(root / "stage2"), "--teacher", str(root / "teacher"),
          "--student", str(root / "stage1"), "--eval-vae", str(root / "vae2"), *DEMO_RECIPE["stage2"]])
    main(["stage2", "--workdir", str(root / "stage2_deep"), "--teacher", str(root / "teacher"),
          "--student", str(root / "stage2"), "--eval-vae", str(root / "vae2"), *DEMO_RECIPE["stage2_deep"]])
    export = ["export", "--generator", str(root / "stage2_deep"), "--vae", str(root / "vae2"),
              "--text-encoder", str(root / "teacher")]
    main(export + (["--out", args.out] if args.out else []))
    evaluate = ["evaluate", "--seconds", "20", "--long-seconds", "300", "--out", str(root / "evaluation.json")]
    main(evaluate + (["--weights", args.out] if args.out else []))
    return 0


# ---------------------------------------------------------------------------------------------- commands

def _env():
    from .distributed import init_distributed

    return init_distributed()


def config_from_args(config_cls, args, **overrides):
    """``config_cls`` (a dataclass) from the parsed arguments named like its fields, then ``overrides``."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(config_cls)}
    return config_cls(**{**{k: v for k, v in vars(args).items() if k in names}, **overrides})


def _train(args, stage: str, train_fn, cfg) -> int:
    """Run one training stage (``train_fn(cfg, env)``) and write its summary."""
    env = _env()
    t0 = time.time()
    summary = train_fn(cfg, env)
    _finish(args.workdir, env, stage, t0, summary)
    return 0


def cmd_vae(args) -> int:
    from .vae_training import VAETrainConfig, train_vae

    cfg = config_from_args(VAETrainConfig, args, crop=args.crop or None, height=args.size, width=args.size)
    return _train(args, "vae", train_vae, cfg)


def cmd_vae_decoder(args) -> int:
    from .vae_training import DecoderTuneConfig, tune_decoder

    return _train(args, "vae-decoder", tune_decoder, config_from_args(DecoderTuneConfig, args, crop=args.crop or None))


def teacher_config(args):
    """The parsed ``teacher`` arguments as a ``TeacherTrainConfig``."""
    from .teacher import TeacherTrainConfig

    return config_from_args(TeacherTrainConfig, args)


def cmd_teacher(args) -> int:
    from .teacher import train_teacher

    return _train(args, "teacher", train_teacher, teacher_config(args))


def distill_config(config_cls, args):
    """The parsed ``stage1``/``stage2`` arguments as ``config_cls``."""
    return config_from_args(config_cls, args, latent_size=tuple(args.latent_size) if args.latent_size else None)


def cmd_stage1(args) -> int:
    from .stage1 import Stage1Config, train_stage1

    return _train(args, "stage1", train_stage1, distill_config(Stage1Config, args))


def cmd_stage2(args) -> int:
    from .stage2 import Stage2Config, train_stage2

    return _train(args, "stage2", train_stage2, distill_config(Stage2Config, args))


def cmd_recall(args) -> int:
    from .recall import RecallConfig, train_recall

    return _train(args, "recall", train_recall, config_from_args(RecallConfig, args))


def cmd_export(args) -> int:
    from .export import export_demo

    out = export_demo(args.generator, args.vae, args.text_encoder, args.out, args.dtype)
    print(json.dumps(out, indent=2))
    return 0


def cmd_evaluate(args) -> int:
    from .evaluate import evaluate_bundle

    results = evaluate_bundle(args.weights, generator=args.generator, seconds=args.seconds,
                              long_seconds=args.long_seconds, num_prompts=args.prompts, seed=args.seed)
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    return 0


def cmd_evaluate_teacher(args) -> int:
    from ..demo.bundle import read_generator_metadata
    from ..text import DemoTextEncoder
    from .checkpointing import load_generator
    from .data import LatentDataset
    from .evaluate import evaluate_teacher, word_swap_sensitivity
    from .vae_training import load_trained_vae

    teacher = Path(args.teacher)
    model_file = teacher / "teacher.safetensors" if teacher.is_dir() else teacher
    cache = model_file.with_name("latents.safetensors")  # the run's latent cache
    if teacher.is_dir() and not model_file.is_file():  # still training (or stopped early): its newest checkpoint
        from safetensors import safe_open

        from .teacher import load_teacher_snapshot

        try:
            model, text_encoder, step = load_teacher_snapshot(teacher)
        except FileNotFoundError as exc:
            raise SystemExit(f"{exc}: pass a teacher run (finished, or with checkpoints) or a teacher.safetensors")
        if not cache.is_file():
            raise SystemExit(f"{cache} does not exist: the run's latent cache gives the latent frame size")
        with safe_open(str(cache), framework="pt") as f:
            h, w = f.get_slice("latents").get_shape()[-2:]
        print(f"measuring the EMA weights of {teacher}'s checkpoint at step {step}", file=sys.stderr)
    else:
        text_file = Path(args.text_encoder) if args.text_encoder else model_file.with_name("text_encoder.safetensors")
        for path in (model_file, text_file):
            if not path.is_file():
                raise SystemExit(f"{path} does not exist: pass a teacher run (finished, or with checkpoints) "
                                 f"or a teacher.safetensors (and --text-encoder)")
        model = load_generator(model_file)
        text_encoder = DemoTextEncoder.load(text_file).eval()
        h, w = (int(n) for n in read_generator_metadata(model_file).get("latent_size", "16,16").split(","))
    vae = load_trained_vae(args.vae)
    results = evaluate_teacher(model, text_encoder, vae, args.clips, (model.config.in_dim, args.frames, h, w),
                               seed=args.seed, guidance=args.guidance, steps=args.steps,
                               guidance_max_sigma=args.guidance_max_sigma)
    if args.swap_clips and cache.is_file():  # the clips the teacher trained on: does it use each word?
        data = LatentDataset.load(cache)
        n = min(args.swap_clips, len(data))
        results["loss_rise_when_word_swapped"] = word_swap_sensitivity(
            model, lambda texts: text_encoder.encode(texts).float(), data.latents[:n, :, :args.frames].float(),
            data.prompts[:n], seed=args.seed)
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


def _finish(workdir: str, env, stage: str, t0: float, summary: dict[str, Any]) -> None:
    """Write ``<workdir>/summary.json`` (wall time, final losses, measurements) on rank 0."""
    from .distributed import shutdown

    if env.is_main:
        losses = summary.pop("losses", None)
        record = {"stage": stage, "wall_time_s": round(time.time() - t0, 1), "world_size": env.world_size,
                  **{k: v for k, v in summary.items() if isinstance(v, (int, float, str, dict, list))}}
        if losses:
            record["final_loss"] = losses[-1]
            record["mean_last_10"] = sum(losses[-10:]) / len(losses[-10:])
        path = Path(workdir) / "summary.json"
        previous = json.loads(path.read_text()) if path.is_file() else {}
        runs = previous.get("runs", []) + [record]
        path.write_text(json.dumps({**record, "runs": runs}, indent=2))
        print(json.dumps({k: v for k, v in record.items() if k != "runs"}), flush=True)
    shutdown(env)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_threads(getattr(args, "threads", None))
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
