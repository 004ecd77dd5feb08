"""The chunk sampler: schedule math, once-per-chunk eviction, prompt switches, CFG, state files."""

import json
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
from safetensors.torch import save_file

import videossm_core.model.memory as memory_module
from videossm_core.config import SamplingConfig, StreamConfig
from videossm_core.sampling import PromptSegment, StreamSampler, chunk_noise, warped_timesteps
from videossm_core.state import StateFileError, StreamState

from .tiny import make_tiny_model, text

REPO = Path(__file__).resolve().parents[2]
HW = (4, 4)


def _segments(switch_at=None):
    segs = [PromptSegment(0, "first", text(0))]
    if switch_at is not None:
        segs.append(PromptSegment(switch_at, "second", text(1)))
    return segs


def _run(model, state, segments, n):
    return [out.latents for out in StreamSampler(model).stream_chunks_inplace(state, segments, n, HW)]


def test_warped_timesteps_match_self_forcing():
    assert warped_timesteps(SamplingConfig()) == pytest.approx([1000.0, 937.5, 833.3333, 625.0], abs=1e-3)
    assert warped_timesteps(SamplingConfig(warp=False)) == [1000.0, 750.0, 500.0, 250.0]


def test_noise_depends_only_on_the_stream_position():
    a = chunk_noise(7, 3, 1, (2, 3))
    assert torch.equal(a, chunk_noise(7, 3, 1, (2, 3)))
    assert not torch.equal(a, chunk_noise(7, 3, 2, (2, 3)))
    assert not torch.equal(a, chunk_noise(8, 3, 1, (2, 3)))


def test_eviction_and_memory_writes_happen_once_per_chunk():
    model = make_tiny_model(active_memory=True)
    state = StreamState.new(model.config, StreamConfig(), SamplingConfig())  # 4 steps + clean pass
    real_write = memory_module.gated_delta_write
    with mock.patch.object(memory_module, "gated_delta_write", side_effect=real_write) as write:
        _run(model, state, _segments(), 10)
    # chunks 0-3 fill the 12-frame window; chunks 4..9 each evict one chunk (3 frames) once,
    # although each chunk takes 5 model calls
    assert state.counters["model_calls"] == 10 * 5
    assert state.counters["eviction_events"] == 6
    assert state.counters["evicted_frames"] == 18
    assert write.call_count == 6 * model.config.num_layers
    assert all(call.args[1].shape[1] == 3 * 4 for call in write.call_args_list)  # 3 frames x 4 tokens


def test_sampling_never_mutates_the_callers_state():
    model = make_tiny_model(active_memory=True)
    state = StreamState.new(model.config, StreamConfig(), seed=3)
    _run(model, state, _segments(), 2)  # in place: the state now has caches and memory
    base = state.clone()
    outs = list(StreamSampler(model).stream_chunks(state, _segments(), 6, HW))
    assert state.next_frame == base.next_frame == 6
    for a, b in zip(state.branches["cond"].layers, base.branches["cond"].layers):
        assert torch.equal(a.k, b.k) and torch.equal(a.memory, b.memory)
    assert outs[-1].state.next_frame == 24


def test_prompt_switch_recaches_window_keeps_sink_and_memory():
    model = make_tiny_model(active_memory=True)
    sampler = StreamSampler(model)
    state = StreamState.new(model.config, StreamConfig())
    segs = _segments(switch_at=7)
    _run(model, state, segs, 7)
    layer = state.branches["cond"].layers[-1]  # block 0's keys do not depend on the prompt
    slots = state.branches["cond"].slot_frames
    sink_slots = [i for i, f in enumerate(slots) if f < 3]
    n = 4
    sink_k = torch.cat([layer.k[:, s * n:(s + 1) * n] for s in sink_slots], 1).clone()
    window_k = layer.k.clone()
    memory = [lay.memory.clone() for lay in state.branches["cond"].layers]
    old_text_k = layer.text_k.clone()
    sampler.switch_prompt_inplace(state, segs[1], 1)
    assert torch.equal(torch.cat([layer.k[:, s * n:(s + 1) * n] for s in sink_slots], 1), sink_k)
    assert not torch.equal(layer.k, window_k)  # window frames were recomputed under the new prompt
    assert all(torch.equal(a.memory, b) for a, b in zip(state.branches["cond"].layers, memory))
    assert not torch.equal(layer.text_k, old_text_k)
    assert state.prompt == "second" and state.counters["recaches"] == 1
    assert state.recent_latents.shape[2] == 9 and state.recent_start == 12  # the cached non-sink frames


