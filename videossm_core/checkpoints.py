"""Loading and saving the transformer: every layout Wan2.1-family checkpoints ship in, our own files, LoRAs.

Layouts (detected from the keys and metadata, never from the file name; see ``detect_format``):

* ``wan``: original Wan2.1 keys, ``blocks.N.self_attn.q.weight`` ... (our module names are these keys).
* ``diffusers``: ``WanTransformer3DModel`` keys, a single file or a folder with ``config.json`` and
  ``diffusion_pytorch_model.safetensors`` (optionally sharded with ``...safetensors.index.json``).
  Renamed through one table (``_DIFFUSERS_TOP`` + ``_DIFFUSERS_BLOCK``; both directions derive from it).
* ``comfyui``: original keys under ``model.diffusion_model.`` (or bare), stored fp16/bf16/fp8; "scaled fp8"
  files carry ``<module>.scale_weight`` tensors (weight = fp8 weight * scale) and a ``scaled_fp8`` marker.
* ``training``: Self-Forcing / CausVid / Rolling Forcing / Causal Forcing / LongLive ``.pt``: a dict with
  ``generator`` / ``generator_ema`` (or ``model``) whose keys are ``model.<original key>`` with
  ``_fsdp_wrapped_module.`` wherever FSDP wrapped a module.
* ``videossm`` / ``videossm_memory``: our safetensors files, with the ModelConfig JSON in the metadata
  (``videossm_config``); a memory-only file holds just ``blocks.N.self_attn.memory.*``.
* ``lora``: PEFT (LongLive: rank 256, alpha 256, every nn.Linear of the attention blocks) or kohya/ComfyUI
  ``lora_down``/``lora_up``/``alpha`` keys; merged into the weights by ``merge_lora``.

Anything else (a VAE, the UMT5 text encoder, Wan2.2-TI2V-5B, image-to-video Wan) is named as such in a
``CheckpointError``: bad input never ends in a stack trace from deep inside torch.

Loading streams: the model is built on the meta device (no random init, no memory), then each tensor is read
lazily (``safe_open(...).get_tensor`` or an mmap'ed ``torch.load(weights_only=True)``), renamed, dequantised,
cast and moved, and assigned in place of its meta parameter. So peak memory is one model plus one tensor.
VideoSSM memory parameters that a base checkpoint lacks are initialised by the memory's ``reset_parameters``,
which makes the memory branch add exactly zero: a base checkpoint with fresh memory computes what the base does.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import pickle
import re
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from .errors import CheckpointError
from . import __version__
from .config import MemoryConfig, ModelConfig
from .model.transformer import CausalWanModel



# Safetensors metadata written by ``save_model``.
META_CONFIG = "videossm_config"  # ModelConfig JSON
META_CONTENT = "videossm_content"  # "model" | "memory"
META_VERSION = "videossm_version"

MEMORY_INFIX = ".self_attn.memory."  # every VideoSSM-only parameter lives under blocks.N.self_attn.memory

FORMATS = ("wan", "diffusers", "comfyui", "training", "videossm", "videossm_memory", "lora",
           "vae", "text_encoder", "wan2.2_5b", "i2v", "stream_state", "unknown")
LOADABLE_FORMATS = ("wan", "diffusers", "comfyui", "training", "videossm")

# Wan2.1's attention heads are 128 wide at every size (1.3B: 1536/12, 14B: 5120/40).
WAN_HEAD_DIM = 128

# --------------------------------------------------------------------------------------------------------------
# Key names
# --------------------------------------------------------------------------------------------------------------

# Original Wan module path <-> diffusers WanTransformer3DModel module path (diffusers'
# scripts/convert_wan_to_diffusers.py, model_anchors.md section 5.4b). Entries are whole dotted components, so
# a rule for ``norm2`` never touches ``norm_q``. The first table is for top-level names, the second for names
# inside ``blocks.N.``.
_DIFFUSERS_TOP: tuple[tuple[str, str], ...] = (
    ("patch_embedding", "patch_embedding"),
    ("text_embedding.0", "condition_embedder.text_embedder.linear_1"),
    ("text_embedding.2", "condition_embedder.text_embedder.linear_2"),
    ("time_embedding.0", "condition_embedder.time_embedder.linear_1"),
    ("time_embedding.2", "condition_embedder.time_embedder.linear_2"),
    ("time_projection.1", "condition_embedder.time_proj"),
    ("head.head", "proj_out"),
    ("head.modulation", "scale_shift_table"),
)
_DIFFUSERS_BLOCK: tuple[tuple[str, str], ...] = (
    ("modulation", "scale_shift_table"),
    *((f"{ours}.{a}", f"{theirs}.{b}")
      for ours, theirs in (("self_attn", "attn1"), ("cross_attn", "attn2"))
      for a, b in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("o", "to_out.0"),
                   ("norm_q", "norm_q"), ("norm_k", "norm_k"))),
    # diffusers orders a block norm1 -> attn1 -> norm2 -> attn2 -> norm3 -> ffn, so Wan's affine cross-attention
    # pre-norm ``norm3`` is diffusers' ``norm2`` and vice versa (only the affine one has parameters).
    ("norm3", "norm2"),
    ("norm2", "norm3"),
    ("ffn.0", "ffn.net.0.proj"),
    ("ffn.2", "ffn.net.2"),
)
_BLOCK_RE = re.compile(r"^(blocks\.\d+\.)(.*)$")


def _check_bijective(table: Sequence[tuple[str, str]]) -> None:
    ours, theirs = [a for a, _ in table], [b for _, b in table]
    assert len(set(ours)) == len(ours) and len(set(theirs)) == len(theirs), "rename table is not one-to-one"


_check_bijective(_DIFFUSERS_TOP)
_check_bijective(_DIFFUSERS_BLOCK)


def _rename(key: str, to_diffusers: bool) -> str:
    """Rename one key through the table; keys the table does not cover come back unchanged."""
    match = _BLOCK_RE.match(key)
    scope, rest = (match.group(1), match.group(2)) if match else ("", key)
    table = _DIFFUSERS_BLOCK if match else _DIFFUSERS_TOP
    best = None
    for ours, theirs in table:
        src, dst = (ours, theirs) if to_diffusers else (theirs, ours)
        if (rest == src or rest.startswith(src + ".")) and (best is None or len(src) > len(best[0])):
            best = (src, dst)
    if best is None:
        return key
    return scope + best[1] + rest[len(best[0]):]


def to_diffusers_key(key: str) -> str:
    """Original Wan key -> diffusers ``WanTransformer3DModel`` key."""
    return _rename(key, to_diffusers=True)


def from_diffusers_key(key: str) -> str:
    """diffusers ``WanTransformer3DModel`` key -> original Wan key (= our module name)."""
    return _rename(key, to_diffusers=False)


# Where a transformer's keys may sit inside a file, most specific first: ComfyUI full checkpoints,
# ComfyUI-style exports, training wrappers (``WanDiffusionWrapper.model``), DDP, diffusers pipelines' dicts.
_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "model.", "module.", "transformer.", "")
# Prefixes under which a file may also hold *other* components (VAE, text encoder) that we skip.
_SHARED_FILE_PREFIXES = ("model.diffusion_model.", "diffusion_model.")
_TOP_LEVEL = ("patch_embedding.", "text_embedding.", "time_embedding.", "time_projection.", "blocks.", "head.",
              "condition_embedder.", "proj_out.", "scale_shift_table")
# Wrapper infixes: FSDP (Self-Forcing EMA keys), torch.compile.
_INFIXES = ("_fsdp_wrapped_module.", "_orig_mod.")

# ComfyUI fp8 storage: ``X.scale_weight`` (or the newer ``X.weight_scale``) multiplies ``X.weight``; the
# input scales and markers only matter to fp8 matmul kernels, which we do not use.
_WEIGHT_SCALE_SUFFIXES = (".scale_weight", ".weight_scale")
_IGNORED_SUFFIXES = (".scale_input", ".input_scale", ".comfy_quant")
_IGNORED_KEYS = ("scaled_fp8",)
_FP8_DTYPES = tuple(getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz")
                    if hasattr(torch, n))


def _strip_infixes(key: str) -> str:
    for infix in _INFIXES:
        key = key.replace(infix, "")
    return key


def _find_prefix(keys: Iterable[str]) -> str:
    keys = list(keys)
    for prefix in _PREFIXES:
        if any(k.startswith(prefix) and k[len(prefix):].startswith(_TOP_LEVEL) for k in keys):
            return prefix
    return ""


def _is_ignored(key: str) -> bool:
    return key in _IGNORED_KEYS or key.endswith(_IGNORED_SUFFIXES)


@dataclass
class _KeyPlan:
    """How a file's keys become ours: our name -> raw key (and the raw key of its fp8 scale, if any)."""

    names: dict[str, str] = field(default_factory=dict)
    scales: dict[str, str] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    prefix: str = ""


