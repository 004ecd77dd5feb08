"""The real Wan2.1-T2V-1.3B architecture (random weights) streamed in bf16 on the CPU, at a tiny latent size.

What the toy-size tests cannot show: that the full model (30 blocks of dim 1536, 12 heads of 128, umT5's 4096-wide
text, 1.5 G parameters with the memory) builds in bf16 without a float32 copy, streams with the window evicting
into a live memory, switches prompt, saves and resumes bit-identically, and does so in a few GB. Runs in CI
(2 CPU cores, 24 GB): measured 66 s (23 s of it building and initialising the weights) and a peak RSS of
3.6 GiB (2.8 GiB of it the bf16 weights) on one thread.
"""

from __future__ import annotations

import resource
import time
from pathlib import Path

import torch

from videossm_core.checkpoints import build_model
from videossm_core.config import SamplingConfig, StreamConfig, get_preset
from videossm_core.sampling import PromptSegment, StreamSampler
from videossm_core.state import StreamState

GIB = 2**30


def _peak_rss() -> int:
    """Peak resident set size of this process in bytes (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM; Linux >= 4.0), so the next peak is this test's own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _vm_hwm() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def test_build_model_makes_parameters_in_the_dtype_and_restores_the_default():
    model = build_model(get_preset("tiny"), dtype="bf16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert torch.get_default_dtype() == torch.float32 and not model.training
    assert all(not p.requires_grad for p in model.parameters())


def test_wan21_1_3b_streams_in_bf16_with_memory_switch_save_and_resume(tmp_path, capsys):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # more threads are much slower on shared or oversubscribed cores
    try:
        _run(tmp_path, capsys)
    finally:
        torch.set_num_threads(threads)


def _run(tmp_path, capsys):
    t0 = time.time()
    config = get_preset("wan2.1-t2v-1.3b")
    assert (config.dim, config.num_layers, config.num_heads, config.text_dim) == (1536, 30, 12, 4096)
    hwm_reset = _reset_peak_rss()
    torch.manual_seed(0)
    model = build_model(config, dtype=torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert 1.4e9 < params < 1.6e9
    weight_bytes = 2 * params
    if hwm_reset:  # no float32 detour: the build never held more than the bf16 weights and some slack
        assert _vm_hwm() < weight_bytes + 1.5 * GIB, f"building peaked at {_vm_hwm() / GIB:.2f} GiB"
    with torch.no_grad():
        # Wan's init zeroes the head, and a fresh memory adds exactly zero: give both weights, so the output
        # depends on every block and on the memory state (which the resume must then carry exactly).
        torch.nn.init.normal_(model.head.head.weight, std=0.02)
        for block in model.blocks:
            torch.nn.init.normal_(block.self_attn.memory.out_gate.weight, std=0.02)
    t_build = time.time() - t0

    # 3 sink + 3 window frames: chunk 2 is the first to evict (into the memory); the prompt switches at chunk 3.
    stream = StreamConfig(window_frames=6, sink_frames=3, memory=True, router_horizon_frames=15)
    sampling = SamplingConfig(denoising_steps=(1000.0, 750.0, 500.0, 250.0))
    gen = torch.Generator().manual_seed(1)
    segments = [PromptSegment(0, "first", torch.randn(1, 16, 4096, generator=gen)),
                PromptSegment(3, "second", torch.randn(1, 16, 4096, generator=gen))]
    latent_hw = (4, 8)  # 32x64 px; 2x4 tokens per frame with the 1x2x2 patch
    sampler = StreamSampler(model)
    state = StreamState.new(config, stream, sampling, seed=7)
    saved_at, chunks = 3, 5
    uninterrupted = []
    for out in sampler.stream_chunks_inplace(state, segments, chunks, latent_hw):
        uninterrupted.append(out.latents.cpu())
        if out.index == saved_at - 1:  # after chunk 2: the memory holds the evicted frames 3..5
            assert state.counters["memory_writes"] == 1 and min(state.memory_norms()) > 0
            state.save(tmp_path / "state.safetensors")
    assert state.counters["recaches"] == 1 and state.counters["evicted_frames"] == 9
    assert state.prompt == "second"
    for latents in uninterrupted:
        assert latents.shape == (1, 16, 3, *latent_hw) and torch.isfinite(latents).all()
    assert uninterrupted[-1].std() > 0.1

    resumed = StreamState.load(tmp_path / "state.safetensors")
    resumed.check_compatible(model.config)
    for layer in resumed.branches["cond"].layers:
        assert layer.k.dtype == layer.v.dtype == layer.text_k.dtype == torch.bfloat16
        assert layer.memory.dtype == layer.g.dtype == layer.beta.dtype == torch.float32
    continued = [out.latents.cpu() for out in
                 sampler.stream_chunks_inplace(resumed, segments, chunks - saved_at, latent_hw)]
    for a, b in zip(continued, uninterrupted[saved_at:]):
        assert torch.equal(a, b)  # through the prompt switch and two more memory writes
    for a, b in zip(resumed.branches["cond"].layers, state.branches["cond"].layers):
        assert torch.equal(a.memory, b.memory)

    wall = time.time() - t0
    peak = _peak_rss()
    with capsys.disabled():  # the figures belong in CI's log, not only in a failure report
        print(f"\nWan2.1-1.3B bf16 ({params / 1e9:.2f} G parameters, {weight_bytes / GIB:.2f} GiB): built in "
              f"{t_build:.1f} s; {chunks} + {chunks - saved_at} chunks with a switch, save and resume in {wall:.1f} s "
              f"on {torch.get_num_threads()} thread(s); peak RSS {peak / GIB:.2f} GiB"
              + (f" (this test's own peak {_vm_hwm() / GIB:.2f} GiB)" if hwm_reset else ""))
    assert peak < 24 * GIB
