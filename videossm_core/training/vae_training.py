"""Train the demo VAE: a reduced ``AutoencoderKLWan`` on the procedural world's frames.

Loss: L1 + MSE on pixels, weighted ``1 + fg_weight`` on the object's pixels, plus a small KL term on
the posterior (the reparameterised sample is decoded). The world's frames are mostly background; an
unweighted loss reconstructs backgrounds and grey blobs first and the object's colour only after
thousands of steps, while colour and shape are what the demo is judged by.

Clips are ``frames`` long (21 video frames = 6 latent frames, so the causal caches see a steady
state as in a long stream) and cropped to ``crop`` pixels, mostly around the object (the network is
convolutional; crops make steps cheap); every ``full_frame_every``-th step (0: never) uses whole
frames. The log-variance output starts at ``logvar_init`` so the decoder sees informative latents
from the first step.

After training, the per-channel mean and std of the posterior means over full world clips are
measured and stored in the VAE file's config (``latents_mean`` / ``latents_std``), so the
generator works on unit-scale latents as with Wan's own statistics.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..demo import world
from ..vae import WanVAE, build_vae, load_vae, save_vae, small_vae_config
from .checkpointing import LossLog, resume_latest, save_checkpoint
from .common import config_dict, lr_at, make_adamw, optimizer_step, set_lr
from .data import tensor_to_frames, world_batch
from .distributed import DistEnv, mean_across_ranks, per_sample_randn


def demo_vae_config() -> dict[str, Any]:
    """The shipped demo VAE: a reduced ``AutoencoderKLWan`` with Wan's temporal stride (4) and 16 latent
    channels but *two* down/up stages, so a spatial stride of 4 instead of Wan2.1's 8, plus Wan2.2's
    residual down/up blocks (``is_residual``: space-to-channel averaging shortcuts around each resampling).

    Why stride 4: the demo's 64x64 frames show objects ~15-30 px wide. At stride 8 the small ones cover 2x2
    latent pixels and a CPU-sized VAE reconstructs every shape as a round blob (measured on the world's
    first, smaller objects: shape read back right on 8 % of frames after ~20 CPU-minutes, colours on
    100 %). At stride 4 they cover 4x4 to 7x7 latent pixels.
    The generator patchifies by (1, 4, 4) instead of (1, 2, 2), so it sees the same 4x4 tokens per frame.
    Why residual: on CPU budgets the plain Wan2.1 layout sits on a "mean frame" plateau for hundreds of
    steps; the shortcut gives the encoder and decoder a near-linear path from the first step."""
    return small_vae_config(is_residual=True, dim_mult=[1, 2, 2], temperal_downsample=[True, True],
                            scale_factor_spatial=4)


@dataclass
class VAETrainConfig:
    workdir: str = "runs/vae"
    image_steps: int = 800  # phase A: single whole frames (cheap; learns colour and shape coding)
    image_batch_size: int = 16
    steps: int = 500  # phase B: video clips
    batch_size: int = 4  # global
    video_lr: float | None = 2e-4
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.99)
    warmup: int = 30
    min_lr_ratio: float = 0.1
    frames: int = 21  # video frames per training clip (1 + 4k): long enough to reach the causal caches' steady state
    height: int = 64
    width: int = 64
    crop: int | None = 32
    full_frame_every: int = 0  # 0: never
    kl_weight: float = 1e-4
    logvar_init: float = -8.0
    fg_weight: float = 30.0  # object pixels: without a strong weight colours come out grey for ~1000s of steps
    ring: int = 3  # pixels around the object weighted like the object (keeps shapes from bleeding into blobs)
    init: str | None = None  # continue from a trained VAE (file or run folder): no init tricks, no image phase
    grad_clip: float = 1.0
    seed: int = 0
    vae_config: dict[str, Any] = field(default_factory=demo_vae_config)
    stats_clips: int = 32  # clips used to measure the latent statistics
    eval_clips: int = 16
    checkpoint_every: int = 100
    log_every: int = 10
    fixed_batch: bool = False  # every step sees the step-0 batch (tests: the loss must fall)
    stop_after: int | None = None  # end this process after this step (a run in slices; the schedule still spans all steps)


def object_weight(mask: Tensor, weight: float, ring: int) -> Tensor:
    """Per-pixel loss weight ``1 + weight`` on the object *and a ring of ``ring`` pixels around it*.

    Weighting the object alone rewards painting it too large (a miss costs more than bleeding into
    the background), which rounds every shape into a blob; the ring makes both errors cost the same.
    mask: ``[B, 1, T, H, W]`` 0/1."""
    if ring > 0:
        mask = F.max_pool3d(mask, kernel_size=(1, 2 * ring + 1, 2 * ring + 1), stride=1, padding=(0, ring, ring))
    return 1.0 + weight * mask


@torch.no_grad()
def inflate_init(model) -> None:
    """Make every causal 3-D conv start as a per-frame (2-D) conv: zero the taps on earlier frames,
    and make the temporal resamplers pass frames through (downsampling keeps the last frame of each
    pair, upsampling duplicates). Image training then leaves them so (their inputs are zero padding),
    and video training starts from a per-frame autoencoder instead of random temporal mixing."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

    for name, module in model.named_modules():
        if not isinstance(module, WanCausalConv3d) or module.kernel_size[0] != 3:
            continue
        if name.endswith("time_conv"):
            weight = torch.zeros_like(module.weight)  # [out, in, 3, 1, 1]
            c_out, c_in = weight.shape[:2]
            for r in range(c_out // c_in):
                weight[r * c_in:(r + 1) * c_in, :, -1, 0, 0] = torch.eye(c_in)
            module.weight.copy_(weight)
            module.bias.zero_()
        else:
            module.weight[:, :, :-1] = 0.0


def vae_loss(model, x: Tensor, noise: Tensor, kl_weight: float, weight: Tensor) -> tuple[Tensor, dict[str, float]]:
    """Reconstruction + KL loss of a diffusers ``AutoencoderKLWan`` on frames ``x [B, 3, T, H, W]``.

    ``noise`` ``[B, z, F, h, w]`` is the reparameterisation noise (drawn per sample by the caller);
    ``weight`` ``[B, 1, T, H, W]`` the per-pixel loss weight.
    """
    h = model._encode(x)  # [B, 2z, F, h, w]: posterior mean | log-variance
    mu, logvar = h.chunk(2, dim=1)
    logvar = logvar.clamp(-30.0, 20.0)
    z = mu + torch.exp(0.5 * logvar) * noise
    rec = model._decode(z).sample
    err = rec - x
    l1 = (weight * err.abs()).mean()
    mse = (weight * err.pow(2)).mean()
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).mean()
    loss = l1 + mse + kl_weight * kl
    return loss, {"l1": float(l1.detach()), "mse": float(mse.detach()), "kl": float(kl.detach())}


