"""Distribution matching distillation (DMD), as Self-Forcing uses it (``model/dmd.py`` there).

For the student's clean output ``x0`` (a window of latent frames, with graph):
1. draw a timestep per sample in ``[min_step, max_step] * 1000`` and shift it (shift 5), noise ``x0`` to it;
2. real score: the frozen bidirectional teacher with classifier-free guidance,
   ``x0_real = uncond + g (cond - uncond)`` (as x0 predictions), ``g`` only at noise levels up to
   ``guidance_max_sigma`` and 1 above (``interval_guidance``);
   fake score: the critic (same architecture, initialised from the teacher, trained on the student's
   outputs), without guidance;
3. ``grad = (x0_fake - x0_real) / mean|x0 - x0_real|`` (per-sample normaliser), and the loss
   ``0.5 * mse(x0, (x0 - grad).detach())`` whose gradient w.r.t. ``x0`` is ``grad / numel``.

The critic learns the student's distribution with the ordinary flow-matching loss on ``x0.detach()``.
``DMDTrainer`` is one training step of both (the generator every ``critic_ratio``-th step, the critic every
step), shared by stage 1 and stage 2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .common import optimizer_step
from .distributed import DistEnv, mean_across_ranks, per_sample_rand, per_sample_randn
from .teacher import guided_flow, interval_guidance, shifted_sigma

ModelFn = Callable[[Tensor, Tensor, Tensor], Tensor]  # (x_t, timestep [B, F], context) -> flow


@dataclass(frozen=True)
class DMDConfig:
    guidance: float = 3.0
    guidance_max_sigma: float | None = None  # guide the real score only at sigma <= this (None: everywhere)
    min_step: float = 0.02
    max_step: float = 0.98
    shift: float = 5.0


def dmd_sigma(cfg: DMDConfig, seed: int, step: int, indices: Sequence[int], purpose: str) -> Tensor:
    """Per-sample noise level: uniform in [min_step, max_step], then shifted. ``[B]``."""
    u = per_sample_rand(seed, step, indices, purpose)
    return shifted_sigma(cfg.min_step + (cfg.max_step - cfg.min_step) * u, cfg.shift)


def _noised(x0: Tensor, sigma: Tensor, noise: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    sigma = sigma.to(x0.device)
    s = sigma.view(-1, 1, 1, 1, 1)
    x_t = (1.0 - s) * x0 + s * noise
    timestep = (sigma * 1000.0)[:, None].expand(-1, x0.shape[2]).contiguous()
    return x_t, timestep, s


def dmd_loss(x0: Tensor, teacher: ModelFn, critic: ModelFn, cond: Tensor, uncond: Tensor, cfg: DMDConfig,
             seed: int, step: int, indices: Sequence[int]) -> tuple[Tensor, dict[str, float]]:
    """The DMD generator loss for a batch of student windows ``x0 [B, C, F, h, w]`` (mean over the batch)."""
    with torch.no_grad():
        sigma = dmd_sigma(cfg, seed, step, indices, "dmd-timestep")
        noise = per_sample_randn(tuple(x0.shape[1:]), seed, step, indices, "dmd-noise").to(x0.device)
        x_t, timestep, s = _noised(x0.detach(), sigma, noise)
        fake = x_t - s * critic(x_t, timestep, cond).float()
        flow = guided_flow(teacher, x_t, timestep, cond, uncond,
                           interval_guidance(cfg.guidance, sigma, cfg.guidance_max_sigma))
        real = x_t - s * flow
        normaliser = (x0.detach() - real).abs().mean(dim=(1, 2, 3, 4), keepdim=True).clamp_min(1e-6)
        grad = torch.nan_to_num((fake - real) / normaliser)
    loss = 0.5 * F.mse_loss(x0.float(), (x0.float() - grad).detach())
    # dmd_gap: mean |x0 - real| (the normaliser); the loss itself is scale-free, the gap shows progress.
    return loss, {"dmd_gap": float(normaliser.mean()), "dmd_sigma": float(sigma.mean())}


def critic_loss(x0: Tensor, critic: ModelFn, cond: Tensor, cfg: DMDConfig, seed: int, step: int,
                indices: Sequence[int]) -> Tensor:
    """Flow-matching loss of the critic ("fake score") on the student's outputs ``x0`` (detached)."""
    x0 = x0.detach()
    sigma = dmd_sigma(cfg, seed, step, indices, "critic-timestep")
    noise = per_sample_randn(tuple(x0.shape[1:]), seed, step, indices, "critic-noise").to(x0.device)
    x_t, timestep, _ = _noised(x0, sigma, noise)
    pred = critic(x_t, timestep, cond).float()
    return (pred - (noise - x0)).pow(2).mean()


class DMDTrainer:
    """The generator's DMD update and the critic's update on one student rollout, with their optimizers.

    ``step`` returns the numbers to log; on steps without a generator update it repeats the latest one's,
    since log lines fall on any step."""

    def __init__(self, teacher: ModelFn, critic: ModelFn, cfg: DMDConfig, env: DistEnv, grad_clip: float | None,
                 generator_opt: torch.optim.Optimizer, generator_params: list[torch.nn.Parameter],
                 critic_opt: torch.optim.Optimizer, critic_params: list[torch.nn.Parameter]):
        self.teacher, self.critic, self.cfg, self.env, self.grad_clip = teacher, critic, cfg, env, grad_clip
        self.generator_opt, self.generator_params = generator_opt, generator_params
        self.critic_opt, self.critic_params = critic_opt, critic_params
        self.last_generator: dict[str, float] = {}

    def step(self, x0: Tensor, cond: Tensor, uncond: Tensor, seed: int, step: int, indices: Sequence[int],
             update_generator: bool, retain_graph: bool = False) -> dict[str, float]:
        """``x0 [B, C, F, h, w]``: the rollout, with graph when ``update_generator``. ``retain_graph``: keep the
        generator's graph after its backward (stage 2 carries the memory's part of it into later windows)."""
        record: dict[str, float] = {}
        if update_generator:
            loss, parts = dmd_loss(x0, self.teacher, self.critic, cond, uncond, self.cfg, seed, step, indices)
            loss.backward(retain_graph=retain_graph)
            record["grad_norm"] = optimizer_step(self.generator_opt, self.generator_params, self.env, self.grad_clip)
            record["dmd_loss"] = mean_across_ranks(float(loss.detach()), self.env)
            record.update(parts)
            self.last_generator = dict(record)
        else:
            record.update(self.last_generator)
        closs = critic_loss(x0, self.critic, cond, self.cfg, seed, step, indices)
        closs.backward()
        optimizer_step(self.critic_opt, self.critic_params, self.env, self.grad_clip)
        record["critic_loss"] = mean_across_ranks(float(closs.detach()), self.env)
        return record
