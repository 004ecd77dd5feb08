"""StreamState: everything a stream carries from one chunk to the next, and its safetensors file.

A state holds, per CFG branch ("cond", and "uncond" when guidance is on) and per block: the window's
K/V cache (keys un-rotated), the cached memory gates, the float32 memory state and the cross-attention
K/V of the current prompt; plus the frame bookkeeping, the recent clean latents (for re-caching on a
prompt switch), the seed and chunk counter (the RNG position), counters and a small per-chunk history
for inspection, and optionally the streaming VAE decoder's caches.

States are never changed behind a caller's back: functions that advance one say ``inplace`` in their
name; everything else works on ``clone()``.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from .config import ModelConfig, SamplingConfig, StreamConfig

STATE_FORMAT = "videossm.stream_state"
STATE_VERSION = 1


class StateFileError(ValueError):
    """A stream-state file that cannot be used (not a state, damaged, or for another model)."""


_SAFETENSORS_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2", torch.int64: "I64", torch.int32: "I32",
    torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
}


def write_safetensors(path: str, tensors: dict[str, Tensor], metadata: dict[str, str]) -> None:
    """Write a safetensors file tensor by tensor, straight from each tensor's memory.

    ``safetensors.torch.save_file`` first turns every tensor into a Python ``bytes`` copy, so saving
    a full-size stream (GBs of KV cache) would need the whole state twice in RAM. Here the header is
    written first and then each tensor's bytes; a device tensor passes through host memory one
    tensor at a time. The file is flushed and fsynced, so a rename after it publishes complete data.
    """
    entries, offset = {}, 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        entries[name] = {"dtype": _SAFETENSORS_DTYPES[t.dtype], "shape": list(t.shape),
                         "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header = json.dumps({"__metadata__": metadata, **entries}, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # the format aligns the data to 8 bytes
    with open(path, "wb") as f:
        f.write(len(header).to_bytes(8, "little"))
        f.write(header)
        for t in tensors.values():
            if t.numel():
                host = t.detach().to("cpu").contiguous().reshape(-1)
                f.write(memoryview(host.view(torch.uint8).numpy()))
                del host  # before the next tensor's copy exists
        f.flush()
        os.fsync(f.fileno())


@dataclass
class LayerCache:
    """One block's caches for one branch. Token axis S = slots * tokens_per_frame."""

    k: Tensor | None = None  # [B, S, H, D] RMS-normed keys, not rotated
    v: Tensor | None = None  # [B, S, H, D]
    g: Tensor | None = None  # [B, S, H] float32 log decay, cached for the eviction write
    beta: Tensor | None = None  # [B, S, H] float32 write strength
    memory: Tensor | None = None  # [B, H, D, D] float32 global memory
    text_k: Tensor | None = None  # [B, L, H, D] cross-attention keys of the current prompt
    text_v: Tensor | None = None
    # ||gamma H_global|| / ||H_local|| of the block's last call: how much the memory's read adds to the window's
    # attention output. A 0-dim float32 tensor left on the device for the chunk history; not saved.
    read_share: Tensor | None = None

    TENSOR_FIELDS = ("k", "v", "g", "beta", "memory", "text_k", "text_v")


@dataclass
class BranchState:
    layers: list[LayerCache]
    slot_frames: list[int]  # latent frame held by each cache slot, -1 = free
    text_embedding: Tensor | None = None  # [B, L, text_dim] conditioning behind text_k/text_v


