"""Small pieces every stage shares: learning-rate schedule, optimizer step, threads, timing."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from typing import Any, Iterable

import torch
from torch import nn

from .distributed import DistEnv, average_gradients


def lr_at(step: int, total: int, base: float, warmup: int = 20, min_ratio: float = 0.1) -> float:
    """Linear warm-up for ``warmup`` steps, then cosine decay to ``min_ratio * base`` at ``total``."""
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return base * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's lr to ``lr`` times the group's own ``lr_scale`` (1 by default)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def optimizer_step(optimizer: torch.optim.Optimizer, params: Iterable[nn.Parameter], env: DistEnv,
                   grad_clip: float | None) -> float:
    """Average gradients across ranks, clip, step, zero. Returns the (pre-clip) gradient norm."""
    params = [p for p in params if p.requires_grad]
    for p in params:
        # A parameter the loss did not reach gets an explicit zero gradient, so Adam's step count
        # and moments evolve the same whether or not some rank reached it (1 vs N processes agree).
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    average_gradients(params, env)
    grads = [p for p in params if p.grad is not None]
    if grad_clip and grad_clip > 0:
        norm = float(torch.nn.utils.clip_grad_norm_(grads, grad_clip))
    else:
        norm = float(torch.sqrt(sum((p.grad.float() ** 2).sum() for p in grads))) if grads else 0.0
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return norm


def make_adamw(param_groups: list[dict[str, Any]], lr: float, betas=(0.9, 0.999), weight_decay: float = 0.0):
    """AdamW over parameter groups (each may carry an ``lr_scale``); ``foreach=False`` keeps the update
    order-independent of how many tensors a group has (same result on every rank count)."""
    groups = [g for g in param_groups if g["params"]]
    for g in groups:
        g.setdefault("lr_scale", 1.0)
        g["lr"] = lr * g["lr_scale"]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, weight_decay=weight_decay, foreach=False)


# ``--autocast``: the lower-precision dtype of the forward passes (bf16 only: fp16 training would need loss scaling).
AUTOCAST_DTYPES = {"bf16": torch.bfloat16}


def autocast(mode: str | None, device: torch.device | str):
    """The context for a training forward pass: with ``mode="bf16"`` matmuls and attention run in bf16 under
    ``torch.autocast``, while the weights, their gradients, the optimizer, the residual stream, the norms and the
    memory's state and gate math stay float32. ``None``: plain float32. Run the backward pass outside it."""
    if not mode:
        return contextlib.nullcontext()
    if mode not in AUTOCAST_DTYPES:
        raise ValueError(f"unknown autocast mode {mode!r}; use one of {sorted(AUTOCAST_DTYPES)} or none")
    return torch.autocast(device_type=torch.device(device).type, dtype=AUTOCAST_DTYPES[mode])


def with_autocast(fn, mode: str | None, device: torch.device | str):
    """``fn`` (a model or model function) whose calls run under ``autocast(mode, device)``."""
    if not mode:
        return fn

    def run(*args, **kwargs):
        with autocast(mode, device):
            return fn(*args, **kwargs)

    return run


def configure_threads(threads: int | None) -> None:
    """Use ``threads`` intra-op CPU threads (None: leave torch's default)."""
    if threads:
        torch.set_num_threads(int(threads))


def config_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def update_config(cls, data: dict[str, Any]):
    """Build dataclass ``cls`` from ``data``, ignoring keys it does not have."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


class Deadline:
    """A wall-clock budget: ``expired`` turns True after ``seconds`` (never, when None)."""

    def __init__(self, seconds: float | None):
        self.end = None if not seconds else time.time() + float(seconds)

    @property
    def expired(self) -> bool:
        return self.end is not None and time.time() >= self.end


def maybe_compile(fn, enabled: bool):
    """``torch.compile`` a module or function when asked (CPU inductor needs a C++ compiler)."""
    if not enabled:
        return fn
    return torch.compile(fn, dynamic=False)


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")
