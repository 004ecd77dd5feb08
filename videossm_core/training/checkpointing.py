"""Training checkpoints (resume exactly where a run stopped), the loss log, and exported weights.

A training checkpoint is a folder ``<workdir>/checkpoints/step_XXXXXXXX/`` with
- ``train.pt`` (written by rank 0): step, every model's and optimizer's state dict, EMA shadows, the
  run's config and the RNG states;
- ``rank_<r>.pt`` (written by every rank): that rank's own carried state (e.g. the stage-2 rollout
  it continues from) and its RNG states.
Folders are written under a temporary name and renamed when complete, so an interrupted save never
leaves a half checkpoint that a resume would pick up.

Exported generator weights are one safetensors file with the model's ``ModelConfig`` JSON in the
metadata key ``videossm_config`` (what ``videossm_core.checkpoints`` reads).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import ModelConfig
from .distributed import DistEnv, barrier

META_CONFIG = "videossm_config"
CHECKPOINT_DIR = "checkpoints"


# ---------------------------------------------------------------------------------------------- RNG

def rng_state() -> dict[str, Any]:
    """Every RNG's state as tensors and plain Python values, so checkpoints load with
    ``torch.load(weights_only=True)`` (no pickled objects)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
            "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(tuple(state["python"]) if not isinstance(state["python"], tuple) else state["python"])


# ---------------------------------------------------------------------------------------------- checkpoints

def checkpoint_root(workdir: str | os.PathLike) -> Path:
    return Path(workdir) / CHECKPOINT_DIR


def latest_checkpoint(workdir: str | os.PathLike) -> Path | None:
    """The complete checkpoint folder with the highest step, or None."""
    root = checkpoint_root(workdir)
    if not root.is_dir():
        return None
    done = sorted(p for p in root.glob("step_*") if p.is_dir() and (p / "train.pt").is_file()
                  and not p.name.endswith(".partial"))
    return done[-1] if done else None


def save_checkpoint(workdir: str | os.PathLike, step: int, env: DistEnv, shared: dict[str, Any],
                    local: dict[str, Any] | None = None, keep: int = 2) -> Path:
    """Write a checkpoint for ``step``. ``shared`` (identical on all ranks: models, optimizers,
    config) is written by rank 0, ``local`` by every rank. Keeps the newest ``keep`` checkpoints."""
    root = checkpoint_root(workdir)
    final = root / f"step_{step:08d}"
    tmp = root / f"step_{step:08d}.partial"
    if env.is_main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier(env)
    torch.save({"step": step, "rng": rng_state(), **(local or {})}, tmp / f"rank_{env.rank}.pt")
    barrier(env)
    if env.is_main:
        torch.save({"step": step, "world_size": env.world_size, "rng": rng_state(), **shared}, tmp / "train.pt")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        old = sorted(p for p in root.glob("step_*") if p.is_dir() and not p.name.endswith(".partial"))
        for p in old[:-keep] if keep > 0 else []:
            shutil.rmtree(p, ignore_errors=True)
    barrier(env)
    return final


def continue_from_run(workdir: str | os.PathLike, source: str | os.PathLike, env: DistEnv) -> None:
    """Start a new run from another run's newest checkpoint (its step, weights, optimizers, EMAs): copy that
    checkpoint into ``workdir``, where ``resume_latest`` then picks it up. A run that already has checkpoints of
    its own resumes from those instead (rerunning the same command continues it)."""
    if latest_checkpoint(workdir) is not None:
        return
    src = latest_checkpoint(source)
    if src is None:
        raise FileNotFoundError(f"{source} holds no complete checkpoint to continue from: pass the run folder "
                                "of a run that saved checkpoints (its checkpoints/step_* folders)")
    if env.is_main:
        root = checkpoint_root(workdir)
        tmp = root / f"{src.name}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp)
        os.replace(tmp, root / src.name)
    barrier(env)


def _checkpoint_classes() -> list[type]:
    """The project's own plain-data classes a checkpoint may hold (stage 2 carries its rollout's
    stream state); ``weights_only`` loading accepts these and nothing else besides tensors and
    Python literals."""
    from ..config import MemoryConfig, ModelConfig, SamplingConfig, StreamConfig
    from ..state import BranchState, LayerCache, StreamState
    from .stage2 import CarriedRollout

    return [CarriedRollout, StreamState, BranchState, LayerCache, ModelConfig, MemoryConfig, StreamConfig,
            SamplingConfig]


def load_checkpoint(path: str | os.PathLike, env: DistEnv) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a checkpoint folder: ``(shared, local)``; restores this rank's RNG states."""
    path = Path(path)
    with torch.serialization.safe_globals(_checkpoint_classes()):
        return _load_checkpoint(path, env)


