"""Checkpoint loading: every layout gives the same model, config inference, LoRA merge, dtypes, fresh and
file-loaded memory, our own files, and a clear CheckpointError for every kind of bad input."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from videossm_core import checkpoints as ck
from videossm_core.checkpoints import CheckpointError
from videossm_core.config import PRESETS, MemoryConfig, StreamConfig
from videossm_core.model.transformer import CausalWanModel
from videossm_core.state import StreamState

from . import checkpoint_fixtures as fx

TINY = fx.TINY
# text_len and eps are not in any tensor shape, and "tiny" has 32-wide heads (real Wan: 128), so files
# without our metadata need these.
TINY_OVERRIDES = {"text_len": TINY.text_len, "memory": TINY.memory.to_dict()}
HEADS = {"num_heads": TINY.num_heads}


@pytest.fixture(scope="module")
def weights():
    return fx.reference_weights(seed=0)


@pytest.fixture(scope="module")
def inputs():
    return fx.tiny_inputs()


def _model_from(weights, config=TINY) -> CausalWanModel:
    """The reference: the same weights put into a normally built model with load_state_dict."""
    model = CausalWanModel(config).eval()
    missing, unexpected = model.load_state_dict(weights, strict=False)
    assert not unexpected and all(ck.MEMORY_INFIX in k for k in missing)
    return model


@pytest.fixture(scope="module")
def expected(weights, inputs):
    with torch.no_grad():
        return _model_from(weights)(*inputs)


def _forward(model, inputs):
    with torch.no_grad():
        return model(*inputs)


def _assert_base_equal(model, weights):
    sd = model.state_dict()
    for k, v in weights.items():
        assert torch.equal(sd[k].float(), v), k


# --------------------------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------------------------


def test_diffusers_rename_table_matches_published_names():
    pairs = {
        "time_embedding.0.weight": "condition_embedder.time_embedder.linear_1.weight",
        "text_embedding.2.bias": "condition_embedder.text_embedder.linear_2.bias",
        "time_projection.1.weight": "condition_embedder.time_proj.weight",
        "head.modulation": "scale_shift_table",
        "head.head.weight": "proj_out.weight",
        "blocks.7.modulation": "blocks.7.scale_shift_table",
        "blocks.7.self_attn.o.weight": "blocks.7.attn1.to_out.0.weight",
        "blocks.7.self_attn.norm_k.weight": "blocks.7.attn1.norm_k.weight",
        "blocks.7.cross_attn.q.bias": "blocks.7.attn2.to_q.bias",
        "blocks.7.norm3.weight": "blocks.7.norm2.weight",  # the swap
        "blocks.7.ffn.0.weight": "blocks.7.ffn.net.0.proj.weight",
        "blocks.7.ffn.2.bias": "blocks.7.ffn.net.2.bias",
        "patch_embedding.weight": "patch_embedding.weight",
    }
    for ours, theirs in pairs.items():
        assert ck.to_diffusers_key(ours) == theirs
        assert ck.from_diffusers_key(theirs) == ours
    # Every 1.3B key: the table agrees with diffusers' own ordered str.replace rules and inverts exactly.
    for key in fx.wan_key_shapes():
        assert ck.to_diffusers_key(key) == fx.diffusers_key(key)
        assert ck.from_diffusers_key(ck.to_diffusers_key(key)) == key


def test_diffusers_own_model_converts_and_computes_the_same(inputs):
    """diffusers' WanTransformer3DModel (its real parameter names and math) equals ours after loading."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    theirs = diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=TINY.num_heads, attention_head_dim=TINY.head_dim,
        in_channels=TINY.in_dim, out_channels=TINY.out_dim, text_dim=TINY.text_dim, freq_dim=TINY.freq_dim,
        ffn_dim=TINY.ffn_dim, num_layers=TINY.num_layers).eval()
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_(0, 0.1).add_(1.0 if p.ndim == 1 and p.shape[0] == TINY.dim else 0.0)
    sd = theirs.state_dict()
    assert ck.detect_format(sd) == "diffusers"
    ours = ck.load_model(sd, config_overrides=TINY_OVERRIDES, num_heads=TINY.num_heads)
    x, _, ctx = inputs
    t = torch.full((1, x.shape[2]), 500.0)  # diffusers takes one timestep per sample
    with torch.no_grad():
        want = theirs(hidden_states=x, timestep=torch.tensor([500.0]), encoder_hidden_states=ctx,
                      return_dict=False)[0]
        got = ours(x, t, ctx)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------------------------------------
# Every layout -> the same model
# --------------------------------------------------------------------------------------------------------------


def _other(weights):
    return {k: v * 0.5 for k, v in weights.items()}


def _save_pt(obj, path, legacy=False):
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


