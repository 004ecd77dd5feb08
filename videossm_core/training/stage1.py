"""Stage 1: causal few-step distillation of the bidirectional teacher (Self-Forcing).

Two phases, one step counter (so a resume lands in the right phase):

1. ODE warm start (``ode_steps`` steps, optional; Self-Forcing starts DMD from such an "ODE init"
   checkpoint, CausVid-style): the teacher integrates the probability-flow ODE with CFG from seeded
   noise (``ode_pairs`` trajectories, kept in ``<workdir>/ode_pairs.pt``); the causal student, run
   through the streaming path with the teacher's clean chunks in its cache (teacher forcing), regresses
   the teacher's final sample from the trajectory states at its 4 denoising levels. This gives a
   deterministic noise -> sample map, so the 4-step student is sharp before DMD starts.
2. DMD with self-rollout (``steps`` steps): the student generates ``latent_frames`` frames chunk by
   chunk on its own outputs (``rollout.SelfRollout``: KV cache, sink + window, exit step drawn per step,
   gradient through the exit step only); the window is scored by DMD against the frozen teacher (CFG
   ``guidance``) and the critic; the critic is trained on the same rollouts every step, the student
   every ``critic_ratio`` steps.

Writes ``student.safetensors`` and ``critic.safetensors`` (``save_generator`` format) to the workdir.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..config import SamplingConfig, StreamConfig
from ..model.transformer import CausalWanModel
from .checkpointing import (LossLog, resume_latest, load_generator, save_checkpoint,
                            save_generator, META_CONFIG)
from .common import autocast, config_dict, lr_at, make_adamw, maybe_compile, optimizer_step, set_lr, with_autocast
from .data import FilePrompts, PromptSource, TextConditioner, WorldPrompts
from .distributed import (DistEnv, mean_across_ranks, per_sample_randn, resolve_device, sample_generator,
                          step_generator)
from .dmd import DMDConfig, DMDTrainer
from .rollout import RolloutConfig, SelfRollout
from .teacher import ode_sigmas, sample_ode

# The demo's streaming setup (LongLive's window, positions that work for unbounded lengths).
DEMO_STREAM = dict(chunk_frames=3, sink_frames=3, window_frames=12, position_mode="unbounded",
                   router_horizon_frames=240)


@dataclass
class DistillConfig:
    """Settings shared by stage 1 and stage 2."""

    workdir: str = "runs/stage"
    teacher: str = ""
    steps: int = 200
    batch_size: int = 8
    lr: float = 2e-4
    seed: int = 0
    checkpoint_every: int = 100
    log_every: int = 10
    fixed_batch: bool = False
    stop_after: int | None = None  # end this process after this step (a run in slices; the schedule still spans all steps)
    text_encoder: str | None = None
    prompts: str | None = None
    latent_frames: int = 21
    latent_size: tuple[int, int] | None = None
    compile: bool = False
    autocast: str | None = None  # "bf16": forward passes under torch.autocast (common.autocast)
    guidance: float = 3.0
    guidance_max_sigma: float | None = None  # teacher CFG only at sigma <= this (dmd.interval_guidance)
    critic_lr: float = 2e-4
    critic_ratio: int = 2
    # DMD steps that train the critic alone before the generator's first update: a critic that starts as a copy
    # of the teacher scores nothing of the student yet (a run from an exported generator, whose critic is gone)
    critic_warmup: int = 0
    warmup: int = 10
    min_lr_ratio: float = 0.5
    grad_clip: float = 1.0
    min_step: float = 0.02
    max_step: float = 0.98
    shift: float = 5.0
    betas: tuple[float, float] = (0.0, 0.999)  # Self-Forcing's DMD optimiser betas
    stream: dict[str, Any] = field(default_factory=lambda: dict(DEMO_STREAM))
    denoising_steps: tuple[float, ...] = (1000.0, 750.0, 500.0, 250.0)
    eval_vae: str | None = None  # measure the result at the end (demo)
    eval_pairs: int = 4
    device: str = "cpu"  # "cuda" picks cuda:<local rank>

    def generator_due(self, dmd_step: int) -> bool:
        """Whether DMD step ``dmd_step`` (0 = the first) updates the generator: none in the critic warm-up,
        then every ``critic_ratio``-th step."""
        return dmd_step >= self.critic_warmup and (dmd_step - self.critic_warmup) % self.critic_ratio == 0

    def dmd_config(self) -> DMDConfig:
        return DMDConfig(guidance=self.guidance, guidance_max_sigma=self.guidance_max_sigma, min_step=self.min_step,
                         max_step=self.max_step, shift=self.shift)


@dataclass
class Stage1Config(DistillConfig):
    workdir: str = "runs/stage1"
    student: str | None = None
    ode_pairs: int = 256
    ode_steps: int = 300
    ode_lr: float = 3e-4
    ode_solver_steps: int = 16
    ode_batch: int | None = None  # default: batch_size
    same_exit_step: bool = True


# ---------------------------------------------------------------------------------------------- setup

def load_any_model(path: str | os.PathLike, names: tuple[str, ...] = ("generator.safetensors",)) -> CausalWanModel:
    """A model from a run folder (first of ``names`` inside), a ``save_generator`` file, or any checkpoint
    ``videossm_core.checkpoints.load_model`` understands (Wan2.1 / Self-Forcing / LongLive ...)."""
    path = Path(path)
    if path.is_dir():
        for name in names:
            if (path / name).is_file():
                return load_any_model(path / name)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} holds none of {list(names)}")
    if path.is_file() and path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            if META_CONFIG in (f.metadata() or {}):
                return load_generator(path)
    from ..checkpoints import load_model  # lazily: written in parallel, needed only for foreign checkpoints

    return load_model(str(path))


def load_conditioner(cfg: DistillConfig, text_len: int) -> TextConditioner:
    """The frozen text encoder: ``cfg.text_encoder`` or the teacher run's ``text_encoder.safetensors``."""
    from ..text import DemoTextEncoder, UMT5TextEncoder

    source = cfg.text_encoder
    if source is None:
        teacher = Path(cfg.teacher)
        source = str(teacher / "text_encoder.safetensors" if teacher.is_dir() else teacher.with_name("text_encoder.safetensors"))
    source_path = Path(source)
    if source_path.is_dir():
        encoder = UMT5TextEncoder.from_folder(source_path, dtype=torch.float32, text_len=text_len)
    else:
        encoder = DemoTextEncoder.load(source_path).eval().requires_grad_(False)
    return TextConditioner(encoder, text_len)


