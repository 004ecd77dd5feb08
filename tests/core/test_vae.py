"""Wan VAE wrapper: streaming decode == whole decode, cache save/restore, normalisation, loading, errors.

Everything runs on CPU with reduced configs and 16x16-pixel frames (2x2 latents).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from diffusers import AutoencoderKLWan
from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers
from safetensors.torch import load_file, save_file

from tests.core.vae_fixtures import original_wan_vae_shapes, original_wan_vae_state_dict
from videossm_core.vae import (
    WAN21_VAE_CONFIG,
    WAN_LATENTS_MEAN,
    WAN_LATENTS_STD,
    CheckpointError,
    StreamingDecoder,
    StreamingEncoder,
    WanVAE,
    build_vae,
    diffusers_key_to_original,
    diffusers_to_original_state_dict,
    infer_vae_config,
    load_vae,
    original_to_diffusers_state_dict,
    save_vae,
    small_vae_config,
)

# A miniature of the real architecture (same dim_mult and block counts, 1/12 of the width): diffusers' own
# original->diffusers converter hard-codes Wan2.1's block numbering, so it can serve as an independent reference.
MINI_WAN = dict(WAN21_VAE_CONFIG, base_dim=8)
NUM_LATENT = 9


@pytest.fixture(scope="module")
def vae() -> WanVAE:
    return build_vae(small_vae_config(), seed=0)


@pytest.fixture(scope="module")
def latents() -> torch.Tensor:
    return torch.randn(1, 16, NUM_LATENT, 2, 2, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def whole(vae, latents) -> torch.Tensor:
    return vae.decode(latents)


@pytest.fixture(scope="module")
def diffusers_whole(vae, latents) -> torch.Tensor:
    """diffusers' own whole-clip decode of the same (un-normalised) latents."""
    mean = torch.tensor(WAN_LATENTS_MEAN).view(1, 16, 1, 1, 1)
    std = torch.tensor(WAN_LATENTS_STD).view(1, 16, 1, 1, 1)
    with torch.no_grad():
        return vae.model.decode(latents * std + mean).sample


def _stream(decoder: StreamingDecoder, latents: torch.Tensor, sizes) -> list[torch.Tensor]:
    out, start = [], 0
    for n in sizes:
        out.append(decoder.decode_chunk(latents[:, :, start : start + n]))
        start += n
    return out


# ---------------------------------------------------------------------------------------------------------------
# streaming decode
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sizes", [(3, 3, 3), (1, 2, 4, 2), (1,) * NUM_LATENT, (NUM_LATENT,)])
def test_streaming_decode_equals_whole_decode(vae, latents, whole, diffusers_whole, sizes):
    decoder = vae.stream_decoder()
    chunks = _stream(decoder, latents, sizes)
    # the first latent frame gives 1 video frame, every later one 4
    expected = [4 * n - 3 if i == 0 else 4 * n for i, n in enumerate(sizes)]
    assert [c.shape[2] for c in chunks] == expected
    out = torch.cat(chunks, dim=2)
    assert out.shape == whole.shape == (1, 3, 1 + 4 * (NUM_LATENT - 1), 16, 16)
    assert torch.equal(out, whole)  # same per-frame computation, whatever the chunking
    assert (out - diffusers_whole).abs().max().item() <= 1e-5
    assert decoder.frames_decoded == whole.shape[2]
    assert decoder.latent_frames_decoded == NUM_LATENT
    # the random decoder is not saturated, so the comparison is meaningful
    assert (whole.abs() < 0.99).float().mean() > 0.5


def test_streaming_chunk_frame_counts_for_generator_chunks(vae, latents):
    decoder = vae.stream_decoder()
    assert [c.shape[2] for c in _stream(decoder, latents, (3, 3, 3))] == [9, 12, 12]


def test_cache_size_does_not_grow_with_length(vae, latents):
    decoder = vae.stream_decoder()
    decoder.decode_chunk(latents[:, :, :3])
    size = sum(t.numel() for t in decoder.state_tensors().values())
    decoder.decode_chunk(latents[:, :, 3:6])
    decoder.decode_chunk(latents[:, :, 6:9])
    assert sum(t.numel() for t in decoder.state_tensors().values()) == size


