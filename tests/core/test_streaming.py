"""Streaming with caches equals the one-shot forward / the slow reference; memory identity; positions."""

import pytest
import torch

from videossm_core.config import StreamConfig
from videossm_core.model.reference import ReferenceStream
from videossm_core.model.rope import PositionLimitError
from videossm_core.state import StreamState

from .tiny import make_tiny_model, text

CHUNK = 3
H = W = 4  # latent size -> 2x2 = 4 tokens per frame


def _clip(frames: int, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, frames, H, W, generator=gen)
    t = torch.rand(1, frames, generator=gen) * 1000
    return x, t


def _stream(model, stream, x, t, ctx, calls_per_chunk=1, garbage_seed=99):
    """Run a clip through forward_stream chunk by chunk. With calls_per_chunk > 1 the earlier calls
    of a chunk see garbage inputs: only the last call's K/V may survive in the cache."""
    state = StreamState.new(model.config, stream)
    branch = state.branches["cond"]
    model.set_prompt_inplace(branch, ctx)
    gen = torch.Generator().manual_seed(garbage_seed)
    outs = []
    for start in range(0, x.shape[2], CHUNK):
        sl = slice(start, start + CHUNK)
        for call in range(calls_per_chunk):
            last = call == calls_per_chunk - 1
            xin = x[:, :, sl] if last else torch.randn(x[:, :, sl].shape, generator=gen)
            out, state.next_frame = model.forward_stream(xin, t[:, sl], branch, start, state.next_frame,
                                                         stream, state.counters)
        outs.append(out)
    return torch.cat(outs, 2), state


@pytest.mark.parametrize("stream", [
    StreamConfig(memory=False),  # LongLive: 3 sink + 9 window frames
    StreamConfig(memory=False, sink_frames=0, window_frames=6),
    StreamConfig(memory=False, full_cache=True),  # Self-Forcing: growing cache
])
@pytest.mark.parametrize("calls_per_chunk", [1, 3])
def test_streaming_equals_one_shot_block_causal_forward(stream, calls_per_chunk):
    model = make_tiny_model()
    x, t = _clip(30)
    ctx = text(0)
    with torch.no_grad():
        streamed, state = _stream(model, stream, x, t, ctx, calls_per_chunk)
        one_shot = model(x, t, ctx, mask=model.causal_mask(30, H, W, stream))
    torch.testing.assert_close(streamed, one_shot, rtol=1e-5, atol=1e-5)
    if not stream.full_cache:
        assert state.window_occupancy() == stream.window_frames  # the window filled and rolled


def test_window_really_limits_attention():
    """The equivalence above is not vacuous: a longer window gives different outputs."""
    model = make_tiny_model()
    x, t = _clip(30)
    ctx = text(0)
    with torch.no_grad():
        a, _ = _stream(model, StreamConfig(memory=False), x, t, ctx)
        b, _ = _stream(model, StreamConfig(memory=False, full_cache=True), x, t, ctx)
    assert torch.allclose(a[:, :, :12], b[:, :, :12], atol=1e-5)  # identical until the first eviction
    assert (a[:, :, 12:] - b[:, :, 12:]).abs().max() > 1e-3


@pytest.mark.parametrize("position_mode", ["absolute", "unbounded"])
def test_streaming_with_memory_equals_rebuild_from_scratch_reference(position_mode):
    model = make_tiny_model(active_memory=True)
    stream = StreamConfig(position_mode=position_mode, router_horizon_frames=30)
    x, t = _clip(36)
    ctx = text(0)
    ref = ReferenceStream(model, stream)
    ref.set_prompt(ctx)
    state = StreamState.new(model.config, stream)
    branch = state.branches["cond"]
    model.set_prompt_inplace(branch, ctx)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for start in range(0, 36, CHUNK):
            sl = slice(start, start + CHUNK)
            for call in range(3):  # two noisy calls, then the clean one that stays in the cache
                xin = x[:, :, sl] if call == 2 else torch.randn(x[:, :, sl].shape, generator=gen)
                fast, state.next_frame = model.forward_stream(xin, t[:, sl], branch, start, state.next_frame,
                                                              stream, state.counters)
                slow = ref.forward(xin, t[:, sl], start)
                torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-5)
        # a re-cache of window frames (as on a prompt switch) also agrees, and leaves memory alone
        before = [layer.memory.clone() for layer in branch.layers]
        for start in (27, 30):
            sl = slice(start, start + CHUNK)
            fast, _ = model.forward_stream(x[:, :, sl], torch.zeros(1, CHUNK), branch, start,
                                           state.next_frame, stream, state.counters)
            torch.testing.assert_close(fast, ref.forward(x[:, :, sl], torch.zeros(1, CHUNK), start),
                                       rtol=1e-4, atol=1e-5)
        for layer, old in zip(branch.layers, before):
            assert torch.equal(layer.memory, old)
    assert state.counters["evicted_frames"] == 36 - 12
    assert all(n > 0 for n in state.memory_norms())