def latent_size(cfg: DistillConfig) -> tuple[int, int]:
    if cfg.latent_size:
        return tuple(cfg.latent_size)
    teacher = Path(cfg.teacher)
    file = teacher / "teacher.safetensors" if teacher.is_dir() else teacher
    if file.suffix == ".safetensors" and file.is_file():
        from ..demo.bundle import read_generator_metadata

        meta = read_generator_metadata(file)
        if "latent_size" in meta:
            h, w = meta["latent_size"].split(",")
            return int(h), int(w)
    return 8, 8


def prompt_source(cfg: DistillConfig) -> PromptSource:
    return FilePrompts(cfg.prompts) if cfg.prompts else WorldPrompts()


def stream_config(cfg: DistillConfig, memory: bool) -> StreamConfig:
    return StreamConfig(**{**cfg.stream, "memory": memory})


def sampling_config(cfg: DistillConfig) -> SamplingConfig:
    return SamplingConfig(denoising_steps=tuple(cfg.denoising_steps), shift=cfg.shift)


def frozen(model: CausalWanModel) -> CausalWanModel:
    return model.eval().requires_grad_(False)


def exit_steps(cfg: DistillConfig, step: int, num_chunks: int, num_steps: int, same: bool) -> list[int]:
    """The denoising step each chunk exits at (shared by all ranks: drawn from the step's generator)."""
    gen = step_generator(cfg.seed, step, "exit-step")
    draws = torch.randint(0, num_steps, (1 if same else num_chunks,), generator=gen).tolist()
    return draws * num_chunks if same else draws


def noise_fn_for(cfg: DistillConfig, step: int, indices: list[int], shape: tuple[int, ...], rollout_id: int | None = None):
    """Per-sample rollout noise for (chunk, denoising step), keyed by the rollout (default: the step)."""
    key = step if rollout_id is None else rollout_id

    def noise(chunk: int, k: int) -> Tensor:
        return per_sample_randn(shape, cfg.seed, key, indices, f"rollout-noise-{chunk}-{k}")

    return noise


# ---------------------------------------------------------------------------------------------- ODE pairs

@torch.no_grad()
def make_ode_pairs(teacher: CausalWanModel, conditioner: TextConditioner, source: PromptSource, cfg: Stage1Config,
                   shape: tuple[int, int, int, int], sampling: SamplingConfig, batch: int = 16) -> dict[str, Any]:
    """Teacher trajectories: states at the student's noise levels ``[N, K, C, F, h, w]`` and samples."""
    from ..sampling import warped_timesteps

    levels = [t / sampling.num_train_timesteps for t in warped_timesteps(sampling)]
    sigmas = ode_sigmas(cfg.ode_solver_steps, cfg.shift, include=levels)
    fn = with_autocast(maybe_compile(teacher, cfg.compile), cfg.autocast, teacher.device)
    noisy, clean, prompts = [], [], []
    for start in range(0, cfg.ode_pairs, batch):
        idx = list(range(start, min(cfg.ode_pairs, start + batch)))
        p = [source.prompt(cfg.seed, -1, i) for i in idx]
        noise = torch.stack([torch.randn(shape, generator=sample_generator(cfg.seed, -1, i, "ode-noise")) for i in idx])
        x0, kept = sample_ode(fn, noise, conditioner(p), conditioner.uncond(len(idx)), cfg.guidance, sigmas, levels,
                              cfg.guidance_max_sigma)
        noisy.append(torch.stack([kept[round(s, 6)] for s in levels], dim=1).half().cpu())
        clean.append(x0.half().cpu())
        prompts += p
    return {"noisy": torch.cat(noisy), "clean": torch.cat(clean), "prompts": prompts, "levels": levels}