@pytest.mark.parametrize("split", [1, 3])  # after 1 latent frame the temporal upsamplers hold the 'Rep' sentinel
def test_state_save_restore_continues_bit_identically(vae, latents, tmp_path, split):
    reference = torch.cat(_stream(vae.stream_decoder(), latents, (split, NUM_LATENT - split)), dim=2)

    decoder = vae.stream_decoder()
    head = decoder.decode_chunk(latents[:, :, :split])
    tensors = {"other.tensor": torch.zeros(2), **decoder.state_tensors()}  # as inside a larger state file
    meta = decoder.state_metadata()
    assert all(k.startswith("vae_cache.") for k in tensors if k != "other.tensor")
    if split == 1:
        assert "R" in meta["slot_kinds"]
    path = tmp_path / "state.safetensors"
    save_file(tensors, str(path), metadata={"vae_cache": json.dumps(meta)})
    del decoder

    restored = StreamingDecoder.from_state_tensors(vae, load_file(str(path)))
    assert restored.state_metadata() == meta
    assert restored.frames_decoded == head.shape[2]
    tail = restored.decode_chunk(latents[:, :, split:])
    assert torch.equal(torch.cat([head, tail], dim=2), reference)


def test_state_errors(vae, latents):
    decoder = vae.stream_decoder()
    decoder.decode_chunk(latents[:, :, :2])
    with pytest.raises(ValueError, match="batch"):
        decoder.decode_chunk(latents[:, :, 2:3].repeat(2, 1, 1, 1, 1))
    # the failed call left the cache as it was
    assert decoder.latent_frames_decoded == 2
    other = build_vae(small_vae_config(num_res_blocks=2))
    with pytest.raises(ValueError, match="slots"):
        StreamingDecoder.from_state_tensors(other, decoder.state_tensors())
    with pytest.raises(ValueError, match="no feature cache"):
        StreamingDecoder.from_state_tensors(vae, {})
    with pytest.raises(ValueError, match="latents"):
        decoder.decode_chunk(torch.zeros(1, 4, 1, 2, 2))


def test_reset_starts_a_new_video(vae, latents, whole):
    decoder = vae.stream_decoder()
    decoder.decode_chunk(latents[:, :, :4])
    decoder.reset()
    assert decoder.frames_decoded == 0
    assert torch.equal(decoder.decode_chunk(latents[:, :, :3]), whole[:, :, :9])


def test_bfloat16_streaming_matches_whole(latents):
    vae16 = build_vae(small_vae_config(), seed=0, dtype=torch.bfloat16)
    whole16 = vae16.decode(latents)
    assert whole16.dtype == torch.bfloat16
    out = torch.cat(_stream(vae16.stream_decoder(), latents, (3, 3, 3)), dim=2)
    assert torch.equal(out, whole16)


# ---------------------------------------------------------------------------------------------------------------
# encode / normalisation
# ---------------------------------------------------------------------------------------------------------------