def _plan_keys(raw_keys: Iterable[str], fmt: str) -> _KeyPlan:
    cleaned = {raw: _strip_infixes(raw) for raw in raw_keys}
    plan = _KeyPlan(prefix=_find_prefix(cleaned.values()))
    weights: dict[str, str] = {}  # key without prefix -> raw key
    scales: dict[str, str] = {}  # key of the weight a scale belongs to -> raw key of the scale
    for raw, key in cleaned.items():
        if key.startswith(plan.prefix):
            key = key[len(plan.prefix):]
        elif plan.prefix in _SHARED_FILE_PREFIXES:
            plan.ignored.append(raw)  # e.g. the VAE / text encoder of a ComfyUI all-in-one checkpoint
            continue
        if _is_ignored(key):
            plan.ignored.append(raw)
            continue
        suffix = next((s for s in _WEIGHT_SCALE_SUFFIXES if key.endswith(s)), None)
        if suffix is not None:
            scales[key[: -len(suffix)] + ".weight"] = raw
            continue
        if key in weights:  # e.g. both model.x and model._fsdp_wrapped_module.x
            raise CheckpointError(f"two tensors in the file are the same parameter {key!r}: {weights[key]!r} and "
                                  f"{raw!r}; the file mixes two copies of the model")
        weights[key] = raw
    for key, raw in weights.items():
        ours = from_diffusers_key(key) if fmt == "diffusers" else key
        if ours in plan.names:
            raise CheckpointError(f"two tensors in the file map to the same parameter {ours!r}: "
                                  f"{plan.names[ours]!r} and {raw!r}")
        plan.names[ours] = raw
        if key in scales:
            plan.scales[ours] = scales.pop(key)
    plan.ignored.extend(scales.values())  # scales without a weight
    return plan


# --------------------------------------------------------------------------------------------------------------
# Detection
# --------------------------------------------------------------------------------------------------------------

# PEFT: ``<module>.lora_A[.<adapter>].weight`` [r, in] and ``lora_B`` [out, r] (LongLive's lora.pt; the
# adapter name ``default`` is removed by get_peft_model_state_dict but kept by a plain state_dict()).
# kohya / ComfyUI: ``<module>.lora_down.weight`` / ``lora_up.weight`` (+ ``<module>.alpha``, see merge_lora).
_LORA_KEY_RE = re.compile(
    r"^(?P<module>.+?)\.(?P<kind>lora_A|lora_B|lora_down|lora_up)(?:\.(?P<adapter>[^.]+))?\.weight$")
_VAE_MARKERS = ("encoder.conv1.weight", "decoder.conv1.weight", "encoder.downsamples.", "decoder.upsamples.",
                "decoder.middle.", "encoder.down_blocks.", "decoder.up_blocks.", "quant_conv.weight")
_UMT5_MARKERS = ("shared.weight", "encoder.block.0.layer.0.SelfAttention.q.weight", "token_embedding.weight",
                 "encoder.final_layer_norm.weight")
_I2V_MARKERS = ("img_emb.", ".k_img.", ".v_img.", ".norm_k_img.", ".add_k_proj.", ".add_v_proj.",
                "condition_embedder.image_embedder.")
# Key endings only one of the two transformer layouts has (patch_embedding is shared).
_WAN_MARKERS = ("head.modulation", "head.head.weight", "self_attn.q.weight", "cross_attn.q.weight",
                "ffn.0.weight")
_DIFFUSERS_MARKERS = ("attn1.to_q.weight", "attn2.to_q.weight", "ffn.net.0.proj.weight", "proj_out.weight",
                      "condition_embedder.time_proj.weight")


def _shape_of(shapes: Mapping[str, Any] | None, key: str) -> tuple[int, ...] | None:
    if shapes is None or key not in shapes:
        return None
    value = shapes[key]
    return tuple(int(s) for s in (value.shape if hasattr(value, "shape") else value))


def _find_shape(shapes: Mapping[str, Any] | None, suffix: str) -> tuple[int, ...] | None:
    """The shape of the first key that ends with ``suffix`` (prefix-agnostic)."""
    if shapes is None:
        return None
    for key in shapes:
        if key == suffix or key.endswith("." + suffix):
            return _shape_of(shapes, key)
    return None


def detect_format(keys: Iterable[str], metadata: Mapping[str, str] | None = None, *,
                  shapes: Mapping[str, Any] | None = None, wrapper: str | None = None) -> str:
    """What a file holds, from its keys (and metadata; ``shapes`` maps key -> shape or tensor, needed to tell
    Wan2.2-TI2V-5B apart; ``wrapper`` is the training-dict entry the keys came from, if any). One of ``FORMATS``.
    """
    keys = list(keys)
    metadata = dict(metadata or {})
    cleaned = [_strip_infixes(k) for k in keys]

    if metadata.get(META_CONTENT) == "memory":
        return "videossm_memory"
    if "videossm" in metadata:  # StreamState.save's metadata key
        return "stream_state"
    if any(_LORA_KEY_RE.match(k) for k in cleaned):
        return "lora"
    if META_CONFIG in metadata:
        return "videossm"

    def has(markers: Sequence[str]) -> bool:
        return any(m in k for k in cleaned for m in markers)

    is_wan = any(k.endswith(_WAN_MARKERS) for k in cleaned)
    is_diffusers = any(k.endswith(_DIFFUSERS_MARKERS) for k in cleaned)
    if is_wan or is_diffusers:
        if has(_I2V_MARKERS):
            return "i2v"
        patch = _find_shape(shapes, "patch_embedding.weight")
        if patch is not None:
            dim, in_dim = patch[0], patch[1]
            head = _find_shape(shapes, "head.head.weight") or _find_shape(shapes, "proj_out.weight")
            patch_volume = patch[2] * patch[3] * patch[4] if len(patch) == 5 else 4
            out_dim = head[0] // patch_volume if head is not None else in_dim
            if dim == 3072 or (in_dim == 48 and out_dim == 48):
                return "wan2.2_5b"
            if out_dim != in_dim:
                return "i2v"  # channel-concatenated conditioning (Wan I2V / Fun-InP: in 36, out 16; Fun-Control)
        if is_diffusers and not is_wan:
            return "diffusers"
        prefix = _find_prefix(cleaned)
        if prefix in _SHARED_FILE_PREFIXES or any(k in _IGNORED_KEYS or k.endswith(_WEIGHT_SCALE_SUFFIXES)
                                                  for k in cleaned):
            return "comfyui"
        if wrapper is not None or prefix in ("model.", "module.") or any(c != k for c, k in zip(cleaned, keys)):
            return "training"
        if any(MEMORY_INFIX in k for k in cleaned):
            return "videossm"  # our model without its metadata (e.g. re-saved by another tool)
        return "wan"
    if cleaned and all(MEMORY_INFIX in k for k in cleaned):
        return "videossm_memory"
    if has(_VAE_MARKERS):
        return "vae"
    if has(_UMT5_MARKERS):
        return "text_encoder"
    return "unknown"