def _layout(name, weights, tmp):
    """(path or dict, load kwargs, expected format) for one layout of ``weights``."""
    wan = fx.wan_layout(weights)
    if name == "wan.safetensors":
        save_file(wan, tmp / "w.safetensors")
        return tmp / "w.safetensors", HEADS, "wan"
    if name == "wan.pth":
        return _save_pt(wan, tmp / "w.pth"), HEADS, "wan"
    if name == "wan.pth legacy pickle":  # torch.save without the zip container: cannot be mmap'ed
        return _save_pt(wan, tmp / "w.pth", legacy=True), HEADS, "wan"
    if name == "wan dict":
        return wan, HEADS, "wan"
    if name == "wan-ai folder":  # heads and text_len from Wan's own config.json
        return fx.save_wan_folder(weights, tmp / "Wan2.1-T2V"), {"config_overrides": {"memory": TINY.memory}}, "wan"
    if name == "diffusers.safetensors":
        save_file(fx.diffusers_layout(weights), tmp / "d.safetensors")
        return tmp / "d.safetensors", HEADS, "diffusers"
    if name == "diffusers folder":  # heads from config.json
        return fx.save_diffusers_folder(weights, tmp / "d"), {}, "diffusers"
    if name == "diffusers sharded folder":
        return fx.save_diffusers_folder(weights, tmp / "d", shards=3), {}, "diffusers"
    if name == "diffusers pipeline folder":
        fx.save_diffusers_folder(weights, tmp / "pipe" / "transformer")
        return tmp / "pipe", {}, "diffusers"
    if name == "comfyui fp16":
        save_file(fx.comfyui_layout(weights, torch.float16), tmp / "c.safetensors")
        return tmp / "c.safetensors", HEADS, "comfyui"
    if name == "comfyui bf16 bare":
        save_file(fx.comfyui_layout(weights, torch.bfloat16, prefix=""), tmp / "c.safetensors")
        return tmp / "c.safetensors", HEADS, "wan"
    if name == "comfyui all-in-one":
        save_file(fx.comfyui_layout(weights, torch.float16, other_components=True), tmp / "c.safetensors")
        return tmp / "c.safetensors", HEADS, "comfyui"
    if name == "self-forcing ema":  # generator_ema preferred (use_ema=True is the default)
        return _save_pt(fx.training_checkpoint(_other(wan), wan), tmp / "sf.pt"), HEADS, "training"
    if name == "self-forcing generator":
        return (_save_pt(fx.training_checkpoint(wan, _other(wan)), tmp / "sf.pt"), dict(HEADS, use_ema=False),
                "training")
    if name == "longlive base without ema":
        return _save_pt(fx.training_checkpoint(wan), tmp / "longlive_base.pt"), HEADS, "training"
    if name == "causvid model entry":
        return _save_pt(fx.training_checkpoint(wan, entry="model"), tmp / "cv.pt"), HEADS, "training"
    if name == "bare model. prefix":
        return _save_pt({"model." + k: v for k, v in wan.items()}, tmp / "m.pt"), HEADS, "training"
    if name == "videossm":
        model = _model_from(weights)
        ck.save_model(model, tmp / "v.safetensors")
        return tmp / "v.safetensors", {"config_overrides": None}, "videossm"
    if name == "videossm without metadata":  # heads from the memory gates' rows
        save_file(_model_from(weights).state_dict(), tmp / "v.safetensors")
        return tmp / "v.safetensors", {}, "videossm"
    raise AssertionError(name)


