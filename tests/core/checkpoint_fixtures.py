"""State dicts in every transformer layout we load, synthesised at small dims with the real key names.

Written from the published key layouts (shared/research/model_anchors.md sections 2.8, 3.6, 5.4), on purpose
*not* with videossm_core.checkpoints' own rename table, so the tests check that table against an independent
statement of the formats. Used by tests/core/test_checkpoints.py and by the ComfyUI node tests.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

from videossm_core.config import ModelConfig, get_preset
from videossm_core.model.transformer import CausalWanModel

TINY = get_preset("tiny")
MEMORY_INFIX = ".self_attn.memory."

# --------------------------------------------------------------------------------------------------------------
# Original Wan2.1 keys (section 5.4a), straight from the module definitions
# --------------------------------------------------------------------------------------------------------------


def wan_key_shapes(dim: int = 1536, num_layers: int = 30, ffn_dim: int = 8960, text_dim: int = 4096,
                   freq_dim: int = 256, in_dim: int = 16, out_dim: int = 16,
                   patch: tuple[int, int, int] = (1, 2, 2)) -> dict[str, tuple[int, ...]]:
    """Every tensor of an original-layout Wan2.1 T2V transformer with its shape (defaults: 1.3B)."""
    shapes: dict[str, tuple[int, ...]] = {
        "patch_embedding.weight": (dim, in_dim, *patch),
        "patch_embedding.bias": (dim,),
        "text_embedding.0.weight": (dim, text_dim), "text_embedding.0.bias": (dim,),
        "text_embedding.2.weight": (dim, dim), "text_embedding.2.bias": (dim,),
        "time_embedding.0.weight": (dim, freq_dim), "time_embedding.0.bias": (dim,),
        "time_embedding.2.weight": (dim, dim), "time_embedding.2.bias": (dim,),
        "time_projection.1.weight": (6 * dim, dim), "time_projection.1.bias": (6 * dim,),
    }
    for n in range(num_layers):
        b = f"blocks.{n}."
        shapes[b + "modulation"] = (1, 6, dim)
        for attn in ("self_attn", "cross_attn"):
            for proj in "qkvo":
                shapes[f"{b}{attn}.{proj}.weight"] = (dim, dim)
                shapes[f"{b}{attn}.{proj}.bias"] = (dim,)
            shapes[f"{b}{attn}.norm_q.weight"] = (dim,)
            shapes[f"{b}{attn}.norm_k.weight"] = (dim,)
        shapes[b + "norm3.weight"] = (dim,)
        shapes[b + "norm3.bias"] = (dim,)
        shapes[b + "ffn.0.weight"] = (ffn_dim, dim)
        shapes[b + "ffn.0.bias"] = (ffn_dim,)
        shapes[b + "ffn.2.weight"] = (dim, ffn_dim)
        shapes[b + "ffn.2.bias"] = (dim,)
    shapes["head.modulation"] = (1, 2, dim)
    shapes["head.head.weight"] = (out_dim * math.prod(patch), dim)
    shapes["head.head.bias"] = (out_dim * math.prod(patch),)
    return shapes


def shapes_for(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    return wan_key_shapes(config.dim, config.num_layers, config.ffn_dim, config.text_dim, config.freq_dim,
                          config.in_dim, config.out_dim, config.patch_size)


def meta_state_dict(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Tensors with the given shapes on the meta device: a full-size model's keys without any memory."""
    return {k: torch.empty(s, device="meta") for k, s in shapes.items()}


# --------------------------------------------------------------------------------------------------------------
# Reference weights (our names) and the layouts derived from them
# --------------------------------------------------------------------------------------------------------------


def reference_weights(seed: int = 0, config: ModelConfig = TINY, memory: bool = False) -> dict[str, torch.Tensor]:
    """Random weights in our names for every parameter, all non-trivial (norm weights near 1, everything
    else small noise) so a forward depends on each tensor. With ``memory`` the memory parameters are random
    too (a "trained" VideoSSM); without, the dict holds only the base (original Wan) keys."""
    gen = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        model = CausalWanModel(config)
    out = {}
    for name, p in model.state_dict().items():
        if MEMORY_INFIX in name and not memory:
            continue
        noise = torch.randn(p.shape, generator=gen)
        if name.endswith(("norm_q.weight", "norm_k.weight", "norm3.weight", "out_norm.weight")):
            out[name] = 1.0 + 0.1 * noise
        else:
            fan_in = p.shape[-1] if p.ndim >= 2 else p.shape[0]
            out[name] = noise * (0.5 / math.sqrt(fan_in))
        # Exactly representable in fp32, bf16 and fp16 (8 significant bits, no fp16 subnormals), so every
        # storage dtype holds the same weights and all layouts must give bit-identical outputs.
        value = out[name].to(torch.bfloat16).float()
        out[name] = torch.where(value.abs() < 2.0**-14, torch.zeros_like(value), value)
    return out


