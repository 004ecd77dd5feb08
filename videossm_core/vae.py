"""The Wan2.1 VAE: whole-clip encode/decode, streaming decode with persistent causal caches, and loading.

The network itself is diffusers' ``AutoencoderKLWan``; this module wraps it (composition, not a fork) and adds
what the streaming generator needs:

* ``WanVAE.encode`` / ``WanVAE.decode``: whole clips, with Wan's per-channel latent normalisation applied
  (diffusers' ``AutoencoderKLWan`` works on *un-normalised* latents; the Wan pipelines normalise outside it).
* ``StreamingDecoder``: decodes latent chunks one after another. Every causal 3D convolution of the decoder
  keeps the last ``CACHE_T = 2`` time slices of its input between calls (the "feature cache"), so decoding chunk
  by chunk gives exactly the frames of one whole decode while memory stays independent of video length. The
  cache can be exported to flat tensors and restored, so a stream can be saved and resumed bit-identically.
* ``StreamingEncoder``: the same for encoding a clip in pieces (1 + 4k frames first, then 4k frames).
* ``load_vae``: reads Wan's original ``Wan2.1_VAE.pth``, ComfyUI's ``wan_2.1_vae.safetensors`` (the original
  layout, optionally under a prefix such as ``first_stage_model.`` or ``vae.``), a diffusers folder or a bare
  diffusers-layout safetensors file. The layout is detected from the keys, never from the file name.

Shapes: frames ``[B, 3, T, H, W]`` in [-1, 1] with ``T = 1 + 4k``; latents ``[B, z, 1 + k, H/8, W/8]``.

Original key layout. Wan's own ``wan/modules/vae.py`` builds its encoder and decoder from flat
``nn.Sequential`` lists: ``{encoder,decoder}.conv1`` (stem), ``encoder.downsamples.N`` / ``decoder.upsamples.N``
(residual blocks and resamplers, numbered consecutively), ``*.middle.{0,1,2}`` (residual, attention, residual),
``*.head.{0,2}`` (RMS norm, SiLU without weights, conv); the top-level ``conv1`` / ``conv2`` are the 1x1 causal
convs before and after the latent. A residual block is ``residual = Sequential(RMS_norm, SiLU, conv, RMS_norm,
SiLU, Dropout, conv)`` (so parameters sit at indices 0, 2, 3, 6) plus ``shortcut`` when the channel count
changes. Resamplers keep their ``resample.1`` (2D conv after the pad/upsample at index 0) and ``time_conv``
names in both layouts. The mapping below was derived from those module definitions (see
``shared/research/model_anchors.md`` section 6) and checked against ``AutoencoderKLWan``'s module names.
"""

from __future__ import annotations

import inspect
import json
import os
import pickle
import struct
import warnings
import zipfile
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from diffusers import AutoencoderKLWan
from diffusers.models.autoencoders import autoencoder_kl_wan as _dwan

from .errors import CheckpointError

# Per-channel statistics of Wan2.1 latents (wan/modules/vae.py; identical in diffusers' AutoencoderKLWan config).
WAN_LATENTS_MEAN: tuple[float, ...] = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
WAN_LATENTS_STD: tuple[float, ...] = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip

# The architecture of Wan2.1_VAE.pth, in AutoencoderKLWan's argument names.
WAN21_VAE_CONFIG: dict[str, Any] = {
    "base_dim": 96,
    "z_dim": 16,
    "dim_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "attn_scales": [],
    "temperal_downsample": [False, True, True],
}

TEMPORAL_STRIDE = 4  # first frame alone, then 4 frames per latent frame
SPATIAL_STRIDE = 8

# The key ComfyUI and diffusers use to recognise a Wan VAE in the original layout, and its diffusers twin.
_ORIGINAL_MARKER = "decoder.middle.0.residual.0.gamma"
_DIFFUSERS_MARKER = "decoder.mid_block.resnets.0.norm1.gamma"
# Wan2.2's VAE nests its resblocks one level deeper; ComfyUI tells the two apart by this key.
_WAN22_MARKER = "decoder.upsamples.0.upsamples.0.residual.2.weight"

# Cache-slot kinds in a serialised feature cache (see _FeatureCache).
_SLOT_EMPTY, _SLOT_REP, _SLOT_TENSOR = 0, 1, 2
_REP = "Rep"  # diffusers' sentinel: the temporal upsampler has seen exactly one latent frame



# --------------------------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------------------------


def small_vae_config(**overrides: Any) -> dict[str, Any]:
    """A reduced AutoencoderKLWan config that runs fast on a CPU (tests, demos, random-weight pipelines).

    It keeps Wan's strides (spatial 8 = three 2x downsamples, temporal 4 = two temporal downsamples) and its
    16 latent channels, so latents have the same shape as the real VAE's; only the widths shrink.
    """
    config: dict[str, Any] = {
        "base_dim": 16,
        "z_dim": 16,
        "dim_mult": [1, 2, 2, 2],
        "num_res_blocks": 1,
        "attn_scales": [],
        "temperal_downsample": [False, True, True],
    }
    config.update(overrides)
    return config


def _init_params() -> set[str]:
    return {n for n in inspect.signature(AutoencoderKLWan.__init__).parameters if n != "self"}


