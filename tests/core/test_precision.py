"""Every path in bf16 and fp16 compute (issue #22), each compared with the same path in float32.

The rule: the memory state, the gate sums and the delta-rule math stay float32, the residual stream of a
WanBlock is float32 (Wan's design), everything else computes in the model's dtype.

Errors are measured relative to the output's scale, ``||a - b|| / ||b||`` (``rel``). bf16 keeps 8 significant
bits (unit roundoff 2^-9 = 2.0e-3), fp16 11 (2^-12 = 2.4e-4), so bf16 tolerances sit about 8x above fp16's.
Each tolerance below is the error measured here on the CPU (torch 2.13, in the comment beside it) with a
margin of about 3x, room for the ordering of reductions on other hardware and for changes that move rounding
around (caches in the compute dtype, the sampler staying on the device) without hiding a real precision bug:
a path that silently ran in the wrong dtype, or rounded the memory state to 8 bits, lands far outside.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from videossm_core import checkpoints as ck
from videossm_core.config import StreamConfig
from videossm_core.generate import generate_video, new_stream, prefill_from_frames
from videossm_core.sampling import PromptSegment, StreamSampler
from videossm_core.schedule import parse_schedule
from videossm_core.state import StreamState
from videossm_core.vae import build_vae, small_vae_config

from . import checkpoint_fixtures as fx
from .tiny import make_tiny_model, text

BF16, FP16 = torch.bfloat16, torch.float16
DTYPES = pytest.mark.parametrize("dtype", [BF16, FP16], ids=["bf16", "fp16"])

# Relative tolerance per path and dtype; measured value in the comment (bf16 / fp16).
TOL = {
    "one_shot": {BF16: 1.5e-2, FP16: 2e-3},  # tiny model, block-causal mask: 4.1e-3 / 5.3e-4 (fp8: 3.9e-3 / 4.7e-4)
    "streaming": {BF16: 1.5e-2, FP16: 2e-3},  # forward_stream outputs over 8 chunks: 4.8e-3 / 6.2e-4
    "memory_state": {BF16: 2.5e-2, FP16: 3e-3},  # the float32 state fed by bf16/fp16 keys and values: 7.5e-3 / 9.6e-4
    "sampler": {BF16: 1.5e-2, FP16: 2e-3},  # latents of 6 chunks with a switch: 4.3e-3 / 5.3e-4
    "vae_decode": {BF16: 5e-2, FP16: 6e-3},  # 1.6e-2 / 2.0e-3 (the frames are rounded to the dtype too)
    "vae_encode": {BF16: 1e-2, FP16: 1e-3},  # 2.8e-3 / 3.3e-4
    "demo_latents": {BF16: 7e-2, FP16: 8e-3},  # the shipped generator, 3 chunks and a switch: 2.4e-2 / 2.6e-3
    "demo_frames": {BF16: 5e-2, FP16: 1e-2},  # its decoded uint8 frames: 1.8e-2 / 3.1e-3
    "prefill": {BF16: 3.5e-2, FP16: 4e-3},  # cached keys and memory after a clip prefill: <= 1.2e-2 / 1.4e-3
}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    return float((a - b).norm() / b.norm())


def check(path: str, dtype: torch.dtype, out, expected) -> None:
    """``rel(out, expected) <= TOL[path][dtype]``; prints the measured error (``pytest -s`` shows them)."""
    err = rel(out, expected)
    print(f"{path} {str(dtype).replace('torch.', '')}: rel error {err:.2e} (tolerance {TOL[path][dtype]:.1e})")
    assert err <= TOL[path][dtype], f"{path}: relative error {err:.2e} > {TOL[path][dtype]:.1e}"


@pytest.fixture(autouse=True)
def _one_thread():
    # One intra-op thread: on shared or oversubscribed cores more threads are much slower (and the numbers
    # above were measured so).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny(dtype: torch.dtype, **overrides):
    return make_tiny_model(active_memory=True, **overrides).to(dtype)


def _check_cache_dtypes(state: StreamState, dtype: torch.dtype) -> None:
    """K/V caches and cross-attention K/V in the compute dtype; the memory and its gates float32."""
    for branch in state.branches.values():
        for layer in branch.layers:
            for name in ("k", "v", "text_k", "text_v"):
                assert getattr(layer, name).dtype == dtype, name
            for name in ("g", "beta", "memory"):
                assert getattr(layer, name).dtype == torch.float32, name


def _cache_slot_dtypes(tensors: dict[str, torch.Tensor]) -> set[torch.dtype]:
    """The dtypes of a VAE feature cache's slot tensors (keys ending in the slot number; the slot kinds and
    counters are integers)."""
    return {t.dtype for k, t in tensors.items() if k.rsplit(".", 1)[-1].isdigit()}


# ---------------------------------------------------------------------------------------------- the transformer

@DTYPES
def test_one_shot_forward(dtype):
    gen = torch.Generator().manual_seed(1)
    x, t = torch.randn(1, 4, 9, 4, 4, generator=gen), torch.rand(1, 9, generator=gen) * 1000
    stream = StreamConfig(window_frames=6)
    ref, low = _tiny(torch.float32), _tiny(dtype)
    with torch.no_grad():
        mask = ref.causal_mask(9, 4, 4, stream)
        expected, out = ref(x, t, text(0), mask=mask), low(x, t, text(0), mask=mask)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    check("one_shot", dtype, out, expected)


def _stream(model, stream: StreamConfig, frames: int, calls_per_chunk: int = 3):
    """A clip through forward_stream chunk by chunk (two noisy calls, then the clean one that stays cached)."""
    gen = torch.Generator().manual_seed(2)
    x, t = torch.randn(1, 4, frames, 4, 4, generator=gen), torch.rand(1, frames, generator=gen) * 1000
    state = StreamState.new(model.config, stream)
    branch = state.branches["cond"]
    outs = []
    with torch.no_grad():
        model.set_prompt_inplace(branch, text(0))
        for start in range(0, frames, 3):
            for call in range(calls_per_chunk):
                noisy = call < calls_per_chunk - 1
                xin = torch.randn(1, 4, 3, 4, 4, generator=gen) if noisy else x[:, :, start:start + 3]
                out, state.next_frame = model.forward_stream(xin, t[:, start:start + 3], branch, start,
                                                             state.next_frame, stream, state.counters)
            outs.append(out)
    return torch.cat(outs, 2), state


@DTYPES
def test_streaming_with_window_sink_and_active_memory(dtype):
    stream = StreamConfig(window_frames=6, sink_frames=3, router_horizon_frames=30)
    expected, ref_state = _stream(_tiny(torch.float32), stream, 24)
    out, state = _stream(_tiny(dtype), stream, 24)
    assert state.counters["evicted_frames"] == 24 - 6 and state.counters["memory_writes"] == 6
    _check_cache_dtypes(state, dtype)
    assert torch.isfinite(out).all()
    check("streaming", dtype, out, expected)
    for layer, ref_layer in zip(state.branches["cond"].layers, ref_state.branches["cond"].layers):
        assert ref_layer.memory.norm() > 0  # the memory was written (and is read: active_memory)
        check("memory_state", dtype, layer.memory, ref_layer.memory)


SEGMENTS = [PromptSegment(0, "first", text(1)), PromptSegment(3, "second", text(2))]
SAMPLER_STREAM = StreamConfig(window_frames=6, sink_frames=3, router_horizon_frames=30)


def _sample(model, chunks: int, state: StreamState | None = None):
    state = state or StreamState.new(model.config, SAMPLER_STREAM, seed=5)
    latents = [out.latents for out in StreamSampler(model).stream_chunks_inplace(state, SEGMENTS, chunks, (4, 4))]
    return torch.cat(latents, 2), state


@DTYPES
def test_sampler_with_a_prompt_switch_recache(dtype):
    """Few-step sampling over 6 chunks: the window fills, evicts into the memory from chunk 2, and the prompt
    switch at chunk 3 re-caches the window under the new prompt."""
    expected, _ = _sample(_tiny(torch.float32), 6)
    out, state = _sample(_tiny(dtype), 6)
    assert state.counters["recaches"] == 1 and state.counters["memory_writes"] == 4
    _check_cache_dtypes(state, dtype)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    check("sampler", dtype, out, expected)


@DTYPES
def test_saved_stream_resumes_bit_identically_in_its_dtype(dtype, tmp_path):
    model = _tiny(dtype)
    uninterrupted, _ = _sample(model, 6)
    head, state = _sample(model, 3)
    state.save(tmp_path / "state.safetensors")
    loaded = StreamState.load(tmp_path / "state.safetensors")
    _check_cache_dtypes(loaded, dtype)  # the file keeps the compute dtype; nothing is widened or narrowed
    tail, _ = _sample(model, 3, loaded)  # crosses the prompt switch at chunk 3
    assert torch.equal(torch.cat([head, tail], 2), uninterrupted)


# ---------------------------------------------------------------------------------------------- the VAE

@DTYPES
def test_vae_streaming_decode_and_encode(dtype):
    ref, vae = build_vae(small_vae_config(), seed=0), build_vae(small_vae_config(), seed=0, dtype=dtype)
    latents = torch.randn(1, 16, 6, 2, 2, generator=torch.Generator().manual_seed(1))
    expected = ref.decode(latents)
    decoder = vae.stream_decoder()
    head = decoder.decode_chunk(latents[:, :, :3])
    assert _cache_slot_dtypes(decoder.state_tensors()) == {dtype}
    decoder = type(decoder).from_state_tensors(vae, decoder.state_tensors())  # as after a resume
    frames = torch.cat([head, decoder.decode_chunk(latents[:, :, 3:])], 2)
    assert frames.dtype == dtype
    assert torch.equal(frames, vae.decode(latents))  # chunked == whole in this dtype too
    check("vae_decode", dtype, frames, expected)

    clip = torch.rand(1, 3, 21, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    expected = ref.encode(clip)
    encoder = vae.stream_encoder()
    z = torch.cat([encoder.encode_chunk(clip[:, :, :9]), encoder.encode_chunk(clip[:, :, 9:])], 2)
    assert z.dtype == dtype and z.shape == expected.shape
    assert torch.equal(z, vae.encode(clip))
    check("vae_encode", dtype, z, expected)


# ---------------------------------------------------------------------------------------------- the whole job

SCHEDULE = parse_schedule("0s: a red circle bouncing on a dark background\n"
                          "1.3s: a blue square bouncing on a light background\n")  # chunk 2


@pytest.fixture(scope="module")
def demo_runs():
    """``generate_video`` with the shipped demo bundle loaded in each dtype: 3 chunks at 32x32 px (8x8 latents)
    with a prompt switch (and re-cache of the window) at chunk 2. Module-scoped: each dtype runs once."""
    from tests.demo_weights import require_demo_weights
    from videossm_core.demo.bundle import load_demo_bundle

    require_demo_weights()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    runs = {}
    try:
        for dtype in (torch.float32, BF16, FP16):
            bundle = load_demo_bundle(dtype=dtype)
            assert bundle.model.dtype == dtype and bundle.vae.dtype == dtype

            def encode(prompt, b=bundle):
                return b.text_encoder.encode([prompt])

            events = list(generate_video(bundle.model, bundle.vae, encode, SCHEDULE, 2.0, 32, 32, seed=3,
                                         stream=bundle.stream_config, sampling=bundle.sampling_config))
            runs[dtype] = (torch.cat([e.latents.cpu() for e in events], 2),
                           np.concatenate([e.frames for e in events]), events[-1])
    finally:
        torch.set_num_threads(threads)
    return runs


@DTYPES
def test_generate_video_with_the_demo_bundle(demo_runs, dtype):
    ref_latents, ref_frames, _ = demo_runs[torch.float32]
    latents, frames, last = demo_runs[dtype]
    assert last.switched and last.state.counters["recaches"] == 1
    _check_cache_dtypes(last.state, dtype)
    assert _cache_slot_dtypes(last.state.vae_cache) == {dtype}
    assert frames.shape == ref_frames.shape == (33, 32, 32, 3)
    check("demo_latents", dtype, latents, ref_latents)
    check("demo_frames", dtype, frames.astype(np.float64), ref_frames.astype(np.float64))


@DTYPES
def test_continue_from_clip(dtype):
    """``prefill_from_frames`` (Continue From Clip) in the compute dtype: the clip's latents fill the window and
    the memory, the decoder's caches are warm, and the continuation follows the float32 one."""
    clip = torch.rand(1, 3, 33, 16, 16, generator=torch.Generator().manual_seed(4)) * 2 - 1
    stream = StreamConfig(window_frames=6, sink_frames=3, router_horizon_frames=30)
    states = {}
    for dt in (torch.float32, dtype):
        model, vae = _tiny(dt, in_dim=16, out_dim=16), build_vae(small_vae_config(), seed=0, dtype=dt)
        state = prefill_from_frames(model, vae, new_stream(model, 0, stream), clip.to(dt), "first", text(1))
        assert state.next_frame == 9 and state.counters["memory_writes"] == 1
        states[dt] = (model, state)
    (ref_model, ref_state), (model, state) = states[torch.float32], states[dtype]
    _check_cache_dtypes(state, dtype)
    assert _cache_slot_dtypes(state.vae_cache) == {dtype}
    for layer, ref_layer in zip(state.branches["cond"].layers, ref_state.branches["cond"].layers):
        check("prefill", dtype, layer.k, ref_layer.k)
        check("prefill", dtype, layer.memory, ref_layer.memory)
    segments = [PromptSegment(0, "first", text(1))]
    expected = next(StreamSampler(ref_model).stream_chunks_inplace(ref_state, segments, 1, (2, 2))).latents
    out = next(StreamSampler(model).stream_chunks_inplace(state, segments, 1, (2, 2))).latents
    check("sampler", dtype, out, expected)