def test_switch_changes_later_chunks_only():
    model = make_tiny_model(active_memory=True)
    plain = _run(model, StreamState.new(model.config, StreamConfig()), _segments(), 8)
    switched = _run(model, StreamState.new(model.config, StreamConfig()), _segments(switch_at=5), 8)
    for i in range(5):
        assert torch.equal(plain[i], switched[i])
    assert all((plain[i] - switched[i]).abs().max() > 1e-4 for i in range(5, 8))


def test_classifier_free_guidance_runs_two_branches():
    model = make_tiny_model()
    cfg = SamplingConfig(guidance_scale=3.0)
    state = StreamState.new(model.config, StreamConfig(), cfg)
    assert set(state.branches) == {"cond", "uncond"}
    with pytest.raises(ValueError, match="negative"):
        _run(model, state.clone(), _segments(), 1)
    segs = [PromptSegment(0, "p", text(0), uncond=torch.zeros_like(text(0)))]
    guided = _run(model, state, segs, 2)
    unguided = _run(model, StreamState.new(model.config, StreamConfig()), segs, 2)
    assert state.counters["model_calls"] == 2 * 5 * 2
    assert (guided[1] - unguided[1]).abs().max() > 1e-4


def test_resolution_cannot_change_mid_stream():
    model = make_tiny_model()
    state = StreamState.new(model.config, StreamConfig())
    _run(model, state, _segments(), 1)
    with pytest.raises(ValueError, match="resolution"):
        next(StreamSampler(model).stream_chunks_inplace(state, _segments(), 1, (6, 6)))


RESUME_SCRIPT = """
import sys, torch
from safetensors.torch import load_file, save_file
sys.path.insert(0, {repo!r})
from videossm_core.model.transformer import CausalWanModel
from videossm_core.sampling import PromptSegment, StreamSampler
from videossm_core.state import StreamState
state = StreamState.load({state!r})
model = CausalWanModel(state.model_config).eval()
model.load_state_dict(load_file({weights!r}))
segs = [PromptSegment(s, p, c) for s, p, c in
        [(0, "first", load_file({texts!r})["a"]), ({switch}, "second", load_file({texts!r})["b"])]]
outs = [o.latents for o in StreamSampler(model).stream_chunks_inplace(state, segs, {more}, (4, 4))]
save_file({{"out": torch.cat(outs, 2).contiguous()}}, {result!r})
"""


@pytest.mark.parametrize("position_mode", ["absolute", "unbounded"])
def test_saved_state_continues_bit_identically_in_a_new_process(tmp_path, position_mode):
    model = make_tiny_model(active_memory=True)
    stream = StreamConfig(position_mode=position_mode)
    segs = _segments(switch_at=8)  # the switch happens after the resume
    full_state = StreamState.new(model.config, stream, seed=11)
    full = torch.cat(_run(model, full_state, segs, 10), 2)

    state = StreamState.new(model.config, stream, seed=11)
    _run(model, state, segs, 6)
    state.save(tmp_path / "state.safetensors")
    save_file(model.state_dict(), str(tmp_path / "weights.safetensors"))
    save_file({"a": segs[0].cond.contiguous(), "b": segs[1].cond.contiguous()}, str(tmp_path / "texts.safetensors"))
    script = RESUME_SCRIPT.format(repo=str(REPO), state=str(tmp_path / "state.safetensors"),
                                  weights=str(tmp_path / "weights.safetensors"),
                                  texts=str(tmp_path / "texts.safetensors"), switch=8, more=4,
                                  result=str(tmp_path / "result.safetensors"))
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path)
    from safetensors.torch import load_file
    resumed = load_file(str(tmp_path / "result.safetensors"))["out"]
    assert torch.equal(resumed, full[:, :, 18:])


