"""The shipped demo model: generator, VAE and text encoder trained on the procedural world.

``videossm_core/demo/weights/`` holds three files (``CARD.md`` there says how they were made):
- ``generator.safetensors``: a ``CausalWanModel`` state dict with its ``ModelConfig`` JSON in the
  metadata key ``videossm_config`` (plus the stream/sampling settings it was trained for);
- ``vae.safetensors``: a reduced Wan VAE (``videossm_core.vae.save_vae`` format, latent statistics inside);
- ``text_encoder.safetensors``: the DEMO-ONLY word-level text encoder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import ModelConfig, SamplingConfig, StreamConfig
from ..model.transformer import CausalWanModel
from ..text import DemoTextEncoder
from ..vae import WanVAE, load_vae

DEMO_DIR = Path(__file__).resolve().parent / "weights"
GENERATOR_FILE, VAE_FILE, TEXT_ENCODER_FILE = "generator.safetensors", "vae.safetensors", "text_encoder.safetensors"
DEMO_FILES = (GENERATOR_FILE, VAE_FILE, TEXT_ENCODER_FILE)

# Metadata keys of the generator file besides ``videossm_config``.
META_CONFIG = "videossm_config"
META_STREAM = "videossm_stream"
META_SAMPLING = "videossm_sampling"
META_DEMO = "videossm_demo"  # {"fps": 16, "resolution": [H, W]}

# What the demo was trained for: chunks of 3 latent frames, the first chunk as sink, a 12-frame window,
# global memory on, rank ("unbounded") RoPE positions so streams can run past 1024 latent frames.
DEFAULT_STREAM = StreamConfig(chunk_frames=3, sink_frames=3, window_frames=12, memory=True,
                              position_mode="unbounded")  # the router's T: the model's (MemoryConfig, 240)
DEFAULT_SAMPLING = SamplingConfig()
DEFAULT_FPS = 16
DEFAULT_RESOLUTION = (64, 64)


@dataclass
class DemoBundle:
    model: CausalWanModel
    vae: WanVAE
    text_encoder: DemoTextEncoder
    stream_config: StreamConfig
    sampling_config: SamplingConfig
    fps: int
    resolution: tuple[int, int]  # (height, width) in pixels


def demo_files_present(directory: str | Path | None = None) -> bool:
    """True when all three demo files exist (they are shipped with the project)."""
    folder = Path(directory) if directory is not None else DEMO_DIR
    return all((folder / name).is_file() for name in DEMO_FILES)


def read_generator_metadata(path: str | Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def load_demo_generator(path: str | Path, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32) -> tuple[CausalWanModel, dict[str, str]]:
    """The generator and its file metadata. Tensors stored in half precision are cast to ``dtype``."""
    from safetensors.torch import load_file

    metadata = read_generator_metadata(path)
    if META_CONFIG not in metadata:
        raise ValueError(f"{path} has no {META_CONFIG!r} metadata: not a VideoSSM generator file")
    model = CausalWanModel(ModelConfig.from_json(metadata[META_CONFIG]))
    state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
    model.load_state_dict(state, strict=True)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False), metadata


def load_demo_bundle(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                     directory: str | Path | None = None) -> DemoBundle:
    """Load the demo generator, VAE and text encoder (from ``directory``, default ``DEMO_DIR``)."""
    folder = Path(directory) if directory is not None else DEMO_DIR
    if not demo_files_present(folder):
        missing = [name for name in DEMO_FILES if not (folder / name).is_file()]
        raise FileNotFoundError(f"demo files missing from {folder}: {missing}")
    model, metadata = load_demo_generator(folder / GENERATOR_FILE, device, dtype)
    stream = StreamConfig.from_dict(json.loads(metadata[META_STREAM])) if META_STREAM in metadata else DEFAULT_STREAM
    sampling = (SamplingConfig.from_dict(json.loads(metadata[META_SAMPLING])) if META_SAMPLING in metadata
                else DEFAULT_SAMPLING)
    demo = json.loads(metadata.get(META_DEMO, "{}"))
    vae = load_vae(folder / VAE_FILE, dtype=dtype, device=device)
    text_encoder = DemoTextEncoder.load(folder / TEXT_ENCODER_FILE, device=device).eval().requires_grad_(False)
    return DemoBundle(model=model, vae=vae, text_encoder=text_encoder, stream_config=stream, sampling_config=sampling,
                      fps=int(demo.get("fps", DEFAULT_FPS)),
                      resolution=tuple(int(v) for v in demo.get("resolution", DEFAULT_RESOLUTION)))
