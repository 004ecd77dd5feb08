"""Wan's 3-D rotary position embedding, with absolute or window-relative frame positions.

The head dim is split into (t, h, w) parts (44/42/42 real dims for Wan's 128-dim heads); each part
has its own frequency ladder ``theta ** (-2i / d_axis)`` and rotates adjacent channel pairs.

Positions along h and w are always the token's row and column. The frame position is either the
absolute latent-frame index (what Self-Forcing / LongLive were trained with, limited to Wan's 1024
table entries) or, in unbounded mode, the frame's rank inside the attended window, so a stream can
run for hours: keys are cached un-rotated and rotated when they are read.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..config import ModelConfig


class PositionLimitError(ValueError):
    """A frame index past the RoPE table in absolute mode."""


def _axis_frequencies(axis_dim: int, theta: float) -> Tensor:
    """[axis_dim / 2] float64 angular frequencies of one axis."""
    return 1.0 / theta ** (torch.arange(0, axis_dim, 2, dtype=torch.float64) / axis_dim)


def rope_cos_sin(
    config: ModelConfig, frame_positions: Tensor, height: int, width: int, check_limit: bool = True
) -> tuple[Tensor, Tensor]:
    """Rotation tables for tokens laid out frame-major then raster.

    frame_positions: [F] integer positions of the frames (absolute or window-relative).
    Returns cos, sin: [F * height * width, head_dim / 2] float32.
    """
    frame_positions = frame_positions.to(torch.float64).cpu()
    if check_limit and frame_positions.numel():
        top = int(frame_positions.max().item())
        if top >= config.rope_max_positions:
            raise PositionLimitError(
                f"latent frame {top} is past the model's {config.rope_max_positions}-position RoPE table "
                f"(about {config.rope_max_positions * 4 / 16:.0f} s of video at 16 fps). Absolute positions "
                "cannot go further; start the stream with position_mode='unbounded' to generate longer videos.")
    if max(height, width) > config.rope_max_positions:
        raise PositionLimitError(f"a {height}x{width} token grid is past the RoPE table")
    d_t, d_h, d_w = config.rope_split
    theta = config.rope_theta
    ang_t = frame_positions[:, None] * _axis_frequencies(d_t, theta)[None]  # [F, d_t/2]
    ang_h = torch.arange(height, dtype=torch.float64)[:, None] * _axis_frequencies(d_h, theta)[None]
    ang_w = torch.arange(width, dtype=torch.float64)[:, None] * _axis_frequencies(d_w, theta)[None]
    f, h, w = len(frame_positions), height, width
    angles = torch.cat(
        [
            ang_t[:, None, None, :].expand(f, h, w, -1),
            ang_h[None, :, None, :].expand(f, h, w, -1),
            ang_w[None, None, :, :].expand(f, h, w, -1),
        ],
        dim=-1,
    ).reshape(f * h * w, d_t // 2 + d_h // 2 + d_w // 2)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate adjacent channel pairs. x: [B, N, H, D]; cos, sin: [N, D/2]. Computed in float32."""
    dtype = x.dtype
    pairs = x.float().unflatten(-1, (-1, 2))  # [B, N, H, D/2, 2]
    real, imag = pairs[..., 0], pairs[..., 1]
    cos = cos.to(x.device)[None, :, None, :]
    sin = sin.to(x.device)[None, :, None, :]
    rotated = torch.stack((real * cos - imag * sin, real * sin + imag * cos), dim=-1)
    return rotated.flatten(-2).to(dtype)