def test_state_file_errors(tmp_path):
    model = make_tiny_model()
    with pytest.raises(StateFileError, match="no stream-state file"):
        StreamState.load(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 7)
    with pytest.raises(StateFileError, match="damaged"):
        StreamState.load(tmp_path / "junk.safetensors")
    save_file({"x": torch.zeros(1)}, str(tmp_path / "weights.safetensors"))
    with pytest.raises(StateFileError, match="not a VideoSSM stream state"):
        StreamState.load(tmp_path / "weights.safetensors")
    state = StreamState.new(model.config, StreamConfig())
    _run(model, state, _segments(), 1)
    state.save(tmp_path / "ok.safetensors")
    data = (tmp_path / "ok.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(StateFileError, match="truncated or damaged"):
        StreamState.load(tmp_path / "cut.safetensors")
    other = make_tiny_model(dim=32).config
    with pytest.raises(StateFileError, match="another shape"):
        StreamState.load(tmp_path / "ok.safetensors").check_compatible(other)


def test_failed_state_write_keeps_the_previous_file(tmp_path):
    model = make_tiny_model()
    state = StreamState.new(model.config, StreamConfig())
    _run(model, state, _segments(), 1)
    path = tmp_path / "state.safetensors"
    state.save(path)
    before = path.read_bytes()
    _run(model, state, _segments(), 1)
    # the disk fills after part of the tensor data was written
    with mock.patch("videossm_core.state.os.fsync", side_effect=OSError(28, "No space left on device")):
        with pytest.raises(OSError, match="Free some disk space"):
            state.save(path)
    assert path.read_bytes() == before
    assert not os.path.exists(f"{path}.partial")
    assert json.loads(__import__("safetensors").safe_open(str(path), "pt").metadata()["videossm"])["next_frame"] == 3


def test_history_records_the_memory_reads_share():
    """Per chunk and layer, ||gamma H_global|| / ||H_local||: exactly 0 for a fresh memory (its out-gate is zero) and
    before anything is evicted, > 0 in every layer once an active memory holds evicted frames."""
    shares = {}
    for active in (False, True):
        model = make_tiny_model(active_memory=active)
        state = StreamState.new(model.config, StreamConfig(), SamplingConfig())
        _run(model, state, _segments(), 6)  # chunks 4 and 5 evict
        shares[active] = [h["read_share"] for h in state.history]
        assert all(len(s) == model.config.num_layers for s in shares[active])
    assert all(v == 0 for s in shares[False] for v in s)
    assert all(v == 0 for s in shares[True][:4] for v in s)  # the memory is still empty
    assert all(v > 0 for s in shares[True][4:] for v in s)
    off = make_tiny_model(active_memory=True)
    state = StreamState.new(off.config, StreamConfig(memory=False), SamplingConfig())
    _run(off, state, _segments(), 2)
    assert all(h["read_share"] == [] for h in state.history)  # memory off: nothing to share, like gamma


def test_inspect_plot_draws_the_read_share():
    """The Inspect State picture has a read-share panel (the third of four): lines once the history has shares,
    "no data" for a history from before they were recorded."""
    import numpy as np

    from videossm_core.plot import COLOURS, plot_history

    model = make_tiny_model(active_memory=True)
    state = StreamState.new(model.config, StreamConfig(), SamplingConfig())
    _run(model, state, _segments(), 6)
    height = 480
    panel = slice(2 * height // 4 + 22, 3 * height // 4 - 12)  # inside the third panel's frame

    def layer_pixels(image):
        rgb = np.rint(image[panel] * 255).astype(int)
        return sum(int((rgb == colour).all(-1).sum()) for colour in COLOURS[:model.config.num_layers])

    assert layer_pixels(plot_history(state, height=height)) > 0
    for h in state.history:
        del h["read_share"]
    assert layer_pixels(plot_history(state, height=height)) == 0