# ---------------------------------------------------------------------------------------------- loading

def _inexact_weights() -> dict[str, torch.Tensor]:
    """fp32 weights with bits below bf16's and fp16's precision (the fixtures' reference weights are exactly
    representable in both, which would hide a double rounding)."""
    gen = torch.Generator().manual_seed(3)
    return {k: v * (1 + 1e-3 * torch.randn(v.shape, generator=gen)) for k, v in fx.reference_weights(seed=1).items()}


@DTYPES
def test_lora_is_merged_in_float32_before_the_cast(dtype, tmp_path):
    save_file(fx.wan_layout(_inexact_weights()), str(tmp_path / "wan.safetensors"))
    lora = fx.peft_lora_layout(fx.make_lora(rank=4, std=0.05))
    kw = dict(num_heads=fx.TINY.num_heads, lora_path=lora, lora_strength=0.8)
    full = ck.load_model(tmp_path / "wan.safetensors", dtype=torch.float32, **kw)
    low = ck.load_model(tmp_path / "wan.safetensors", dtype=dtype, **kw)
    assert low.checkpoint_info["lora"]["modules"] == len(fx.make_lora())
    expected = full.state_dict()
    for name, p in low.state_dict().items():
        assert p.dtype == dtype, name
        # one rounding of the float32 merge, not the merge of already rounded weights
        assert torch.equal(p, expected[name].to(dtype)), name