LAYOUTS = ["wan.safetensors", "wan.pth", "wan.pth legacy pickle", "wan dict", "wan-ai folder", "diffusers.safetensors",
           "diffusers folder", "diffusers sharded folder", "diffusers pipeline folder", "comfyui fp16",
           "comfyui bf16 bare", "comfyui all-in-one", "self-forcing ema", "self-forcing generator",
           "longlive base without ema", "causvid model entry", "bare model. prefix", "videossm",
           "videossm without metadata"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_loads_the_same_model(layout, weights, inputs, expected, tmp_path):
    source, kwargs, fmt = _layout(layout, weights, tmp_path)
    kwargs = {"config_overrides": TINY_OVERRIDES, **kwargs}
    model = ck.load_model(source, **kwargs)
    info = model.checkpoint_info
    assert info["format"] == fmt
    assert model.config == TINY
    _assert_base_equal(model, weights)
    assert torch.equal(_forward(model, inputs), expected)
    for p in model.parameters():
        assert isinstance(p, nn.Parameter) and not p.requires_grad and p.dtype == torch.float32
    if layout == "comfyui all-in-one":
        assert any(k.startswith("first_stage_model.") for k in info["ignored_keys"])
    if layout.startswith("self-forcing") or layout == "longlive base without ema":
        assert info["wrapper"] == {"self-forcing ema": "generator_ema"}.get(layout, "generator")


def test_load_state_dict_any_gives_our_names_and_info(weights, tmp_path):
    path = _save_pt(fx.training_checkpoint(fx.wan_layout(weights), fx.wan_layout(weights)), tmp_path / "sf.pt")
    sd, info = ck.load_state_dict_any(path, num_heads=2, config_overrides=TINY_OVERRIDES)
    assert set(sd) == set(fx.wan_layout(weights))
    assert all(torch.equal(sd[k], v) for k, v in fx.wan_layout(weights).items())
    assert info["format"] == "training" and info["wrapper"] == "generator_ema"
    assert info["config"] == TINY and info["num_heads_from"] == "override"
    assert info["fresh_memory_keys"] and all(ck.MEMORY_INFIX in k for k in info["fresh_memory_keys"])
    sd16, _ = ck.load_state_dict_any(path, num_heads=2, dtype="bf16")
    assert all(v.dtype == torch.bfloat16 for v in sd16.values())


def test_detect_format(weights):
    wan = fx.wan_layout(weights)
    lora = fx.make_lora()
    cases = {
        "wan": wan,
        "diffusers": fx.diffusers_layout(weights),
        "comfyui": fx.comfyui_layout(weights),
        "training": {"model." + k: v for k, v in wan.items()},
        "lora": fx.peft_lora_layout(lora),
        "vae": fx.vae_original_state_dict(),
        "text_encoder": fx.umt5_state_dict(),
        "i2v": fx.i2v_state_dict(weights),
        "videossm_memory": _model_from(weights).memory_parameters(),
        "unknown": {"foo.weight": torch.zeros(1)},
    }
    for fmt, sd in cases.items():
        assert ck.detect_format(sd, shapes=sd) == fmt, fmt
    assert ck.detect_format(fx.comfyui_fp8_layout(weights, prefix="")) == "comfyui"  # scaled-fp8 markers
    assert ck.detect_format(fx.vae_diffusers_state_dict()) == "vae"
    assert ck.detect_format(fx.kohya_lora_layout(lora, alpha=4, underscore=True)) == "lora"
    assert ck.detect_format(wan, {"videossm_config": TINY.to_json()}) == "videossm"
    assert ck.detect_format(wan, wrapper="generator_ema") == "training"
    five_b = fx.wan22_5b_meta_state_dict()
    assert ck.detect_format(five_b, shapes=five_b) == "wan2.2_5b"
    assert set(ck.FORMATS) >= {"wan", "diffusers", "comfyui", "training", "videossm", "videossm_memory", "lora"}


# --------------------------------------------------------------------------------------------------------------
# Config inference
# --------------------------------------------------------------------------------------------------------------


def test_full_size_1_3b_keys_on_meta():
    """The real 1.3B layout (no memory allocated): names, config, coverage, parameter count."""
    preset = PRESETS["wan2.1-t2v-1.3b"]
    meta = fx.meta_state_dict(fx.wan_key_shapes())
    with torch.device("meta"):
        model = CausalWanModel(preset)
    base = {k: tuple(v.shape) for k, v in model.state_dict().items() if ck.MEMORY_INFIX not in k}
    for layout in (meta, {ck.to_diffusers_key(k): v for k, v in meta.items()}):
        ours, info = ck.convert_state_dict(layout)
        assert info["format"] == ("wan" if layout is meta else "diffusers")
        config, sources = ck.infer_config(ours)
        assert config == preset and sources["num_heads"] == "dim // 128"
        assert {k: tuple(v.shape) for k, v in ours.items()} == base
        fresh = ck.check_keys(config, ours)
        assert fresh and all(ck.MEMORY_INFIX in k for k in fresh)
    assert sum(v.numel() for v in meta.values()) == 1_418_996_800
    assert sum(p.numel() for n, p in model.named_parameters() if ck.MEMORY_INFIX not in n) == 1_418_996_800


def test_14b_shapes_are_a_valid_config():
    meta = fx.meta_state_dict(fx.wan_key_shapes(dim=5120, num_layers=40, ffn_dim=13824))
    assert ck.detect_format(meta, shapes=meta) == "wan"
    config, _ = ck.infer_config(meta)
    assert (config.dim, config.num_layers, config.num_heads, config.ffn_dim) == (5120, 40, 40, 13824)
    ck.check_keys(config, meta)


def test_head_count_sources(weights, tmp_path):
    wan = fx.wan_layout(weights)
    with pytest.raises(CheckpointError, match="num_heads"):  # dim 64: not a multiple of 128, no hint
        ck.load_model(wan)
    assert ck.load_model(wan, config_overrides={"num_heads": 4}).config.num_heads == 4
    # dim 128 without any hint: Wan's 128-wide heads
    wide = fx.reference_weights(config=TINY.replace(dim=128, num_heads=4), memory=False)
    model = ck.load_model(fx.wan_layout(wide))
    assert model.config.num_heads == 1 and model.checkpoint_info["num_heads_from"] == "dim // 128"
    assert ck.load_model(fx.wan_layout(wide), num_heads=4).config.num_heads == 4
    # our metadata config knows; an override still wins, and here the per-head memory gates then do not fit
    ck.save_model(_model_from(weights), tmp_path / "v.safetensors")
    assert ck.load_model(tmp_path / "v.safetensors").checkpoint_info["num_heads_from"] == "file metadata"
    with pytest.raises(CheckpointError, match=r"1 heads.*memory\.A_log \(2,\) \(model: \(1,\)\).*wrong num_heads"):
        ck.load_model(tmp_path / "v.safetensors", num_heads=1)


# --------------------------------------------------------------------------------------------------------------
# LoRA
# --------------------------------------------------------------------------------------------------------------


def _unmerged_reference(model, lora, scale):
    """y = W x + b + scale * B A x on every targeted linear, through forward hooks (weights untouched)."""
    handles = []
    for name, (a, b) in lora.items():
        module = model.get_submodule(name)
        handles.append(module.register_forward_hook(
            lambda mod, args, out, a=a, b=b: out + scale * (args[0] @ a.T @ b.T)))
    return handles


@pytest.fixture(scope="module")
def base_model(weights):
    return ck.load_model(fx.wan_layout(weights), num_heads=2, config_overrides=TINY_OVERRIDES)


def _fresh_base(weights):
    return ck.load_model(fx.wan_layout(weights), num_heads=2, config_overrides=TINY_OVERRIDES)


def test_lora_merge_equals_unmerged_reference(weights, inputs):
    lora = fx.make_lora(rank=4)
    strength = 0.7
    reference = _fresh_base(weights)
    handles = _unmerged_reference(reference, lora, strength)  # alpha = rank: scale = strength
    want = _forward(reference, inputs)
    for h in handles:
        h.remove()
    base_out = _forward(reference, inputs)
    assert (want - base_out).abs().max() > 1e-2  # the LoRA matters
    merged = _fresh_base(weights)
    info = ck.merge_lora(merged, fx.peft_lora_layout(lora), strength)
    assert info["modules"] == len(lora) == TINY.num_layers * 10 and info["scales"] == [pytest.approx(0.7)]
    torch.testing.assert_close(_forward(merged, inputs), want, rtol=1e-5, atol=1e-5)


def _lora_file(variant, lora, tmp):
    if variant == "peft":
        return fx.peft_lora_layout(lora)
    if variant == "peft .default adapter":
        return fx.peft_lora_layout(lora, adapter="default")
    if variant == "peft model. prefix":
        return fx.peft_lora_layout(lora, prefix="model.")
    if variant == "longlive lora.pt (generator_lora)":
        return _save_pt(fx.peft_lora_layout(lora, wrapper="generator_lora"), tmp / "lora.pt")
    if variant == "peft folder, alpha in adapter_config.json":
        save_file(fx.peft_lora_layout(lora, adapter="default"), tmp / "adapter_model.safetensors")
        (tmp / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 4, "peft_type": "LORA"}))
        return tmp
    if variant == "kohya dots, alpha = rank":
        return fx.kohya_lora_layout(lora, alpha=4)
    if variant == "kohya underscores, alpha = rank":
        return fx.kohya_lora_layout(lora, alpha=4, underscore=True)
    if variant == "diffusers names":  # transformer.blocks.0.attn1.to_q.lora_A.weight
        return {f"transformer.{fx.diffusers_key(m)}.lora_{ab}.weight": t
                for m, (a, b) in lora.items() for ab, t in (("A", a), ("B", b))}
    raise AssertionError(variant)


