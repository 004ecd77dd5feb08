"""The bidirectional teacher: ``CausalWanModel`` run with ``mask=None``, trained by flow matching.

Flow matching as in Wan / Self-Forcing: ``x_t = (1 - s) x0 + s eps`` with ``s = t / 1000``, the model
predicts the flow ``eps - x0``, the loss is the MSE to it. ``s`` is drawn from the shift-5 distribution
``s = 5u / (1 + 4u)``, ``u ~ U(0, 1)``, one value per clip (the same for every frame of a clip).

The demo text encoder is trained jointly (it starts random) and frozen afterwards. With probability
``prompt_dropout`` a clip's prompt is replaced by the empty prompt, so the teacher also learns the
unconditional flow that classifier-free guidance needs (DMD's real score uses it, ``interval_guidance``).

The run writes ``teacher.safetensors`` (EMA weights, ``save_generator`` format),
``text_encoder.safetensors`` (the EMA'd demo text encoder) and keeps the latent cache it trained on.
While it trains (or after it was stopped early), ``load_teacher_snapshot`` reads the same EMA weights
from its newest checkpoint, so a long run can be measured on the way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from ..config import ModelConfig, get_preset
from ..model.transformer import CausalWanModel
from ..text import DemoTextEncoder
from .checkpointing import (EMA, LossLog, continue_from_run, latest_checkpoint, resume_latest, save_checkpoint,
                            save_generator)
from .common import autocast, config_dict, lr_at, make_adamw, maybe_compile, optimizer_step, set_lr
from .data import LatentDataset, cached_world_dataset, latent_object_masks
from .distributed import DistEnv, mean_across_ranks, per_sample_rand, per_sample_randn, resolve_device


@dataclass
class TeacherTrainConfig:
    workdir: str = "runs/teacher"
    vae: str | None = None  # VAE run folder / file, used to build the latent cache
    preset: str = "demo"
    steps: int = 800
    batch_size: int = 8
    lr: float = 3e-4
    text_lr_scale: float = 1.0
    warmup: int = 30
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    shift: float = 5.0
    seed: int = 0
    clips: int = 512
    clip_latent_frames: int = 27
    latent_frames: int = 21
    p_clip_start: float = 0.5  # windows starting at a clip's first latent frame; the rest start mid-clip
    prompt_dropout: float = 0.1
    object_weight: float = 0.0  # extra loss weight on latent pixels the object touches (the object is ~5 % of them)
    object_dilate: int = 0  # grow that region by this many latent pixels (weights the object's surroundings too)
    markings: bool = False  # demo: clips of the marked world (each scene's hidden marking), for recall tuning
    ema: float = 0.995
    compile: bool = False
    autocast: str | None = None  # "bf16": forward passes under torch.autocast (common.autocast)
    checkpoint_every: int = 100
    log_every: int = 10
    fixed_batch: bool = False
    stop_after: int | None = None  # end this process after this step (a run in slices; the schedule still spans all steps)
    init: str | None = None  # start the teacher from these weights (load_model) instead of scratch
    # Start the demo text encoder from this file and keep it frozen: a teacher recovered from a distilled
    # generator (``init`` = its weights) must read prompts exactly as that generator does.
    init_text_encoder: str | None = None
    # Continue another teacher run (its newest checkpoint: step, weights, optimizer, EMA) on this run's own
    # clips (a new --seed draws new ones); --steps then extends that run's schedule.
    continue_from: str | None = None
    device: str = "cpu"  # "cuda" picks cuda:<local rank>
    height: int = 64
    width: int = 64
    eval_clips: int = 8  # teacher samples measured at the end (needs the VAE); 0 skips


def shifted_sigma(u: Tensor, shift: float) -> Tensor:
    """Wan's timestep shift: uniform ``u`` in [0, 1] -> ``shift u / (1 + (shift - 1) u)``."""
    return shift * u / (1.0 + (shift - 1.0) * u)