@dataclass
class StreamState:
    model_config: ModelConfig
    stream: StreamConfig
    sampling: SamplingConfig
    seed: int = 0
    batch: int = 1
    latent_shape: tuple[int, int, int] | None = None  # (C, H, W) of the latents, fixed at the first chunk
    next_frame: int = 0  # latent frames generated so far
    branches: dict[str, BranchState] = field(default_factory=dict)
    prompt: str = ""
    segment_index: int = 0
    recent_latents: Tensor | None = None  # [B, C, F, H, W] clean latents of the cached non-sink frames
    recent_start: int = 0  # latent frame index of recent_latents[:, :, 0]
    counters: dict[str, int] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    vae_cache: dict[str, Tensor] = field(default_factory=dict)
    vae_meta: dict[str, Any] = field(default_factory=dict)
    # The mp4 this stream is written to, when the state was saved: {"path": ..., "frames": N}. A resume
    # cuts the file back to N frames (it may hold more: frames made after this save), then appends.
    video: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ construction
    @classmethod
    def new(
        cls,
        model_config: ModelConfig,
        stream: StreamConfig | None = None,
        sampling: SamplingConfig | None = None,
        seed: int = 0,
        batch: int = 1,
    ) -> "StreamState":
        stream = stream or StreamConfig()
        if stream.router_horizon_frames is None:  # the model's T, fixed in the state so a resumed stream keeps it
            stream = stream.replace(router_horizon_frames=model_config.memory.router_horizon_frames)
        sampling = sampling or SamplingConfig()
        names = ["cond", "uncond"] if sampling.guidance_scale != 1.0 else ["cond"]
        state = cls(model_config=model_config, stream=stream, sampling=sampling, seed=int(seed), batch=batch)
        for name in names:
            state.branches[name] = state._empty_branch()
        state.counters = {"eviction_events": 0, "evicted_frames": 0, "memory_writes": 0, "model_calls": 0}
        return state

    def _empty_branch(self) -> BranchState:
        slots = 0 if self.stream.full_cache else self.stream.window_frames
        return BranchState(layers=[LayerCache() for _ in range(self.model_config.num_layers)],
                           slot_frames=[-1] * slots)

    @property
    def chunk_index(self) -> int:
        return self.next_frame // self.stream.chunk_frames

    @property
    def video_frames(self) -> int:
        """Video frames the latent frames made so far decode to (the first latent frame gives 1, each later 4)."""
        return 0 if self.next_frame == 0 else 1 + 4 * (self.next_frame - 1)

    @property
    def memory_active(self) -> bool:
        return self.stream.memory and self.model_config.memory.enabled and not self.stream.full_cache

    # ------------------------------------------------------------------ copying
    def clone(self) -> "StreamState":
        """A deep copy whose tensors share no storage with this state."""
        return copy.deepcopy(self)

    def to(self, device: torch.device | str) -> "StreamState":
        out = self.clone()
        for branch in out.branches.values():
            for layer in branch.layers:
                for name in LayerCache.TENSOR_FIELDS:
                    t = getattr(layer, name)
                    if t is not None:
                        setattr(layer, name, t.to(device))
            if branch.text_embedding is not None:
                branch.text_embedding = branch.text_embedding.to(device)
        if out.recent_latents is not None:
            out.recent_latents = out.recent_latents.to(device)
        return out

    # ------------------------------------------------------------------ inspection
    def memory_norms(self, branch: str = "cond") -> list[float]:
        """Frobenius norm of each block's memory state (0 where nothing was written)."""
        return [0.0 if layer.memory is None else float(layer.memory.detach().norm()) for layer in self.branches[branch].layers]

    def window_occupancy(self, branch: str = "cond") -> int:
        return sum(1 for f in self.branches[branch].slot_frames if f >= 0)

    def nbytes(self) -> int:
        total = 0
        for branch in self.branches.values():
            for layer in branch.layers:
                for name in LayerCache.TENSOR_FIELDS:
                    t = getattr(layer, name)
                    total += 0 if t is None else t.numel() * t.element_size()
        return total

    def summary(self) -> str:
        fps = 16
        video_frames = self.video_frames
        lines = [
            f"frames generated: {self.next_frame} latent = {video_frames} video frames ({video_frames / fps:.2f} s)",
            f"chunks: {self.chunk_index}; prompt segment {self.segment_index}: {self.prompt!r}",
            f"window: {self.window_occupancy()} / {self.stream.window_frames} frames "
            f"(sink {self.stream.sink_frames}); positions: {self.stream.position_mode}",
            f"global memory: {'on' if self.memory_active else 'off'}; evicted frames: "
            f"{self.counters.get('evicted_frames', 0)}; memory writes: {self.counters.get('memory_writes', 0)}",
            f"state size: {self.nbytes() / 2**20:.1f} MiB; seed {self.seed}",
        ]
        return "\n".join(lines)

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> None:
        """Write the state to one safetensors file (tensors + JSON metadata), tensor by tensor in the
        dtype they are kept in (caches in the compute dtype, memory and gates in float32), with no
        second copy of the state in RAM. Atomic: a failed write (full disk, cancelled run) leaves any
        previous file at ``path`` intact."""
        tensors: dict[str, Tensor] = {}
        branches_meta = {}
        for bname, branch in self.branches.items():
            for i, layer in enumerate(branch.layers):
                for name in LayerCache.TENSOR_FIELDS:
                    t = getattr(layer, name)
                    if t is not None:
                        tensors[f"branch.{bname}.layer.{i}.{name}"] = t
            if branch.text_embedding is not None:
                tensors[f"branch.{bname}.text_embedding"] = branch.text_embedding
            branches_meta[bname] = {"slot_frames": branch.slot_frames}
        if self.recent_latents is not None:
            tensors["recent_latents"] = self.recent_latents
        for key, t in self.vae_cache.items():
            tensors[f"vae_cache.{key}"] = t
        meta = {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "model_config": self.model_config.to_dict(),
            "stream": self.stream.to_dict(),
            "sampling": self.sampling.to_dict(),
            "seed": self.seed,
            "batch": self.batch,
            "latent_shape": list(self.latent_shape) if self.latent_shape else None,
            "next_frame": self.next_frame,
            "branches": branches_meta,
            "prompt": self.prompt,
            "segment_index": self.segment_index,
            "recent_start": self.recent_start,
            "counters": self.counters,
            "history": self.history,
            "vae_meta": self.vae_meta,
            "video": self.video,
        }
        path = os.fspath(path)
        tmp = f"{path}.partial"
        try:
            write_safetensors(tmp, tensors, metadata={"videossm": json.dumps(meta)})
            os.replace(tmp, path)
        except OSError as err:
            if os.path.exists(tmp):
                os.remove(tmp)
            reason = err.strerror or str(err)
            raise OSError(err.errno, f"could not write the stream state to {path}: {reason}. "
                          "Free some disk space or choose another folder; nothing generated so far was lost "
                          "(the previous state file, if any, is unchanged)") from err

    @classmethod
    def load(cls, path: str | os.PathLike, device: torch.device | str = "cpu") -> "StreamState":
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise StateFileError(f"no stream-state file at {path}")
        try:
            tensors = load_file(path, device=str(device))
            from safetensors import safe_open

            with safe_open(path, framework="pt") as f:
                raw_meta = (f.metadata() or {}).get("videossm")
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise StateFileError(f"{path} is not a readable safetensors file ({err}); it may be truncated or "
                                 "damaged: use an earlier state or start a new stream") from err
        if raw_meta is None:
            raise StateFileError(f"{path} is a safetensors file but not a VideoSSM stream state (no 'videossm' "
                                 "metadata); model checkpoints go to the model loader")
        try:
            meta = json.loads(raw_meta)
            if not isinstance(meta, dict):
                raise TypeError("the metadata is not a JSON object")
        except (ValueError, TypeError) as err:
            raise StateFileError(f"{path} has damaged stream-state metadata ({err}); use an earlier state "
                                 "or start a new stream") from None
        if meta.get("format") != STATE_FORMAT:
            raise StateFileError(f"{path} holds {meta.get('format')!r}, not a stream state")
        if not isinstance(meta.get("version", 0), int) or meta.get("version", 0) > STATE_VERSION:
            raise StateFileError(f"{path} was written by a newer VideoSSM (state version {meta['version']}); update")
        try:
            return cls._from_meta(meta, tensors)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
            what = f"missing {err}" if isinstance(err, KeyError) else str(err)
            raise StateFileError(f"{path} has damaged stream-state metadata ({type(err).__name__}: {what}); "
                                 "use an earlier state or start a new stream") from None

    @classmethod
    def _from_meta(cls, meta: dict, tensors: dict[str, Tensor]) -> "StreamState":
        state = cls(
            model_config=ModelConfig.from_dict(meta["model_config"]),
            stream=StreamConfig.from_dict(meta["stream"]),
            sampling=SamplingConfig.from_dict(meta["sampling"]),
            seed=meta["seed"],
            batch=meta["batch"],
            latent_shape=tuple(meta["latent_shape"]) if meta["latent_shape"] else None,
            next_frame=meta["next_frame"],
            prompt=meta["prompt"],
            segment_index=meta["segment_index"],
            recent_start=meta["recent_start"],
            counters=dict(meta["counters"]),
            history=list(meta["history"]),
            vae_meta=dict(meta.get("vae_meta") or {}),
            video=dict(meta.get("video") or {}),
        )
        for name, value in (("seed", state.seed), ("batch", state.batch), ("next_frame", state.next_frame),
                            ("segment_index", state.segment_index), ("recent_start", state.recent_start)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise TypeError(f"{name} must be a non-negative integer, got {value!r}")
        if not isinstance(state.prompt, str):
            raise TypeError(f"prompt must be text, got {state.prompt!r}")
        for bname, bmeta in meta["branches"].items():
            branch = state._empty_branch()
            branch.slot_frames = list(bmeta["slot_frames"])
            for i, layer in enumerate(branch.layers):
                for name in LayerCache.TENSOR_FIELDS:
                    setattr(layer, name, tensors.get(f"branch.{bname}.layer.{i}.{name}"))
            branch.text_embedding = tensors.get(f"branch.{bname}.text_embedding")
            state.branches[bname] = branch
        state.recent_latents = tensors.get("recent_latents")
        state.vae_cache = {k[len("vae_cache."):]: v for k, v in tensors.items() if k.startswith("vae_cache.")}
        return state

    def check_compatible(self, model_config: ModelConfig) -> None:
        """Raise StateFileError if this state was made by a model of another shape."""
        mine, theirs = self.model_config.to_dict(), model_config.to_dict()
        mine.pop("memory"), theirs.pop("memory")
        if mine != theirs:
            diff = {k: (mine[k], theirs[k]) for k in mine if mine[k] != theirs.get(k)}
            raise StateFileError(f"this stream state belongs to a model of another shape (state vs model: {diff}); "
                                 "load it with the model that made it")