def wan_layout(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original Wan2.1 file: our names minus the VideoSSM memory."""
    return {k: v.clone() for k, v in weights.items() if MEMORY_INFIX not in k}


# diffusers' scripts/convert_wan_to_diffusers.py applies ordered str.replace rules to each original key,
# including a three-step swap of norm2 and norm3 through a placeholder. Restated here in that form.
_DIFFUSERS_REPLACE_RULES = (
    ("time_embedding.0", "condition_embedder.time_embedder.linear_1"),
    ("time_embedding.2", "condition_embedder.time_embedder.linear_2"),
    ("text_embedding.0", "condition_embedder.text_embedder.linear_1"),
    ("text_embedding.2", "condition_embedder.text_embedder.linear_2"),
    ("time_projection.1", "condition_embedder.time_proj"),
    ("head.modulation", "scale_shift_table"),
    ("head.head", "proj_out"),
    ("modulation", "scale_shift_table"),
    ("ffn.0", "ffn.net.0.proj"),
    ("ffn.2", "ffn.net.2"),
    ("norm2", "norm__placeholder"),
    ("norm3", "norm2"),
    ("norm__placeholder", "norm3"),
    ("self_attn.q", "attn1.to_q"), ("self_attn.k", "attn1.to_k"), ("self_attn.v", "attn1.to_v"),
    ("self_attn.o", "attn1.to_out.0"), ("self_attn.norm_q", "attn1.norm_q"), ("self_attn.norm_k", "attn1.norm_k"),
    ("cross_attn.q", "attn2.to_q"), ("cross_attn.k", "attn2.to_k"), ("cross_attn.v", "attn2.to_v"),
    ("cross_attn.o", "attn2.to_out.0"), ("cross_attn.norm_q", "attn2.norm_q"), ("cross_attn.norm_k", "attn2.norm_k"),
)


def diffusers_key(key: str) -> str:
    for old, new in _DIFFUSERS_REPLACE_RULES:
        key = key.replace(old, new)
    return key


def diffusers_layout(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers ``WanTransformer3DModel`` state dict."""
    return {diffusers_key(k): v.clone() for k, v in weights.items() if MEMORY_INFIX not in k}


def diffusers_config(config: ModelConfig = TINY) -> dict:
    """The config.json diffusers writes for a WanTransformer3DModel of this shape."""
    return {
        "_class_name": "WanTransformer3DModel", "_diffusers_version": "0.33.0",
        "added_kv_proj_dim": None, "attention_head_dim": config.head_dim, "cross_attn_norm": True,
        "eps": config.eps, "ffn_dim": config.ffn_dim, "freq_dim": config.freq_dim, "image_dim": None,
        "in_channels": config.in_dim, "num_attention_heads": config.num_heads, "num_layers": config.num_layers,
        "out_channels": config.out_dim, "patch_size": list(config.patch_size), "qk_norm": "rms_norm_across_heads",
        "rope_max_seq_len": 1024, "text_dim": config.text_dim,
    }


def save_diffusers_folder(weights: dict[str, torch.Tensor], folder: Path, config: ModelConfig = TINY,
                          shards: int = 1) -> Path:
    """A diffusers model folder: config.json + diffusion_pytorch_model.safetensors, or ``shards`` shards with
    diffusion_pytorch_model.safetensors.index.json (diffusers' names: -0000i-of-0000n.safetensors)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(diffusers_config(config), indent=2))
    sd = diffusers_layout(weights)
    if shards == 1:
        save_file(sd, str(folder / "diffusion_pytorch_model.safetensors"))
        return folder
    keys = sorted(sd)
    weight_map = {}
    for i in range(shards):
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: sd[k].contiguous() for k in keys[i::shards]}
        save_file(part, str(folder / name))
        weight_map.update({k: name for k in part})
    index = {"metadata": {"total_size": sum(v.numel() * v.element_size() for v in sd.values())},
             "weight_map": weight_map}
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return folder


def save_wan_folder(weights: dict[str, torch.Tensor], folder: Path, config: ModelConfig = TINY) -> Path:
    """The Wan-AI/Wan2.1-T2V-* repository layout: original keys in diffusion_pytorch_model.safetensors next to
    Wan's own config.json (``_class_name: WanModel``, with num_heads and text_len)."""
    folder.mkdir(parents=True, exist_ok=True)
    wan_config = {"_class_name": "WanModel", "_diffusers_version": "0.30.0", "dim": config.dim, "eps": config.eps,
                  "ffn_dim": config.ffn_dim, "freq_dim": config.freq_dim, "in_dim": config.in_dim,
                  "model_type": "t2v", "num_heads": config.num_heads, "num_layers": config.num_layers,
                  "out_dim": config.out_dim, "text_len": config.text_len}
    (folder / "config.json").write_text(json.dumps(wan_config, indent=2))
    save_file(wan_layout(weights), str(folder / "diffusion_pytorch_model.safetensors"))
    return folder


def comfyui_layout(weights: dict[str, torch.Tensor], dtype: torch.dtype = torch.float16,
                   prefix: str = "model.diffusion_model.", other_components: bool = False) -> dict[str, torch.Tensor]:
    """ComfyUI repackaged transformer (fp16/bf16 storage), optionally inside an all-in-one checkpoint that
    also holds a VAE and a text encoder under their own prefixes."""
    sd = {prefix + k: v.to(dtype) for k, v in weights.items() if MEMORY_INFIX not in k}
    if other_components:
        sd["first_stage_model.encoder.conv1.weight"] = torch.randn(8, 3, 3, 3, 3)
        sd["first_stage_model.decoder.conv1.weight"] = torch.randn(8, 4, 3, 3, 3)
        sd["text_encoders.umt5xxl.transformer.shared.weight"] = torch.randn(10, 4)
    return sd


def comfyui_fp8_layout(weights: dict[str, torch.Tensor], fp8: torch.dtype = torch.float8_e4m3fn,
                       scaled: bool = True, prefix: str = "model.diffusion_model.") -> dict[str, torch.Tensor]:
    """ComfyUI fp8 storage: linear weights inside the blocks in fp8, the rest fp16. ``scaled``: "scaled fp8"
    as ComfyUI writes it, each fp8 weight with a ``.scale_weight`` (weight = fp8 * scale) and an input scale
    we must ignore, plus the top-level ``scaled_fp8`` marker."""
    fp8_max = torch.finfo(fp8).max
    sd = {}
    for k, v in weights.items():
        if MEMORY_INFIX in k:
            continue
        module = k[: -len(".weight")]
        if k.startswith("blocks.") and k.endswith(".weight") and v.ndim == 2:
            if scaled:
                scale = v.abs().max().float() / fp8_max
                sd[prefix + k] = (v / scale).to(fp8)
                sd[prefix + module + ".scale_weight"] = scale.reshape(1)
                sd[prefix + module + ".scale_input"] = torch.ones(1)
            else:
                sd[prefix + k] = v.to(fp8)
        else:
            sd[prefix + k] = v.to(torch.float16)
    if scaled:
        sd["scaled_fp8"] = torch.empty(0, dtype=fp8)
    return sd


def _fsdp_name(key: str) -> str:
    """Where FSDP inserts ``_fsdp_wrapped_module.``: the wrapped root and every wrapped block."""
    if key.startswith("blocks."):
        n, rest = key[len("blocks."):].split(".", 1)
        key = f"blocks.{n}._fsdp_wrapped_module.{rest}"
    return "_fsdp_wrapped_module." + key


def training_checkpoint(generator: dict[str, torch.Tensor], ema: dict[str, torch.Tensor] | None = None,
                        entry: str = "generator") -> dict:
    """A Self-Forcing / CausVid / Rolling Forcing / LongLive training .pt: ``{entry: {"model." + key}}``, a
    critic, and, if given, ``generator_ema`` whose keys carry FSDP's ``_fsdp_wrapped_module.``."""
    ckpt = {entry: {"model." + k: v.clone() for k, v in generator.items()},
            "critic": {"model.blocks.0.self_attn.q.weight": torch.zeros(2, 2)}}
    if ema is not None:
        ckpt["generator_ema"] = {"model." + _fsdp_name(k): v.clone() for k, v in ema.items()}
    return ckpt


# --------------------------------------------------------------------------------------------------------------
# LoRAs
# --------------------------------------------------------------------------------------------------------------

LONGLIVE_TARGETS = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o",
                    "cross_attn.q", "cross_attn.k", "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2")