@pytest.mark.parametrize("variant", ["peft", "peft .default adapter", "peft model. prefix",
                                     "longlive lora.pt (generator_lora)", "peft folder, alpha in adapter_config.json",
                                     "kohya dots, alpha = rank", "kohya underscores, alpha = rank",
                                     "diffusers names"])
def test_lora_key_variants_merge_identically(variant, weights, tmp_path):
    lora = fx.make_lora(rank=4)
    canonical = _fresh_base(weights)
    ck.merge_lora(canonical, fx.peft_lora_layout(lora), 0.5)
    model = _fresh_base(weights)
    info = ck.merge_lora(model, _lora_file(variant, lora, tmp_path), 0.5)
    assert info["modules"] == len(lora)
    sd, want = model.state_dict(), canonical.state_dict()
    assert all(torch.equal(sd[k], want[k]) for k in want)


def test_lora_strength_zero_rank_256_and_alpha(weights, base_model, tmp_path):
    base = base_model.state_dict()
    lora256 = fx.make_lora(rank=256, std=0.02)
    model = _fresh_base(weights)
    ck.merge_lora(model, fx.peft_lora_layout(lora256), 0.0)
    assert all(torch.equal(v, base[k]) for k, v in model.state_dict().items())
    # LongLive: rank 256, alpha defaults to the rank, so the scale is the strength
    info = ck.merge_lora(model, fx.peft_lora_layout(lora256, wrapper="generator_lora"), 0.3)
    assert info["ranks"] == [256] and info["alphas"] == [256.0] and info["scales"] == [pytest.approx(0.3)]
    a, b = lora256["blocks.1.ffn.0"]
    torch.testing.assert_close(model.blocks[1].ffn[0].weight, base["blocks.1.ffn.0.weight"] + 0.3 * b @ a)
    # an alpha in the file (kohya) and an explicit alpha argument (which wins)
    lora = fx.make_lora(rank=4)
    a, b = lora["blocks.0.self_attn.q"]
    m1 = _fresh_base(weights)
    ck.merge_lora(m1, fx.kohya_lora_layout(lora, alpha=2.0), 1.0)
    torch.testing.assert_close(m1.blocks[0].self_attn.q.weight, base["blocks.0.self_attn.q.weight"] + 0.5 * b @ a)
    m2 = _fresh_base(weights)
    ck.merge_lora(m2, fx.kohya_lora_layout(lora, alpha=2.0), 1.0, alpha=8.0)
    torch.testing.assert_close(m2.blocks[0].self_attn.q.weight, base["blocks.0.self_attn.q.weight"] + 2.0 * b @ a)
    # PEFT keeps alpha in adapter_config.json next to adapter_model.safetensors
    save_file(fx.peft_lora_layout(lora), tmp_path / "adapter_model.safetensors")
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 6}))
    m3 = _fresh_base(weights)
    assert ck.merge_lora(m3, tmp_path, 1.0)["alphas"] == [6.0]
    torch.testing.assert_close(m3.blocks[0].self_attn.q.weight, base["blocks.0.self_attn.q.weight"] + 1.5 * b @ a)