@DTYPES
@pytest.mark.parametrize("scaled", [True, False], ids=["scaled-fp8", "fp8"])
def test_fp8_checkpoint_upcasts_to_the_compute_dtype(dtype, scaled, tmp_path):
    save_file(fx.comfyui_fp8_layout(_inexact_weights(), scaled=scaled), str(tmp_path / "fp8.safetensors"))
    full = ck.load_model(tmp_path / "fp8.safetensors", dtype=torch.float32, num_heads=fx.TINY.num_heads)
    low = ck.load_model(tmp_path / "fp8.safetensors", dtype=dtype, num_heads=fx.TINY.num_heads)
    assert "float8_e4m3fn" in low.checkpoint_info["stored_dtypes"]
    expected = full.state_dict()
    for name, p in low.state_dict().items():
        assert p.dtype == dtype, name
        assert torch.equal(p, expected[name].to(dtype)), name  # dequantised in float32, rounded once
    x, t, ctx = fx.tiny_inputs()
    with torch.no_grad():
        check("one_shot", dtype, low(x, t, ctx), full(x, t, ctx))


# ---------------------------------------------------------------------------------------------- training
# One optimiser step of each stage with ``autocast="bf16"`` (``--autocast bf16``), beside the same step in float32:
# the loss is finite and not the float32 one (the forward passes really ran in bf16) but close to it, the weights
# move and stay float32, and the memory's gates and state stay float32.