def make_lora(config: ModelConfig = TINY, rank: int = 4, seed: int = 0, std: float = 0.1
              ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """LongLive's targets (every nn.Linear of every attention block): module -> (A [r, in], B [out, r])."""
    gen = torch.Generator().manual_seed(seed)
    dims = {"ffn.0": (config.dim, config.ffn_dim), "ffn.2": (config.ffn_dim, config.dim)}
    lora = {}
    for n in range(config.num_layers):
        for target in LONGLIVE_TARGETS:
            d_in, d_out = dims.get(target, (config.dim, config.dim))
            a = torch.randn(rank, d_in, generator=gen) * std
            b = torch.randn(d_out, rank, generator=gen) * std  # PEFT starts B at zero; trained it is not
            lora[f"blocks.{n}.{target}"] = (a, b)
    return lora


def peft_lora_layout(lora, adapter: str | None = None, prefix: str = "", wrapper: str | None = None) -> dict:
    """PEFT keys as LongLive saves them: ``base_model.model.<module>.lora_A[.default].weight``; ``prefix``
    e.g. ``model.``; ``wrapper`` e.g. ``generator_lora`` (the dict entry of LongLive's lora.pt)."""
    infix = f".{adapter}" if adapter else ""
    sd = {}
    for module, (a, b) in lora.items():
        sd[f"{prefix}base_model.model.{module}.lora_A{infix}.weight"] = a.clone()
        sd[f"{prefix}base_model.model.{module}.lora_B{infix}.weight"] = b.clone()
    return {wrapper: sd} if wrapper else sd


def kohya_lora_layout(lora, alpha: float | None = None, underscore: bool = False,
                      prefix: str = "diffusion_model.") -> dict:
    """kohya / ComfyUI keys: ``<prefix><module>.lora_down.weight`` / ``lora_up.weight`` / ``.alpha``; with
    ``underscore`` the kohya form ``lora_unet_blocks_0_self_attn_q.lora_down.weight``."""
    sd = {}
    for module, (a, b) in lora.items():
        name = "lora_unet_" + module.replace(".", "_") if underscore else prefix + module
        sd[f"{name}.lora_down.weight"] = a.clone()
        sd[f"{name}.lora_up.weight"] = b.clone()
        if alpha is not None:
            sd[f"{name}.alpha"] = torch.tensor(float(alpha))
    return sd


# --------------------------------------------------------------------------------------------------------------
# Files that are not a loadable transformer
# --------------------------------------------------------------------------------------------------------------


def vae_original_state_dict() -> dict[str, torch.Tensor]:
    """A few keys of Wan2.1_VAE.pth (original layout)."""
    gamma = torch.ones(4, 1, 1, 1)
    return {"encoder.conv1.weight": torch.zeros(4, 3, 3, 3, 3), "encoder.downsamples.0.residual.0.gamma": gamma,
            "decoder.conv1.weight": torch.zeros(4, 4, 3, 3, 3), "decoder.middle.0.residual.0.gamma": gamma.clone(),
            "conv1.weight": torch.zeros(8, 8, 1, 1, 1), "conv2.weight": torch.zeros(4, 4, 1, 1, 1)}


def vae_diffusers_state_dict() -> dict[str, torch.Tensor]:
    """A few keys of diffusers' AutoencoderKLWan."""
    gamma = torch.ones(4, 1, 1, 1)
    return {"encoder.conv_in.weight": torch.zeros(4, 3, 3, 3, 3), "encoder.down_blocks.0.resnets.0.norm1.gamma": gamma,
            "quant_conv.weight": torch.zeros(8, 8, 1, 1, 1), "post_quant_conv.weight": torch.zeros(4, 4, 1, 1, 1),
            "decoder.mid_block.resnets.0.norm1.gamma": gamma.clone()}


def umt5_state_dict() -> dict[str, torch.Tensor]:
    """A few keys of a UMT5 encoder (HF transformers layout)."""
    return {"shared.weight": torch.zeros(10, 4), "encoder.block.0.layer.0.SelfAttention.q.weight": torch.zeros(4, 4),
            "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": torch.zeros(4, 2),
            "encoder.final_layer_norm.weight": torch.ones(4)}


def i2v_state_dict(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Wan2.1-I2V: a T2V state dict plus the CLIP image branch (img_emb.*, cross_attn.k_img/v_img/norm_k_img)."""
    sd = wan_layout(weights)
    dim = sd["head.modulation"].shape[-1]
    sd["img_emb.proj.0.weight"] = torch.ones(16)
    sd["img_emb.proj.1.weight"] = torch.zeros(dim, 16)
    for n in range(sum(k.endswith(".modulation") and k.startswith("blocks.") for k in sd)):
        sd[f"blocks.{n}.cross_attn.k_img.weight"] = torch.zeros(dim, dim)
        sd[f"blocks.{n}.cross_attn.v_img.weight"] = torch.zeros(dim, dim)
        sd[f"blocks.{n}.cross_attn.norm_k_img.weight"] = torch.ones(dim)
    return sd


def wan22_5b_meta_state_dict() -> dict[str, torch.Tensor]:
    """Wan2.2-TI2V-5B's shapes (dim 3072, 30 layers, 48 latent channels) on the meta device."""
    return meta_state_dict(wan_key_shapes(dim=3072, num_layers=30, ffn_dim=14336, in_dim=48, out_dim=48))


# --------------------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------------------


def tiny_inputs(seed: int = 0, config: ModelConfig = TINY):
    """x [1, in_dim, 3, 4, 4], timestep [1, 3], context [1, text_len, text_dim]."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, config.in_dim, 3, 4, 4, generator=gen)
    t = torch.tensor([[900.0, 500.0, 120.0]])
    ctx = torch.randn(1, config.text_len, config.text_dim, generator=gen)
    return x, t, ctx