@torch.no_grad()
def measure_latent_stats(vae: WanVAE, num_clips: int, height: int, width: int, seed: int,
                         num_frames: int = 81) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std of the raw posterior means over world clips: ``([z], [z])``."""
    raw = WanVAE(vae.model, latents_mean=torch.zeros(vae.z_dim), latents_std=torch.ones(vae.z_dim))
    parts = []
    for start in range(0, num_clips, 8):
        frames, _ = world_batch(seed, 0, range(start, min(num_clips, start + 8)), num_frames, height, width)
        parts.append(raw.encode(frames).float())
    mu = torch.cat(parts)  # [N, z, F, h, w]
    flat = mu.transpose(0, 1).reshape(mu.shape[1], -1)
    return flat.mean(1), flat.std(1).clamp_min(1e-4)


@torch.no_grad()
def evaluate_vae(vae: WanVAE, num_clips: int = 16, height: int = 64, width: int = 64, seed: int = 12345,
                 num_frames: int = 81, frame_stride: int = 4) -> dict[str, Any]:
    """Reconstruct world clips and compare what ``measure_frame`` reads from originals and reconstructions.

    Returns colour/shape agreement (over frames where the original has an object; shape only over
    unclipped ones), the PSNR in dB, and ``shape_by_original_shape``: for each shape read from the
    originals, the shapes read from their reconstructions (frame counts).
    """
    from .evaluate import shape_confusion

    colour_ok = colour_n = 0
    shape_pairs = []  # (original's shape, reconstruction's shape) per measured frame
    se, count = 0.0, 0
    for start in range(0, num_clips, 4):
        frames, _ = world_batch(seed, 0, range(start, min(num_clips, start + 4)), num_frames, height, width)
        rec = vae.decode(vae.encode(frames.to(vae.device, vae.dtype))).float().cpu()
        se += float((rec - frames).pow(2).sum())
        count += frames.numel()
        originals, recons = tensor_to_frames(frames), tensor_to_frames(rec)
        for clip_o, clip_r in zip(originals, recons):
            for t in range(0, clip_o.shape[0], frame_stride):
                mo, mr = world.measure_frame(clip_o[t]), world.measure_frame(clip_r[t])
                if mo.colour is None:
                    continue
                colour_n += 1
                colour_ok += int(mo.colour == mr.colour)
                if mo.shape is not None and not mo.clipped:
                    shape_pairs.append((mo.shape, mr.shape))
    mse = se / max(count, 1) / 4.0  # [-1, 1] -> [0, 1] units
    shape_ok = sum(original == rebuilt for original, rebuilt in shape_pairs)
    return {"colour_accuracy": colour_ok / max(colour_n, 1), "shape_accuracy": shape_ok / max(len(shape_pairs), 1),
            "psnr_db": float(10 * np.log10(1.0 / max(mse, 1e-12))), "frames_measured": colour_n,
            "shape_by_original_shape": shape_confusion(shape_pairs)}


def train_vae(cfg: VAETrainConfig, env: DistEnv, log: LossLog | None = None) -> dict[str, Any]:
    """Train (or resume training) the VAE; writes ``<workdir>/vae.safetensors`` with latent statistics.

    Returns a summary with the losses and, if ``eval_clips`` > 0, the reconstruction measurements.
    """
    workdir = Path(cfg.workdir)
    log = log or LossLog(workdir, env, "vae_log")
    vae = build_vae(cfg.vae_config, seed=cfg.seed) if not cfg.init else load_trained_vae(cfg.init)
    model = vae.model
    with torch.no_grad() if not cfg.init else contextlib.nullcontext():
        # Start with a nearly deterministic posterior (sigma ~ 0.02). With diffusers' default init the
        # log-variance is ~0 while the means are ~0.2, so the decoder first sees almost pure noise,
        # learns to ignore its input and reconstructs only the average frame for hundreds of steps.
        z = vae.z_dim
        if not cfg.init:
            model.quant_conv.weight[z:].mul_(0.1)
            model.quant_conv.bias[z:].fill_(cfg.logvar_init)
    if cfg.image_steps and not cfg.init:
        inflate_init(model)
    model.train().requires_grad_(True)
    params = list(model.parameters())
    opt = make_adamw([{"params": params}], cfg.lr, betas=tuple(cfg.betas))
    step, _ = resume_latest(workdir, env, log, {"model": model, "optimizer": opt})
    losses = []
    t0 = time.time()
    total = cfg.image_steps + cfg.steps
    while step < total and (cfg.stop_after is None or step < cfg.stop_after):
        data_step = 0 if cfg.fixed_batch else step
        if step < cfg.image_steps:  # phase A: whole single frames (the image path of the causal VAE)
            idx, frames, crop = env.local_slice(cfg.image_batch_size), 1, None
            set_lr(opt, lr_at(step, cfg.image_steps, cfg.lr, cfg.warmup, cfg.min_lr_ratio))
        else:  # phase B: video clips
            full = cfg.full_frame_every and step % cfg.full_frame_every == 0
            idx, frames, crop = env.local_slice(cfg.batch_size), cfg.frames, (None if (full or cfg.fixed_batch) else cfg.crop)
            video_step = step - cfg.image_steps
            set_lr(opt, lr_at(video_step, cfg.steps, cfg.video_lr or cfg.lr, cfg.warmup, cfg.min_lr_ratio))
        x, _, fg = world_batch(cfg.seed, data_step, idx, frames, cfg.height, cfg.width, crop, with_masks=True)
        stride = vae.spatial_stride
        latent_shape = (vae.z_dim, 1 + (frames - 1) // 4, x.shape[-2] // stride, x.shape[-1] // stride)
        noise = per_sample_randn(latent_shape, cfg.seed, data_step, idx, "vae-posterior")
        loss, parts = vae_loss(model, x, noise, cfg.kl_weight, object_weight(fg, cfg.fg_weight, cfg.ring))
        loss.backward()
        gnorm = optimizer_step(opt, params, env, cfg.grad_clip)
        step += 1
        value = mean_across_ranks(float(loss.detach()), env)
        losses.append(value)
        if step % cfg.log_every == 0 or step == total:
            log.log({"stage": "vae", "step": step, "phase": "image" if step <= cfg.image_steps else "video", "loss": value, **parts, "grad_norm": gnorm,
                     "lr": opt.param_groups[0]["lr"], "s_per_step": (time.time() - t0) / max(1, len(losses))})
        if cfg.checkpoint_every and (step % cfg.checkpoint_every == 0 or step in (total, cfg.stop_after)):
            save_checkpoint(workdir, step, env, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                                 "config": config_dict(cfg)})
    model.eval().requires_grad_(False)
    summary: dict[str, Any] = {"steps": step, "losses": losses}
    if env.is_main and step >= total:  # finished (not just a slice): write the outputs
        mean, std = measure_latent_stats(vae, cfg.stats_clips, cfg.height, cfg.width, cfg.seed + 1)
        vae = WanVAE(model, latents_mean=mean, latents_std=std)
        save_vae(vae, workdir / "vae.safetensors")
        if cfg.eval_clips:
            summary["eval"] = evaluate_vae(vae, cfg.eval_clips, cfg.height, cfg.width)
            log.log({"stage": "vae", "step": step, "event": "eval", **summary["eval"]})
    return summary


@dataclass
class DecoderTuneConfig:
    """Phase C: sharpen the decoder with the encoder (and so the latent space and its statistics) frozen.

    Runs beside the teacher, which only needs the encoder's latents. Latents are perturbed with
    Gaussian noise of ``latent_noise`` (in normalised units) so the decoder tolerates the small errors of
    generated latents."""

    workdir: str = "runs/vae_decoder"
    vae: str = ""
    steps: int = 600
    batch_size: int = 4
    lr: float = 2e-4
    warmup: int = 20
    min_lr_ratio: float = 0.1
    betas: tuple[float, float] = (0.9, 0.99)
    frames: int = 21
    height: int = 64
    width: int = 64
    crop: int | None = 32
    fg_weight: float = 10.0
    ring: int = 3  # pixels around the object weighted like the object
    latent_noise: float = 0.05
    markings: bool = False  # objects carry the world's hidden marking (the memory benchmark's world)
    grad_clip: float = 1.0
    seed: int = 1
    eval_clips: int = 12
    checkpoint_every: int = 100
    log_every: int = 10
    fixed_batch: bool = False
    stop_after: int | None = None


def tune_decoder(cfg: DecoderTuneConfig, env: DistEnv, log: LossLog | None = None) -> dict[str, Any]:
    """Train only ``post_quant_conv`` + ``decoder`` of a trained VAE; writes ``<workdir>/vae.safetensors``."""
    workdir = Path(cfg.workdir)
    log = log or LossLog(workdir, env, "vae_decoder_log")
    vae = load_trained_vae(cfg.vae)
    model = vae.model
    model.requires_grad_(False)
    params = list(model.decoder.parameters()) + list(model.post_quant_conv.parameters())
    for p in params:
        p.requires_grad_(True)
    model.decoder.train()
    opt = make_adamw([{"params": params}], cfg.lr, betas=tuple(cfg.betas))
    step, _ = resume_latest(workdir, env, log, {"model": model, "optimizer": opt})
    std = vae.latents_std.view(1, -1, 1, 1, 1)
    losses: list[float] = []
    t0 = time.time()
    while step < cfg.steps and (cfg.stop_after is None or step < cfg.stop_after):
        data_step = 0 if cfg.fixed_batch else step
        idx = env.local_slice(cfg.batch_size)
        x, _, fg = world_batch(cfg.seed, data_step, idx, cfg.frames, cfg.height, cfg.width,
                               None if cfg.fixed_batch else cfg.crop, with_masks=True, markings=cfg.markings)
        with torch.no_grad():
            mu = model._encode(x)[:, :vae.z_dim]
        noise = per_sample_randn(tuple(mu.shape[1:]), cfg.seed, data_step, idx, "decoder-latent-noise")
        z = mu + cfg.latent_noise * std * noise
        set_lr(opt, lr_at(step, cfg.steps, cfg.lr, cfg.warmup, cfg.min_lr_ratio))
        rec = model._decode(z).sample
        # Weight the object *and a ring around it* equally: weighting the object alone rewards painting
        # it too large (misses cost more than bleeding), which rounds every shape into a blob.
        weight = object_weight(fg, cfg.fg_weight, cfg.ring)
        err = rec - x
        loss = (weight * err.abs()).mean() + (weight * err.pow(2)).mean()
        loss.backward()
        gnorm = optimizer_step(opt, params, env, cfg.grad_clip)
        step += 1
        value = mean_across_ranks(float(loss.detach()), env)
        losses.append(value)
        if step % cfg.log_every == 0 or step == cfg.steps:
            recent = losses[-cfg.log_every:]
            log.log({"stage": "vae_decoder", "step": step, "loss": value, "loss_avg": sum(recent) / len(recent),
                     "grad_norm": gnorm, "lr": opt.param_groups[0]["lr"],
                     "s_per_step": (time.time() - t0) / max(1, len(losses))})
        if cfg.checkpoint_every and (step % cfg.checkpoint_every == 0 or step in (cfg.steps, cfg.stop_after)):
            save_checkpoint(workdir, step, env, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                                 "config": config_dict(cfg)})
    model.eval().requires_grad_(False)
    summary: dict[str, Any] = {"steps": step, "losses": losses}
    if env.is_main and step >= cfg.steps:
        save_vae(vae, workdir / "vae.safetensors")
        if cfg.eval_clips:
            summary["eval"] = evaluate_vae(vae, cfg.eval_clips, cfg.height, cfg.width)
            log.log({"stage": "vae_decoder", "step": step, "event": "eval", **summary["eval"]})
    return summary


def load_trained_vae(workdir_or_file: str | Path) -> WanVAE:
    path = Path(workdir_or_file)
    return load_vae(path / "vae.safetensors" if path.is_dir() else path)