def resume_latest(workdir: str | os.PathLike, env: DistEnv, log: "LossLog", objects: dict[str, Any]
                  ) -> tuple[int, dict[str, Any]]:
    """Resume a run from its newest checkpoint, if any: ``(step, local)``, ``(0, {})`` for a fresh run.

    ``objects`` maps the names a stage saved under to what has a ``load_state_dict`` (models, optimizers,
    EMAs); each is loaded in place. The log is cut back to the checkpoint's step, so a resumed run's loss
    curve continues without the lines written after it. ``local`` is this rank's own part (e.g. a carried
    rollout)."""
    ckpt = latest_checkpoint(workdir)
    if ckpt is None:
        return 0, {}
    shared, local = load_checkpoint(ckpt, env)
    for name, obj in objects.items():
        obj.load_state_dict(shared[name])
    step = int(shared["step"])
    log.truncate_after(step)
    return step, local


def _load_checkpoint(path: Path, env: DistEnv) -> tuple[dict[str, Any], dict[str, Any]]:
    shared = torch.load(path / "train.pt", map_location="cpu", weights_only=True)
    if shared.get("world_size", 1) != env.world_size:
        raise ValueError(f"{path} was written by a {shared.get('world_size')}-process run; resume it with the "
                         f"same number of processes (this run has {env.world_size})")
    local_path = path / f"rank_{env.rank}.pt"
    local = torch.load(local_path, map_location="cpu", weights_only=True) if local_path.is_file() else {}
    if "rng" in local:
        set_rng_state(local["rng"])
    return shared, local


# ---------------------------------------------------------------------------------------------- EMA

class EMA:
    """Exponential moving average of a module's floating-point parameters, kept in float32."""

    def __init__(self, module: nn.Module, decay: float):
        self.decay = float(decay)
        self.shadow = {k: v.detach().float().clone() for k, v in module.state_dict().items()
                       if v.is_floating_point()}

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        for k, v in module.state_dict().items():
            if k in self.shadow:
                self.shadow[k].lerp_(v.detach().float(), 1.0 - self.decay)

    def copy_to(self, module: nn.Module) -> None:
        state = module.state_dict()
        for k, v in self.shadow.items():
            state[k].copy_(v.to(state[k].dtype))

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay = float(state["decay"])
        self.shadow = {k: v.float().clone() for k, v in state["shadow"].items()}


# ---------------------------------------------------------------------------------------------- loss log

class LossLog:
    """Appends one JSON line per logged step to ``<workdir>/<name>.jsonl`` (rank 0) and prints it.

    On resume, lines for steps after the checkpoint (written before an interruption) are dropped, so
    the file holds one continuous curve.
    """

    def __init__(self, workdir: str | os.PathLike, env: DistEnv, name: str = "train_log", quiet: bool = False):
        self.path = Path(workdir) / f"{name}.jsonl"
        self.env = env
        self.quiet = quiet
        self.start = time.time()
        if env.is_main:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def truncate_after(self, step: int) -> None:
        if not self.env.is_main or not self.path.is_file():
            return
        keep = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", -1) <= step]
        self.path.write_text("".join(line + "\n" for line in keep))

    def log(self, record: dict[str, Any]) -> None:
        if not self.env.is_main:
            return
        record = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in record.items()}
        record.setdefault("elapsed_s", round(time.time() - self.start, 1))
        line = json.dumps(record)
        with open(self.path, "a") as f:
            f.write(line + "\n")
        if not self.quiet:
            print(line, flush=True, file=sys.stdout)

    @staticmethod
    def read(path: str | os.PathLike) -> list[dict[str, Any]]:
        return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------- weights

def save_generator(model: nn.Module, path: str | os.PathLike, dtype: torch.dtype | None = None,
                   extra_metadata: dict[str, str] | None = None) -> None:
    """Save a ``CausalWanModel``'s state dict as safetensors with its config JSON in the metadata.

    ``dtype`` (e.g. float16) converts floating tensors for storage; the loader casts back.
    """
    from safetensors.torch import save_file

    tensors = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        tensors[k] = v.contiguous()
    metadata = {"format": "pt", META_CONFIG: model.config.to_json(), **(extra_metadata or {})}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def load_generator(path: str | os.PathLike, device: str | torch.device = "cpu",
                   dtype: torch.dtype = torch.float32):
    """Load a file written by ``save_generator`` (our own format only; for any other checkpoint use
    ``videossm_core.checkpoints.load_model``)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from ..model.transformer import CausalWanModel

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    if META_CONFIG not in metadata:
        raise ValueError(f"{path} has no {META_CONFIG!r} metadata; it was not written by save_generator")
    model = CausalWanModel(ModelConfig.from_json(metadata[META_CONFIG]))
    state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
    model.load_state_dict(state, strict=True)
    return model.to(device=device, dtype=dtype).eval()