def _listing(keys: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... (+{len(keys) - limit} more)" if len(keys) > limit else "")


def describe_format(fmt: str, keys: Sequence[str] = ()) -> str:
    """A sentence saying what a file that is not a loadable transformer is, and what to do."""
    messages = {
        "vae": "this is a VAE (keys such as encoder.conv1.weight / decoder.*), not the diffusion transformer; "
               "load it with the VAE loader",
        "text_encoder": "this is a UMT5 text encoder (keys such as shared.weight / encoder.block.N.*), not the "
                        "diffusion transformer; load it with the text encoder loader",
        "wan2.2_5b": "this is Wan2.2-TI2V-5B (dim 3072, 48 latent channels), which is not supported; use a "
                     "Wan2.1-T2V checkpoint (Wan2.1 1.3B/14B, Self-Forcing, LongLive, CausVid, ...)",
        "i2v": "this is an image-to-video (or otherwise image-conditioned) Wan: img_emb / k_img keys or extra "
               "input channels; it is not supported, use a Wan2.1 text-to-video checkpoint",
        "lora": "this is a LoRA, not a full model; load a base model and give this file as its LoRA",
        "videossm_memory": "this is a VideoSSM memory-only file; load a base model and give this file as its "
                           "memory file",
        "stream_state": "this is a VideoSSM stream state (a saved run), not a model; continue it with "
                        "--resume (or the Load State node) and give the model that made it",
    }
    if fmt in messages:
        return messages[fmt]
    return ("this does not look like a Wan2.1 diffusion transformer (keys: " + _listing(list(keys)) + ")")


# --------------------------------------------------------------------------------------------------------------
# Config inference
# --------------------------------------------------------------------------------------------------------------


def _merge_overrides(config: ModelConfig, overrides: Mapping[str, Any] | None) -> ModelConfig:
    """Apply ModelConfig field overrides; ``memory`` may be a MemoryConfig or a partial dict of its fields."""
    if not overrides:
        return config
    data = config.to_dict()
    for name, value in overrides.items():
        if name == "memory":
            value = value.to_dict() if isinstance(value, MemoryConfig) else dict(value)
            value = {**data["memory"], **value}
        data[name] = value
    try:
        return ModelConfig.from_dict(data)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"invalid config override {dict(overrides)}: {e}") from None


def infer_config(state: Mapping[str, Any], metadata: Mapping[str, str] | None = None, *,
                 num_heads: int | None = None, config_overrides: Mapping[str, Any] | None = None,
                 hints: Mapping[str, Any] | None = None) -> tuple[ModelConfig, dict[str, str]]:
    """The ModelConfig of a state dict in our names (values: tensors, meta tensors or shapes).

    Shapes give every size except the head count (the q/k/v weights are [dim, dim] whatever the heads), the
    text length and eps. Heads come from, in order: ``num_heads`` / ``config_overrides``, our metadata config,
    ``hints`` (a diffusers config.json or a memory file's config), the memory's per-head gate rows, and
    finally ``dim // 128`` (real Wan) when dim is a multiple of 128. Returns the config and where the head
    count came from.
    """
    overrides = dict(config_overrides or {})
    if num_heads is not None:
        overrides["num_heads"] = int(num_heads)
    if metadata and META_CONFIG in metadata:  # our own file: the config is exact, shapes are checked later
        try:
            base = ModelConfig.from_json(metadata[META_CONFIG])
        except (ValueError, TypeError) as e:
            raise CheckpointError(f"the file's {META_CONFIG} metadata is not a valid model config: {e}") from None
        source = "override" if "num_heads" in overrides else "file metadata"
        return _merge_overrides(base, overrides), {"num_heads": source}
    sources = {}

    def shape(key: str) -> tuple[int, ...] | None:
        return _shape_of(state, key)

    # A tensor missing here is not fatal yet: fall back to the default so that check_keys can then list
    # *every* missing key by name, which says more than "cannot infer".
    defaults = ModelConfig()
    patch, head_mod, head = shape("patch_embedding.weight"), shape("head.modulation"), shape("head.head.weight")
    if patch is not None and len(patch) != 5:
        raise CheckpointError(f"patch_embedding.weight has shape {patch}, not a 3-D convolution's; this is not a "
                              "Wan2.1 transformer")
    dim = patch[0] if patch is not None else head_mod[-1] if head_mod is not None else None
    if dim is None:
        raise CheckpointError("cannot infer the model width: neither patch_embedding.weight nor head.modulation "
                              "is in the file (an incomplete file, or not a Wan2.1 transformer)")
    if head_mod is not None and head_mod[-1] != dim:
        raise CheckpointError(f"head.modulation has width {head_mod[-1]} but patch_embedding has {dim}")
    blocks = sorted({int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))})
    if not blocks:
        raise CheckpointError("the state dict has no transformer blocks (blocks.N.*)")
    if blocks != list(range(len(blocks))):
        gaps = sorted(set(range(blocks[-1] + 1)) - set(blocks))
        raise CheckpointError(f"transformer blocks are not numbered 0..{blocks[-1]}: missing blocks {gaps} "
                              "(an incomplete or damaged file)")
    patch_size = tuple(patch[2:]) if patch is not None else defaults.patch_size
    out_dim = head[0] // math.prod(patch_size) if head is not None else None
    in_dim = patch[1] if patch is not None else out_dim or defaults.in_dim
    fields: dict[str, Any] = {"dim": dim, "in_dim": in_dim, "out_dim": out_dim or in_dim, "patch_size": patch_size,
                              "num_layers": len(blocks)}
    for name, key, axis in (("ffn_dim", "blocks.0.ffn.0.weight", 0), ("text_dim", "text_embedding.0.weight", 1),
                            ("freq_dim", "time_embedding.0.weight", 1)):
        s = shape(key)
        fields[name] = s[axis] if s is not None else getattr(defaults, name)

    hints = dict(hints or {})
    memory_rows = shape("blocks.0.self_attn.memory.beta_proj.weight")
    if "num_heads" in overrides:
        heads, sources["num_heads"] = overrides.pop("num_heads"), "override"
    elif hints.get("num_heads"):
        heads, sources["num_heads"] = int(hints["num_heads"]), hints.get("source", "hint")
    elif memory_rows is not None:
        heads, sources["num_heads"] = memory_rows[0], "memory gate rows"
    elif dim % WAN_HEAD_DIM == 0:
        heads, sources["num_heads"] = dim // WAN_HEAD_DIM, f"dim // {WAN_HEAD_DIM}"
    else:
        raise CheckpointError(
            f"cannot tell the number of attention heads of a dim-{dim} model from its weights (real Wan has "
            f"{WAN_HEAD_DIM}-wide heads, but {dim} is not a multiple of {WAN_HEAD_DIM}); pass num_heads "
            "(config_overrides={'num_heads': ...})")
    fields["num_heads"] = int(heads)
    for name in ("text_len", "eps"):
        if name in hints:
            fields[name] = hints[name]
    if "memory" in hints and isinstance(hints["memory"], MemoryConfig):
        fields["memory"] = hints["memory"]
    try:
        config = ModelConfig(**fields)
    except ValueError as e:
        raise CheckpointError(f"the inferred model shape is invalid: {e}; pass num_heads if it is wrong") from None
    return _merge_overrides(config, overrides), sources


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter of ``CausalWanModel(config)`` with its shape, computed on the meta device."""
    with torch.device("meta"):
        model = CausalWanModel(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_keys(config: ModelConfig, shapes: Mapping[str, Any], source: str = "checkpoint",
               fmt: str | None = None) -> list[str]:
    """Raise a CheckpointError naming missing / unexpected / wrongly shaped keys of a state dict in our names.

    Memory parameters may be absent altogether (a base checkpoint: fresh memory); returns the memory keys that
    will be initialised fresh.
    """
    expected = expected_shapes(config)
    have_memory = any(MEMORY_INFIX in k for k in shapes)
    fresh = [k for k in expected if MEMORY_INFIX in k and k not in shapes] if not have_memory else []
    missing = [k for k in expected if k not in shapes and k not in fresh]
    unexpected = [k for k in shapes if k not in expected]
    wrong = [f"{k} {_shape_of(shapes, k)} (model: {expected[k]})" for k in expected
             if k in shapes and _shape_of(shapes, k) != expected[k]]
    if not (missing or unexpected or wrong):
        return fresh
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_listing(unexpected)}")
    if wrong:
        problems.append(f"{len(wrong)} tensors with the wrong shape: {_listing(wrong, 3)}")
    looks_like = detect_format(list(shapes), shapes=shapes)
    if looks_like not in LOADABLE_FORMATS:
        hint = describe_format(looks_like, list(shapes))
    elif any(k.startswith("vace_") for k in shapes):
        hint = "this is a Wan VACE model (vace_* keys), which is not supported"
    else:
        hint = ("an incomplete download, a different Wan variant, or a wrong num_heads / config override; "
                "re-download the file or use a Wan2.1-T2V-based checkpoint")
    summary = (f"dim {config.dim}, {config.num_layers} layers, {config.num_heads} heads")
    raise CheckpointError(f"{source}: does not fit a Wan2.1 transformer ({summary}"
                          f"{', format ' + fmt if fmt else ''}): " + "; ".join(problems) + f". Likely: {hint}")


# --------------------------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------------------------


def _first_sentence(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0].split(". ")[0]


def _damaged(path: Any, detail: str) -> CheckpointError:
    return CheckpointError(f"{path}: the file is damaged or incomplete ({detail}); delete it and download it again")


def _sniff(path: Path) -> str:
    """'safetensors' or 'torch', decided by the bytes (a renamed file still reads right)."""
    size = path.stat().st_size
    if size == 0:
        raise _damaged(path, "the file is empty")
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:4] == b"PK\x03\x04":
        return "torch"  # torch.save's zip container
    if len(head) == 9 and head[8:9] == b"{":  # safetensors: u64 little-endian header length, then JSON
        (header_len,) = struct.unpack("<Q", head[:8])
        if 0 < header_len <= size - 8:
            return "safetensors"
        raise _damaged(path, f"the safetensors header says {header_len} bytes but the file has {size}")
    if head[:1] == b"\x80" and len(head) > 1 and head[1] <= 5:
        return "torch"  # legacy torch.save: a pickle stream
    if head[:4] == b"GGUF":
        raise CheckpointError(f"{path}: GGUF files are not supported; use the safetensors version of the model")
    raise _damaged(path, "neither a safetensors file nor a PyTorch checkpoint")


def _torch_load(path: Path) -> Any:
    """``torch.load`` with ``weights_only=True`` (never anything else: a pickle can run code), mmap'ed."""
    def load(mmap: bool):
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
    try:
        try:
            return load(mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            return load(mmap=False)  # a legacy (non-zip) torch.save file cannot be mmap'ed
    except pickle.UnpicklingError as e:
        text = str(e).lower()
        if "weights only" in text or "weights_only" in text or "unsupported global" in text:
            raise CheckpointError(
                f"{path}: the file contains Python code or objects, not just tensors, and we only load plain "
                "tensors (torch.load weights_only=True refused it); convert it to safetensors (a state dict of "
                "tensors) with a tool you trust, then load that") from None
        raise _damaged(path, f"torch.load: {_first_sentence(e)}") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, struct.error) as e:
        raise _damaged(path, f"torch.load: {_first_sentence(e)}") from None