# ---------------------------------------------------------------------------------------------- training

def train_stage1(cfg: Stage1Config, env: DistEnv, teacher: CausalWanModel | None = None,
                 conditioner: TextConditioner | None = None, log: LossLog | None = None) -> dict[str, Any]:
    """Run (or resume) stage 1. ``teacher``/``conditioner`` may be passed in directly (tests)."""
    workdir = Path(cfg.workdir)
    log = log or LossLog(workdir, env, "stage1_log")
    teacher = frozen(teacher if teacher is not None else load_any_model(cfg.teacher, ("teacher.safetensors", "generator.safetensors")))
    conditioner = conditioner or load_conditioner(cfg, teacher.config.text_len)
    source = prompt_source(cfg)
    torch.manual_seed(cfg.seed)
    student = load_any_model(cfg.student) if cfg.student else CausalWanModel(teacher.config)
    if not cfg.student:
        student.load_state_dict(teacher.state_dict())
    critic = CausalWanModel(teacher.config)
    critic.load_state_dict(teacher.state_dict())
    device = resolve_device(cfg.device, env)
    teacher.to(device)
    conditioner.device = device
    student.to(device).train().requires_grad_(True)
    critic.to(device).train().requires_grad_(True)
    # Stage 1 runs without the global memory: its parameters stay at their (identity) init.
    student_params = [p for n, p in student.named_parameters() if ".self_attn.memory." not in n]
    critic_params = [p for n, p in critic.named_parameters() if ".self_attn.memory." not in n]
    ode_opt = make_adamw([{"params": student_params}], cfg.ode_lr, betas=(0.9, 0.99))
    gen_opt = make_adamw([{"params": student_params}], cfg.lr, betas=cfg.betas)
    critic_opt = make_adamw([{"params": critic_params}], cfg.critic_lr, betas=cfg.betas)

    stream, sampling = stream_config(cfg, memory=False), sampling_config(cfg)
    rollout = SelfRollout(student, RolloutConfig(stream, sampling))
    h, w = latent_size(cfg)
    c = teacher.config.in_dim
    shape = (c, cfg.latent_frames, h, w)
    chunk = stream.chunk_frames
    num_chunks = cfg.latent_frames // chunk
    dmd = DMDTrainer(with_autocast(maybe_compile(teacher, cfg.compile), cfg.autocast, device),
                     with_autocast(maybe_compile(critic, cfg.compile), cfg.autocast, device), cfg.dmd_config(), env,
                     cfg.grad_clip, gen_opt, student_params, critic_opt, critic_params)

    ode_steps = cfg.ode_steps if cfg.ode_pairs > 0 else 0
    total = ode_steps + cfg.steps
    step, _ = resume_latest(workdir, env, log, {"student": student, "critic": critic, "ode_opt": ode_opt,
                                                 "gen_opt": gen_opt, "critic_opt": critic_opt})

    pairs = None
    if step < ode_steps:
        pairs_path = workdir / "ode_pairs.pt"
        if env.is_main and not pairs_path.is_file():
            t_pairs = time.time()
            data = make_ode_pairs(teacher, conditioner, source, cfg, shape, sampling)
            workdir.mkdir(parents=True, exist_ok=True)
            torch.save(data, str(pairs_path) + ".partial")
            os.replace(str(pairs_path) + ".partial", pairs_path)
            log.log({"stage": "stage1", "step": step, "event": "ode_pairs", "pairs": cfg.ode_pairs,
                     "wall_s": time.time() - t_pairs})
        from .distributed import barrier

        barrier(env)
        pairs = torch.load(pairs_path, weights_only=True)

    history: dict[str, list[float]] = {"ode": [], "dmd": [], "critic": []}
    t0 = time.time()
    while step < total and (cfg.stop_after is None or step < cfg.stop_after):
        data_step = 0 if cfg.fixed_batch else step
        record: dict[str, Any] = {"stage": "stage1", "step": step + 1}
        if step < ode_steps:
            # ---- ODE warm start: regression onto teacher trajectories, teacher forcing through the cache
            b = cfg.ode_batch or cfg.batch_size
            idx = list(env.local_slice(b))
            pick = [int(torch.randint(len(pairs["prompts"]), (), generator=sample_generator(cfg.seed, data_step, i, "ode-pick")))
                    for i in idx]
            noisy = pairs["noisy"][pick].float().to(device)  # [b, K, C, F, h, w]
            clean = pairs["clean"][pick].float().to(device)
            state = rollout.new_state(len(idx), conditioner([pairs["prompts"][j] for j in pick]))
            set_lr(ode_opt, lr_at(step, ode_steps, cfg.ode_lr, cfg.warmup, cfg.min_lr_ratio))
            with autocast(cfg.autocast, device):
                loss = rollout.teacher_forced_loss(state, {k: noisy[:, k] for k in range(noisy.shape[1])}, clean)
            loss.backward()
            record["grad_norm"] = optimizer_step(ode_opt, student_params, env, cfg.grad_clip)
            record["phase"] = "ode"
            record["ode_loss"] = mean_across_ranks(float(loss.detach()), env)
            history["ode"].append(record["ode_loss"])
        else:
            # ---- DMD with self-rollout
            dstep = step - ode_steps
            idx = list(env.local_slice(cfg.batch_size))
            prompts = [source.prompt(cfg.seed, data_step, i) for i in idx]
            cond, uncond = conditioner(prompts), conditioner.uncond(len(idx))
            update_generator = cfg.generator_due(dstep)
            exits = exit_steps(cfg, data_step, num_chunks, len(sampling.denoising_steps), cfg.same_exit_step)
            state = rollout.new_state(len(idx), cond)
            noise = noise_fn_for(cfg, data_step, idx, (c, chunk, h, w))
            set_lr(gen_opt, lr_at(dstep, cfg.steps, cfg.lr, cfg.warmup, cfg.min_lr_ratio))
            set_lr(critic_opt, lr_at(dstep, cfg.steps, cfg.critic_lr, cfg.warmup, cfg.min_lr_ratio))
            with torch.set_grad_enabled(update_generator), autocast(cfg.autocast, device):
                x0 = rollout.run_chunks(state, num_chunks, noise, exits, grad=True)
            record["phase"] = "dmd"
            record.update(dmd.step(x0, cond, uncond, cfg.seed, data_step, idx, update_generator))
            if update_generator:
                history["dmd"].append(record["dmd_loss"])
            record["exit_step"] = exits[0]
            history["critic"].append(record["critic_loss"])
        step += 1
        record["s_per_step"] = (time.time() - t0) / max(1, sum(len(v) for v in (history["ode"], history["critic"])))
        if step % cfg.log_every == 0 or step == total or step == ode_steps:
            log.log(record)
        if cfg.checkpoint_every and (step % cfg.checkpoint_every == 0 or step in (total, cfg.stop_after)):
            save_checkpoint(workdir, step, env, {
                "student": student.state_dict(), "critic": critic.state_dict(), "ode_opt": ode_opt.state_dict(),
                "gen_opt": gen_opt.state_dict(), "critic_opt": critic_opt.state_dict(), "config": config_dict(cfg)})
    summary: dict[str, Any] = {"steps": step, "history": history,
                               "losses": history["dmd"] or history["ode"]}
    if env.is_main and step >= total:  # finished (not just a slice): write the outputs
        student.cpu().eval()
        critic.cpu()
        save_generator(student, workdir / "student.safetensors", extra_metadata={"videossm_role": "stage1-student"})
        save_generator(critic, workdir / "critic.safetensors", extra_metadata={"videossm_role": "stage1-critic"})
        if cfg.eval_vae:
            summary["eval"] = evaluate_student(student, cfg, conditioner, stream)
            log.log({"stage": "stage1", "step": step, "event": "eval",
                     **{k: v for k, v in summary["eval"].items() if not isinstance(v, list)}})
    return summary


def evaluate_student(student: CausalWanModel, cfg: DistillConfig, conditioner: TextConditioner,
                     stream: StreamConfig) -> dict[str, Any]:
    """Short streams with one prompt switch, decoded with ``cfg.eval_vae`` and measured (demo only)."""
    from .evaluate import _pairs, evaluate_switching
    from .vae_training import load_trained_vae

    vae = load_trained_vae(cfg.eval_vae)
    student = student.cpu().eval()
    conditioner.device = torch.device("cpu")

    def encode(prompt: str) -> Tensor:
        return conditioner([prompt])

    with torch.no_grad():
        result = evaluate_switching(student, vae, encode, _pairs(cfg.eval_pairs, cfg.seed + 5), 4, latent_size(cfg),
                                    StreamConfig(**{**cfg.stream, "memory": True}), sampling_config(cfg), cfg.seed)
    result.pop("failures", None)
    return result