def test_encode_decode_normalisation_against_raw_diffusers(vae, latents):
    assert vae.latents_mean.tolist() == pytest.approx(WAN_LATENTS_MEAN)
    assert vae.latents_std.tolist() == pytest.approx(WAN_LATENTS_STD)
    mean = torch.tensor(WAN_LATENTS_MEAN).view(1, 16, 1, 1, 1)
    std = torch.tensor(WAN_LATENTS_STD).view(1, 16, 1, 1, 1)
    frames = torch.rand(2, 3, 9, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1

    z = vae.encode(frames)
    assert z.shape == (2, 16, 3, 2, 2)
    with torch.no_grad():
        mu = vae.model.encode(frames).latent_dist.mean
        raw_frames = vae.model.decode(latents * std + mean).sample
    # equal up to the rounding of the 1x1x1 (post_)quant_conv, which diffusers runs on the whole clip at once
    assert (z - (mu - mean) / std).abs().max().item() <= 1e-5
    decoded = vae.decode(latents)
    assert (decoded - raw_frames).abs().max().item() <= 1e-5
    assert decoded.min() >= -1 and decoded.max() <= 1


def test_streaming_encoder_equals_whole_encode(vae):
    frames = torch.rand(1, 3, 17, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1
    whole = vae.encode(frames)
    encoder = vae.stream_encoder()
    parts = [encoder.encode_chunk(frames[:, :, :5]), encoder.encode_chunk(frames[:, :, 5:9])]
    # save and restore the encoder's cache half way
    encoder = StreamingEncoder.from_state_tensors(vae, {k: v.clone() for k, v in encoder.state_tensors().items()})
    parts.append(encoder.encode_chunk(frames[:, :, 9:]))
    assert [p.shape[2] for p in parts] == [2, 1, 2]
    assert torch.equal(torch.cat(parts, dim=2), whole)
    with pytest.raises(ValueError, match="multiple of 4"):
        encoder.encode_chunk(frames[:, :, :3])


def test_demo_vae_stride_4_streams_like_whole():
    """The demo VAE (two stages: spatial stride 4, both stages temporal) streams exactly like one-shot."""
    from videossm_core.training.vae_training import demo_vae_config

    vae = build_vae(demo_vae_config(), seed=2)
    assert vae.spatial_stride == 4
    frames = torch.rand(1, 3, 17, 16, 16, generator=torch.Generator().manual_seed(4)) * 2 - 1
    whole = vae.encode(frames)
    assert whole.shape == (1, 16, 5, 4, 4)
    encoder = vae.stream_encoder()
    parts = [encoder.encode_chunk(frames[:, :, :9]), encoder.encode_chunk(frames[:, :, 9:])]
    assert torch.equal(torch.cat(parts, dim=2), whole)
    decoder = vae.stream_decoder()
    streamed = torch.cat([decoder.decode_chunk(whole[:, :, :3]), decoder.decode_chunk(whole[:, :, 3:])], dim=2)
    assert streamed.shape == frames.shape
    assert torch.equal(streamed, vae.decode(whole))
    with pytest.raises(ValueError, match="multiples of 4"):
        vae.encode(frames[..., :14])


def test_input_validation(vae):
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        vae.encode(torch.zeros(1, 3, 4, 16, 16))
    with pytest.raises(ValueError, match="multiples of 8"):
        vae.encode(torch.zeros(1, 3, 5, 12, 16))
    assert WanVAE.num_latent_frames(81) == 21 and WanVAE.num_video_frames(21) == 81


def test_reduced_latent_width_uses_identity_statistics():
    tiny = build_vae(small_vae_config(z_dim=4, base_dim=8))
    assert tiny.latents_mean.tolist() == [0.0] * 4 and tiny.latents_std.tolist() == [1.0] * 4
    given = WanVAE(tiny.model, latents_mean=[1.0] * 4, latents_std=[2.0] * 4)
    assert given.latents_std.tolist() == [2.0] * 4


# ---------------------------------------------------------------------------------------------------------------
# key layouts
# ---------------------------------------------------------------------------------------------------------------


def test_full_size_original_layout_converts_on_meta():
    original = original_wan_vae_state_dict(device="meta")  # shapes of the released Wan2.1_VAE.pth, no memory
    assert infer_vae_config(original) == WAN21_VAE_CONFIG
    converted = original_to_diffusers_state_dict(original)
    with torch.device("meta"):
        module = AutoencoderKLWan(**WAN21_VAE_CONFIG)
    expected = module.state_dict()
    assert set(converted) == set(expected)
    assert all(converted[k].shape == expected[k].shape for k in expected)
    assert sum(math.prod(v.shape) for v in converted.values()) == sum(p.numel() for p in module.parameters())
    # diffusers' own converter (hard-coded for this exact architecture) names every tensor the same way
    by_tensor = {id(v): k for k, v in converted.items()}
    reference = convert_wan_vae_to_diffusers(dict(original))
    assert {k: by_tensor[id(v)] for k, v in reference.items()} == {k: k for k in reference}
    # spot checks of facts from the anchors
    assert diffusers_key_to_original("post_quant_conv.weight", 2) == "conv2.weight"
    assert diffusers_key_to_original("decoder.up_blocks.1.resnets.0.conv_shortcut.weight", 2) == (
        "decoder.upsamples.4.shortcut.weight"
    )
    assert diffusers_key_to_original("decoder.up_blocks.0.upsamplers.0.time_conv.bias", 2) == (
        "decoder.upsamples.3.time_conv.bias"
    )
    assert diffusers_key_to_original("encoder.mid_block.attentions.0.to_qkv.weight", 2) == (
        "encoder.middle.1.to_qkv.weight"
    )


@pytest.mark.parametrize("config", [small_vae_config(), small_vae_config(num_res_blocks=2, dim_mult=[1, 2, 4, 4])])
def test_layout_round_trip_loads_strictly(config):
    model = build_vae(config, seed=4).model
    original = diffusers_to_original_state_dict(model.state_dict(), config["num_res_blocks"])
    # the inverse mapping produces exactly the layout of Wan's module definitions
    assert {k: tuple(v.shape) for k, v in original.items()} == original_wan_vae_shapes(**config)
    assert infer_vae_config(original) == config
    back = original_to_diffusers_state_dict(original)
    fresh = AutoencoderKLWan(**config)
    fresh.load_state_dict(back, strict=True)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in model.state_dict().items())


# ---------------------------------------------------------------------------------------------------------------
# loading every format
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mini_original() -> dict[str, torch.Tensor]:
    return original_wan_vae_state_dict(MINI_WAN, seed=5)


@pytest.fixture(scope="module")
def mini_reference(mini_original) -> AutoencoderKLWan:
    model = AutoencoderKLWan(**MINI_WAN).eval()
    model.load_state_dict(convert_wan_vae_to_diffusers(dict(mini_original)), strict=True)
    return model


def test_every_format_loads_identically(tmp_path, mini_original, mini_reference, latents):
    files = {}
    files["pth"] = tmp_path / "weights.ckpt"  # content decides the format, not the name
    torch.save(mini_original, files["pth"])
    files["st_bare"] = tmp_path / "wan_2.1_vae.safetensors"
    save_file(mini_original, str(files["st_bare"]))
    files["st_first_stage"] = tmp_path / "packed.safetensors"
    save_file(
        {**{f"first_stage_model.{k}": v for k, v in mini_original.items()},
         "model.diffusion_model.patch_embedding.weight": torch.zeros(1)},  # another model in the same file
        str(files["st_first_stage"]),
    )  # fmt: skip
    files["st_vae_prefix"] = tmp_path / "vae_prefixed.safetensors"
    save_file({f"vae.{k}": v for k, v in mini_original.items()}, str(files["st_vae_prefix"]))
    files["diffusers_folder"] = tmp_path / "diffusers_vae"
    mini_reference.save_pretrained(str(files["diffusers_folder"]))
    files["pipeline_folder"] = tmp_path / "pipeline"
    mini_reference.save_pretrained(str(files["pipeline_folder"] / "vae"))
    files["diffusers_bare"] = tmp_path / "diffusers_layout.safetensors"
    save_file({k: v.contiguous() for k, v in mini_reference.state_dict().items()}, str(files["diffusers_bare"]))

    loaded = {name: load_vae(path) for name, path in files.items()}
    files["ours"] = tmp_path / "ours.safetensors"
    save_vae(loaded["pth"], files["ours"])
    loaded["ours"] = load_vae(files["ours"])

    z = latents[:, :, :3]
    reference_frames = WanVAE(mini_reference).decode(z)
    for name, vae in loaded.items():
        assert vae.config["base_dim"] == 8 and vae.config["num_res_blocks"] == 2, name
        state = vae.model.state_dict()
        assert all(torch.equal(state[k], v) for k, v in mini_reference.state_dict().items()), name
        assert torch.equal(vae.decode(z), reference_frames), name
        assert vae.latents_std.tolist() == pytest.approx(WAN_LATENTS_STD), name


def test_load_dtype_and_saved_statistics(tmp_path):
    vae = build_vae(small_vae_config(), seed=6)
    custom = WanVAE(vae.model, latents_mean=[0.5] * 16, latents_std=[3.0] * 16)
    path = tmp_path / "custom.safetensors"
    save_vae(custom, path)
    back = load_vae(path, dtype=torch.bfloat16)
    assert back.dtype == torch.bfloat16
    assert back.latents_mean.tolist() == [0.5] * 16 and back.latents_std.tolist() == [3.0] * 16
    assert back.config["num_res_blocks"] == 1  # config came from the metadata


# ---------------------------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------------------------


def _save(tmp_path, name, tensors):
    path = tmp_path / name
    save_file(tensors, str(path))
    return path


def test_error_transformer(tmp_path):
    path = _save(tmp_path, "vae.safetensors", {
        "model.diffusion_model.blocks.0.self_attn.q.weight": torch.zeros(2, 2),
        "model.diffusion_model.head.modulation": torch.zeros(1, 2, 2),
    })  # fmt: skip
    with pytest.raises(CheckpointError, match="Wan diffusion transformer, load it with the model loader"):
        load_vae(path)


def test_error_umt5(tmp_path):
    path = _save(tmp_path, "umt5.safetensors", {
        "shared.weight": torch.zeros(4, 2), "encoder.block.0.layer.0.SelfAttention.q.weight": torch.zeros(2, 2),
    })  # fmt: skip
    with pytest.raises(CheckpointError, match="UMT5 text encoder"):
        load_vae(path)


def test_error_wan22_vae(tmp_path):
    path = _save(tmp_path, "v.safetensors", {
        "decoder.middle.0.residual.0.gamma": torch.zeros(1),
        "decoder.upsamples.0.upsamples.0.residual.2.weight": torch.zeros(1),
    })  # fmt: skip
    with pytest.raises(CheckpointError, match="Wan2.2 VAE"):
        load_vae(path)


def test_error_unknown_keys(tmp_path):
    path = _save(tmp_path, "x.safetensors", {"foo.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="does not look like a Wan2.1 VAE.*foo.weight"):
        load_vae(path)


def test_error_truncated_safetensors(tmp_path, mini_original):
    full = tmp_path / "full.safetensors"
    save_file(mini_original, str(full))
    data = full.read_bytes()
    for name, cut in [("half.safetensors", len(data) // 2), ("header.safetensors", 40)]:
        path = tmp_path / name
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="damaged.*re-download"):
            load_vae(path)


def test_error_corrupt_pth(tmp_path, mini_original):
    full = tmp_path / "full.pth"
    torch.save(mini_original, full)
    truncated = tmp_path / "Wan2.1_VAE.pth"
    truncated.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(bytes(range(256)) * 8)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    for path in (truncated, garbage, empty):
        with pytest.raises(CheckpointError, match="damaged.*re-download"):
            load_vae(path)


def test_error_missing_and_unexpected_keys(tmp_path, mini_original):
    broken = dict(mini_original)
    del broken["decoder.upsamples.3.time_conv.weight"]
    del broken["decoder.head.0.gamma"]
    broken["decoder.extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save(broken, path)
    with pytest.raises(CheckpointError) as info:
        load_vae(path)
    message = str(info.value)
    assert "2 missing keys" in message and "decoder.upsamples.3.time_conv.weight" in message
    assert "decoder.head.0.gamma" in message
    assert "1 unexpected keys: decoder.extra.weight" in message


def test_error_missing_keys_diffusers_layout(tmp_path, mini_reference):
    state = {k: v.contiguous() for k, v in mini_reference.state_dict().items()}
    del state["decoder.conv_in.bias"]
    path = _save(tmp_path, "d.safetensors", state)
    with pytest.raises(CheckpointError, match="1 missing keys: decoder.conv_in.bias"):
        load_vae(path)


def test_error_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_vae(tmp_path / "nope.safetensors")