def flow_matching_loss(forward: Callable[..., Tensor], x0: Tensor, context: Tensor, sigma: Tensor,
                       noise: Tensor, weight: Tensor | None = None) -> Tensor:
    """MSE between the predicted and true flow ``eps - x0``; ``sigma`` ``[B]`` is per clip.
    ``weight`` (broadcastable to x0) weights latent pixels; the loss is normalised by its mean."""
    sigma, noise = sigma.to(x0.device), noise.to(x0.device)
    s = sigma.view(-1, 1, 1, 1, 1)
    x_t = (1.0 - s) * x0 + s * noise
    timestep = (sigma * 1000.0)[:, None].expand(-1, x0.shape[2])
    pred = forward(x_t, timestep, context)
    err = (pred.float() - (noise - x0)).pow(2)
    if weight is None:
        return err.mean()
    weight = weight.to(err.device).expand_as(err)
    return (weight * err).sum() / weight.sum()


def ode_sigmas(num_steps: int, shift: float, include: list[float] = ()) -> list[float]:
    """Decreasing noise levels from 1 to 0: ``num_steps`` shifted-uniform steps, plus ``include``."""
    grid = {round(float(shifted_sigma(torch.tensor(1.0 - i / num_steps), shift)), 6) for i in range(num_steps + 1)}
    grid |= {round(float(s), 6) for s in include}
    return sorted(grid, reverse=True)


def interval_guidance(guidance: float, sigma: Tensor, max_sigma: float | None) -> Tensor:
    """Per-sample CFG scale ``[B]``: ``guidance`` where ``sigma <= max_sigma``, 1 (no guidance) above.

    Guidance in a limited interval (Kynkaenniemi et al., 2024): at the highest noise levels, where the
    layout is decided, CFG enlarges and exaggerates what the prompt names (the demo teacher's objects come
    out 1.26x the world's area at guidance 4, 1.00x with guidance only below sigma 0.8, training/NOTES.md), while
    the binding of the prompt's words is done lower down. ``None`` guides at every level."""
    scale = torch.full_like(sigma.float(), float(guidance))
    if max_sigma is None:
        return scale
    return torch.where(sigma.float() <= max_sigma, scale, torch.ones_like(scale))


def guided_flow(model_fn: Callable[..., Tensor], x: Tensor, timestep: Tensor, cond: Tensor, uncond: Tensor | None,
                guidance: float | Tensor) -> Tensor:
    """Classifier-free-guided flow ``v_u + g (v_c - v_u)`` (one batched pass for both branches).

    ``guidance`` is one scale or a per-sample ``[B]`` one (``interval_guidance``)."""
    scale = torch.as_tensor(guidance, dtype=torch.float32, device=x.device)
    if uncond is None or bool((scale == 1.0).all()):  # no guidance anywhere: the conditional pass alone
        return model_fn(x, timestep, cond).float()
    if scale.ndim:
        scale = scale.view(-1, *([1] * (x.ndim - 1)))
    both = model_fn(torch.cat([x, x]), torch.cat([timestep, timestep]), torch.cat([cond, uncond])).float()
    v_c, v_u = both.chunk(2)
    return v_u + scale * (v_c - v_u)


@torch.no_grad()
def sample_ode(model_fn: Callable[..., Tensor], noise: Tensor, cond: Tensor, uncond: Tensor | None,
               guidance: float, sigmas: list[float], keep: list[float] = (),
               guidance_max_sigma: float | None = None) -> tuple[Tensor, dict[float, Tensor]]:
    """Euler integration of the flow ODE ``dx/ds = v`` from ``sigmas[0]`` (= 1, pure noise) to 0.

    Guidance applies at noise levels up to ``guidance_max_sigma`` (all when None). Returns the final
    sample and the states at the noise levels in ``keep`` (which must be grid points).
    """
    x = noise.float().to(cond.device)
    kept: dict[float, Tensor] = {}
    keep_r = {round(float(k), 6) for k in keep}
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        if round(s, 6) in keep_r:
            kept[round(s, 6)] = x.clone()
        t = torch.full((x.shape[0], x.shape[2]), s * 1000.0, device=x.device)
        scale = interval_guidance(guidance, torch.full((x.shape[0],), s), guidance_max_sigma)
        v = guided_flow(model_fn, x, t, cond, uncond, scale)
        x = x + (s_next - s) * v
    return x, kept


def build_text_encoder(model_config: ModelConfig, seed: int = 0) -> DemoTextEncoder:
    return DemoTextEncoder(text_len=model_config.text_len, text_dim=model_config.text_dim, seed=seed)


