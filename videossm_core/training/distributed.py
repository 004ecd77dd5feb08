"""Data-parallel training on one or many processes (``torchrun``; gloo on CPU, nccl on GPUs).

Rank and world size come from the environment ``torchrun`` sets (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``). Without ``WORLD_SIZE`` nothing is initialised and
every collective below is a no-op, so the same code runs as a plain script.

Why gradients are averaged by hand instead of wrapping models in ``DistributedDataParallel``: the
student is trained through ``CausalWanModel.forward_stream`` (not ``forward``, so DDP's hooks would not
see those calls), one-shot passes leave the memory parameters unused, and several models (student,
critic) step at different rates. ``average_gradients`` does what DDP does — one all-reduce of the
flattened gradients, divided by the world size — after ``backward``. Each rank computes the *mean*
loss over its equal share of the global batch, so the averaged gradient is the gradient of the
global-batch mean: a 2-process run follows a 1-process run with the same global batch up to
floating-point rounding.

Determinism: every random draw that belongs to one training sample (its data, noise, timesteps) comes
from ``sample_generator(seed, step, global_index, purpose)``, so which rank handles a sample never
changes what it sees; draws shared by the whole batch (the exit step) come from
``step_generator(seed, step, purpose)`` and agree on every rank without a broadcast.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialised: bool = False  # True when a process group was created (or already existed)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.initialised and self.world_size > 1

    def local_slice(self, global_batch: int) -> range:
        """The global sample indices this rank handles: an equal contiguous share of the batch."""
        if global_batch % self.world_size:
            raise ValueError(f"the global batch ({global_batch}) must be divisible by the number of "
                             f"processes ({self.world_size}) so every rank averages the same number of samples")
        per = global_batch // self.world_size
        return range(self.rank * per, (self.rank + 1) * per)


def init_distributed(backend: str | None = None, timeout_s: float = 600.0) -> DistEnv:
    """Initialise ``torch.distributed`` from torchrun's environment, or return a single-process env."""
    if dist.is_available() and dist.is_initialized():
        return DistEnv(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), True)
    if "WORLD_SIZE" not in os.environ:
        return DistEnv()
    world = int(os.environ["WORLD_SIZE"])
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout_s))
    return DistEnv(rank, world, local_rank, True)


def resolve_device(device: str, env: DistEnv) -> torch.device:
    """``"cuda"`` -> this rank's GPU (``cuda:<local rank>``); anything else as given."""
    if device == "cuda":
        return torch.device("cuda", env.local_rank)
    return torch.device(device)


def shutdown(env: DistEnv) -> None:
    if env.initialised and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def broadcast_module(module: nn.Module, env: DistEnv, src: int = 0) -> None:
    """Make every rank hold rank ``src``'s parameters and buffers (a safety net after init/load)."""
    if not env.distributed:
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src)


def average_gradients(params: Iterable[nn.Parameter], env: DistEnv) -> None:
    """All-reduce and average the gradients of ``params`` (missing gradients count as zeros).

    One flattened all-reduce per dtype, like DDP's buckets. A parameter that got no gradient on any
    rank ends with a zero gradient on all of them (harmless for Adam: zero grads only decay moments).
    """
    if not env.distributed:
        return
    params = [p for p in params if p.requires_grad]
    by_dtype: dict[torch.dtype, list[nn.Parameter]] = {}
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        by_dtype.setdefault(p.grad.dtype, []).append(p)
    for group in by_dtype.values():
        flat = torch.cat([p.grad.reshape(-1) for p in group])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= env.world_size
        offset = 0
        for p in group:
            n = p.grad.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
            offset += n


def mean_across_ranks(value: float, env: DistEnv) -> float:
    """The average of a per-rank scalar (for logging the global-batch loss)."""
    if not env.distributed:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item()) / env.world_size


def gather_objects(obj, env: DistEnv) -> list:
    """Every rank's ``obj`` in rank order (on every rank)."""
    if not env.distributed:
        return [obj]
    out = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def _seed_from(*parts) -> int:
    digest = hashlib.sha256(":".join(str(p) for p in ("videossm-train", *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def sample_generator(seed: int, step: int, index: int, purpose: str) -> torch.Generator:
    """CPU generator for one training sample's draws of one kind (data, noise, timestep ...)."""
    return torch.Generator().manual_seed(_seed_from(seed, step, index, purpose))


def step_generator(seed: int, step: int, purpose: str) -> torch.Generator:
    """CPU generator for draws shared by the whole global batch at ``step`` (same on every rank)."""
    return torch.Generator().manual_seed(_seed_from(seed, step, "batch", purpose))


def sample_seed(seed: int, step: int, index: int, purpose: str) -> int:
    """An integer seed for numpy-based draws of one sample (the procedural world)."""
    return _seed_from(seed, step, index, purpose)


def per_sample_randn(shape: tuple[int, ...], seed: int, step: int, indices: Iterable[int], purpose: str) -> torch.Tensor:
    """``[len(indices), *shape]`` float32 normal noise, row i drawn from sample ``indices[i]``'s generator."""
    return torch.stack([torch.randn(shape, generator=sample_generator(seed, step, i, purpose))
                        for i in indices])


def per_sample_rand(seed: int, step: int, indices: Iterable[int], purpose: str) -> torch.Tensor:
    """``[len(indices)]`` uniform [0, 1) draws, one per sample."""
    return torch.stack([torch.rand((), generator=sample_generator(seed, step, i, purpose)) for i in indices])
