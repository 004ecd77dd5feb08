"""Recall tuning: a supervised streaming term that rewards what the global memory is for.

Stages 1-2 are data-free: a teacher scores windows of the student's own rollout. A teacher whose window (2 chunks
here, 5 s at real scale) is shorter than the time a scene stays hidden cannot reward remembering across it. This
stage streams the world's memory episodes instead (``data.EpisodeDataset``: a scene's hidden marking leaves the
view for 4-8 s, longer than the local window, and comes back on a revisited prompt or an object re-entering a
world wider than the frame):

- the student runs chunk by chunk through the streaming path with the *true* latents in its cache (teacher
  forcing), so the sink, the window and, through evictions, the global memory hold the real past;
- each chunk is denoised from the true latents noised to one of the sampler's levels, and the loss is the error of
  its x0 prediction, weighted up on the object (where the marking is) and on the chunks from an event on, where only
  the memory can know the marking;
- the memory's state and cached gates keep their graph over the whole episode (the state is ``[B, H, D, D]`` per
  layer), so the write side (W_alpha, W_beta, A_log, the gate biases) learns from evictions many chunks back.

Variants, one recipe and one budget, for ``benchmarks/bench_memory.py``: ``hybrid`` (sink + window + memory),
``sink`` (LongLive-like: sink + window) and ``window`` (Self-Forcing-like: the same recent frames, no sink, no
memory). The student file records the stream settings it was tuned with.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import StreamConfig
from ..demo.bundle import DEFAULT_FPS, DEFAULT_RESOLUTION, META_DEMO, META_SAMPLING, META_STREAM
from ..model.transformer import CausalWanModel
from ..sampling import remember_recent_latents_inplace
from .checkpointing import LossLog, resume_latest, save_checkpoint, save_generator
from .common import autocast, config_dict, lr_at, make_adamw, optimizer_step, set_lr
from .data import EpisodeDataset, TextConditioner, encode_memory_episodes
from .distributed import DistEnv, barrier, resolve_device, sample_generator
from .rollout import RolloutConfig, SelfRollout
from .stage1 import DEMO_STREAM, load_any_model, sampling_config
from .stage2 import memory_param

# The three memories the benchmark compares. "window" keeps the hybrid's recent frames (9) without the sink's 3.
VARIANTS: dict[str, dict[str, Any]] = {
    "hybrid": dict(DEMO_STREAM, memory=True),
    "sink": dict(DEMO_STREAM, memory=False),
    "window": dict(DEMO_STREAM, memory=False, sink_frames=0,
                   window_frames=DEMO_STREAM["window_frames"] - DEMO_STREAM["sink_frames"]),
}


@dataclass
class RecallConfig:
    workdir: str = "runs/recall"
    student: str = ""
    text_encoder: str = ""
    vae: str | None = None  # encodes the episode cache when it does not exist yet
    episodes: str | None = None  # the episode cache (default: <workdir>/episodes.safetensors)
    variant: str = "hybrid"
    num_episodes: int = 256
    episode_frames: int = 66  # latent frames of an episode (22 chunks, 16.3 s)
    kinds: tuple[str, ...] = ("revisit", "return")
    steps: int = 300
    batch_size: int = 4
    lr: float = 1e-3  # memory and router
    base_lr_scale: float = 0.05  # the rest of the student, relative to lr
    # Only the non-memory parameters whose names contain one of these train (empty: all), e.g. the self-attention's
    # q/k projections and norms, which are also the memory's addressing (its keys and queries).
    base_params: tuple[str, ...] = ()
    # Re-initialise the memory's decay bias for a half-life of this many latent frames before tuning (None: keep).
    retention_frames: int | None = None
    warmup: int = 10
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    betas: tuple[float, float] = (0.9, 0.999)
    object_weight: float = 4.0  # extra loss weight on the latent pixels the object touches
    marking_weight: float = 0.0  # extra loss weight on the latent pixels the hidden marking's band touches
    event_weight: float = 4.0  # loss weight of the chunks from an event on
    other_weight: float = 1.0  # loss weight of every other chunk (0: the loss only where the memory must recall)
    event_chunks: int = 2
    denoising_steps: tuple[float, ...] = (1000.0, 750.0, 500.0, 250.0)
    shift: float = 5.0
    seed: int = 0
    checkpoint_every: int = 50
    log_every: int = 10
    stop_after: int | None = None
    autocast: str | None = None
    device: str = "cpu"
    stream: dict[str, Any] = field(default_factory=dict)  # filled from the variant

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown variant {self.variant!r}; use one of {sorted(VARIANTS)}")
        if not self.stream:
            self.stream = dict(VARIANTS[self.variant])


def chunk_weights(events: list[dict], num_chunks: int, chunk: int, event_weight: float, event_chunks: int,
                  other_weight: float = 1.0) -> list[float]:
    """Loss weight per chunk: ``event_weight`` for the ``event_chunks`` chunks from each event's frame,
    ``other_weight`` elsewhere."""
    weights = [other_weight] * num_chunks
    for e in events:
        first = e["frame"] // chunk
        for c in range(first, min(num_chunks, first + event_chunks)):
            weights[c] = event_weight
    return weights


def episode_loss(rollout: SelfRollout, conditioner: TextConditioner, latents: torch.Tensor, masks: torch.Tensor,
                 schedule: list[tuple[int, str]], weights: list[float], levels: list[int], noise: torch.Tensor,
                 object_weight: float, marking_masks: torch.Tensor | None = None,
                 marking_weight: float = 0.0) -> tuple[torch.Tensor, list[float]]:
    """Stream one episode with teacher forcing; the weighted x0 loss over its chunks (graph attached) and the
    per-chunk unweighted errors.

    ``latents`` ``[1, C, F, h, w]``, ``masks`` and ``marking_masks`` ``[1, 1, F, h, w]``, ``levels[c]`` the
    denoising step chunk c is noised to, ``noise`` like ``latents``. Prompts switch with LongLive's re-cache where
    the schedule says. Chunks of weight 0 are still streamed (they fill the cache and the memory).
    """
    pixel_weight = 1.0 + object_weight * masks
    if marking_weight:
        pixel_weight = pixel_weight + marking_weight * marking_masks
    cfg = rollout.config
    chunk = cfg.stream.chunk_frames
    scale = cfg.sampling.num_train_timesteps
    switches = {frame: prompt for frame, prompt in schedule[1:]}
    state = rollout.new_state(1, conditioner([schedule[0][1]]))
    memory_grad = state.memory_active and torch.is_grad_enabled()
    total, errors = latents.new_zeros(()), []
    for c in range(len(weights)):
        start = c * chunk
        if start in switches:
            rollout.switch_prompt(state, conditioner([switches[start]]))
        target = latents[:, :, start:start + chunk]
        t = rollout.timesteps[levels[c]]
        s = t / scale
        x = (1.0 - s) * target + s * noise[:, :, start:start + chunk]
        x0 = x - s * rollout._call(state, x, t, start)
        err = (x0 - target).pow(2) * pixel_weight[:, :, start:start + chunk]
        total = total + weights[c] * err.mean()
        errors.append(float(err.detach().mean()))
        # The clean pass writes the true chunk into the window; with the memory trained it caches the chunk's gates
        # with their graph, which its eviction three chunks later writes into the memory state.
        with torch.set_grad_enabled(memory_grad):
            rollout._call(state, target, cfg.sampling.context_timestep, start)
        remember_recent_latents_inplace(state, target, start)
    return total / max(sum(weights), 1e-8), errors


def starting_fresh(workdir: Path) -> bool:
    """No checkpoint yet: a run starting, not resuming (a resumed run's weights already carry its changes)."""
    return not any((workdir / "checkpoints").glob("step_*"))


@torch.no_grad()
def set_memory_half_life(model: CausalWanModel, frames: int) -> None:
    """Set every block's memory decay bias so that an input-independent gate keeps half the state after ``frames``
    evicted latent frames (the gates' input weights and A_log stay as trained)."""
    from ..model.delta_rule import retention_gate_bias

    mem = model.config.memory
    log_decay = math.log(0.5) / (frames * mem.init_tokens_per_frame)
    for block in model.blocks:
        m = block.self_attn.memory
        if m is not None:
            for h, a_log in enumerate(m.A_log.tolist()):
                m.alpha_proj.bias[h] = retention_gate_bias(log_decay, a_log)


def load_episodes(cfg: RecallConfig, env: DistEnv, poll_s: float = 2.0, timeout_s: float = 4 * 3600) -> EpisodeDataset:
    """The episode cache, encoded first (with ``cfg.vae``, at the demo's resolution) when it does not exist: every
    rank encodes its share (episodes rank, rank + W, ...) into a shard file, rank 0 joins them. Ranks wait by polling
    for files, not in a collective: encoding can outlast the process group's timeout."""
    path = Path(cfg.episodes or Path(cfg.workdir) / "episodes.safetensors")
    seed = cfg.seed + 2000  # the episodes' seed: the marking masks of an older cache are re-planned from it
    if not path.is_file():
        if not cfg.vae:
            raise FileNotFoundError(f"{path} does not exist: pass --vae to encode the memory episodes")
        from .vae_training import load_trained_vae

        vae = load_trained_vae(cfg.vae)
        shard = lambda r: path.with_name(f"{path.name}.shard{r}-of-{env.world_size}")  # noqa: E731
        encode_memory_episodes(vae, range(env.rank, cfg.num_episodes, env.world_size), cfg.episode_frames,
                               *DEFAULT_RESOLUTION, seed, cfg.kinds,
                               chunk_frames=cfg.stream["chunk_frames"]).save(shard(env.rank))
        waiting = [shard(r) for r in range(env.world_size)] if env.is_main else [path]
        deadline = time.time() + timeout_s
        while not all(p.is_file() for p in waiting):
            if time.time() > deadline:
                raise TimeoutError(f"waited {timeout_s:.0f} s for {[str(p) for p in waiting if not p.is_file()]}")
            time.sleep(poll_s)
        if env.is_main:
            EpisodeDataset.interleave([EpisodeDataset.load(p) for p in waiting]).save(path)
            for p in waiting:
                p.unlink()
    barrier(env)
    data = EpisodeDataset.load(path)
    if cfg.marking_weight and data.marking_masks is None:  # a cache encoded before marking masks existed
        height, width = DEFAULT_RESOLUTION
        data = data.with_marking_masks(seed, height, width, height // data.latents.shape[-2], cfg.kinds,
                                       cfg.stream["chunk_frames"])
    return data


def train_recall(cfg: RecallConfig, env: DistEnv, student: CausalWanModel | None = None,
                 conditioner: TextConditioner | None = None, data: EpisodeDataset | None = None,
                 log: LossLog | None = None) -> dict[str, Any]:
    """Run (or resume) recall tuning. The student, conditioner and episodes may be passed in directly (tests)."""
    workdir = Path(cfg.workdir)
    log = log or LossLog(workdir, env, "recall_log")
    if student is None:
        student = load_any_model(cfg.student, ("student.safetensors", "generator.safetensors"))
    if conditioner is None:
        from ..text import DemoTextEncoder

        conditioner = TextConditioner(DemoTextEncoder.load(cfg.text_encoder).eval().requires_grad_(False),
                                      student.config.text_len)
    device = resolve_device(cfg.device, env)
    conditioner.device = device
    student.to(device).train()
    if data is None:
        data = load_episodes(cfg, env)
    chunk = cfg.stream["chunk_frames"]
    num_chunks = min(cfg.episode_frames, data.latents.shape[2]) // chunk

    if cfg.retention_frames and starting_fresh(workdir):
        set_memory_half_life(student, cfg.retention_frames)
    mem_params = [p for n, p in student.named_parameters() if memory_param(n)]
    # --base-lr-scale 0 trains the memory and router alone: the base stays as it was (and costs no weight gradients).
    base_params = [p for n, p in student.named_parameters() if not memory_param(n)
                   and (not cfg.base_params or any(s in n for s in cfg.base_params))] if cfg.base_lr_scale else []
    student.requires_grad_(False)
    for p in mem_params + base_params:
        p.requires_grad_(True)
    if not base_params and not (cfg.stream.get("memory") and mem_params):
        raise ValueError(f"variant {cfg.variant!r} has no memory, so with --base-lr-scale 0 it has nothing to train")
    groups = [{"params": mem_params, "lr_scale": 1.0}] + ([{"params": base_params, "lr_scale": cfg.base_lr_scale}]
                                                            if base_params else [])
    opt = make_adamw([g for g in groups if g["params"]], cfg.lr, betas=cfg.betas)
    stream = StreamConfig(**cfg.stream)
    rollout = SelfRollout(student, RolloutConfig(stream, sampling_config(cfg), train_memory=True))
    num_levels = len(rollout.timesteps)

    step, _ = resume_latest(workdir, env, log, {"student": student, "opt": opt})
    history: dict[str, list[float]] = {"loss": [], "event_error": [], "other_error": []}
    t0 = time.time()
    while step < cfg.steps and (cfg.stop_after is None or step < cfg.stop_after):
        idx = list(env.local_slice(cfg.batch_size))
        set_lr(opt, lr_at(step, cfg.steps, cfg.lr, cfg.warmup, cfg.min_lr_ratio))
        losses, event_err, other_err = [], [], []
        for i in idx:
            gen = sample_generator(cfg.seed, step, i, "recall-episode")
            ep = int(torch.randint(len(data), (), generator=gen))
            latents = data.latents[ep:ep + 1, :, :num_chunks * chunk].float().to(device)
            masks = data.masks[ep:ep + 1, :, :num_chunks * chunk].float().to(device)
            marking = (data.marking_masks[ep:ep + 1, :, :num_chunks * chunk].float().to(device)
                       if cfg.marking_weight else None)
            levels = torch.randint(num_levels, (num_chunks,), generator=gen).tolist()
            noise = torch.randn(latents.shape, generator=gen).to(device)
            weights = chunk_weights(data.events[ep], num_chunks, chunk, cfg.event_weight, cfg.event_chunks,
                                    cfg.other_weight)
            with autocast(cfg.autocast, device):
                loss, errors = episode_loss(rollout, conditioner, latents, masks, data.schedules[ep], weights, levels,
                                            noise, cfg.object_weight, marking, cfg.marking_weight)
            (loss / len(idx)).backward()
            losses.append(float(loss.detach()))
            is_event = chunk_weights(data.events[ep], num_chunks, chunk, 1.0, cfg.event_chunks, 0.0)
            event_err += [e for e, w in zip(errors, is_event) if w]
            other_err += [e for e, w in zip(errors, is_event) if not w]
        grad_norm = optimizer_step(opt, mem_params + base_params, env, cfg.grad_clip)
        step += 1
        record = {"stage": "recall", "step": step, "variant": cfg.variant, "loss": float(np.mean(losses)),
                  "event_error": float(np.mean(event_err)) if event_err else None,
                  "other_error": float(np.mean(other_err)) if other_err else None, "grad_norm": grad_norm,
                  "s_per_step": (time.time() - t0) / max(1, len(history["loss"]) + 1)}
        history["loss"].append(record["loss"])
        if record["event_error"] is not None:
            history["event_error"].append(record["event_error"])
        history["other_error"].append(record["other_error"] or 0.0)
        if step % cfg.log_every == 0 or step == cfg.steps:
            log.log(record)
        if cfg.checkpoint_every and (step % cfg.checkpoint_every == 0 or step in (cfg.steps, cfg.stop_after)):
            save_checkpoint(workdir, step, env, {"student": student.state_dict(), "opt": opt.state_dict(),
                                                 "config": config_dict(cfg)})
    summary: dict[str, Any] = {"steps": step, "variant": cfg.variant, "history": history, "losses": history["loss"]}
    if env.is_main and step >= cfg.steps:
        student.cpu().eval()
        save_generator(student, workdir / "student.safetensors", extra_metadata={
            "videossm_role": f"recall-{cfg.variant}",
            META_STREAM: json.dumps(stream.to_dict()),
            META_SAMPLING: json.dumps(sampling_config(cfg).to_dict()),
            META_DEMO: json.dumps({"fps": DEFAULT_FPS, "resolution": list(DEFAULT_RESOLUTION)}),
        })
    return summary


@torch.no_grad()
def teacher_forced_recall(model: CausalWanModel, stream: StreamConfig, sampling, conditioner: TextConditioner, vae,
                          data: EpisodeDataset, seed: int = 0, event_chunks: int = 2,
                          kinds: tuple[str, ...] = ("revisit",)) -> list[dict[str, Any]]:
    """What the memory recalls, apart from what a generator draws on a first visit.

    For every event of every episode the *true* past is streamed into the cache (teacher forcing) up to the event's
    chunk; then ``event_chunks`` chunks are sampled from noise with the few-step sampler, decoded after the true
    past, and their marking read back with the world's ``measure_frame`` (majority over the frames that show one).
    The first visit is the world's own, so a marking drawn afresh matches by chance alone (uniform over the
    candidates), and by construction neither the window (scene B) nor the sink (scene X) holds it. Revisits only by
    default: under teacher forcing a returning object's band is already in the window while it re-enters.
    Returns one row per event: kind, prompt, the true marking, the one drawn (None: none shown), hit, the marking
    the window showed just before (scene B's: what a generator that copies its window draws), chance.
    """
    from ..demo import world
    from .data import tensor_to_frames

    rollout = SelfRollout(model, RolloutConfig(stream, sampling))
    chunk, last_step = stream.chunk_frames, len(rollout.timesteps) - 1
    rows = []
    for ep in range(len(data)):
        latents = data.latents[ep:ep + 1].float().to(model.device)
        switches = {frame: prompt for frame, prompt in data.schedules[ep][1:]}
        for n, event in enumerate(data.events[ep]):
            first = event["frame"] // chunk
            if event["kind"] not in kinds or (first + event_chunks) * chunk > latents.shape[2]:
                continue
            state = rollout.new_state(1, conditioner([data.schedules[ep][0][1]]))
            sampled = []
            for c in range(first + event_chunks):
                start = c * chunk
                if start in switches:
                    rollout.switch_prompt(state, conditioner([switches[start]]))
                if c < first:
                    target = latents[:, :, start:start + chunk]
                    rollout._call(state, target, sampling.context_timestep, start)
                    remember_recent_latents_inplace(state, target, start)
                    continue
                gen = sample_generator(seed, ep, n * 100 + c, "teacher-forced-recall")
                shape = latents[:, :, start:start + chunk].shape
                noise = [torch.randn(shape, generator=gen).to(model.device) for _ in rollout.timesteps]
                sampled.append(rollout.run_chunks(state, 1, lambda _c, k: noise[k], [last_step], grad=False))
            video = torch.cat([latents[:, :, :first * chunk], *sampled], 2)
            frames = tensor_to_frames(vae.decode(video.to(vae.device, vae.dtype)).float())[0]
            lo = 4 * first * chunk - 3  # latent frame f >= 1 decodes to video frames 4f-3 .. 4f
            drawn = _majority_marking(frames[lo:lo + 4 * event_chunks * chunk])
            window = _majority_marking(frames[max(0, lo - 4 * chunk):lo])  # the true chunk before: scene B's
            colour = world.parse_prompt(event["prompt"]).colour
            rows.append({"episode": ep, "kind": event["kind"], "prompt": event["prompt"], "marking": event["marking"],
                         "drawn": drawn, "hit": drawn == event["marking"], "window_marking": window,
                         "chance": 1.0 / len(world.marking_candidates(colour))})
    return rows


def _majority_marking(frames) -> str | None:
    """The marking most frames read back (``world.measure_frame``), None when none shows one."""
    from ..demo import world

    read = Counter(m.marking for m in map(world.measure_frame, frames) if m.marking is not None)
    return min(read, key=lambda name: (-read[name], name)) if read else None  # ties by name: reproducible