def _load_dataset(cfg: TeacherTrainConfig, env: DistEnv) -> LatentDataset:
    from .vae_training import load_trained_vae

    if cfg.vae is None:
        raise ValueError("the teacher needs --vae (to encode the world clips) or a dataset")
    vae = load_trained_vae(cfg.vae)
    dataset = cached_world_dataset(Path(cfg.workdir) / "latents.safetensors", vae, env, num_clips=cfg.clips,
                                   latent_frames=cfg.clip_latent_frames, height=cfg.height, width=cfg.width,
                                   seed=cfg.seed + 1000, markings=cfg.markings)
    if cfg.object_weight > 0:
        dataset.masks = latent_object_masks(cfg.clips, cfg.clip_latent_frames, cfg.height, cfg.width, cfg.seed + 1000,
                                            dilate=cfg.object_dilate, spatial_stride=vae.spatial_stride,
                                            markings=cfg.markings)
    return dataset


def load_teacher_snapshot(workdir: str | Path) -> tuple[CausalWanModel, DemoTextEncoder, int]:
    """``(teacher, text_encoder, step)``: the EMA weights of a teacher run's newest checkpoint, in eval mode.

    For measuring a run that is still training or was stopped before its last step (a finished run's
    ``teacher.safetensors`` holds the same EMA weights). Checkpoints written before the model config was
    stored in them are rebuilt from the run's preset.
    """
    ckpt = latest_checkpoint(workdir)
    if ckpt is None:
        raise FileNotFoundError(f"{workdir} has no complete teacher checkpoint (checkpoints/step_*/train.pt)")
    shared = torch.load(ckpt / "train.pt", map_location="cpu", weights_only=True)
    if "ema_model" not in shared or "ema_text" not in shared:
        raise ValueError(f"{ckpt} is not a teacher checkpoint (it has no ema_model/ema_text)")
    if "model_config" in shared:
        model_config = ModelConfig.from_json(shared["model_config"])
    else:
        model_config = get_preset(shared["config"]["preset"])
    model = CausalWanModel(model_config)
    text_config = shared.get("text_encoder_config")
    text_encoder = DemoTextEncoder(**text_config) if text_config else build_text_encoder(model_config)
    for module, saved in ((model, shared["ema_model"]), (text_encoder, shared["ema_text"])):
        ema = EMA(module, 0.0)
        if set(saved["shadow"]) != set(ema.shadow):
            raise ValueError(f"{ckpt}: its EMA weights do not fit a {type(module).__name__} of the run's config")
        ema.load_state_dict(saved)
        try:
            ema.copy_to(module)
        except RuntimeError as exc:  # a tensor of another shape
            raise ValueError(f"{ckpt}: its EMA weights do not fit the run's config: {exc}") from exc
    return model.eval(), text_encoder.eval(), int(shared["step"])