# Training dicts: which entry holds the transformer. EMA first when asked (the README-recommended weights).
# ``generator_lora`` last: LongLive's lora.pt given as the model must be recognised (and refused) as a LoRA.
_TRAINING_ENTRIES = ("generator", "model", "state_dict", "module", "net", "transformer", "generator_lora")
# ``generator``/``generator_ema`` last: a training .pt given as a LoRA must be named as the full model it is.
_LORA_ENTRIES = ("generator_lora", "lora", "model", "generator", "generator_ema")
_LORA_CONFIG_ENTRIES = ("peft_config", "lora_config", "adapter_config", "config")


def _lora_alpha_in(obj: Any) -> float | None:
    """lora_alpha from a PEFT config saved inside a .pt: {"peft_config": {"lora_alpha": ..}} or, as
    PEFT's ``model.peft_config``, {"peft_config": {"default": {"lora_alpha": ..}}}."""
    if not isinstance(obj, Mapping):
        return None
    for name in _LORA_CONFIG_ENTRIES:
        cfg = obj.get(name)
        if isinstance(cfg, Mapping) and len(cfg) == 1 and isinstance(next(iter(cfg.values())), Mapping):
            cfg = next(iter(cfg.values()))  # one named adapter
        alpha = cfg.get("lora_alpha") if isinstance(cfg, Mapping) else getattr(cfg, "lora_alpha", None)
        if isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and alpha > 0:
            return float(alpha)
    return None


def _unwrap(obj: Any, path: Any, use_ema: bool, entries: Sequence[str]) -> tuple[dict[str, Tensor], str | None]:
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a dict of tensors, found a {type(obj).__name__}")
    wrapper = None
    if not any(isinstance(v, Tensor) for v in obj.values()):
        order = tuple(entries)
        if "generator" in entries:  # EMA first when asked; without EMA still better than nothing
            order = ("generator_ema",) + order if use_ema else order + ("generator_ema",)
        for name in order:
            if isinstance(obj.get(name), Mapping) and obj[name]:
                obj, wrapper = obj[name], name
                break
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not tensors:
        nested = [k for k, v in obj.items() if isinstance(v, Mapping)]
        extra = f" (it has entries {_listing(nested)})" if nested else ""
        raise CheckpointError(f"{path}: the file holds no tensors{extra}; it is empty or not a model checkpoint")
    return tensors, wrapper


# safetensors' dtype tags in torch's spelling, so info["stored_dtypes"] reads the same for every file type.
_SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
                       "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "I64": "int64", "I32": "int32",
                       "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


class _Source(contextlib.AbstractContextManager):
    """A checkpoint opened for lazy reading: raw key -> shape now, tensor on demand."""

    def __init__(self, label: str):
        self.label = label
        self.getters: dict[str, Callable[[], Tensor]] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, str] = {}
        self.metadata: dict[str, str] = {}
        self.wrapper: str | None = None
        self.hints: dict[str, Any] = {}
        self.shared_reads = False  # reads return the source's own tensors (mmap'ed .pt, a caller's dict)
        self._stack = contextlib.ExitStack()

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def get(self, key: str) -> Tensor:
        try:
            return self.getters[key]()
        except CheckpointError:
            raise
        except Exception as e:  # the bytes behind a valid header can still be bad
            raise _damaged(self.label, f"cannot read tensor {key!r}: {e}") from None

    def add_tensors(self, tensors: Mapping[str, Tensor]) -> None:
        for k, v in tensors.items():
            self.getters[k] = (lambda t=v: t)
            self.shapes[k] = tuple(v.shape)
            self.dtypes[k] = str(v.dtype).replace("torch.", "")
        self.shared_reads = True

    def add_safetensors(self, path: Path) -> None:
        from safetensors import safe_open

        try:
            handle = self._stack.enter_context(safe_open(str(path), framework="pt", device="cpu"))
            self.metadata.update(handle.metadata() or {})
            for k in handle.keys():
                sl = handle.get_slice(k)
                self.getters[k] = (lambda h=handle, name=k: h.get_tensor(name))
                self.shapes[k] = tuple(int(s) for s in sl.get_shape())
                self.dtypes[k] = _SAFETENSORS_DTYPES.get(sl.get_dtype(), sl.get_dtype().lower())
        except CheckpointError:
            raise
        except Exception as e:  # SafetensorError, OSError: the bytes are not a valid file
            raise _damaged(path, f"safetensors: {e}") from None

    def add_file(self, path: Path, use_ema: bool, entries: Sequence[str] = _TRAINING_ENTRIES) -> None:
        if _sniff(path) == "safetensors":
            self.add_safetensors(path)
        else:
            obj = _torch_load(path)
            alpha = _lora_alpha_in(obj)
            if alpha is not None:
                self.metadata["lora_alpha"] = str(alpha)
            tensors, self.wrapper = _unwrap(obj, path, use_ema, entries)
            self.add_tensors(tensors)