def test_load_model_with_lora_path(weights, inputs, tmp_path):
    lora = fx.make_lora(rank=4)
    base_path = _save_pt(fx.training_checkpoint(fx.wan_layout(weights)), tmp_path / "longlive_base.pt")
    lora_path = _save_pt(fx.peft_lora_layout(lora, wrapper="generator_lora"), tmp_path / "lora.pt")
    model = ck.load_model(base_path, lora_path=lora_path, lora_strength=0.8, num_heads=2,
                          config_overrides=TINY_OVERRIDES)
    manual = _fresh_base(weights)
    ck.merge_lora(manual, lora_path, 0.8)
    assert torch.equal(_forward(model, inputs), _forward(manual, inputs))
    assert model.checkpoint_info["lora"]["modules"] == len(lora)


def test_lora_errors(weights, tmp_path):
    lora = fx.make_lora(rank=4)
    save_file(fx.peft_lora_layout(lora), tmp_path / "lora.safetensors")
    with pytest.raises(CheckpointError, match="this is a LoRA.*base model"):
        ck.load_model(tmp_path / "lora.safetensors")
    model = _fresh_base(weights)
    with pytest.raises(CheckpointError, match="full model, not a LoRA"):
        ck.merge_lora(model, fx.wan_layout(weights))
    big = fx.make_lora(TINY.replace(dim=128, num_heads=4), rank=4)
    with pytest.raises(CheckpointError, match="different model"):
        ck.merge_lora(model, fx.peft_lora_layout(big))
    half = {k: v for k, v in fx.peft_lora_layout(lora).items() if "lora_B" not in k or "blocks.0." not in k}
    with pytest.raises(CheckpointError, match="incomplete"):
        ck.merge_lora(model, half)


# --------------------------------------------------------------------------------------------------------------
# dtypes
# --------------------------------------------------------------------------------------------------------------


def test_bf16_load_gives_bf16_parameters(weights, tmp_path):
    save_file(fx.comfyui_layout(weights, torch.float16), tmp_path / "c.safetensors")
    model = ck.load_model(tmp_path / "c.safetensors", dtype=torch.bfloat16, num_heads=2,
                          config_overrides=TINY_OVERRIDES)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}  # fresh memory included
    assert model.checkpoint_info["stored_dtypes"] == ["float16"]
    assert ck.load_model(tmp_path / "c.safetensors", dtype="fp16", num_heads=2).dtype == torch.float16


@pytest.mark.parametrize("fp8,scaled", [(torch.float8_e4m3fn, True), (torch.float8_e5m2, True),
                                        (torch.float8_e4m3fn, False)])
def test_fp8_comfyui_file_upcasts_close_to_fp32(fp8, scaled, weights, inputs, expected, tmp_path):
    save_file(fx.comfyui_fp8_layout(weights, fp8=fp8, scaled=scaled), tmp_path / "fp8.safetensors")
    model = ck.load_model(tmp_path / "fp8.safetensors", num_heads=2, config_overrides=TINY_OVERRIDES)
    info = model.checkpoint_info
    assert info["format"] == "comfyui" and info["fp8_scaled"] == scaled
    assert all(p.dtype == torch.float32 for p in model.parameters())
    if scaled:
        assert "scaled_fp8" in info["ignored_keys"] and any(k.endswith(".scale_input") for k in info["ignored_keys"])
    w, want = model.blocks[0].ffn[0].weight, weights["blocks.0.ffn.0.weight"]
    rel = 0.07 if fp8 == torch.float8_e4m3fn else 0.13  # 3 / 2 mantissa bits
    assert ((w - want).abs() <= rel * want.abs() + 1e-3).all()
    out = _forward(model, inputs)
    assert (out - expected).abs().max() <= 0.1 * expected.abs().max()