def train_teacher(cfg: TeacherTrainConfig, env: DistEnv, dataset: LatentDataset | None = None,
                  model_config: ModelConfig | None = None, log: LossLog | None = None) -> dict[str, Any]:
    """Train (or resume) the teacher and its text encoder. Returns a summary with the loss curve."""
    workdir = Path(cfg.workdir)
    log = log or LossLog(workdir, env, "teacher_log")
    dataset = dataset if dataset is not None else _load_dataset(cfg, env)
    model_config = model_config or get_preset(cfg.preset)
    torch.manual_seed(cfg.seed)
    if cfg.init:
        from ..checkpoints import load_model  # lazily: the real-scale path only

        model = load_model(cfg.init, requires_grad=True)
    else:
        model = CausalWanModel(model_config)
    if cfg.init_text_encoder:
        text_encoder = DemoTextEncoder.load(cfg.init_text_encoder).requires_grad_(False)
    else:
        text_encoder = build_text_encoder(model.config, cfg.seed)
    device = resolve_device(cfg.device, env)
    model.to(device).train()
    text_encoder.to(device)
    text_encoder.train()
    # The one-shot teacher never uses the global memory: leave those parameters out of the optimizer.
    params = [p for n, p in model.named_parameters() if ".self_attn.memory." not in n]
    text_params = [p for p in text_encoder.parameters() if p.requires_grad]
    opt = make_adamw([{"params": params}, {"params": text_params, "lr_scale": cfg.text_lr_scale}], cfg.lr,
                     betas=(0.9, 0.99), weight_decay=cfg.weight_decay)
    ema_model, ema_text = EMA(model, cfg.ema), EMA(text_encoder, cfg.ema)
    if cfg.continue_from:
        continue_from_run(workdir, cfg.continue_from, env)
    step, _ = resume_latest(workdir, env, log, {"model": model, "text_encoder": text_encoder, "optimizer": opt,
                                                 "ema_model": ema_model, "ema_text": ema_text})
    forward = maybe_compile(model, cfg.compile)
    losses: list[float] = []
    t0 = time.time()
    while step < cfg.steps and (cfg.stop_after is None or step < cfg.stop_after):
        data_step = 0 if cfg.fixed_batch else step
        idx = list(env.local_slice(cfg.batch_size))
        x0, prompts = dataset.batch(cfg.seed, data_step, idx, cfg.latent_frames, p_clip_start=cfg.p_clip_start)
        x0 = x0.to(device)
        drop = per_sample_rand(cfg.seed, data_step, idx, "prompt-dropout") < cfg.prompt_dropout
        prompts = ["" if d else p for p, d in zip(prompts, drop.tolist())]
        context = text_encoder.encode(prompts)
        sigma = shifted_sigma(per_sample_rand(cfg.seed, data_step, idx, "timestep"), cfg.shift)
        noise = per_sample_randn(tuple(x0.shape[1:]), cfg.seed, data_step, idx, "noise")
        set_lr(opt, lr_at(step, cfg.steps, cfg.lr, cfg.warmup, cfg.min_lr_ratio))
        weight = None
        if cfg.object_weight > 0 and dataset.last_masks is not None:
            weight = 1.0 + cfg.object_weight * dataset.last_masks.to(x0.device)
        with autocast(cfg.autocast, device):
            loss = flow_matching_loss(forward, x0, context, sigma, noise, weight)
        loss.backward()
        gnorm = optimizer_step(opt, params + text_params, env, cfg.grad_clip)
        step += 1
        decay = min(cfg.ema, (1.0 + step) / (10.0 + step))  # short warm-up of the EMA
        ema_model.decay = ema_text.decay = decay
        ema_model.update(model)
        ema_text.update(text_encoder)
        value = mean_across_ranks(float(loss.detach()), env)
        losses.append(value)
        if step % cfg.log_every == 0 or step == cfg.steps:
            recent = losses[-cfg.log_every:]
            log.log({"stage": "teacher", "step": step, "loss": value, "loss_avg": sum(recent) / len(recent),
                     "grad_norm": gnorm, "lr": opt.param_groups[0]["lr"],
                     "s_per_step": (time.time() - t0) / max(1, len(losses))})
        if cfg.checkpoint_every and (step % cfg.checkpoint_every == 0 or step in (cfg.steps, cfg.stop_after)):
            ema_model.decay = ema_text.decay = cfg.ema
            save_checkpoint(workdir, step, env, {
                "model_config": model.config.to_json(), "text_encoder_config": text_encoder.config,
                "model": model.state_dict(), "text_encoder": text_encoder.state_dict(),
                "optimizer": opt.state_dict(), "ema_model": ema_model.state_dict(),
                "ema_text": ema_text.state_dict(), "config": config_dict(cfg)})
    summary: dict[str, Any] = {"steps": step, "losses": losses}
    if env.is_main and step >= cfg.steps:  # finished (not just a slice): write the outputs
        ema_model.copy_to(model)
        ema_text.copy_to(text_encoder)
        model.cpu().eval()
        text_encoder.cpu()
        text_encoder.eval()
        save_generator(model, workdir / "teacher.safetensors", extra_metadata={
            "videossm_role": "teacher", "latent_size": f"{dataset.latents.shape[-2]},{dataset.latents.shape[-1]}"})
        text_encoder.save(workdir / "text_encoder.safetensors")
        if cfg.eval_clips and cfg.vae:
            from .evaluate import evaluate_teacher
            from .vae_training import load_trained_vae

            summary["eval"] = evaluate_teacher(model, text_encoder, load_trained_vae(cfg.vae), cfg.eval_clips,
                                               tuple(dataset.latents.shape[1:2]) + (cfg.latent_frames,)
                                               + tuple(dataset.latents.shape[-2:]), seed=cfg.seed + 77)
            log.log({"stage": "teacher", "step": step, "event": "eval", **summary["eval"]})
    return summary