def _diffusers_hints(config: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    cls = str(config.get("_class_name", ""))
    if "Autoencoder" in cls or "VAE" in cls.upper():
        raise CheckpointError(f"{folder}: {describe_format('vae')}")
    if config.get("image_dim") or config.get("added_kv_proj_dim"):
        raise CheckpointError(f"{folder}: {describe_format('i2v')}")
    if cls and cls not in ("WanTransformer3DModel", "WanModel", "CausalWanModel"):
        raise CheckpointError(f"{folder}: config.json describes a {cls}, not a Wan2.1 transformer "
                              "(WanTransformer3DModel)")
    hints: dict[str, Any] = {"source": "config.json"}
    heads = config.get("num_attention_heads", config.get("num_heads"))
    if heads:
        hints["num_heads"] = int(heads)
    if "eps" in config:
        hints["eps"] = float(config["eps"])
    if "text_len" in config:
        hints["text_len"] = int(config["text_len"])
    return hints


def _open_folder(folder: Path, src: _Source, use_ema: bool) -> None:
    """A diffusers model folder (or a pipeline folder with ``transformer/``)."""
    for candidate in (folder, folder / "transformer"):
        config_file = candidate / "config.json"
        if not config_file.is_file():
            continue
        try:
            config = json.loads(config_file.read_text())
        except (OSError, ValueError) as e:
            raise _damaged(config_file, f"config.json is not valid JSON: {e}") from None
        src.hints = _diffusers_hints(config, candidate)
        index = candidate / "diffusion_pytorch_model.safetensors.index.json"
        single = candidate / "diffusion_pytorch_model.safetensors"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise _damaged(index, f"not a valid shard index: {e}") from None
            shards = sorted(set(weight_map.values()))
            absent = [s for s in shards if not (candidate / s).is_file()]
            if absent:
                raise CheckpointError(f"{candidate}: the shard index lists files that are not there: "
                                      f"{_listing(absent)}; download all shards")
            for shard in shards:
                src.add_safetensors(candidate / shard)
            return
        if single.is_file():
            src.add_safetensors(single)
            return
        legacy = candidate / "diffusion_pytorch_model.bin"
        if legacy.is_file():
            src.add_file(legacy, use_ema)
            return
        raise CheckpointError(f"{candidate}: has config.json but no diffusion_pytorch_model.safetensors (or a "
                              "sharded diffusion_pytorch_model.safetensors.index.json); download the weights too")
    raise CheckpointError(f"{folder}: is a folder without config.json, so not a diffusers model folder; give a "
                          ".safetensors / .pt file, or a folder with config.json + diffusion_pytorch_model.safetensors")


def _open(path_or_dict: Any, use_ema: bool = True, entries: Sequence[str] = _TRAINING_ENTRIES) -> _Source:
    if isinstance(path_or_dict, Mapping):
        src = _Source("state dict")
        tensors, src.wrapper = _unwrap(path_or_dict, "state dict", use_ema, entries)
        src.add_tensors(tensors)
        return src
    path = Path(os.fspath(path_or_dict)).expanduser()
    src = _Source(str(path))
    if not path.exists():
        raise CheckpointError(f"{path}: file not found; check the path (and that the download finished)")
    try:
        if path.is_dir():
            _open_folder(path, src, use_ema)
        else:
            src.add_file(path, use_ema, entries)
    except BaseException:
        src.__exit__(None, None, None)
        raise
    return src


# --------------------------------------------------------------------------------------------------------------
# Tensors
# --------------------------------------------------------------------------------------------------------------

_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
           "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
           "fp16": torch.float16, "float16": torch.float16, "half": torch.float16}


