"""The shipped demo files: they fit the size budget, load, and generate what a prompt asks for."""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch
from safetensors import safe_open

from videossm_core.config import ModelConfig
from videossm_core.demo.bundle import DEMO_DIR, DEMO_FILES, demo_files_present, load_demo_bundle
from videossm_core.demo.world import measure_frame
from videossm_core.sampling import PromptSegment, StreamSampler
from videossm_core.state import StreamState

from tests.demo_weights import needs_demo_weights

pytestmark = needs_demo_weights
MAX_BYTES = 25 * 1024 * 1024


def test_demo_files_are_present_and_fit_the_budget():
    assert demo_files_present(), f"demo files missing from {DEMO_DIR}"
    total = sum((DEMO_DIR / name).stat().st_size for name in DEMO_FILES)
    assert total <= MAX_BYTES, f"demo files take {total / 2**20:.1f} MiB, more than 25 MiB"
    card = (DEMO_DIR / "CARD.md").read_text().splitlines()
    assert len(card) <= 150, f"CARD.md is a model card (<= 150 lines; history goes to training/NOTES.md): {len(card)}"


def test_generator_file_carries_its_config_for_the_checkpoint_loader():
    with safe_open(str(DEMO_DIR / "generator.safetensors"), framework="pt") as f:
        config = ModelConfig.from_json(f.metadata()["videossm_config"])
        keys = set(f.keys())
    bundle = load_demo_bundle()
    assert bundle.model.config == config
    assert keys == set(bundle.model.state_dict())


def test_demo_generates_a_red_circle_when_asked_for_one():
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    bundle = load_demo_bundle()
    prompt = "a red circle bouncing on a dark background"
    with torch.no_grad():
        cond = bundle.text_encoder.encode([prompt])
        uncond = bundle.text_encoder.encode([""]) if bundle.sampling_config.guidance_scale != 1.0 else None
    state = StreamState.new(bundle.model.config, bundle.stream_config, bundle.sampling_config, seed=0)
    h, w = bundle.resolution
    decoder = bundle.vae.stream_decoder()
    colours = Counter()
    for out in StreamSampler(bundle.model).stream_chunks_inplace(
            state, [PromptSegment(0, prompt, cond, uncond)], 4, (h // bundle.vae.spatial_stride, w // bundle.vae.spatial_stride)):
        frames = decoder.decode_chunk(out.latents.to(bundle.vae.dtype))  # [1, 3, T, H, W] in [-1, 1]
        pixels = ((frames[0].float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 3, 0).numpy()
        assert pixels.shape[1:] == (h, w, 3)
        for frame in pixels[::2]:
            colours[measure_frame(np.ascontiguousarray(frame)).colour] += 1
    majority, _ = colours.most_common(1)[0]
    assert majority == "red", f"measured colours {dict(colours)}"
