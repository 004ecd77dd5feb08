"""Does a finer patch let the demo teacher learn shapes? Short-clip teachers trained from scratch, one per patch.

    python benchmarks/bench_teacher_patch.py --latents runs/demo/teacher/latents.safetensors --vae runs/demo/vae2 \
        [--presets demo demo-patch2] [--steps 4000] [--frames 3] [--clips 80]

The shipped demo generator patchifies 4x4 latent pixels (16x16 video pixels through the stride-4 VAE), so
the world's object (20-30 px across; 14-20 px in the world's first version) covers one to four tokens and its shape has to be drawn inside
the tokens by the output projection. This trains each ``--presets`` architecture (by default ``demo`` and
``demo-patch2``, the same model with 2x2 patches) from scratch on the same cached latents (the demo
teacher run's ``latents.safetensors``), on short windows of ``--frames`` latent frames so that it fits a
CPU, with the same steps, batch, LR and seeds; then it samples ``--clips`` clips from each
(``evaluate_teacher``: 16 Euler steps, CFG 3) and measures them from pixels.

Prints, per preset: the training wall time, the mean flow-matching loss over the last 10 % of steps,
the colour / shape / background accuracies, which shape was drawn for each prompted shape, and the
word-swap probe (``word_swap_sensitivity``: how much the loss on 64 cached clips rises when the shape,
colour, ... word is swapped); and the loss ratio of each preset to the first one, all measured in this run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latents", required=True, help="a teacher run's latents.safetensors (the latent cache)")
    parser.add_argument("--vae", required=True, help="the VAE those latents came from (run folder or file)")
    parser.add_argument("--presets", nargs="+", default=["demo", "demo-patch2"], help="model presets to compare")
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--frames", type=int, default=3, help="latent frames per training window and sample")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=4e-4)
    parser.add_argument("--clips", type=int, default=80, help="clips sampled per teacher for the measurement")
    parser.add_argument("--seed", type=int, default=1000, help="picks the measured prompts and noise")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()

    import torch

    from videossm_core.config import get_preset
    from videossm_core.text import DemoTextEncoder
    from videossm_core.training.checkpointing import LossLog, load_generator
    from videossm_core.training.data import LatentDataset
    from videossm_core.training.distributed import DistEnv
    from videossm_core.training.evaluate import evaluate_teacher, word_swap_sensitivity
    from videossm_core.training.teacher import TeacherTrainConfig, train_teacher
    from videossm_core.training.vae_training import load_trained_vae

    torch.set_num_threads(args.threads)
    dataset = LatentDataset.load(args.latents)
    vae = load_trained_vae(args.vae)
    channels, _, h, w = dataset.latents.shape[1:]
    results = []
    for preset in args.presets:
        config = get_preset(preset)
        patch_h, patch_w = config.patch_size[1:]
        with tempfile.TemporaryDirectory() as workdir:
            cfg = TeacherTrainConfig(workdir=workdir, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                                     latent_frames=args.frames, checkpoint_every=0, log_every=max(1, args.steps // 20),
                                     eval_clips=0)
            t0 = time.time()
            summary = train_teacher(cfg, DistEnv(), dataset=dataset, model_config=config,
                                    log=LossLog(workdir, DistEnv(), "log", quiet=True))
            wall = time.time() - t0
            # train_teacher leaves its (EMA) weights in the workdir; reload them as the sampler sees them.
            model = load_generator(os.path.join(workdir, "teacher.safetensors"))
            text_encoder = DemoTextEncoder.load(os.path.join(workdir, "text_encoder.safetensors")).eval()
        tail = summary["losses"][-max(1, args.steps // 10):]
        measured = evaluate_teacher(model, text_encoder, vae, args.clips, (channels, args.frames, h, w), seed=args.seed)
        probe_clips = min(64, len(dataset))
        measured["loss_rise_when_word_swapped"] = word_swap_sensitivity(
            model, lambda texts: text_encoder.encode(texts).float(),
            dataset.latents[:probe_clips, :, :args.frames].float(), dataset.prompts[:probe_clips], seed=args.seed)
        results.append({"preset": preset, "patch": f"{patch_h}x{patch_w}",
                        "tokens_per_frame": (h // patch_h) * (w // patch_w), "train_s": round(wall, 1),
                        "final_loss": sum(tail) / len(tail), **measured})
        print(json.dumps(results[-1]), flush=True)
    base = results[0]["final_loss"]
    for r in results:
        r["loss_ratio_to_first"] = r["final_loss"] / base
    print("\npreset | patch | tokens/frame | loss (ratio) | colour | shape | background | loss rise, shape word swapped")
    for r in results:
        print(f"{r['preset']} | {r['patch']} | {r['tokens_per_frame']:12d} | {r['final_loss']:.3f} ({r['loss_ratio_to_first']:.2f}) | "
              f"{r['colour_accuracy']:.1%} | {r['shape_accuracy']:.1%} | {r['background_accuracy']:.1%} | "
              f"{r['loss_rise_when_word_swapped']['shape']:.2%}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
