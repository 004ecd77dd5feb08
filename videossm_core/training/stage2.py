"""Stage 2: long self-rollout with the window and the global memory live (LongLive-style streaming tuning).

Every rank carries a long rollout of its samples across training steps. Each step generates the next
window of ``latent_frames`` frames (``latent_frames / chunk`` chunks) on top of the carried state —
sink, rolling window and global memory as they are after everything generated so far — and applies
DMD to that window against the 5-second teacher, as LongLive's streaming long tuning does with the
last 21 frames. The state is detached between windows (truncated BPTT), except the memory state and the
cached gates, whose graph is carried ``memory_bptt_windows`` windows; when a rollout has reached
``rollout_frames`` a new one starts, so the student is trained at every depth of a long video, far
beyond the stage-1 length.

Prompt switches: before a window, with probability ``switch_prob``, every sample switches to a new
prompt (a variation of its current one) with LongLive's re-cache (``SelfRollout.switch_prompt``);
the window after a switch is scored under the new prompt, so the student learns to follow it from
the first chunk on while the sink and the memory still hold the old scene.

Trained: the memory and router parameters at ``lr``, the rest of the student at ``lr * base_lr_scale``
(0 freezes it). The memory gates get gradients through the eviction writes (see ``rollout.py``), which happen
windows after the gates are cached: hence the carried graph.
The critic continues from stage 1's.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..model.transformer import CausalWanModel
from ..state import StreamState
from .checkpointing import LossLog, resume_latest, save_checkpoint, save_generator
from .common import autocast, config_dict, lr_at, make_adamw, maybe_compile, set_lr, with_autocast
from .data import TextConditioner
from .distributed import DistEnv, resolve_device, step_generator
from .dmd import DMDTrainer
from .rollout import RolloutConfig, SelfRollout
from .stage1 import (DistillConfig, evaluate_student, exit_steps, frozen, latent_size, load_any_model,
                     load_conditioner, noise_fn_for, prompt_source, sampling_config, stream_config)


@dataclass
class Stage2Config(DistillConfig):
    workdir: str = "runs/stage2"
    student: str = ""
    critic: str | None = None
    batch_size: int = 4
    lr: float = 1e-4
    critic_lr: float = 1e-4
    rollout_frames: int = 105  # latent frames of one long rollout (105 = 35 chunks ~ 26 s at 16 fps)
    # T of the memory router, gamma_t = sigmoid(w log((t + 1) / T) + b), stored in the student's MemoryConfig (what
    # generation uses by default). None: the rollout's length.
    router_horizon_frames: int | None = None
    switch_prob: float = 0.5
    base_lr_scale: float = 0.3
    train_gates: bool = True
    # Truncated BPTT of the memory: its state and the cached gates keep their graph across this many training windows
    # (then, and at checkpoints, it is cut). A chunk is evicted (written into memory with its cached gates)
    # (window_frames - sink_frames) / chunk_frames chunks after it is generated, later than a window's end, so with 1
    # the write side never gets a gradient. The state is [B, H, D, D] per layer, its graph small.
    memory_bptt_windows: int = 4
    same_exit_step: bool = True


@dataclass
class CarriedRollout:
    """One rank's long rollout between training steps."""

    state: StreamState
    prompts: list[str]
    rollout_id: int  # the step that started it (keys its noise)
    chunks_done: int = 0
    switches: int = 0
    graph_windows: int = 0  # windows the memory's carried graph spans


def memory_param(name: str) -> bool:
    """A VideoSSM memory parameter (gates, decay, the read's out-gate and norm, the router)."""
    return ".self_attn.memory." in name


