"""Configurations: the model's shape, its hybrid memory, a stream's runtime settings, and sampling.

Everything that decides a tensor shape or a numeric behaviour lives here, as frozen dataclasses that
serialise to plain dicts (so they travel in safetensors metadata as JSON).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

# Wan2.1's VAE compresses 4x in time (first frame alone) and 8x in space (a VAE may say otherwise: WanVAE.spatial_stride);
# videos are played at 16 fps.
VAE_TEMPORAL_STRIDE = 4
VAE_SPATIAL_STRIDE = 8
DEFAULT_FPS = 16

# StreamConfig.memory_update's choices (what each one is: StreamConfig, model.delta_rule).
MEMORY_UPDATE_FORMS = ("auto", "chunkwise", "recurrent", "fla")


def _from_dict(cls, data: dict[str, Any]):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown fields {unknown}; known fields are {sorted(names)}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            value = data[f.name]
            if isinstance(value, list):
                value = tuple(value)
            kwargs[f.name] = value
    return cls(**kwargs)


@dataclass(frozen=True)
class MemoryConfig:
    """The gated delta-rule global memory that sits beside each block's window attention.

    Gates are initialised from a target retention instead of language-model defaults: a state
    written with ``init_tokens_per_frame`` tokens per latent frame keeps ``retention`` of its content
    after ``retention_frames`` evicted latent frames.
    """

    enabled: bool = True
    retention: float = 0.5
    retention_frames: int = 24  # half-life of 24 latent frames = 6 s of video at 16 fps
    init_tokens_per_frame: int = 1560  # 480x832 -> 30x52 tokens per latent frame
    beta_init: float = 0.05  # write strength at init; small because each frame writes ~1560 unit keys
    router_w_init: float = 1.0
    router_b_init: float = 0.0
    # T of the router gamma_t = sigmoid(w log((t + 1) / T) + b), in latent frames. It belongs to the weights: w and b
    # were trained against it (stage 2 stores its T here), so a stream uses it unless told otherwise, whatever the
    # video's length. 240 = 60 s, what the demo was trained with; files from before this field get it.
    router_horizon_frames: int = 240
    delta_chunk_size: int = 64  # block length of the chunkwise (WY) delta-rule write
    norm_eps: float = 1e-6

    def __post_init__(self):
        if not 0.0 < self.retention < 1.0:
            raise ValueError(f"memory retention must lie in (0, 1), got {self.retention}")
        if not 0.0 < self.beta_init < 1.0:
            raise ValueError(f"memory beta_init must lie in (0, 1), got {self.beta_init}")
        if (self.retention_frames < 1 or self.init_tokens_per_frame < 1 or self.delta_chunk_size < 1
                or self.router_horizon_frames < 1):
            raise ValueError("memory retention_frames, init_tokens_per_frame, delta_chunk_size and "
                             "router_horizon_frames must be >= 1")

    @property
    def init_log_decay_per_token(self) -> float:
        """The per-token log decay g (<= 0) that realises the target retention."""
        return math.log(self.retention) / (self.retention_frames * self.init_tokens_per_frame)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MemoryConfig":
        return _from_dict(cls, data)


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the causal Wan2.1 DiT. Field names follow Wan's own config.json where one exists."""

    dim: int = 1536
    num_layers: int = 30
    num_heads: int = 12
    ffn_dim: int = 8960
    freq_dim: int = 256
    text_dim: int = 4096
    text_len: int = 512
    in_dim: int = 16
    out_dim: int = 16
    patch_size: tuple[int, int, int] = (1, 2, 2)
    eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_max_positions: int = 1024  # Wan's RoPE table: 1024 positions per axis
    memory: MemoryConfig = field(default_factory=MemoryConfig)

    def __post_init__(self):
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.head_dim % 2 or self.head_dim < 6:
            raise ValueError(f"head_dim {self.head_dim} must be even and >= 6 for the 3-D RoPE split")
        if isinstance(self.memory, dict):  # tolerate dicts from JSON
            object.__setattr__(self, "memory", MemoryConfig.from_dict(self.memory))
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def rope_split(self) -> tuple[int, int, int]:
        """Real dims of the (t, h, w) RoPE axes; Wan's 128-dim heads give (44, 42, 42)."""
        d = self.head_dim
        hw = 2 * (d // 6)
        return d - 2 * hw, hw, hw

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["patch_size"] = list(self.patch_size)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        data = dict(data)
        if "memory" in data and isinstance(data["memory"], dict):
            data["memory"] = MemoryConfig.from_dict(data["memory"])
        return _from_dict(cls, data)

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        return cls.from_dict(json.loads(text))

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class StreamConfig:
    """How one stream runs: chunking, the local window, the global memory switch, positions.

    All lengths are in latent frames. ``window_frames`` counts every cached frame, sink included
    (LongLive: 12 cached = 3 sink + 9 recent, the current chunk among the 9).
    """

    chunk_frames: int = 3
    sink_frames: int = 3
    window_frames: int = 12
    memory: bool = True
    # How evicted tokens are written into the memory, all with the same result: "auto" (fla's Triton kernel on
    # CUDA when fla-core imports, else "chunkwise"), "chunkwise" (our WY form), "fla" (CUDA + fla-core only)
    # or "recurrent" (the token loop: the reference, slow). Older state files say "chunkwise".
    memory_update: str = "auto"
    position_mode: str = "absolute"  # "absolute" (Self-Forcing/LongLive training) or "unbounded"
    # T in gamma_t = sigmoid(w log((t+1)/T) + b). None: the model's own (MemoryConfig.router_horizon_frames, what it
    # was trained with; StreamState.new fills it in); a number overrides it for this stream.
    router_horizon_frames: int | None = None
    full_cache: bool = False  # Self-Forcing / ComfyUI-core style growing cache (benchmarks, baselines)

    def __post_init__(self):
        if self.position_mode not in ("absolute", "unbounded"):
            raise ValueError(f"position_mode must be 'absolute' or 'unbounded', got {self.position_mode!r}")
        if self.memory_update not in MEMORY_UPDATE_FORMS:
            raise ValueError(f"memory_update must be one of {', '.join(map(repr, MEMORY_UPDATE_FORMS))}, "
                             f"got {self.memory_update!r}")
        if self.chunk_frames < 1:
            raise ValueError("chunk_frames must be >= 1")
        if self.sink_frames < 0 or self.sink_frames % self.chunk_frames:
            raise ValueError(
                f"sink_frames ({self.sink_frames}) must be a multiple of chunk_frames ({self.chunk_frames}): "
                "the sink is made of whole chunks")
        if self.window_frames < self.sink_frames + self.chunk_frames:
            raise ValueError(
                f"window_frames ({self.window_frames}) must hold the sink ({self.sink_frames}) "
                f"plus one chunk ({self.chunk_frames})")
        if self.router_horizon_frames is not None and self.router_horizon_frames < 1:
            raise ValueError("router_horizon_frames must be >= 1 (or None: the model's own)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StreamConfig":
        return _from_dict(cls, data)

    def replace(self, **changes) -> "StreamConfig":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class SamplingConfig:
    """Few-step flow matching as in Self-Forcing: predict x0, re-noise to the next step, then one
    clean pass at ``context_timestep`` that writes the chunk into memory."""

    denoising_steps: tuple[float, ...] = (1000.0, 750.0, 500.0, 250.0)
    warp: bool = True
    shift: float = 5.0
    num_train_timesteps: int = 1000
    guidance_scale: float = 1.0  # > 1 runs a second (unconditional) branch
    context_timestep: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "denoising_steps", tuple(float(s) for s in self.denoising_steps))
        if not self.denoising_steps:
            raise ValueError("denoising_steps must not be empty")
        if any(not 0 < s <= self.num_train_timesteps for s in self.denoising_steps):
            raise ValueError(f"denoising_steps must lie in (0, {self.num_train_timesteps}]")
        if list(self.denoising_steps) != sorted(self.denoising_steps, reverse=True):
            raise ValueError("denoising_steps must be decreasing")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["denoising_steps"] = list(self.denoising_steps)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SamplingConfig":
        return _from_dict(cls, data)


PRESETS: dict[str, ModelConfig] = {
    # The real thing: Wan2.1-T2V-1.3B (Self-Forcing, LongLive, CausVid ... all share it).
    "wan2.1-t2v-1.3b": ModelConfig(),
    # Unit tests: a few thousand parameters, fast on two CPU cores.
    "tiny": ModelConfig(
        dim=64, num_layers=2, num_heads=2, ffn_dim=128, freq_dim=32, text_dim=32, text_len=8,
        in_dim=4, out_dim=4, memory=MemoryConfig(init_tokens_per_frame=16, retention_frames=6)),
    # The shipped demo generator (trained by videossm_core.training on the procedural world). Its VAE has a
    # spatial stride of 4 (see training.vae_training.demo_vae_config), so it patchifies 4x4 latent pixels:
    # 64x64 px -> 16x16 latent -> 4x4 tokens per latent frame.
    "demo": ModelConfig(
        dim=192, num_layers=4, num_heads=3, ffn_dim=512, freq_dim=64, text_dim=64, text_len=16,
        in_dim=16, out_dim=16, patch_size=(1, 4, 4),
        memory=MemoryConfig(init_tokens_per_frame=16, retention_frames=24)),
    # The demo architecture with 2x2 latent patches (8x8 = 64 tokens per latent frame). Not shipped: on the
    # same cached clips and steps its teacher reaches 0.41x the 4x4 one's loss and uses the shape word far
    # more (benchmarks/bench_teacher_patch.py, training/NOTES.md); a full demo recipe with it is a GPU-sized job.
    "demo-patch2": ModelConfig(
        dim=192, num_layers=4, num_heads=3, ffn_dim=512, freq_dim=64, text_dim=64, text_len=16,
        in_dim=16, out_dim=16, patch_size=(1, 2, 2),
        memory=MemoryConfig(init_tokens_per_frame=64, retention_frames=24)),
}


def get_preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}") from None
