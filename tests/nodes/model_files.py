"""Tiny stand-in model files for the node tests, synthesised at test time (never committed).

The real-weights template needs a LongLive / Self-Forcing generator (5.7 GB), umt5-xxl (6.7 GB) and the
Wan2.1 VAE; none of them can be downloaded or run here. What these files give instead:

- ``make_generator``: a tiny VideoSSM generator (``CausalWanModel``, preset "tiny" widened to Wan's 16
  latent channels and to 768-dim / 128-token text so it reads the T5 embeddings below), saved with
  ``videossm_core.checkpoints.save_model``. Its head gets random weights (Wan zero-initialises it), so
  outputs depend on everything upstream.
- ``make_wan_vae``: a Wan2.1 VAE in Wan's ORIGINAL key layout, the one ComfyUI's own ``VAELoader``
  accepts (ComfyUI infers ``dim`` from ``decoder.head.0.gamma`` and assumes dim_mult [1, 2, 4, 4],
  2 res blocks, z 16), with base_dim 8 instead of 96.
- ``make_t5_base``: a randomly initialised T5-base encoder (transformers ``T5EncoderModel`` built from
  ComfyUI's own ``comfy/text_encoders/t5_config_base.json``), fp16 safetensors (~220 MB). ComfyUI's
  ``CLIPLoader`` recognises T5-base by its keys (whatever ``type`` is chosen, except ``ace``) and encodes
  prompts to [1, 128+, 768], so it stands in for umt5-xxl (4096-dim), which cannot be synthesised here.
- ``make_lora``: a PEFT-style LoRA (``<module>.lora_A.weight`` / ``lora_B.weight``, LongLive's layout)
  for the tiny generator's attention projections.
- ``make_demo_bundle``: a random-weight demo bundle in the layout ``videossm_core.demo.bundle`` loads.
  Only for checking the tests before the trained bundle is shipped; the tests use the shipped one.
"""
from __future__ import annotations

from pathlib import Path

import torch

TINY_TEXT_DIM = 768  # T5-base width
TINY_TEXT_LEN = 128  # ComfyUI pads T5-base prompts to 128 tokens
VAE_CONFIG_OVERRIDES = {"base_dim": 8, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2}


def tiny_generator_config():
    from videossm_core.config import get_preset

    return get_preset("tiny").replace(in_dim=16, out_dim=16, text_dim=TINY_TEXT_DIM, text_len=TINY_TEXT_LEN)


def make_generator(path: Path, seed: int = 0) -> Path:
    from videossm_core.checkpoints import save_model
    from videossm_core.model.transformer import CausalWanModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CausalWanModel(tiny_generator_config()).eval()
        with torch.no_grad():
            torch.nn.init.normal_(model.head.head.weight, std=0.2)
    save_model(model, path)
    return path


def make_longlive_pt(generator: Path, lora: Path, folder: Path) -> tuple[Path, Path]:
    """The tiny generator and LoRA as LongLive publishes its files: torch.save'd training dicts
    (``{"generator": {"model.<key>"}}`` like longlive_base.pt, ``{"generator_lora": {PEFT keys}}`` like lora.pt)."""
    from safetensors.torch import load_file

    base, peft = folder / "tiny-longlive_base.pt", folder / "tiny-longlive-lora.pt"
    torch.save({"generator": {"model." + k: v for k, v in load_file(str(generator)).items()}}, base)
    torch.save({"generator_lora": {"base_model.model." + k: v for k, v in load_file(str(lora)).items()}}, peft)
    return base, peft


def make_wan_vae(path: Path, seed: int = 0) -> Path:
    from safetensors.torch import save_file

    from videossm_core.vae import build_vae, diffusers_to_original_state_dict, small_vae_config

    vae = build_vae({**small_vae_config(), **VAE_CONFIG_OVERRIDES}, seed=seed)
    state = {k: v.detach().contiguous() for k, v in vae.model.state_dict().items()}
    original = diffusers_to_original_state_dict(state, VAE_CONFIG_OVERRIDES["num_res_blocks"])
    save_file({k: v.contiguous() for k, v in original.items()}, str(path))
    return path


def comfyui_t5_base_config() -> Path:
    from tests.comfy_server import comfyui_dir

    return comfyui_dir() / "comfy" / "text_encoders" / "t5_config_base.json"


def make_t5_base(path: Path, seed: int = 0) -> Path:
    from safetensors.torch import save_file
    from transformers import T5Config, T5EncoderModel

    config = T5Config.from_json_file(str(comfyui_t5_base_config()))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = T5EncoderModel(config).eval()
    # ComfyUI's T5 reads the token embedding from shared.weight only; encoder.embed_tokens is its tie
    tensors = {k: v.detach().to(torch.float16).contiguous().clone() for k, v in model.state_dict().items()
               if k != "encoder.embed_tokens.weight"}
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path


def make_lora(path: Path, rank: int = 4, seed: int = 0) -> Path:
    """PEFT keys for q/k/v/o of every block's self-attention (LongLive's lora.pt layout)."""
    from safetensors.torch import save_file

    cfg = tiny_generator_config()
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for block in range(cfg.num_layers):
        for proj in ("q", "k", "v", "o"):
            name = f"blocks.{block}.self_attn.{proj}"
            tensors[f"{name}.lora_A.weight"] = torch.randn(rank, cfg.dim, generator=gen) * 0.05
            tensors[f"{name}.lora_B.weight"] = torch.randn(cfg.dim, rank, generator=gen) * 0.05
    save_file(tensors, str(path))
    return path


def make_demo_bundle(folder: Path, seed: int = 0) -> Path:
    """Random-weight demo bundle (generator + VAE + demo text encoder), see the module docstring."""
    import json

    from safetensors.torch import save_file

    from videossm_core.config import get_preset
    from videossm_core.demo import bundle
    from videossm_core.model.transformer import CausalWanModel
    from videossm_core.text import DemoTextEncoder
    from videossm_core.training.vae_training import demo_vae_config
    from videossm_core.vae import build_vae, save_vae

    folder.mkdir(parents=True, exist_ok=True)
    config = get_preset("demo")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CausalWanModel(config).eval()
        with torch.no_grad():
            torch.nn.init.normal_(model.head.head.weight, std=0.2)
    metadata = {bundle.META_CONFIG: config.to_json(),
                bundle.META_STREAM: json.dumps(bundle.DEFAULT_STREAM.to_dict()),
                bundle.META_SAMPLING: json.dumps(bundle.DEFAULT_SAMPLING.to_dict()),
                bundle.META_DEMO: json.dumps({"fps": 16, "resolution": [64, 64]}), "format": "pt"}
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()},
              str(folder / bundle.GENERATOR_FILE), metadata=metadata)
    save_vae(build_vae(demo_vae_config(), seed=seed), folder / bundle.VAE_FILE)
    DemoTextEncoder(text_len=config.text_len, text_dim=config.text_dim).save(folder / bundle.TEXT_ENCODER_FILE)
    return folder