def _training():
    from videossm_core.training.distributed import DistEnv

    from . import test_training as tt

    return DistEnv(), tt


def _moved(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> bool:
    return any(not torch.equal(before[k], v) for k, v in after.items())


# Losses under bf16 autocast vs float32, relative (measured): the flow-matching losses (teacher, ODE regression,
# critic) 1e-4 to 7e-4 apart; the DMD loss 0.18 to 0.33 apart: it is the squared difference of two nearly equal
# scores (the critic starts as a copy of the teacher), ~1e-4 in size, so bf16 moves it by a large fraction.
LOSS_TOL = {"flow": 5e-3, "dmd": 1.0}


def _loss_tol(phase: str) -> float:
    return LOSS_TOL["dmd" if phase == "dmd" else "flow"]


def _close_but_not_equal(low: float, full: float, tol: float) -> None:
    print(f"loss {low:.6g} under bf16 autocast, {full:.6g} in float32: {abs(low - full) / abs(full):.2e} apart")
    assert np.isfinite(low) and low != full and low == pytest.approx(full, rel=tol)


def test_teacher_step_under_bf16_autocast(tmp_path):
    from videossm_core.training.checkpointing import load_generator, save_generator
    from videossm_core.training.cli import build_parser, teacher_config
    from videossm_core.training.teacher import TeacherTrainConfig, train_teacher

    env, tt = _training()
    args = build_parser().parse_args(["teacher", "--workdir", "w", "--vae", "v", "--autocast", "bf16"])
    assert teacher_config(args).autocast == "bf16"
    init = make_tiny_model(seed=5)  # a non-zero head, so the loss depends on the forward's precision
    save_generator(init, tmp_path / "init.safetensors")
    losses = {}
    for mode in (None, "bf16"):
        workdir = tmp_path / str(mode)
        cfg = TeacherTrainConfig(workdir=str(workdir), steps=1, batch_size=2, lr=1e-3, warmup=0, latent_frames=6,
                                 fixed_batch=True, checkpoint_every=0, log_every=1, eval_clips=0, autocast=mode,
                                 init=str(tmp_path / "init.safetensors"))
        losses[mode] = train_teacher(cfg, env, dataset=tt._dataset(), log=tt._quiet_log(workdir))["losses"][0]
    _close_but_not_equal(losses["bf16"], losses[None], LOSS_TOL["flow"])  # measured 1.3e-4
    trained = load_generator(tmp_path / "bf16" / "teacher.safetensors").state_dict()
    assert all(v.dtype == torch.float32 for v in trained.values())
    assert _moved(init.state_dict(), trained)


def test_stage1_steps_under_bf16_autocast(tmp_path):
    """One ODE warm-start step (teacher ODE pairs, teacher-forced streaming student) and one DMD step."""
    from videossm_core.training.checkpointing import load_generator
    from videossm_core.training.cli import build_parser, distill_config
    from videossm_core.training.stage1 import Stage1Config, train_stage1

    env, tt = _training()
    args = build_parser().parse_args(["stage1", "--workdir", "w", "--teacher", "t", "--autocast", "bf16"])
    assert distill_config(Stage1Config, args).autocast == "bf16"
    runs = {}
    for mode in (None, "bf16"):
        cfg = tt._stage1_cfg(tmp_path / str(mode), steps=1, ode_steps=1, autocast=mode)
        runs[mode] = train_stage1(cfg, env, teacher=make_tiny_model(seed=1), conditioner=tt._conditioner(),
                                  log=tt._quiet_log(tmp_path / str(mode)))["history"]
    for phase in ("ode", "dmd", "critic"):  # measured 2.0e-4, 0.33, 4.3e-4
        _close_but_not_equal(runs["bf16"][phase][0], runs[None][phase][0], _loss_tol(phase))
    student = load_generator(tmp_path / "bf16" / "student.safetensors").state_dict()
    assert all(v.dtype == torch.float32 for v in student.values())
    assert _moved(make_tiny_model(seed=1).state_dict(), student)


def test_stage2_step_under_bf16_autocast(tmp_path, monkeypatch):
    """A stage-2 step whose window evicts into the live memory: the memory's parameters learn, and its
    state and gates stay float32 under autocast."""
    from videossm_core.training import stage2 as stage2_module
    from videossm_core.training.cli import build_parser, distill_config

    env, tt = _training()
    args = build_parser().parse_args(["stage2", "--workdir", "w", "--teacher", "t", "--student", "s",
                                      "--autocast", "bf16"])
    assert distill_config(stage2_module.Stage2Config, args).autocast == "bf16"
    states = []

    class Recording(stage2_module.SelfRollout):
        def new_state(self, *a, **kw):
            states.append(super().new_state(*a, **kw))
            return states[-1]

    monkeypatch.setattr(stage2_module, "SelfRollout", Recording)
    runs = {}
    for mode in (None, "bf16"):
        student = make_tiny_model(seed=1, active_memory=True)  # a memory that is read, so its gates get gradients
        before = {k: v.clone() for k, v in student.memory_parameters().items()}
        cfg = tt._stage2_cfg(tmp_path / str(mode), steps=1, latent_frames=12, autocast=mode)
        runs[mode] = stage2_module.train_stage2(cfg, env, teacher=make_tiny_model(seed=1), student=student,
                                                critic=make_tiny_model(seed=1), conditioner=tt._conditioner(),
                                                log=tt._quiet_log(tmp_path / str(mode)))["history"]
    for phase in ("dmd", "critic"):  # measured 0.18, 7.3e-4
        _close_but_not_equal(runs["bf16"][phase][0], runs[None][phase][0], _loss_tol(phase))
    after = student.memory_parameters()
    assert all(v.dtype == torch.float32 for v in after.values())
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any("out_gate" in k for k in changed) and any("alpha_proj" in k for k in changed), changed
    state = states[-1]
    assert state.counters["memory_writes"] > 0
    for layer in state.branches["cond"].layers:
        assert layer.memory.dtype == layer.g.dtype == layer.beta.dtype == torch.float32
        assert layer.memory.norm() > 0