# --------------------------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------------------------


def _stream(model, inputs_clip, stream):
    x, t, ctx = inputs_clip
    state = StreamState.new(model.config, stream)
    branch = state.branches["cond"]
    model.set_prompt_inplace(branch, ctx)
    outs = []
    with torch.no_grad():
        for start in range(0, x.shape[2], 3):
            sl = slice(start, start + 3)
            out, state.next_frame = model.forward_stream(x[:, :, sl], t[:, sl], branch, start, state.next_frame,
                                                         stream, state.counters)
            outs.append(out)
    return torch.cat(outs, 2), state


@pytest.fixture(scope="module")
def clip():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, TINY.in_dim, 12, 4, 4, generator=gen)
    t = torch.rand(1, 12, generator=gen) * 1000
    return x, t, fx.tiny_inputs()[2]


def test_base_with_fresh_memory_streams_exactly_like_the_base(weights, base_model, clip):
    stream = StreamConfig(sink_frames=3, window_frames=6, router_horizon_frames=12)
    fresh = CausalWanModel(TINY)  # what reset_parameters gives
    assert all(torch.equal(base_model.state_dict()[k], v) for k, v in fresh.memory_parameters().items())
    without = ck.load_model(fx.wan_layout(weights), num_heads=2,
                            config_overrides={**TINY_OVERRIDES, "memory": {"enabled": False}})
    assert not without.memory_parameters()
    with_memory, state = _stream(base_model, clip, stream)
    assert state.counters["memory_writes"] > 0  # memory really ran
    assert torch.equal(with_memory, _stream(without, clip, stream)[0])


def test_memory_only_file_changes_only_memory(weights, clip, tmp_path):
    trained = _model_from(fx.reference_weights(seed=5, memory=True))
    ck.save_model(trained, tmp_path / "memory.safetensors", memory_only=True)
    save_file(fx.wan_layout(weights), tmp_path / "base.safetensors")
    model = ck.load_model(tmp_path / "base.safetensors", num_heads=2, config_overrides=TINY_OVERRIDES)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    info = ck.apply_memory_file(model, tmp_path / "memory.safetensors")
    assert info["format"] == "videossm_memory" and info["tensors"] == len(trained.memory_parameters())
    after = model.state_dict()
    for k, v in after.items():
        if ck.MEMORY_INFIX in k:
            assert torch.equal(v, trained.state_dict()[k]) and not torch.equal(v, before[k]), k
        else:
            assert torch.equal(v, before[k]), k
    # the same through load_model; the memory file's metadata also gives the head count
    direct = ck.load_model(tmp_path / "base.safetensors", memory_path=tmp_path / "memory.safetensors",
                           config_overrides=TINY_OVERRIDES)
    assert direct.checkpoint_info["num_heads_from"] == "memory file metadata"
    assert all(torch.equal(direct.state_dict()[k], v) for k, v in after.items())
    stream = StreamConfig(sink_frames=3, window_frames=6, router_horizon_frames=12)
    assert not torch.equal(_stream(direct, clip, stream)[0], _stream(_fresh_base(weights), clip, stream)[0])


def test_memory_file_errors(weights, tmp_path):
    trained = _model_from(fx.reference_weights(seed=5, memory=True))
    ck.save_model(trained, tmp_path / "memory.safetensors", memory_only=True)
    with pytest.raises(CheckpointError, match="memory-only file.*base model"):
        ck.load_model(tmp_path / "memory.safetensors")
    no_memory = ck.load_model(fx.wan_layout(weights), num_heads=2, config_overrides={"memory": {"enabled": False}})
    with pytest.raises(CheckpointError, match="without memory"):
        ck.apply_memory_file(no_memory, tmp_path / "memory.safetensors")
    wide = ck.load_model(fx.wan_layout(fx.reference_weights(config=TINY.replace(dim=128, num_heads=4))), num_heads=4)
    with pytest.raises(CheckpointError, match="does not fit the model.*dim 64"):
        ck.apply_memory_file(wide, tmp_path / "memory.safetensors")
    save_file(fx.wan_layout(weights), tmp_path / "base.safetensors")
    with pytest.raises(CheckpointError, match="not a VideoSSM memory file"):
        ck.apply_memory_file(_fresh_base(weights), tmp_path / "base.safetensors")