def test_memory_changes_outputs_once_tokens_are_evicted():
    model = make_tiny_model(active_memory=True)
    x, t = _clip(30)
    ctx = text(0)
    with torch.no_grad():
        on, _ = _stream(model, StreamConfig(memory=True), x, t, ctx)
        off, _ = _stream(model, StreamConfig(memory=False), x, t, ctx)
    assert torch.equal(on[:, :, :12], off[:, :, :12])  # chunk 4 (frames 12-14) is the first to evict
    assert (on[:, :, 12:] - off[:, :, 12:]).abs().max() > 1e-4


def test_fresh_memory_is_exactly_the_base_model():
    model = make_tiny_model(active_memory=False)  # memory parameters as initialised
    x, t = _clip(30)
    ctx = text(0)
    with torch.no_grad():
        on, state = _stream(model, StreamConfig(memory=True), x, t, ctx, calls_per_chunk=2)
        off, _ = _stream(model, StreamConfig(memory=False), x, t, ctx, calls_per_chunk=2)
    assert state.counters["memory_writes"] > 0 and max(state.memory_norms()) > 0  # memory was really written
    assert torch.equal(on, off)


def test_unbounded_positions_run_past_the_rope_table_and_absolute_refuses():
    model = make_tiny_model()
    ctx = text(0)
    frames = 1032  # > 1024 latent frames (~4.3 minutes of video)
    x = torch.randn(1, 4, CHUNK, 2, 2)
    t = torch.zeros(1, CHUNK)
    for mode in ("unbounded", "absolute"):
        stream = StreamConfig(memory=True, position_mode=mode)
        state = StreamState.new(model.config, stream)
        branch = state.branches["cond"]
        model.set_prompt_inplace(branch, ctx)
        with torch.no_grad():
            if mode == "absolute":
                with pytest.raises(PositionLimitError, match="position_mode='unbounded'"):
                    for start in range(0, frames, CHUNK):
                        _, state.next_frame = model.forward_stream(x, t, branch, start, state.next_frame, stream)
                assert state.next_frame == 1023  # refused at the chunk that would use position 1024
            else:
                for start in range(0, frames, CHUNK):
                    out, state.next_frame = model.forward_stream(x, t, branch, start, state.next_frame, stream)
                assert state.next_frame == frames and torch.isfinite(out).all()
                assert state.window_occupancy() == stream.window_frames


def test_unbounded_positions_equal_absolute_without_a_sink():
    """RoPE scores depend on position differences only; without a sink the window-relative
    positions differ from absolute ones by a constant, so the outputs agree."""
    model = make_tiny_model()
    x, t = _clip(30)
    ctx = text(0)
    with torch.no_grad():
        a, _ = _stream(model, StreamConfig(memory=False, sink_frames=0, window_frames=6), x, t, ctx)
        b, _ = _stream(model, StreamConfig(memory=False, sink_frames=0, window_frames=6,
                                           position_mode="unbounded"), x, t, ctx)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_calls_outside_the_window_are_refused():
    model = make_tiny_model()
    x, t = _clip(30)
    ctx = text(0)
    stream = StreamConfig(memory=False)
    with torch.no_grad():
        _, state = _stream(model, stream, x, t, ctx)
        with pytest.raises(ValueError, match="only the current window can be recomputed"):
            model.forward_stream(x[:, :, :3], t[:, :3], state.branches["cond"], 3, state.next_frame, stream)
        with pytest.raises(ValueError, match="next frames"):
            model.forward_stream(x[:, :, :3], t[:, :3], state.branches["cond"], 33, state.next_frame, stream)


def test_recurrent_memory_update_form_matches_chunkwise():
    model = make_tiny_model(active_memory=True)
    x, t = _clip(24)
    ctx = text(0)
    with torch.no_grad():
        fast, _ = _stream(model, StreamConfig(memory_update="chunkwise"), x, t, ctx)
        slow, _ = _stream(model, StreamConfig(memory_update="recurrent"), x, t, ctx)
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-5)
    assert (fast - _stream(model, StreamConfig(memory=False), x, t, ctx)[0]).abs().max() > 1e-4


def test_router_horizon_is_the_models_unless_the_stream_overrides_it():
    """T is the one the weights were trained with (MemoryConfig), fixed into a new state; a stream may override it;
    a config saved before the field existed gets 240 (the demo's)."""
    import dataclasses

    from videossm_core.config import ModelConfig, get_preset

    tiny = get_preset("tiny")
    model = make_tiny_model(active_memory=True, memory=dataclasses.replace(tiny.memory, router_horizon_frames=12))
    x, t = _clip(24)
    ctx = text(0)
    with torch.no_grad():
        default, state = _stream(model, StreamConfig(), x, t, ctx)
        same, _ = _stream(model, StreamConfig(router_horizon_frames=12), x, t, ctx)
        other, _ = _stream(model, StreamConfig(router_horizon_frames=240), x, t, ctx)
    assert state.stream.router_horizon_frames == 12
    assert torch.equal(default, same)
    assert (default[:, :, 12:] - other[:, :, 12:]).abs().max() > 1e-4  # T matters once the memory is read
    old = tiny.to_dict()
    del old["memory"]["router_horizon_frames"]
    assert ModelConfig.from_dict(old).memory.router_horizon_frames == 240
    assert StreamConfig.from_dict({"router_horizon_frames": 30}).router_horizon_frames == 30  # old states keep theirs