def as_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """torch dtype from a dtype or a name (fp32 / bf16 / fp16 ...)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype).lower().replace("torch.", "")]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use one of fp32, bf16, fp16") from None


def _dequantise(weight: Tensor, scale: Tensor | None, dtype: torch.dtype | None) -> Tensor:
    """Upcast fp8 storage and apply a ComfyUI ``scale_weight``; cast to ``dtype`` (None: keep, fp8 -> fp32)."""
    if scale is not None or weight.dtype in _FP8_DTYPES:
        w = weight.to(torch.float32)
        if scale is not None:
            s = scale.to(torch.float32)
            if s.numel() == 1:
                w = w * s.reshape(())
            elif s.numel() == w.shape[0]:  # per output channel
                w = w * s.reshape(-1, *([1] * (w.ndim - 1)))
            else:
                raise CheckpointError(f"a weight scale of shape {tuple(s.shape)} does not fit a weight of shape "
                                      f"{tuple(w.shape)}")
        weight = w
    return weight if dtype is None else weight.to(dtype)


@dataclass
class _Plan:
    fmt: str
    keys: _KeyPlan
    config: ModelConfig
    shapes: dict[str, tuple[int, ...]]  # our name -> shape
    info: dict[str, Any]


def _plan(src: _Source, *, num_heads: int | None, config_overrides: Mapping[str, Any] | None,
          allow: Sequence[str] = LOADABLE_FORMATS, hints: Mapping[str, Any] | None = None) -> _Plan:
    fmt = detect_format(src.shapes, src.metadata, shapes=src.shapes, wrapper=src.wrapper)
    if fmt not in allow:
        raise CheckpointError(f"{src.label}: {describe_format(fmt, list(src.shapes))}")
    keys = _plan_keys(src.shapes, fmt)
    shapes = {ours: src.shapes[raw] for ours, raw in keys.names.items()}
    try:
        config, sources = infer_config(shapes, src.metadata, num_heads=num_heads, config_overrides=config_overrides,
                                       hints={**(hints or {}), **src.hints})
    except CheckpointError as e:
        raise CheckpointError(f"{src.label}: {e}") from None
    dropped = []
    if not config.memory.enabled:  # memory switched off: a file's memory weights have nowhere to go
        dropped = [k for k in shapes if MEMORY_INFIX in k]
        for k in dropped:
            del shapes[k], keys.names[k]
            keys.scales.pop(k, None)
    info = {
        "format": fmt,
        "source": src.label,
        "wrapper": src.wrapper,
        "prefix": keys.prefix,
        "config": config,
        "num_heads_from": sources.get("num_heads"),
        "stored_dtypes": sorted({src.dtypes[raw] for raw in keys.names.values()}),
        "fp8_scaled": bool(keys.scales),
        "has_memory": any(MEMORY_INFIX in k for k in shapes),
        "ignored_keys": list(keys.ignored),
        "dropped_memory_keys": len(dropped),
        "num_tensors": len(shapes),
    }
    return _Plan(fmt, keys, config, shapes, info)


def _read(src: _Source, names: _KeyPlan, ours: str, dtype: torch.dtype | None) -> Tensor:
    """One tensor in our name, dequantised and cast, never sharing memory with the source (an mmap'ed file
    or the caller's dict): the model owns its weights, and an in-place LoRA merge touches nothing else."""
    raw = src.get(names.names[ours])
    scale_key = names.scales.get(ours)
    out = _dequantise(raw, src.get(scale_key) if scale_key else None, dtype)
    if src.shared_reads and out.untyped_storage().data_ptr() == raw.untyped_storage().data_ptr():
        out = out.clone()
    return out


# --------------------------------------------------------------------------------------------------------------
# Public loading API
# --------------------------------------------------------------------------------------------------------------


def convert_state_dict(state_dict: Mapping[str, Any], metadata: Mapping[str, str] | None = None, *,
                       fmt: str | None = None) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Rename a state dict in any loadable layout to our names (dequantising fp8 + scale; works on meta
    tensors too). No config inference and no key check: see ``infer_config`` and ``check_keys``."""
    src = _Source("state dict")
    tensors, src.wrapper = _unwrap(state_dict, "state dict", True, _TRAINING_ENTRIES)
    src.add_tensors(tensors)
    fmt = fmt or detect_format(src.shapes, metadata, shapes=src.shapes, wrapper=src.wrapper)
    if fmt not in LOADABLE_FORMATS + ("videossm_memory",):
        raise CheckpointError(f"state dict: {describe_format(fmt, list(src.shapes))}")
    keys = _plan_keys(src.shapes, fmt)
    out = {}
    for ours, raw in keys.names.items():
        scale = keys.scales.get(ours)
        out[ours] = _dequantise(src.get(raw), src.get(scale) if scale else None, None)
    return out, {"format": fmt, "prefix": keys.prefix, "ignored_keys": keys.ignored, "wrapper": src.wrapper}


def load_state_dict_any(path: Any, *, dtype: torch.dtype | str | None = None, use_ema: bool = True,
                        num_heads: int | None = None, config_overrides: Mapping[str, Any] | None = None
                        ) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read any supported transformer checkpoint (file, diffusers folder or in-memory dict) into a state dict
    in our names, checked against the inferred config. fp8 storage is upcast (to ``dtype``, or fp32).

    ``info`` holds: format, source, wrapper (training-dict entry used), prefix, config (ModelConfig),
    num_heads_from, stored_dtypes, fp8_scaled, has_memory, ignored_keys, fresh_memory_keys, num_tensors.
    """
    with _open(path, use_ema) as src:
        plan = _plan(src, num_heads=num_heads, config_overrides=config_overrides,
                     allow=LOADABLE_FORMATS + ("videossm_memory",))
        if plan.fmt != "videossm_memory":
            plan.info["fresh_memory_keys"] = check_keys(plan.config, plan.shapes, src.label, plan.fmt)
        dtype = as_dtype(dtype)
        state = {ours: _read(src, plan.keys, ours, dtype) for ours in plan.shapes}
    return state, plan.info


def _assign(model: nn.Module, name: str, tensor: Tensor, requires_grad: bool) -> None:
    module_name, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    if leaf in module._parameters:
        module._parameters[leaf] = nn.Parameter(tensor, requires_grad=requires_grad and tensor.is_floating_point())
    elif leaf in module._buffers:
        module._buffers[leaf] = tensor
    else:  # cannot happen after check_keys; guards against a model that changed under us
        raise CheckpointError(f"the model has no parameter {name!r}")


def _peek_metadata(path: Any) -> dict[str, str]:
    """The safetensors metadata of a file (empty for anything else); reads the header only."""
    if isinstance(path, Mapping) or path is None:
        return {}
    p = Path(os.fspath(path))
    if not p.is_file():
        return {}
    try:
        if _sniff(p) != "safetensors":
            return {}
    except CheckpointError:
        return {}
    with _open(p) as src:
        return dict(src.metadata)


def build_model(config: ModelConfig, dtype: torch.dtype | str = torch.float32,
                device: torch.device | str = "cpu") -> CausalWanModel:
    """A randomly initialised model (Wan's init, torch's global RNG) made directly in ``dtype`` on ``device``,
    in eval mode without gradients: no float32 copy first (Wan2.1-1.3B is 3 GB in bf16, 6 GB in float32)."""
    dtype = as_dtype(dtype)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # every parameter is created (and initialised) in dtype
    try:
        with torch.device(device):
            model = CausalWanModel(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval().requires_grad_(False)


def load_model(path: Any, dtype: torch.dtype | str = torch.float32, device: torch.device | str = "cpu",
               memory_path: Any = None, lora_path: Any = None, lora_strength: float = 1.0,
               use_ema: bool | None = None, config_overrides: Mapping[str, Any] | None = None, *,
               num_heads: int | None = None, lora_alpha: float | None = None,
               requires_grad: bool = False) -> CausalWanModel:
    """Build a ``CausalWanModel`` from any supported checkpoint, streaming tensors into a meta-built model.

    ``memory_path``: a VideoSSM memory (or full VideoSSM) file whose memory parameters replace the base's.
    ``lora_path`` (file or dict): merged into the weights with ``lora_strength`` (scale alpha / rank * strength).
    ``use_ema``: from a training checkpoint, take ``generator_ema`` when present (else ``generator``). By
    default EMA, except with a LoRA: LongLive trains its LoRA on (and merges it into) ``generator``.
    ``config_overrides``: ModelConfig fields (``memory`` may be a partial dict, e.g. {"enabled": False}).
    The model is returned in eval mode with ``requires_grad`` parameters (False by default); what was loaded
    is in ``model.checkpoint_info``.
    """
    dtype, device = as_dtype(dtype), torch.device(device)
    if use_ema is None:
        use_ema = lora_path is None
    hints: dict[str, Any] = {}
    memory_meta = _peek_metadata(memory_path)
    if META_CONFIG in memory_meta:  # the memory file knows the head count and its own memory config
        mem_config = ModelConfig.from_json(memory_meta[META_CONFIG])
        hints = {"num_heads": mem_config.num_heads, "source": "memory file metadata", "memory": mem_config.memory}
    with _open(path, use_ema) as src:
        plan = _plan(src, num_heads=num_heads, config_overrides=config_overrides, hints=hints)
        fresh = check_keys(plan.config, plan.shapes, src.label, plan.fmt)
        with torch.device("meta"):
            model = CausalWanModel(plan.config)
        lora_deltas, lora_info = {}, None
        if lora_path is not None:
            lora_deltas, lora_info = _plan_lora(model, lora_path, lora_strength, lora_alpha)
        # A LoRA is merged into the file's weights in float32, before the cast to ``dtype``: one rounding, not
        # two (a bf16 load equals the float32 load rounded to bf16). Weights a memory file will replace are
        # merged after it, as before.
        early = {} if dtype is None else {n: d for n, d in lora_deltas.items() if n in plan.shapes
                                          and not (memory_path is not None and MEMORY_INFIX in n)}
        for ours in plan.shapes:  # one tensor in flight at a time besides the model itself
            if ours in early:
                tensor = _merged(_read(src, plan.keys, ours, torch.float32), early[ours], dtype)
            else:
                tensor = _read(src, plan.keys, ours, dtype)
            _assign(model, ours, tensor.to(device).contiguous(), requires_grad)
    for block in model.blocks:  # memory the file lacks: fresh, i.e. exactly the base model's behaviour
        memory = block.self_attn.memory
        if memory is not None and any(p.is_meta for p in memory.parameters()):
            memory.to_empty(device=device)
            memory.reset_parameters()
            memory.to(dtype)
    leftover = [n for n, p in model.named_parameters() if p.is_meta]
    if leftover:
        raise CheckpointError(f"{plan.info['source']}: parameters left without weights: {_listing(leftover)}")
    model.requires_grad_(requires_grad).eval()
    info = dict(plan.info, fresh_memory_keys=len(fresh), dtype=str(dtype).replace("torch.", ""),
                device=str(device))
    if memory_path is not None:
        info["memory_file"] = apply_memory_file(model, memory_path)
    if lora_path is not None:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, delta in lora_deltas.items():
                if name not in early:  # fresh or memory-file weights: merged into what the model holds
                    params[name].copy_(_merged(params[name], delta, params[name].dtype))
        info["lora"] = lora_info
    model.checkpoint_info = info
    return model


def describe_checkpoint(path: Any, use_ema: bool = True) -> str:
    """What a checkpoint holds, to check a file before a long run (``videossm inspect FILE``): its layout,
    the model shape it implies, whether VideoSSM memory parameters are in it, and whether it is a LoRA.
    Reads shapes only (no tensor data). Raises CheckpointError for an unreadable file."""
    with _open(path, use_ema) as src:
        keys = list(src.shapes)
        fmt = detect_format(src.shapes, src.metadata, shapes=src.shapes, wrapper=src.wrapper)
        params = sum(math.prod(shape) for shape in src.shapes.values())
        lines = [f"file: {src.label}",
                 f"format: {fmt}" + (f" (the training dict's '{src.wrapper}' entry)" if src.wrapper else ""),
                 f"tensors: {len(keys)}, {params / 1e6:.1f} M values, stored as "
                 f"{', '.join(sorted(set(src.dtypes.values())))}"]
        memory = [k for k in keys if MEMORY_INFIX in k]
        if fmt in LOADABLE_FORMATS:
            try:
                c, heads = _plan(src, num_heads=None, config_overrides=None).config, None
            except CheckpointError as err:  # the head count is not in every file; the rest of the shape is
                c, heads = _plan(src, num_heads=1, config_overrides=None).config, f"heads unknown ({err})"
            lines.append(f"model: Wan2.1 transformer, dim {c.dim}, {c.num_layers} blocks, "
                         f"{heads or f'{c.num_heads} heads'}, ffn {c.ffn_dim}, text {c.text_dim}, "
                         f"{c.in_dim} latent channels")
            lines.append("VideoSSM memory parameters: " + (
                f"present ({len(memory)} tensors)" if memory else
                "absent (a base model: its memory starts fresh and adds nothing until trained)"))
            lines.append("LoRA: no (give one with --lora)")
        elif fmt == "lora":
            lines.append(f"LoRA: yes ({sum(1 for k in keys if 'lora_A' in k or 'lora_down' in k)} modules); "
                         "merge it into a base model with --lora")
        else:
            lines.append(describe_format(fmt, keys))
            if memory:
                lines.append(f"VideoSSM memory parameters: present ({len(memory)} tensors)")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------
# Our files
# --------------------------------------------------------------------------------------------------------------


def save_model(model: CausalWanModel, path: Any, memory_only: bool = False) -> None:
    """Save our model (or only its memory parameters) as safetensors with the ModelConfig in the metadata."""
    from safetensors.torch import save_file

    if memory_only:
        if not model.config.memory.enabled:
            raise CheckpointError("this model has no memory (memory.enabled is False): nothing to save")
        tensors = model.memory_parameters()
    else:
        tensors = model.state_dict()
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    metadata = {META_CONFIG: model.config.to_json(), META_CONTENT: "memory" if memory_only else "model",
                META_VERSION: __version__, "format": "pt"}
    path = Path(os.fspath(path))
    tmp = path.with_name(path.name + ".partial")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)  # never leave a half-written file under the real name


def apply_memory_file(model: CausalWanModel, path: Any) -> dict[str, Any]:
    """Replace the model's memory parameters with those of a memory-only (or full VideoSSM) file."""
    if model.config.memory.enabled is False or not model.memory_parameters():
        raise CheckpointError("the model was built without memory (memory.enabled is False); load it with memory "
                              "enabled to apply a memory file")
    with _open(path) as src:
        fmt = detect_format(src.shapes, src.metadata, shapes=src.shapes, wrapper=src.wrapper)
        if fmt not in ("videossm_memory", "videossm"):
            raise CheckpointError(f"{src.label}: not a VideoSSM memory file; "
                                  + (describe_format(fmt, list(src.shapes)) if fmt not in LOADABLE_FORMATS
                                     else f"it is a full {fmt} model without memory parameters"))
        keys = _plan_keys(src.shapes, fmt)
        names = {k: v for k, v in keys.names.items() if MEMORY_INFIX in k}
        expected = {k: tuple(v.shape) for k, v in model.memory_parameters().items()}
        missing = [k for k in expected if k not in names]
        unexpected = [k for k in names if k not in expected]
        wrong = [f"{k} {src.shapes[names[k]]} (model: {expected[k]})" for k in expected
                 if k in names and tuple(src.shapes[names[k]]) != expected[k]]
        if missing or unexpected or wrong:
            theirs = ""
            if META_CONFIG in src.metadata:
                c = ModelConfig.from_json(src.metadata[META_CONFIG])
                theirs = (f" The file was saved from a model with dim {c.dim}, {c.num_layers} layers, "
                          f"{c.num_heads} heads;")
            mine = model.config
            raise CheckpointError(
                f"{src.label}: this memory file does not fit the model (dim {mine.dim}, {mine.num_layers} layers, "
                f"{mine.num_heads} heads):" + theirs
                + "".join(f" {n} {label}: {_listing(ks)}." for n, label, ks in
                          ((len(missing), "missing", missing), (len(unexpected), "unexpected", unexpected),
                           (len(wrong), "wrong shape", wrong)) if ks)
                + " Use the memory file trained for this base model.")
        params = dict(model.named_parameters())
        for ours in names:
            p = params[ours]
            _assign(model, ours, _read(src, keys, ours, p.dtype).to(p.device).contiguous(), p.requires_grad)
    return {"format": fmt, "source": src.label, "tensors": len(names)}


# --------------------------------------------------------------------------------------------------------------
# LoRA
# --------------------------------------------------------------------------------------------------------------

# Besides the A/B pairs (``_LORA_KEY_RE``): kohya's ``<module>.alpha``, and ComfyUI's full ``.diff`` / bias
# ``.diff_b`` deltas.
_LORA_EXTRA_RE = re.compile(r"^(?P<module>.+?)\.(?P<kind>alpha|diff|diff_b)$")
_LORA_PREFIXES = ("base_model.model.", "model.", "diffusion_model.", "transformer.", "module.", "generator.")


@dataclass
class _LoraModule:
    down: Tensor | None = None
    up: Tensor | None = None
    alpha: float | None = None
    diff: Tensor | None = None
    diff_b: Tensor | None = None


def _lora_module_name(name: str, linears: Mapping[str, nn.Linear], underscored: Mapping[str, str]) -> str | None:
    """Our module name for a LoRA's module path, trying PEFT/ComfyUI prefixes, diffusers names and kohya's
    underscore-joined names (``lora_unet_blocks_0_self_attn_q``)."""
    name = _strip_infixes(name)
    while (prefix := next((p for p in _LORA_PREFIXES if name.startswith(p)), None)) is not None:
        name = name[len(prefix):]  # prefixes stack: base_model.model.model.blocks...
    if name in linears:
        return name
    renamed = from_diffusers_key(name + ".weight")[: -len(".weight")]
    if renamed in linears:
        return renamed
    for prefix in ("lora_unet_", "lora_transformer_", "diffusion_model_"):  # in this order, each optional
        if name.startswith(prefix):
            name = name[len(prefix):].lstrip("_")
    return underscored.get(name)


def _read_lora(lora: Any) -> tuple[dict[str, Tensor], dict[str, Any]]:
    if not isinstance(lora, Mapping) and Path(os.fspath(lora)).is_dir():  # a PEFT save_pretrained folder
        for name in ("adapter_model.safetensors", "adapter_model.bin"):
            if (Path(os.fspath(lora)) / name).is_file():
                lora = Path(os.fspath(lora)) / name
                break
        else:
            raise CheckpointError(f"{lora}: a folder without adapter_model.safetensors; give the LoRA file itself")
    with _open(lora, use_ema=False, entries=_LORA_ENTRIES) as src:
        tensors = {k: src.get(k) for k in src.shapes}  # only read, never written: sharing is fine
        label, wrapper = src.label, src.wrapper
        file_alpha = src.metadata.get("lora_alpha")
    extra: dict[str, Any] = {"source": label, "wrapper": wrapper}
    if wrapper in ("generator", "generator_ema"):
        raise CheckpointError(f"{label}: this is a full model (a training checkpoint with '{wrapper}'), not a "
                              "LoRA; load it as the model, and give the LoRA file (e.g. LongLive's lora.pt) as --lora")
    with contextlib.suppress(ValueError):  # the PEFT config inside the file (.pt entry or safetensors metadata)
        if file_alpha is not None and float(file_alpha) > 0:
            extra["alpha"] = float(file_alpha)
    if not isinstance(lora, Mapping):  # a PEFT save_pretrained folder keeps alpha in adapter_config.json
        config_file = Path(os.fspath(lora)).parent / "adapter_config.json"
        if config_file.is_file():
            with contextlib.suppress(OSError, ValueError):
                cfg = json.loads(config_file.read_text())
                if cfg.get("lora_alpha"):
                    extra["alpha"] = float(cfg["lora_alpha"])
    return tensors, extra


def _plan_lora(model: nn.Module, lora: Any, strength: float, alpha: float | None
               ) -> tuple[dict[str, Callable[[torch.device], Tensor]], dict[str, Any]]:
    """Read and check a LoRA against the model's linears (shapes only: works on a meta-built model).

    Returns ``{parameter name: device -> float32 delta}`` (empty at strength 0) and the summary.
    """
    tensors, extra = _read_lora(lora)
    if alpha is None:
        alpha = extra.get("alpha")
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    underscored = {n.replace(".", "_"): n for n in linears}
    modules: dict[str, _LoraModule] = {}
    unknown, unmatched, adapters = [], [], set()
    for key, value in tensors.items():
        m = _LORA_KEY_RE.match(key) or _LORA_EXTRA_RE.match(key)
        if m is None:
            unknown.append(key)
            continue
        target = _lora_module_name(m.group("module"), linears, underscored)
        if target is None:
            unmatched.append(key)
            continue
        entry = modules.setdefault(target, _LoraModule())
        kind = m.group("kind")
        if kind in ("lora_A", "lora_down"):
            entry.down = value
        elif kind in ("lora_B", "lora_up"):
            entry.up = value
        elif kind == "alpha":
            entry.alpha = float(value.float().reshape(-1)[0])
        elif kind == "diff":
            entry.diff = value
        else:
            entry.diff_b = value
        if "adapter" in m.groupdict() and m.group("adapter"):
            adapters.add(m.group("adapter"))
    label = extra["source"]
    if unknown:
        fmt = detect_format(tensors)
        what = describe_format(fmt, list(tensors)) if fmt not in ("lora", "unknown") else "keys we cannot merge"
        if fmt in LOADABLE_FORMATS and not modules:
            what = "this is a full model, not a LoRA; load it as the model"
        raise CheckpointError(f"{label}: {len(unknown)} keys are not LoRA weights ({_listing(unknown)}): {what}")
    if unmatched:
        raise CheckpointError(f"{label}: {len(unmatched)} LoRA keys target modules this model does not have: "
                              f"{_listing(unmatched)}; the LoRA is for a different model")
    if len(adapters) > 1:
        raise CheckpointError(f"{label}: the file holds several PEFT adapters {sorted(adapters)}; save one adapter")
    if not modules:
        raise CheckpointError(f"{label}: the file holds no LoRA weights")
    incomplete = [n for n, e in modules.items() if (e.down is None) != (e.up is None)]
    if incomplete:
        raise CheckpointError(f"{label}: LoRA modules with only one of the two matrices (lora_A/lora_B): "
                              f"{_listing(incomplete)}; the file is incomplete")
    plans = []
    for name, e in modules.items():
        lin = linears[name]
        if e.down is not None:
            rank = e.down.shape[0]
            if (e.down.ndim != 2 or e.up.ndim != 2 or e.down.shape[1] != lin.in_features
                    or e.up.shape != (lin.out_features, rank)):
                raise CheckpointError(
                    f"{label}: LoRA for {name} has A {tuple(e.down.shape)}, B {tuple(e.up.shape)}, which does not "
                    f"fit the layer ({lin.out_features} x {lin.in_features}); the LoRA is for a different model")
        if e.diff is not None and tuple(e.diff.shape) != tuple(lin.weight.shape):
            raise CheckpointError(f"{label}: the weight delta for {name} has shape {tuple(e.diff.shape)}, the layer "
                                  f"{tuple(lin.weight.shape)}")
        if e.diff_b is not None and (lin.bias is None or tuple(e.diff_b.shape) != tuple(lin.bias.shape)):
            raise CheckpointError(f"{label}: the bias delta for {name} does not fit the layer")
        plans.append((name, e))
    ranks, alphas, scales = set(), set(), set()
    deltas: dict[str, Callable[[torch.device], Tensor]] = {}
    for name, e in plans:
        scale = None
        if e.down is not None:
            rank = e.down.shape[0]
            a = float(alpha if alpha is not None else e.alpha if e.alpha is not None else rank)
            scale = a / rank * float(strength)
            ranks.add(rank)
            alphas.add(a)
            scales.add(scale)
        if strength == 0:  # exactly the base weights, whatever rounding the merge would do
            continue
        if e.down is not None or e.diff is not None:
            deltas[f"{name}.weight"] = functools.partial(_lora_weight_delta, e, scale, float(strength))
        if e.diff_b is not None:
            deltas[f"{name}.bias"] = functools.partial(_lora_bias_delta, e, float(strength))
    summary = {"source": label, "wrapper": extra["wrapper"], "modules": len(plans), "ranks": sorted(ranks),
               "alphas": sorted(alphas), "scales": sorted(scales), "strength": float(strength)}
    return deltas, summary


def _lora_weight_delta(e: _LoraModule, scale: float | None, strength: float, device: torch.device) -> Tensor:
    """A module's float32 weight delta: ``scale * B @ A`` plus ``strength * diff``."""
    delta = None
    if e.down is not None:
        delta = (e.up.to(device, torch.float32) @ e.down.to(device, torch.float32)) * scale
    if e.diff is not None:
        diff = e.diff.to(device, torch.float32) * strength
        delta = diff if delta is None else delta + diff
    return delta


def _lora_bias_delta(e: _LoraModule, strength: float, device: torch.device) -> Tensor:
    return e.diff_b.to(device, torch.float32) * strength


def _merged(tensor: Tensor, delta: Callable[[torch.device], Tensor], dtype: torch.dtype) -> Tensor:
    """``tensor + delta`` added in float32 and rounded to ``dtype`` once."""
    return (tensor.float() + delta(tensor.device)).to(dtype)


def merge_lora(model: nn.Module, lora: Any, strength: float = 1.0, *, alpha: float | None = None) -> dict[str, Any]:
    """Merge a LoRA into the model's linear weights in place: W += (alpha / rank) * strength * B @ A.

    ``alpha``: overrides the file's alpha; without either, alpha = rank (LongLive: rank 256, alpha 256).
    The sum is taken in float32 and rounded to the weight's dtype; a bf16/fp16 model's weights are already
    rounded, so ``load_model(..., lora_path=...)`` (which merges into the float32 weights before the cast) is the
    more exact way. Returns a summary (modules merged, ranks, alphas, scale).
    """
    deltas, summary = _plan_lora(model, lora, strength, alpha)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, delta in deltas.items():
            p = params[name]
            p.copy_(_merged(p, delta, p.dtype))
    return summary