# --------------------------------------------------------------------------------------------------------------
# Our files
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_our_files_round_trip_exactly(dtype, tmp_path):
    config = TINY.replace(text_len=6, memory=MemoryConfig(retention=0.7, retention_frames=9, init_tokens_per_frame=16))
    model = _model_from(fx.reference_weights(seed=2, config=config, memory=True), config).to(dtype)
    ck.save_model(model, tmp_path / "m.safetensors")
    assert not list(tmp_path.glob("*.partial"))
    loaded = ck.load_model(tmp_path / "m.safetensors", dtype=dtype)
    assert loaded.config == config and loaded.checkpoint_info["format"] == "videossm"
    sd = model.state_dict()
    assert set(loaded.state_dict()) == set(sd)
    assert all(torch.equal(v, sd[k]) and v.dtype == dtype for k, v in loaded.state_dict().items())
    off = ck.load_model(tmp_path / "m.safetensors", config_overrides={"memory": {"enabled": False}})
    assert off.checkpoint_info["dropped_memory_keys"] == len(model.memory_parameters()) > 0
    assert not off.memory_parameters() and off.config.memory.retention == 0.7
    ck.save_model(model, tmp_path / "mem.safetensors", memory_only=True)
    mem, info = ck.load_state_dict_any(tmp_path / "mem.safetensors")
    assert info["format"] == "videossm_memory" and info["config"] == config
    assert set(mem) == set(model.memory_parameters())


# --------------------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------------------


class _NotTensors:  # pickled as a class instance: torch.load(weights_only=True) refuses it
    def __init__(self):
        self.payload = [1, 2, 3]


