"""Write the shipped demo files from finished training runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from ..demo.bundle import (DEFAULT_FPS, DEFAULT_RESOLUTION, DEFAULT_SAMPLING, DEFAULT_STREAM, DEMO_DIR, GENERATOR_FILE,
                           META_DEMO, META_SAMPLING, META_STREAM, TEXT_ENCODER_FILE, VAE_FILE)
from .checkpointing import save_generator
from .stage1 import load_any_model


def _resolve(path: str | Path, names: tuple[str, ...]) -> Path:
    path = Path(path)
    if path.is_dir():
        for name in names:
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"{path} holds none of {list(names)}")
    return path


def export_demo(generator: str | Path, vae: str | Path, text_encoder: str | Path, out: str | Path | None = None,
                dtype: str = "fp16") -> dict[str, Any]:
    """Copy/convert the three demo files into ``out`` (default: ``videossm_core/demo/weights``).

    The generator is stored in half precision by default (the loader casts back to float32), with the
    stream/sampling settings it was trained for and the demo's fps/resolution in its metadata.
    """
    out = Path(out) if out is not None else DEMO_DIR
    out.mkdir(parents=True, exist_ok=True)
    model = load_any_model(generator, ("student.safetensors", "generator.safetensors"))
    save_generator(model, out / GENERATOR_FILE, dtype=torch.float16 if dtype == "fp16" else None, extra_metadata={
        META_STREAM: json.dumps(DEFAULT_STREAM.to_dict()),
        META_SAMPLING: json.dumps(DEFAULT_SAMPLING.to_dict()),
        META_DEMO: json.dumps({"fps": DEFAULT_FPS, "resolution": list(DEFAULT_RESOLUTION)}),
        "videossm_role": "demo-generator",
    })
    shutil.copyfile(_resolve(vae, ("vae.safetensors",)), out / VAE_FILE)
    shutil.copyfile(_resolve(text_encoder, ("text_encoder.safetensors",)), out / TEXT_ENCODER_FILE)
    sizes = {name: (out / name).stat().st_size for name in (GENERATOR_FILE, VAE_FILE, TEXT_ENCODER_FILE)}
    return {"out": str(out), "bytes": sizes, "total_mb": round(sum(sizes.values()) / 1e6, 2)}