def _clean_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Keep only AutoencoderKLWan's constructor arguments (drops diffusers' ``_class_name`` and friends)."""
    known = _init_params()
    clean, unknown = {}, []
    for key, value in dict(config).items():
        if key.startswith("_"):
            continue
        if key in known:
            clean[key] = list(value) if isinstance(value, tuple) else value
        else:
            unknown.append(key)
    if unknown:
        # A newer diffusers may add options with harmless defaults; a real mismatch still fails the strict load.
        warnings.warn(f"ignoring VAE config keys this diffusers version does not know: {sorted(unknown)}")
    z_dim = clean.get("z_dim", 16)
    # diffusers' default statistics have 16 entries; a reduced latent width needs its own (identity) statistics.
    if z_dim != 16:
        clean.setdefault("latents_mean", [0.0] * z_dim)
        clean.setdefault("latents_std", [1.0] * z_dim)
    return clean


def _build_model(config: Mapping[str, Any], device: torch.device | str = "cpu") -> AutoencoderKLWan:
    """Instantiate AutoencoderKLWan; on ``device="meta"`` this allocates no memory (used before loading)."""
    with torch.device(device):
        model = AutoencoderKLWan(**_clean_config(config))
    return model.eval().requires_grad_(False)


def _module_to(model: torch.nn.Module, device=None, dtype=None) -> torch.nn.Module:
    # Plain nn.Module.to: diffusers' ModelMixin.to warns about "modules to keep in float32" on every dtype
    # cast even when (as for this VAE) there are none.
    return torch.nn.Module.to(model, device=device, dtype=dtype)


def _count_causal_convs(module: torch.nn.Module) -> int:
    # Same count diffusers uses to size its feature-cache list (some convs, e.g. shortcuts, never use a slot).
    return sum(isinstance(m, _dwan.WanCausalConv3d) for m in module.modules())


# --------------------------------------------------------------------------------------------------------------
# The wrapper
# --------------------------------------------------------------------------------------------------------------


class WanVAE:
    """diffusers' AutoencoderKLWan plus Wan's latent normalisation and streaming.

    Attributes: ``model`` (the AutoencoderKLWan), ``latents_mean`` / ``latents_std`` (float32 ``[z]`` tensors on
    the model's device), ``config`` (plain dict of constructor arguments), ``dtype``, ``device``, ``z_dim``.
    Outputs come in the model's dtype; normalisation itself is computed in float32. The wrapped model is put in
    eval mode with gradients off (this is an inference wrapper; encode/decode run under ``torch.no_grad``).
    """

    def __init__(
        self,
        model: AutoencoderKLWan,
        latents_mean: Iterable[float] | torch.Tensor | None = None,
        latents_std: Iterable[float] | torch.Tensor | None = None,
    ):
        self.model = model.eval().requires_grad_(False)
        self.config = _clean_config(model.config)
        self.z_dim = int(self.config.get("z_dim", 16))
        # Decoder/encoder feature caches are lists with one slot per causal conv, as in diffusers' clear_cache.
        self.num_decoder_slots = _count_causal_convs(model.decoder)
        self.num_encoder_slots = _count_causal_convs(model.encoder)
        self._decoder_takes_first_chunk = "first_chunk" in inspect.signature(model.decoder.forward).parameters
        self.patch_size = self.config.get("patch_size")
        self.spatial_stride = int(self.config.get("scale_factor_spatial") or SPATIAL_STRIDE)

        mean = self._pick_stats(latents_mean, "latents_mean", WAN_LATENTS_MEAN, 0.0)
        std = self._pick_stats(latents_std, "latents_std", WAN_LATENTS_STD, 1.0)
        if torch.any(std <= 0):
            raise ValueError("latents_std must be positive")
        self.latents_mean = mean.to(self.device)
        self.latents_std = std.to(self.device)

    def _pick_stats(self, given, config_key: str, wan_default, identity: float) -> torch.Tensor:
        # Priority: explicit argument > the model config (if it fits z_dim) > Wan's constants (z_dim 16) > identity.
        if given is not None:
            values = torch.as_tensor(given, dtype=torch.float32).flatten().cpu()
            if values.numel() != self.z_dim:
                raise ValueError(f"{config_key} has {values.numel()} values, expected z_dim={self.z_dim}")
            return values
        from_config = self.config.get(config_key)
        if from_config is not None and len(from_config) == self.z_dim:
            return torch.tensor(list(from_config), dtype=torch.float32)
        if self.z_dim == len(wan_default):
            return torch.tensor(wan_default, dtype=torch.float32)
        return torch.full((self.z_dim,), identity, dtype=torch.float32)

    # -- properties and helpers --------------------------------------------------------------------------------

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "WanVAE":
        """Move the model (and the statistics) in place; returns self."""
        _module_to(self.model, device=device, dtype=dtype)
        self.latents_mean = self.latents_mean.to(self.device)
        self.latents_std = self.latents_std.to(self.device)
        return self

    @staticmethod
    def num_latent_frames(num_frames: int) -> int:
        """Video frames ``1 + 4k`` -> latent frames ``1 + k``."""
        if num_frames < 1 or (num_frames - 1) % TEMPORAL_STRIDE:
            raise ValueError(f"the Wan VAE needs 1 + 4k video frames, got {num_frames}")
        return 1 + (num_frames - 1) // TEMPORAL_STRIDE

    @staticmethod
    def num_video_frames(num_latent_frames: int) -> int:
        """Latent frames ``F`` -> video frames ``1 + 4 (F - 1)`` (first latent frame gives one frame)."""
        if num_latent_frames < 1:
            raise ValueError(f"need at least one latent frame, got {num_latent_frames}")
        return 1 + TEMPORAL_STRIDE * (num_latent_frames - 1)

    def _stat(self, t: torch.Tensor) -> torch.Tensor:
        return t.view(1, self.z_dim, 1, 1, 1)

    def normalize(self, mu: torch.Tensor) -> torch.Tensor:
        """Raw posterior mean -> normalised latent, ``(mu - mean) / std`` in float32, returned in model dtype."""
        z = (mu.float() - self._stat(self.latents_mean)) / self._stat(self.latents_std)
        return z.to(self.dtype)

    def denormalize(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latent -> what the decoder expects, ``z * std + mean``, in model dtype."""
        self._check_latents(latents)
        x = latents.to(self.device).float() * self._stat(self.latents_std) + self._stat(self.latents_mean)
        return x.to(self.dtype)

    def _check_latents(self, latents: torch.Tensor) -> None:
        if latents.ndim != 5 or latents.shape[1] != self.z_dim or latents.shape[2] < 1:
            raise ValueError(
                f"expected latents [B, {self.z_dim}, F>=1, h, w], got {tuple(latents.shape)}"
            )

    def _check_frames(self, frames: torch.Tensor, first: bool = True) -> None:
        channels = self.config.get("in_channels", 3)
        if frames.ndim != 5 or frames.shape[1] != channels:
            raise ValueError(f"expected frames [B, {channels}, T, H, W], got {tuple(frames.shape)}")
        t, h, w = frames.shape[2:]
        if first and (t - 1) % TEMPORAL_STRIDE:
            raise ValueError(f"the Wan VAE needs 1 + 4k frames, got {t}")
        if not first and (t < TEMPORAL_STRIDE or t % TEMPORAL_STRIDE):
            raise ValueError(f"a continuation chunk needs a multiple of 4 frames, got {t}")
        if h % self.spatial_stride or w % self.spatial_stride:
            raise ValueError(f"height and width must be multiples of {self.spatial_stride}, got {h}x{w}")

    # -- whole clips -------------------------------------------------------------------------------------------

    # Whole-clip encode/decode run the streaming path over the entire clip in one chunk. That is the same
    # computation as diffusers' ``_encode`` / ``_decode`` (frame 0 alone, then 4 frames / 1 latent frame per
    # call, one shared feature cache) except that the 1x1x1 ``quant_conv`` / ``post_quant_conv`` run per group
    # instead of once on the whole clip; CPU conv kernels round that differently in the last bit (~1e-6). Using
    # one path makes whole and chunked results bit-identical for every chunking.

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames ``[B, 3, 1+4k, H, W]`` in [-1, 1] -> normalised latents ``[B, z, 1+k, H/8, W/8]``.

        Deterministic: ``(mu - mean) / std`` of the posterior mean, not a sample.
        """
        return StreamingEncoder(self).encode_chunk(frames)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents ``[B, z, F, h, w]`` -> frames ``[B, 3, 1+4(F-1), 8h, 8w]`` clamped to [-1, 1].

        Memory grows with F; use ``stream_decoder`` for long videos.
        """
        return StreamingDecoder(self).decode_chunk(latents)

    def stream_decoder(self) -> "StreamingDecoder":
        return StreamingDecoder(self)

    def stream_encoder(self) -> "StreamingEncoder":
        return StreamingEncoder(self)


# --------------------------------------------------------------------------------------------------------------
# Feature caches and streaming
# --------------------------------------------------------------------------------------------------------------


class _FeatureCache:
    """diffusers' feature-cache list plus two counters, with a flat-tensor serialisation.

    A slot is ``None`` (never written), ``"Rep"`` (temporal upsampler after exactly one latent frame) or a tensor
    ``[B, C, <=2, h, w]`` (the last time slices a causal conv saw). diffusers replaces slot tensors instead of
    modifying them in place, so exported tensors can share storage with the live cache.

    Serialised as ``{prefix}{i}`` for tensor slots, ``{prefix}kinds`` (uint8 ``[num_slots]``: 0 empty, 1 Rep,
    2 tensor) and ``{prefix}counters`` (int64 ``[2]``), so the tensors alone restore the cache exactly.
    """

    def __init__(self, num_slots: int, counter_names: tuple[str, str]):
        self.slots: list[Any] = [None] * num_slots
        self.counter_names = counter_names
        self.counters = [0, 0]

    def slot_kinds(self) -> list[int]:
        kinds = []
        for slot in self.slots:
            if slot is None:
                kinds.append(_SLOT_EMPTY)
            elif isinstance(slot, str):
                if slot != _REP:
                    raise RuntimeError(f"unknown feature-cache sentinel {slot!r}")
                kinds.append(_SLOT_REP)
            else:
                kinds.append(_SLOT_TENSOR)
        return kinds

    def to_tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        kinds = self.slot_kinds()
        out: dict[str, torch.Tensor] = {
            f"{prefix}{i}": slot.detach().contiguous()  # safetensors needs contiguous storage
            for i, (slot, kind) in enumerate(zip(self.slots, kinds))
            if kind == _SLOT_TENSOR
        }
        out[f"{prefix}kinds"] = torch.tensor(kinds, dtype=torch.uint8)
        out[f"{prefix}counters"] = torch.tensor(self.counters, dtype=torch.int64)
        return out

    def metadata(self) -> dict[str, Any]:
        kinds = "".join("NRT"[k] for k in self.slot_kinds())  # N empty, R 'Rep', T tensor
        return {"num_slots": len(self.slots), "slot_kinds": kinds, **dict(zip(self.counter_names, self.counters))}

    def load_tensors(self, tensors: Mapping[str, torch.Tensor], prefix: str, device, dtype) -> None:
        try:
            kinds = tensors[f"{prefix}kinds"].tolist()
            counters = [int(v) for v in tensors[f"{prefix}counters"].tolist()]
        except KeyError as e:
            raise ValueError(f"no feature cache under prefix {prefix!r} (missing {e.args[0]!r})") from None
        if len(kinds) != len(self.slots):
            raise ValueError(
                f"saved feature cache has {len(kinds)} slots but this VAE has {len(self.slots)}: "
                "it was saved with a different VAE architecture"
            )
        slots: list[Any] = []
        for i, kind in enumerate(kinds):
            if kind == _SLOT_EMPTY:
                slots.append(None)
            elif kind == _SLOT_REP:
                slots.append(_REP)
            elif kind == _SLOT_TENSOR:
                key = f"{prefix}{i}"
                if key not in tensors:
                    raise ValueError(f"saved feature cache lacks tensor {key!r}")
                slots.append(tensors[key].to(device=device, dtype=dtype))
            else:
                raise ValueError(f"bad slot kind {kind} in saved feature cache")
        self.slots = slots
        self.counters = counters

    def batch_size(self) -> int | None:
        for slot in self.slots:
            if isinstance(slot, torch.Tensor):
                return slot.shape[0]
        return None


class _StreamBase:
    _counter_names: tuple[str, str]
    _default_prefix: str

    def __init__(self, vae: WanVAE, num_slots: int):
        self.vae = vae
        self._cache = _FeatureCache(num_slots, self._counter_names)

    def reset(self) -> None:
        """Forget everything: the next call starts a new video."""
        self._cache = _FeatureCache(len(self._cache.slots), self._counter_names)

    def state_tensors(self, prefix: str | None = None) -> dict[str, torch.Tensor]:
        """The cache as flat tensors (keys ``{prefix}{i}``, ``{prefix}kinds``, ``{prefix}counters``).

        Self-contained: ``load_state_tensors`` needs nothing else. Tensors may share storage with the live cache
        (never modified in place), so save or clone them before the next call if you keep them around.
        """
        return self._cache.to_tensors(self._default_prefix if prefix is None else prefix)

    def state_metadata(self) -> dict[str, Any]:
        """A JSON-serialisable summary (slot count, slot kinds as N/R/T letters, counters) for the state file."""
        return self._cache.metadata()

    def load_state_tensors(self, tensors: Mapping[str, torch.Tensor], prefix: str | None = None) -> None:
        """Restore from ``state_tensors`` output (other keys in ``tensors`` are ignored)."""
        prefix = self._default_prefix if prefix is None else prefix
        self._cache.load_tensors(tensors, prefix, self.vae.device, self.vae.dtype)

    @classmethod
    def from_state_tensors(cls, vae: WanVAE, tensors: Mapping[str, torch.Tensor], prefix: str | None = None):
        stream = cls(vae)
        stream.load_state_tensors(tensors, prefix)
        return stream

    def _check_batch(self, batch: int) -> None:
        cached = self._cache.batch_size()
        if cached is not None and cached != batch:
            raise ValueError(f"this stream was started with batch size {cached}, got a chunk with batch {batch}")

    def _guarded(self, fn):
        # If a call fails half way (e.g. out of memory), put the cache back so the call can be retried.
        # A shallow copy suffices because diffusers replaces slot entries rather than editing them.
        slots, counters = list(self._cache.slots), list(self._cache.counters)
        try:
            return fn()
        except BaseException:
            self._cache.slots, self._cache.counters = slots, counters
            raise


class StreamingDecoder(_StreamBase):
    """Decode normalised latents chunk after chunk; the concatenated output equals one whole ``WanVAE.decode``.

    This drives the decoder exactly like diffusers' ``_decode`` (one latent frame per call, ``first_chunk`` on
    the very first, a shared feature cache and a per-call slot index) but keeps the cache between calls. The
    first latent frame gives 1 video frame, every later one 4: a first chunk of 3 latent frames gives 9 frames,
    each later chunk of 3 gives 12. Only the fixed-size cache persists, so memory does not grow with length.
    """

    _counter_names = ("latent_frames_decoded", "frames_decoded")
    _default_prefix = "vae_cache."

    def __init__(self, vae: WanVAE):
        super().__init__(vae, vae.num_decoder_slots)

    @property
    def latent_frames_decoded(self) -> int:
        return self._cache.counters[0]

    @property
    def frames_decoded(self) -> int:
        return self._cache.counters[1]

    @torch.no_grad()
    def decode_chunk(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents ``[B, z, n, h, w]`` (n >= 1) -> frames ``[B, 3, 4n (or 4n-3 at the start), 8h, 8w]``."""
        x = self.vae.denormalize(latents)  # checks the shape; [B, z, n, h, w] in model dtype
        self._check_batch(x.shape[0])
        return self._guarded(lambda: self._decode(x))

    def _decode(self, x: torch.Tensor) -> torch.Tensor:
        model, cache = self.vae.model, self._cache
        outs = []
        for i in range(x.shape[2]):
            # post_quant_conv is a 1x1x1 conv, so applying it per frame equals diffusers' whole-clip call.
            h = model.post_quant_conv(x[:, :, i : i + 1])
            kwargs = {}
            if self.vae._decoder_takes_first_chunk:
                kwargs["first_chunk"] = cache.counters[0] == 0
            # feat_idx restarts at 0 for every latent frame: slots are addressed in call order per frame.
            outs.append(model.decoder(h, feat_cache=cache.slots, feat_idx=[0], **kwargs))
            cache.counters[0] += 1
        out = torch.cat(outs, dim=2) if len(outs) > 1 else outs[0]
        if self.vae.patch_size is not None:
            out = _dwan.unpatchify(out, patch_size=self.vae.patch_size)
        out = torch.clamp(out, min=-1.0, max=1.0)
        cache.counters[1] += out.shape[2]
        return out


class StreamingEncoder(_StreamBase):
    """Encode a clip in pieces; the concatenated latents equal one whole ``WanVAE.encode``.

    The first call takes ``1 + 4k`` frames, later calls ``4k`` frames (Wan encodes frame 0 alone, then groups of
    4). Useful for continuing generation from an input clip without holding it all on the accelerator.
    """

    _counter_names = ("frames_encoded", "latent_frames_encoded")
    _default_prefix = "vae_enc_cache."

    def __init__(self, vae: WanVAE):
        super().__init__(vae, vae.num_encoder_slots)

    @property
    def frames_encoded(self) -> int:
        return self._cache.counters[0]

    @property
    def latent_frames_encoded(self) -> int:
        return self._cache.counters[1]

    @torch.no_grad()
    def encode_chunk(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames ``[B, 3, T, H, W]`` -> normalised latents ``[B, z, T/4 (or 1+(T-1)/4 at the start), H/8, W/8]``."""
        first = self._cache.counters[0] == 0
        self.vae._check_frames(frames, first=first)
        self._check_batch(frames.shape[0])
        x = frames.to(device=self.vae.device, dtype=self.vae.dtype)
        return self._guarded(lambda: self._encode(x, first))

    def _encode(self, x: torch.Tensor, first: bool) -> torch.Tensor:
        model, cache = self.vae.model, self._cache
        num_frames = x.shape[2]
        if self.vae.patch_size is not None:
            x = _dwan.patchify(x, patch_size=self.vae.patch_size)
        # Same grouping as diffusers' _encode: frame 0 alone, then 4 frames per call.
        bounds = [(0, 1)] if first else []
        start = 1 if first else 0
        bounds += [(s, s + TEMPORAL_STRIDE) for s in range(start, num_frames, TEMPORAL_STRIDE)]
        outs = []
        for s, e in bounds:
            h = model.encoder(x[:, :, s:e], feat_cache=cache.slots, feat_idx=[0])
            outs.append(model.quant_conv(h))  # 1x1x1 conv: per-group equals whole-clip
        h = torch.cat(outs, dim=2)
        mu = h[:, : self.vae.z_dim]  # posterior mean; the other half is the log-variance
        cache.counters[0] += num_frames
        cache.counters[1] += mu.shape[2]
        return self.vae.normalize(mu)


# --------------------------------------------------------------------------------------------------------------
# Key layouts
# --------------------------------------------------------------------------------------------------------------

# Residual-block parameters: diffusers name -> original name (``residual`` Sequential indices 0, 2, 3, 6).
_RESNET_PARAM_TO_ORIGINAL = {
    "norm1": "residual.0",
    "conv1": "residual.2",
    "norm2": "residual.3",
    "conv2": "residual.6",
    "conv_shortcut": "shortcut",
}


def _resnet_tail(tail: str) -> str:
    head, _, rest = tail.partition(".")
    return f"{_RESNET_PARAM_TO_ORIGINAL[head]}.{rest}"


def diffusers_key_to_original(key: str, num_res_blocks: int) -> str:
    """Map one AutoencoderKLWan (Wan2.1, non-residual) key to Wan's original key.

    ``num_res_blocks`` is needed because the original decoder numbers its blocks in one flat list: each stage
    holds ``num_res_blocks + 1`` residual blocks followed by one resampler (none after the last stage).
    """
    if key.startswith("quant_conv."):
        return "conv1." + key[len("quant_conv.") :]
    if key.startswith("post_quant_conv."):
        return "conv2." + key[len("post_quant_conv.") :]
    side, _, rest = key.partition(".")
    parts = rest.split(".")
    if side in ("encoder", "decoder"):
        block = parts[0]
        tail = ".".join(parts[1:])
        if block == "conv_in":
            return f"{side}.conv1.{tail}"
        if block == "norm_out":
            return f"{side}.head.0.{tail}"
        if block == "conv_out":
            return f"{side}.head.2.{tail}"
        if block == "mid_block" and len(parts) >= 4:
            # original middle = Sequential(resblock, attention, resblock)
            j, tail = int(parts[2]), ".".join(parts[3:])
            if parts[1] == "resnets":
                return f"{side}.middle.{2 * j}.{_resnet_tail(tail)}"
            if parts[1] == "attentions":
                return f"{side}.middle.{2 * j + 1}.{tail}"
        if side == "encoder" and block == "down_blocks" and len(parts) >= 3:
            # Both layouts number the encoder's blocks in one flat list; only resblock internals are renamed.
            i, tail = int(parts[1]), ".".join(parts[2:])
            if parts[2] in _RESNET_PARAM_TO_ORIGINAL:
                tail = _resnet_tail(tail)
            return f"encoder.downsamples.{i}.{tail}"
        if side == "decoder" and block == "up_blocks" and len(parts) >= 4:
            stage, stride = int(parts[1]), num_res_blocks + 2
            if parts[2] == "resnets":
                j, tail = int(parts[3]), ".".join(parts[4:])
                return f"decoder.upsamples.{stage * stride + j}.{_resnet_tail(tail)}"
            if parts[2] == "upsamplers" and parts[3] == "0":
                return f"decoder.upsamples.{stage * stride + num_res_blocks + 1}.{'.'.join(parts[4:])}"
    raise KeyError(f"no original-layout name for diffusers key {key!r}")


def _key_table(config: Mapping[str, Any]) -> dict[str, str]:
    """original key -> diffusers key for every parameter of the model described by ``config``."""
    model = _build_model(config, "meta")
    nrb = int(_clean_config(config).get("num_res_blocks", 2))
    return {diffusers_key_to_original(k, nrb): k for k in model.state_dict()}


def diffusers_to_original_state_dict(
    state_dict: Mapping[str, torch.Tensor], num_res_blocks: int
) -> dict[str, torch.Tensor]:
    """Rename a diffusers-layout Wan2.1 VAE state dict to Wan's original layout (tensors are not copied)."""
    return {diffusers_key_to_original(k, num_res_blocks): v for k, v in state_dict.items()}


def original_to_diffusers_state_dict(
    state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any] | None = None, *, source: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """Rename an original-layout Wan2.1 VAE state dict to diffusers' layout; strict about missing/extra keys."""
    if config is None:
        config = infer_vae_config(state_dict, layout="original", source=source)
    table = _key_table(config)
    unexpected = [k for k in state_dict if k not in table]
    missing = [k for k in table if k not in state_dict]
    _raise_on_key_mismatch(source, missing, unexpected)
    return {table[k]: v for k, v in state_dict.items()}


def _enc_block_kinds(state_dict: Mapping[str, Any], layout: str, source: str) -> list[tuple[str, Any]]:
    """The encoder's flat block list as (kind, info): ("res", out_channels) or ("down", has_time_conv)."""
    blocks_prefix = "encoder.downsamples." if layout == "original" else "encoder.down_blocks."
    res_out = "residual.6.weight" if layout == "original" else "conv2.weight"
    indices = sorted({int(k[len(blocks_prefix) :].split(".")[0]) for k in state_dict if k.startswith(blocks_prefix)})
    if indices != list(range(len(indices))) or not indices:
        raise CheckpointError(f"{source}: the encoder's block list ({blocks_prefix}N) is empty or has gaps")
    kinds: list[tuple[str, Any]] = []
    for i in indices:
        p = f"{blocks_prefix}{i}."
        if p + res_out in state_dict:
            kinds.append(("res", int(state_dict[p + res_out].shape[0])))
        elif p + "resample.1.weight" in state_dict:
            kinds.append(("down", p + "time_conv.weight" in state_dict))
        elif p + "to_qkv.weight" in state_dict:
            raise CheckpointError(
                f"{source}: attention inside the encoder's down blocks (attn_scales) is not supported; "
                "Wan2.1's VAE has none"
            )
        elif any(k.startswith(p + "resnets.") for k in state_dict):
            raise CheckpointError(
                f"{source}: this looks like a Wan2.2-style residual VAE in diffusers layout; "
                "load it from its diffusers folder (with config.json) or pass config="
            )
        else:
            raise CheckpointError(f"{source}: cannot recognise encoder block {p[:-1]}")
    return kinds


def infer_vae_config(state_dict: Mapping[str, Any], layout: str = "original", source: str = "checkpoint") -> dict:
    """Recover AutoencoderKLWan's config from tensor shapes (works on meta tensors too).

    ``layout`` is "original" or "diffusers". The encoder's flat block list gives ``num_res_blocks`` (blocks per
    stage), ``dim_mult`` (output width of each stage / base width) and ``temperal_downsample`` (whether each
    resampler has a ``time_conv``).
    """
    if layout == "original":
        names = ("encoder.conv1.weight", "conv2.weight", "decoder.head.2.weight")
    else:
        names = ("encoder.conv_in.weight", "post_quant_conv.weight", "decoder.conv_out.weight")
    missing = [n for n in names if n not in state_dict]
    if missing:
        raise CheckpointError(
            f"{source}: cannot work out the VAE's architecture; missing keys: {', '.join(missing)} "
            "(the file is incomplete or not a Wan2.1 VAE)"
        )
    stem, post_quant, out_conv = (state_dict[n] for n in names)
    base_dim, in_channels = int(stem.shape[0]), int(stem.shape[1])
    z_dim = int(post_quant.shape[0])

    stages: list[list[int]] = [[]]
    temporal: list[bool] = []
    for kind, info in _enc_block_kinds(state_dict, layout, source):
        if kind == "res":
            stages[-1].append(info)
        else:
            temporal.append(bool(info))
            stages.append([])
    counts = {len(s) for s in stages}
    if len(counts) != 1 or 0 in counts:
        raise CheckpointError(f"{source}: stages have different numbers of residual blocks: {[len(s) for s in stages]}")
    dim_mult = []
    for s in stages:
        if s[-1] % base_dim:
            raise CheckpointError(f"{source}: stage width {s[-1]} is not a multiple of the base width {base_dim}")
        dim_mult.append(s[-1] // base_dim)

    config: dict[str, Any] = {
        "base_dim": base_dim,
        "z_dim": z_dim,
        "dim_mult": dim_mult,
        "num_res_blocks": counts.pop(),
        "attn_scales": [],
        "temperal_downsample": temporal,
    }
    # The decoder's last stage has width decoder_base_dim * dim_mult[0].
    decoder_base_dim = int(out_conv.shape[1]) // dim_mult[0]
    if decoder_base_dim != base_dim:
        config["decoder_base_dim"] = decoder_base_dim
    if in_channels != 3:
        config["in_channels"] = in_channels
    if int(out_conv.shape[0]) != 3:
        config["out_channels"] = int(out_conv.shape[0])
    return config


# --------------------------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------------------------


def _damaged(path: Path, detail: str) -> CheckpointError:
    return CheckpointError(
        f"{path}: the file is damaged or incomplete ({detail}); delete it and re-download it"
    )


def _sniff(path: Path) -> str:
    """'safetensors', 'torch' or raise: decided by content, not by the file extension."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) >= 4 and head[:4] == b"PK\x03\x04":
        return "torch"  # torch.save's zip container
    if len(head) == 9 and head[8:9] == b"{":
        # safetensors: little-endian u64 header length, then the JSON header. Checked before the pickle test
        # because a header length can start with byte 0x80 too.
        (header_len,) = struct.unpack("<Q", head[:8])
        if 0 < header_len <= size - 8:
            return "safetensors"
        raise _damaged(path, f"safetensors header says {header_len} bytes but the file has {size}")
    if len(head) >= 2 and head[0] == 0x80 and head[1] <= 5:
        return "torch"  # legacy torch.save: a pickle stream (PROTO opcode + protocol number)
    if size == 0:
        raise _damaged(path, "the file is empty")
    raise _damaged(path, "neither a safetensors file nor a PyTorch checkpoint")


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # SafetensorError, OSError, ...: all mean the bytes are not a valid file
        raise _damaged(path, f"safetensors: {e}") from e
    return tensors, metadata


def _read_torch(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower() or "weights_only" in str(e).lower():
            raise CheckpointError(
                f"{path}: the file contains Python objects that cannot be loaded safely (weights_only=True); "
                "it is not a plain state dict — convert it to safetensors or use the official Wan2.1_VAE.pth"
            ) from e
        raise _damaged(path, f"torch.load: {e}") from e
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        raise _damaged(path, f"torch.load: {e}") from e
    # Some repackagings nest the weights one level down.
    if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in ("state_dict", "model", "vae"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state dict (name -> tensor), found {type(obj).__name__}")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path}: the file holds no tensors")
    return tensors


def _read_state_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if _sniff(path) == "safetensors":
        return _read_safetensors(path)
    return _read_torch(path), {}


def _describe_non_vae(keys: Iterable[str]) -> str:
    keys = list(keys)

    def has_suffix(*suffixes: str) -> bool:
        return any(k.endswith(s) for k in keys for s in suffixes)

    if has_suffix(_WAN22_MARKER):
        return (
            "this is a Wan2.2 VAE (48 latent channels, 16x spatial compression); this project uses the Wan2.1 "
            "VAE (Wan2.1_VAE.pth or wan_2.1_vae.safetensors)"
        )
    if has_suffix(
        "blocks.0.self_attn.q.weight", "head.modulation", "blocks.0.attn1.to_q.weight", "scale_shift_table"
    ):
        return "this is a Wan diffusion transformer, load it with the model loader, not as a VAE"
    if has_suffix("encoder.block.0.layer.0.SelfAttention.q.weight", "shared.weight") or (
        has_suffix("token_embedding.weight") and has_suffix("blocks.0.attn.q.weight")
    ):
        return "this is a UMT5 text encoder, load it with the text encoder loader, not as a VAE"
    sample = ", ".join(keys[:5]) + (f", ... ({len(keys)} keys)" if len(keys) > 5 else "")
    return f"this does not look like a Wan2.1 VAE (keys: {sample})"


def _raise_on_key_mismatch(source: str, missing: list[str], unexpected: list[str]) -> None:
    def listing(keys: list[str]) -> str:
        shown = ", ".join(keys[:5])
        return shown + (f", ... (+{len(keys) - 5} more)" if len(keys) > 5 else "")

    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {listing(unexpected)}")
    if problems:
        raise CheckpointError(
            f"{source}: does not match the Wan2.1 VAE architecture; " + "; ".join(problems)
            + " (an incomplete download, or a different VAE)"
        )


def _strip_prefix(tensors: Mapping[str, torch.Tensor], marker: str) -> dict[str, torch.Tensor]:
    """Keep the keys under the (possibly empty) prefix in front of ``marker`` and remove that prefix.

    Handles repackagings such as ``first_stage_model.`` / ``vae.``; keys outside the prefix (e.g. a
    transformer in the same file) are ignored. With no prefix every key is kept, so stray keys are reported.
    """
    prefixes = sorted((k[: -len(marker)] for k in tensors if k.endswith(marker)), key=len)
    prefix = prefixes[0]
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def _detect_layout(tensors: Mapping[str, torch.Tensor], source: str) -> tuple[str, dict[str, torch.Tensor]]:
    """('original' | 'diffusers', state dict without prefix), or a CheckpointError explaining what the file is."""
    keys = list(tensors)
    if any(k.endswith(_WAN22_MARKER) for k in keys):
        raise CheckpointError(f"{source}: {_describe_non_vae(keys)}")
    if any(k.endswith(_ORIGINAL_MARKER) for k in keys):
        return "original", _strip_prefix(tensors, _ORIGINAL_MARKER)
    if any(k.endswith(_DIFFUSERS_MARKER) for k in keys):
        return "diffusers", _strip_prefix(tensors, _DIFFUSERS_MARKER)
    raise CheckpointError(f"{source}: {_describe_non_vae(keys)}")


def _load_into_model(
    state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any], dtype, device, source: str
) -> AutoencoderKLWan:
    """Strictly load a diffusers-layout state dict into a fresh (meta-built, so never randomly initialised) model."""
    model = _build_model(config, "meta")
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    _raise_on_key_mismatch(source, missing, unexpected)
    wrong = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if wrong:
        raise CheckpointError(
            f"{source}: {len(wrong)} tensors have the wrong shape (file vs model): {'; '.join(wrong[:5])}"
        )
    converted = {k: v.to(dtype=dtype).contiguous() for k, v in state_dict.items()}
    model.load_state_dict(converted, strict=True, assign=True)
    return _module_to(model, device=device).eval().requires_grad_(False)


def _find_diffusers_folder(path: Path) -> tuple[Path, Path]:
    """(config.json, weights file) inside a diffusers model folder or a pipeline folder with ``vae/``."""
    for folder in (path, path / "vae"):
        config = folder / "config.json"
        if not config.is_file():
            continue
        for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"):
            if (folder / name).is_file():
                return config, folder / name
        raise CheckpointError(f"{folder}: has config.json but no diffusion_pytorch_model.safetensors")
    raise CheckpointError(f"{path}: folder without a diffusers config.json (expected a diffusers VAE folder)")


def load_vae(
    path: str | os.PathLike,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    config: Mapping[str, Any] | None = None,
) -> WanVAE:
    """Load a Wan2.1 VAE from any supported file or folder; the layout is detected from the keys.

    ``config`` (AutoencoderKLWan arguments) overrides what is read or inferred from the file; it is only needed
    for unusual diffusers-layout files without a config.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"VAE checkpoint not found: {path}")
    source = str(path)
    stats: dict[str, Any] = {}

    if path.is_dir():
        config_path, weights_path = _find_diffusers_folder(path)
        try:
            file_config = json.loads(config_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise _damaged(config_path, f"config.json: {e}") from e
        tensors, _ = _read_state_file(weights_path)
        layout, state_dict = _detect_layout(tensors, str(weights_path))
        model_config = {**file_config, **(config or {})}
    else:
        tensors, metadata = _read_state_file(path)
        layout, state_dict = _detect_layout(tensors, source)
        saved_config = json.loads(metadata["config"]) if "config" in metadata else None
        if config is not None:
            model_config = dict(config)
        elif saved_config is not None:
            model_config = saved_config
        else:
            model_config = infer_vae_config(state_dict, layout=layout, source=source)

    if layout == "original":
        state_dict = original_to_diffusers_state_dict(state_dict, model_config, source=source)
    model = _load_into_model(state_dict, model_config, dtype, device, source)
    for key in ("latents_mean", "latents_std"):
        if key in model_config:
            stats[key] = model_config[key]
    return WanVAE(model, **stats) if stats else WanVAE(model)


def vae_from_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    source: str = "state dict",
) -> WanVAE:
    """A WanVAE from an in-memory state dict in either layout (e.g. ComfyUI's loaded Wan VAE, whose
    ``first_stage_model`` uses the original Wan layout). The config is inferred from the shapes."""
    layout, state_dict = _detect_layout(dict(state_dict), source)
    config = infer_vae_config(state_dict, layout=layout, source=source)
    if layout == "original":
        state_dict = original_to_diffusers_state_dict(state_dict, config, source=source)
    return WanVAE(_load_into_model(state_dict, config, dtype, device, source))


def save_vae(vae: WanVAE, path: str | os.PathLike) -> None:
    """Save as one safetensors file in diffusers layout, with the config (incl. the statistics) in the metadata."""
    from safetensors.torch import save_file

    config = dict(vae.config)
    config["latents_mean"] = [float(v) for v in vae.latents_mean.cpu()]
    config["latents_std"] = [float(v) for v in vae.latents_std.cpu()]
    tensors = {k: v.detach().contiguous().cpu() for k, v in vae.model.state_dict().items()}
    metadata = {"format": "pt", "videossm_kind": "wan_vae", "layout": "diffusers", "config": json.dumps(config)}
    save_file(tensors, str(path), metadata=metadata)


def build_vae(
    config: Mapping[str, Any] | None = None,
    *,
    seed: int | None = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> WanVAE:
    """A randomly initialised VAE (diffusers' default init) for tests and weight-free demos."""
    config = small_vae_config() if config is None else config
    devices = [torch.device(device)] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        if seed is not None:
            torch.manual_seed(seed)
        model = _build_model(config, "cpu")
    return WanVAE(_module_to(model, device=device, dtype=dtype))


__all__ = [
    "WAN_LATENTS_MEAN",
    "WAN_LATENTS_STD",
    "WAN21_VAE_CONFIG",
    "CheckpointError",
    "WanVAE",
    "vae_from_state_dict",
    "StreamingDecoder",
    "StreamingEncoder",
    "small_vae_config",
    "build_vae",
    "load_vae",
    "save_vae",
    "infer_vae_config",
    "diffusers_key_to_original",
    "diffusers_to_original_state_dict",
    "original_to_diffusers_state_dict",
]