def _bad(name, weights, tmp):
    wan = fx.wan_layout(weights)
    if name == "vae .pth":
        return _save_pt(fx.vae_original_state_dict(), tmp / "Wan2.1_VAE.pth")
    if name == "vae diffusers":
        save_file(fx.vae_diffusers_state_dict(), tmp / "vae.safetensors")
        return tmp / "vae.safetensors"
    if name == "vae diffusers folder":
        (tmp / "vae").mkdir()
        (tmp / "vae" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKLWan"}))
        save_file(fx.vae_diffusers_state_dict(), tmp / "vae" / "diffusion_pytorch_model.safetensors")
        return tmp / "vae"
    if name == "umt5":
        save_file(fx.umt5_state_dict(), tmp / "umt5.safetensors")
        return tmp / "umt5.safetensors"
    if name == "wan2.2 5b":
        five = fx.reference_weights(config=TINY.replace(in_dim=48, out_dim=48))
        save_file(fx.wan_layout(five), tmp / "wan2.2_ti2v_5B.safetensors")
        return tmp / "wan2.2_ti2v_5B.safetensors"
    if name == "i2v":
        save_file(fx.i2v_state_dict(weights), tmp / "i2v.safetensors")
        return tmp / "i2v.safetensors"
    if name == "i2v by input channels":
        save_file(fx.wan_layout(fx.reference_weights(config=TINY.replace(in_dim=9))), tmp / "i2v.safetensors")
        return tmp / "i2v.safetensors"
    if name == "lora":
        save_file(fx.kohya_lora_layout(fx.make_lora(), alpha=4), tmp / "lora.safetensors")
        return tmp / "lora.safetensors"
    if name == "longlive lora.pt":
        return _save_pt(fx.peft_lora_layout(fx.make_lora(), wrapper="generator_lora"), tmp / "lora.pt")
    if name in ("truncated safetensors", "garbage", "empty file"):
        save_file(wan, tmp / "x.safetensors")
        data = (tmp / "x.safetensors").read_bytes()
        data = {"truncated safetensors": data[: len(data) // 2], "garbage": bytes(range(256)) * 8,
                "empty file": b""}[name]
        (tmp / "x.safetensors").write_bytes(data)
        return tmp / "x.safetensors"
    if name == "truncated pt":
        data = _save_pt(wan, tmp / "x.pt").read_bytes()
        (tmp / "x.pt").write_bytes(data[: len(data) // 2])
        return tmp / "x.pt"
    if name == "pickled object":
        with open(tmp / "x.pt", "wb") as f:
            torch.save({"generator": _NotTensors()}, f, pickle_module=pickle)
        return tmp / "x.pt"
    if name == "empty dict":
        return _save_pt({}, tmp / "x.pt")
    if name == "missing file":
        return tmp / "nope.safetensors"
    if name == "folder without config":
        (tmp / "d").mkdir()
        save_file(fx.diffusers_layout(weights), tmp / "d" / "weights.safetensors")
        return tmp / "d"
    if name == "folder without weights":
        (tmp / "d").mkdir()
        (tmp / "d" / "config.json").write_text(json.dumps(fx.diffusers_config()))
        return tmp / "d"
    if name == "sharded folder missing a shard":
        folder = fx.save_diffusers_folder(weights, tmp / "d", shards=2)
        next(folder.glob("*-00002-of-00002.safetensors")).unlink()
        return folder
    if name == "missing keys":
        return {k: v for k, v in wan.items() if k not in ("blocks.1.cross_attn.k.weight", "head.head.bias")}
    if name == "unexpected keys":
        return {**wan, "blocks.0.self_attn.extra.weight": torch.zeros(3)}
    if name == "block gap":
        return {k: v for k, v in wan.items() if not k.startswith("blocks.0.")}
    if name == "wrong shape":
        return {**wan, "blocks.1.norm3.weight": torch.ones(63)}
    if name == "partial memory":
        full = _model_from(weights).state_dict()
        return {k: v for k, v in full.items() if "blocks.1.self_attn.memory.A_log" not in k}
    raise AssertionError(name)


ERRORS = {
    "vae .pth": "this is a VAE",
    "vae diffusers": "this is a VAE",
    "vae diffusers folder": "this is a VAE",
    "umt5": "this is a UMT5 text encoder",
    "wan2.2 5b": "Wan2.2-TI2V-5B.*not supported",
    "i2v": "image-to-video .*not supported",
    "i2v by input channels": "image-to-video .*not supported",
    "lora": "this is a LoRA.*base model",
    "longlive lora.pt": "this is a LoRA.*base model",
    "truncated safetensors": "damaged or incomplete.*download it again",
    "garbage": "damaged or incomplete",
    "empty file": "empty",
    "truncated pt": "damaged or incomplete",
    "pickled object": "code or objects.*convert it to safetensors",
    "empty dict": "holds no tensors",
    "missing file": "file not found",
    "folder without config": "without config.json",
    "folder without weights": "no diffusion_pytorch_model.safetensors",
    "sharded folder missing a shard": "shard index lists files that are not there",
    "missing keys": r"2 missing keys: blocks\.1\.cross_attn\.k\.weight, head\.head\.bias",
    "unexpected keys": r"1 unexpected keys: blocks\.0\.self_attn\.extra\.weight",
    "block gap": r"state dict: transformer blocks .* missing blocks \[0\]",
    "wrong shape": r"wrong shape: blocks\.1\.norm3\.weight \(63,\) \(model: \(64,\)\)",
    "partial memory": r"missing keys: blocks\.1\.self_attn\.memory\.A_log",
}


@pytest.mark.parametrize("name", list(ERRORS))
def test_bad_inputs_give_clear_errors(name, weights, tmp_path):
    source = _bad(name, weights, tmp_path)
    with pytest.raises(CheckpointError, match=ERRORS[name]) as err:
        ck.load_model(source, num_heads=2)
    assert isinstance(err.value, ValueError)
    assert "Traceback" not in str(err.value)


# --------------------------------------------------------------------------------------------------------------
# LoRAs on training checkpoints (issue #20)
# --------------------------------------------------------------------------------------------------------------


def test_a_lora_merges_into_generator_not_generator_ema(weights, inputs, tmp_path):
    """LongLive trains its LoRA on ``generator``; a base file that also holds ``generator_ema`` must not get
    the LoRA merged into the EMA weights (without a LoRA, EMA stays the default)."""
    ema = fx.reference_weights(seed=7)
    base_path = _save_pt(fx.training_checkpoint(fx.wan_layout(weights), ema=fx.wan_layout(ema)),
                         tmp_path / "longlive_base.pt")
    lora = fx.make_lora(rank=4)
    lora_path = _save_pt(fx.peft_lora_layout(lora, wrapper="generator_lora"), tmp_path / "lora.pt")
    model = ck.load_model(base_path, lora_path=lora_path, num_heads=2, config_overrides=TINY_OVERRIDES)
    manual = _fresh_base(weights)
    ck.merge_lora(manual, lora_path, 1.0)
    assert torch.equal(_forward(model, inputs), _forward(manual, inputs))
    plain = ck.load_model(base_path, num_heads=2, config_overrides=TINY_OVERRIDES)
    ema_model = ck.load_model(fx.wan_layout(ema), num_heads=2, config_overrides=TINY_OVERRIDES)
    assert torch.equal(_forward(plain, inputs), _forward(ema_model, inputs))


def test_lora_alpha_comes_from_the_peft_config_in_the_file(weights, tmp_path):
    lora = fx.make_lora(rank=4)
    path = _save_pt({**fx.peft_lora_layout(lora, wrapper="generator_lora"),
                     "peft_config": {"default": {"r": 4, "lora_alpha": 8}}}, tmp_path / "lora.pt")
    model = _fresh_base(weights)
    info = ck.merge_lora(model, path, 1.0)
    assert info["alphas"] == [8.0] and info["scales"] == [2.0]
    a, b = lora["blocks.0.self_attn.q"]
    torch.testing.assert_close(model.blocks[0].self_attn.q.weight, weights["blocks.0.self_attn.q.weight"] + 2.0 * b @ a)


def test_a_training_checkpoint_given_as_a_lora_is_named(weights, tmp_path):
    base_path = _save_pt(fx.training_checkpoint(fx.wan_layout(weights), ema=fx.wan_layout(weights)),
                         tmp_path / "longlive_base.pt")
    with pytest.raises(CheckpointError, match="this is a full model .*, not a LoRA"):
        ck.merge_lora(_fresh_base(weights), base_path)
