"""Synthetic Wan2.1 VAE state dicts in Wan's *original* key layout, for loader tests.

The key names and shapes are built here directly from the structure of Wan's own ``wan/modules/vae.py``
(``Encoder3d`` / ``Decoder3d`` with flat ``downsamples`` / ``upsamples`` Sequentials, ``ResidualBlock.residual``
= [RMS_norm, SiLU, CausalConv3d, RMS_norm, SiLU, Dropout, CausalConv3d], ``Resample`` with ``resample.1`` and
``time_conv``, ``middle`` = [resblock, attention, resblock], ``head`` = [RMS_norm, SiLU, CausalConv3d], top-level
``conv1`` / ``conv2``), independently of ``videossm_core.vae``'s key mapping, so that converting them checks that
mapping rather than restating it.
"""

from __future__ import annotations

from typing import Any

import torch


def original_wan_vae_shapes(
    base_dim: int = 96,
    z_dim: int = 16,
    dim_mult=(1, 2, 4, 4),
    num_res_blocks: int = 2,
    temperal_downsample=(False, True, True),
    in_channels: int = 3,
    out_channels: int = 3,
    **_ignored: Any,
) -> dict[str, tuple[int, ...]]:
    """Every parameter name -> shape of an original-layout Wan2.1 VAE (defaults: the released Wan2.1_VAE.pth)."""
    shapes: dict[str, tuple[int, ...]] = {}
    dim_mult = list(dim_mult)
    last = len(dim_mult) - 1

    def conv3d(name, cin, cout, k):  # CausalConv3d: weight [out, in, kt, kh, kw]
        k = (k, k, k) if isinstance(k, int) else k
        shapes[f"{name}.weight"] = (cout, cin, *k)
        shapes[f"{name}.bias"] = (cout,)

    def rms(name, c, images=False):  # RMS_norm(channel_first=True): gamma [c, 1, 1(, 1)]
        shapes[f"{name}.gamma"] = (c, 1, 1) if images else (c, 1, 1, 1)

    def resblock(p, cin, cout):
        rms(f"{p}.residual.0", cin)
        conv3d(f"{p}.residual.2", cin, cout, 3)
        rms(f"{p}.residual.3", cout)
        conv3d(f"{p}.residual.6", cout, cout, 3)
        if cin != cout:
            conv3d(f"{p}.shortcut", cin, cout, 1)

    def attention(p, c):
        rms(f"{p}.norm", c, images=True)
        shapes[f"{p}.to_qkv.weight"] = (3 * c, c, 1, 1)
        shapes[f"{p}.to_qkv.bias"] = (3 * c,)
        shapes[f"{p}.proj.weight"] = (c, c, 1, 1)
        shapes[f"{p}.proj.bias"] = (c,)

    def middle(p, c):
        resblock(f"{p}.middle.0", c, c)
        attention(f"{p}.middle.1", c)
        resblock(f"{p}.middle.2", c, c)

    # Encoder3d
    dims = [base_dim * u for u in [1] + dim_mult]
    conv3d("encoder.conv1", in_channels, dims[0], 3)
    idx = 0
    for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
        for _ in range(num_res_blocks):
            resblock(f"encoder.downsamples.{idx}", cin, cout)
            cin = cout
            idx += 1
        if i != last:
            shapes[f"encoder.downsamples.{idx}.resample.1.weight"] = (cout, cout, 3, 3)
            shapes[f"encoder.downsamples.{idx}.resample.1.bias"] = (cout,)
            if temperal_downsample[i]:
                conv3d(f"encoder.downsamples.{idx}.time_conv", cout, cout, (3, 1, 1))
            idx += 1
    middle("encoder", dims[-1])
    rms("encoder.head.0", dims[-1])
    conv3d("encoder.head.2", dims[-1], 2 * z_dim, 3)

    # the 1x1 convs around the latent
    conv3d("conv1", 2 * z_dim, 2 * z_dim, 1)
    conv3d("conv2", z_dim, z_dim, 1)

    # Decoder3d: widths run backwards; every upsampler halves the width it hands on.
    temperal_upsample = list(temperal_downsample)[::-1]
    dims = [base_dim * u for u in [dim_mult[-1]] + dim_mult[::-1]]
    conv3d("decoder.conv1", z_dim, dims[0], 3)
    middle("decoder", dims[0])
    idx = 0
    for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
        if i > 0:
            cin = cin // 2
        for _ in range(num_res_blocks + 1):
            resblock(f"decoder.upsamples.{idx}", cin, cout)
            cin = cout
            idx += 1
        if i != last:
            shapes[f"decoder.upsamples.{idx}.resample.1.weight"] = (cout // 2, cout, 3, 3)
            shapes[f"decoder.upsamples.{idx}.resample.1.bias"] = (cout // 2,)
            if temperal_upsample[i]:
                conv3d(f"decoder.upsamples.{idx}.time_conv", cout, cout * 2, (3, 1, 1))
            idx += 1
    rms("decoder.head.0", dims[-1])
    conv3d("decoder.head.2", dims[-1], out_channels, 3)
    return shapes


def original_wan_vae_state_dict(
    config: dict[str, Any] | None = None, *, seed: int = 0, device: str = "cpu"
) -> dict[str, torch.Tensor]:
    """Random weights in the original layout (``device="meta"`` gives shapes only, no memory).

    Values are scaled like a fan-in init so a decode gives non-saturated frames.
    """
    shapes = original_wan_vae_shapes(**(config or {}))
    if device == "meta":
        return {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for k, s in shapes.items():
        if k.endswith(".gamma"):
            out[k] = 1.0 + 0.1 * torch.randn(s, generator=gen)
        elif k.endswith(".bias"):
            out[k] = 0.02 * torch.randn(s, generator=gen)
        else:
            fan_in = 1
            for d in s[1:]:
                fan_in *= d
            out[k] = torch.randn(s, generator=gen) / fan_in**0.5
    return out