def train_stage2(cfg: Stage2Config, env: DistEnv, teacher: CausalWanModel | None = None,
                 student: CausalWanModel | None = None, critic: CausalWanModel | None = None,
                 conditioner: TextConditioner | None = None, log: LossLog | None = None) -> dict[str, Any]:
    """Run (or resume) stage 2. Models/conditioner may be passed in directly (tests)."""
    workdir = Path(cfg.workdir)
    log = log or LossLog(workdir, env, "stage2_log")
    teacher = frozen(teacher if teacher is not None
                     else load_any_model(cfg.teacher, ("teacher.safetensors", "generator.safetensors")))
    conditioner = conditioner or load_conditioner(cfg, teacher.config.text_len)
    source = prompt_source(cfg)
    if student is None:
        student = load_any_model(cfg.student, ("student.safetensors", "generator.safetensors"))
    if critic is None:
        critic_src = cfg.critic
        if critic_src is None and Path(cfg.student).is_dir() and (Path(cfg.student) / "critic.safetensors").is_file():
            critic_src = str(Path(cfg.student) / "critic.safetensors")
        critic = load_any_model(critic_src) if critic_src else CausalWanModel(teacher.config)
        if critic_src is None:
            critic.load_state_dict(teacher.state_dict())
    device = resolve_device(cfg.device, env)
    teacher.to(device)
    conditioner.device = device
    student.to(device).train()
    critic.to(device).train().requires_grad_(True)
    mem_params = [p for n, p in student.named_parameters() if memory_param(n)]
    base_params = [p for n, p in student.named_parameters() if not memory_param(n)]
    for p in mem_params:
        p.requires_grad_(True)
    for p in base_params:
        p.requires_grad_(cfg.base_lr_scale > 0)
    trained = mem_params + (base_params if cfg.base_lr_scale > 0 else [])
    critic_params = [p for n, p in critic.named_parameters() if not memory_param(n)]
    gen_opt = make_adamw([{"params": mem_params, "lr_scale": 1.0},
                          {"params": base_params if cfg.base_lr_scale > 0 else [], "lr_scale": cfg.base_lr_scale}],
                         cfg.lr, betas=cfg.betas)
    critic_opt = make_adamw([{"params": critic_params}], cfg.critic_lr, betas=cfg.betas)

    horizon = cfg.router_horizon_frames or cfg.rollout_frames
    # The router is trained against this T, so it is stored with the student (its config travels in every file it
    # is saved to) and generation uses it whatever the video's length.
    student.config = student.config.replace(
        memory=dataclasses.replace(student.config.memory, router_horizon_frames=horizon))
    stream = stream_config(cfg, memory=True).replace(router_horizon_frames=horizon)
    sampling = sampling_config(cfg)
    rollout = SelfRollout(student, RolloutConfig(stream, sampling, train_memory=cfg.train_gates))
    h, w = latent_size(cfg)
    c = teacher.config.in_dim
    chunk = stream.chunk_frames
    window_chunks = cfg.latent_frames // chunk
    max_chunks = max(window_chunks, cfg.rollout_frames // chunk)
    dmd = DMDTrainer(with_autocast(maybe_compile(teacher, cfg.compile), cfg.autocast, device),
                     with_autocast(maybe_compile(critic, cfg.compile), cfg.autocast, device), cfg.dmd_config(), env,
                     cfg.grad_clip, gen_opt, trained, critic_opt, critic_params)

    step, local = resume_latest(workdir, env, log, {"student": student, "critic": critic, "gen_opt": gen_opt,
                                                     "critic_opt": critic_opt})
    carried: CarriedRollout | None = local.get("carried")  # this rank's rollout, continued across windows

    history: dict[str, list[float]] = {"dmd": [], "critic": []}
    t0 = time.time()
    while step < cfg.steps and (cfg.stop_after is None or step < cfg.stop_after):
        data_step = 0 if cfg.fixed_batch else step
        idx = list(env.local_slice(cfg.batch_size))
        record: dict[str, Any] = {"stage": "stage2", "step": step + 1}
        switched = False
        if cfg.fixed_batch or carried is None or carried.chunks_done + window_chunks > max_chunks:
            prompts = [source.prompt(cfg.seed, data_step, i) for i in idx]
            carried = CarriedRollout(rollout.new_state(len(idx), conditioner(prompts)), prompts, data_step)
        elif torch.rand((), generator=step_generator(cfg.seed, data_step, "switch")) < cfg.switch_prob:
            carried.prompts = [source.switch(p, cfg.seed, data_step, i) for p, i in zip(carried.prompts, idx)]
            with autocast(cfg.autocast, device):
                rollout.switch_prompt(carried.state, conditioner(carried.prompts))
            carried.switches += 1
            switched = True
        state = carried.state
        cond, uncond = conditioner(carried.prompts), conditioner.uncond(len(idx))
        update_generator = cfg.generator_due(step)
        exits = exit_steps(cfg, data_step, window_chunks, len(sampling.denoising_steps), cfg.same_exit_step)
        noise = noise_fn_for(cfg, data_step, idx, (c, chunk, h, w), rollout_id=carried.rollout_id)
        set_lr(gen_opt, lr_at(step, cfg.steps, cfg.lr, cfg.warmup, cfg.min_lr_ratio))
        set_lr(critic_opt, lr_at(step, cfg.steps, cfg.critic_lr, cfg.warmup, cfg.min_lr_ratio))
        window_start = state.next_frame
        checkpoint_due = cfg.checkpoint_every and ((step + 1) % cfg.checkpoint_every == 0
                                                   or step + 1 in (cfg.steps, cfg.stop_after))
        # Carry the memory's graph on unless the horizon is reached or a checkpoint is due (a resumed run has none).
        carried.graph_windows += 1
        keep_graph = (cfg.train_gates and not cfg.fixed_batch and not checkpoint_due
                      and carried.graph_windows < cfg.memory_bptt_windows)
        # A critic-only window still writes the memory with grad when the graph is carried on: a later generator
        # update reaches the gates through it. Its outputs keep no graph.
        with torch.set_grad_enabled(update_generator or keep_graph), autocast(cfg.autocast, device):
            x0 = rollout.run_chunks(state, window_chunks, noise, exits, grad=update_generator)
        record.update(dmd.step(x0, cond, uncond, cfg.seed, data_step, idx, update_generator, retain_graph=keep_graph))
        del x0  # the window's graph goes; only the memory's part stays, referenced by the carried state
        if update_generator:
            history["dmd"].append(record["dmd_loss"])
        history["critic"].append(record["critic_loss"])
        SelfRollout.detach_state(state, keep_memory_graph=keep_graph)
        if not keep_graph:
            carried.graph_windows = 0
        carried.chunks_done += window_chunks
        norms = state.memory_norms()
        with torch.no_grad():
            gamma = student.router_gammas(window_start, stream.router_horizon_frames)[0]
        record.update({"window_start": window_start, "switched": switched, "exit_step": exits[0],
                       "memory_norm": sum(norms) / max(1, len(norms)),
                       "gamma": gamma,
                       "s_per_step": (time.time() - t0) / max(1, len(history["critic"]))})
        step += 1
        if step % cfg.log_every == 0 or step == cfg.steps:
            log.log(record)
        if cfg.checkpoint_every and (step % cfg.checkpoint_every == 0 or step in (cfg.steps, cfg.stop_after)):
            save_checkpoint(workdir, step, env,
                            {"student": student.state_dict(), "critic": critic.state_dict(),
                             "gen_opt": gen_opt.state_dict(), "critic_opt": critic_opt.state_dict(),
                             "config": config_dict(cfg)},
                            local={"carried": carried})
    summary: dict[str, Any] = {"steps": step, "history": history, "losses": history["dmd"]}
    if env.is_main and step >= cfg.steps:  # finished (not just a slice): write the outputs
        student.cpu().eval()
        critic.cpu()
        save_generator(student, workdir / "student.safetensors", extra_metadata={"videossm_role": "stage2-student"})
        save_generator(critic, workdir / "critic.safetensors", extra_metadata={"videossm_role": "stage2-critic"})
        if cfg.eval_vae:
            summary["eval"] = evaluate_student(student, cfg, conditioner, stream)
            log.log({"stage": "stage2", "step": step, "event": "eval",
                     **{k: v for k, v in summary["eval"].items() if not isinstance(v, list)}})
    return summary
