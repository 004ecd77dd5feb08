"""The GPU speed path, checked on the CPU: a chunk is queued without waiting for the device.

The model and stream run on PyTorch's ``meta`` device, which stands in for a GPU here: every tensor
op runs (shapes only), and anything that would wait for the device (``.item()``, ``.tolist()``,
``.cpu()``, ``bool(t)`` of a device tensor) is recorded; host->device copies are counted.
"""

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

from videossm_core.config import SamplingConfig, StreamConfig
from videossm_core.sampling import PromptSegment, StreamSampler
from videossm_core.state import StreamState

from .tiny import make_tiny_model, text

_SYNCS = {Tensor.item, Tensor.tolist, Tensor.cpu, Tensor.numpy, Tensor.__bool__, Tensor.__float__,
          Tensor.__int__, Tensor.__index__}


class DeviceTraffic(TorchFunctionMode):
    """Records host syncs on device tensors and host->device copies, by call."""

    def __init__(self):
        super().__init__()
        self.syncs: list[str] = []
        self.host_to_device = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        first = args[0] if args else None
        if func in _SYNCS and isinstance(first, Tensor) and first.device.type != "cpu":
            self.syncs.append(func.__name__)
        out = func(*args, **kwargs)
        if func is Tensor.to and isinstance(first, Tensor) and first.device.type == "cpu" \
                and isinstance(out, Tensor) and out.device.type != "cpu":
            self.host_to_device += 1
        return out


def _traffic_per_chunk(num_layers: int, chunks: int = 5) -> list[DeviceTraffic]:
    model = make_tiny_model(active_memory=True, num_layers=num_layers).to("meta")
    state = StreamState.new(model.config, StreamConfig(chunk_frames=3, sink_frames=3, window_frames=6),
                            SamplingConfig(guidance_scale=2.0), seed=0).to("meta")
    segments = [PromptSegment(0, "a", text(0), text(9)), PromptSegment(3, "b", text(1), text(9))]
    sampler = StreamSampler(model)
    records = []
    for _ in range(chunks):
        with DeviceTraffic() as traffic:
            sampler._compute_chunk_inplace(state, segments, (4, 4))
        records.append(traffic)
    assert state.counters["memory_writes"] > 0 and state.counters.get("recaches") == 1  # evictions and a switch ran
    return records


def test_a_chunk_never_waits_for_the_device():
    """Denoising steps, the clean pass, memory evictions, CFG and a prompt switch's re-cache: no sync."""
    for record in _traffic_per_chunk(num_layers=2):
        assert record.syncs == []


def test_host_to_device_copies_do_not_grow_with_depth():
    """The cache plan (indices, RoPE tables) is built once per model call, not once per block."""
    shallow = [r.host_to_device for r in _traffic_per_chunk(num_layers=2)]
    deep = [r.host_to_device for r in _traffic_per_chunk(num_layers=5)]
    assert shallow == deep
    assert max(shallow) <= 120  # 5 model calls x 2 CFG branches x ~8 plan tensors + noise + prompt, not x layers


def test_memory_out_gate_runs_in_the_compute_dtype():
    """Only the state, its gates and the delta-rule math are float32; the [dim, dim] out-gate
    projection is an ordinary linear in the model's dtype."""
    model = make_tiny_model(active_memory=True).to(torch.bfloat16)
    seen = []
    for block in model.blocks:
        block.self_attn.memory.out_gate.register_forward_hook(lambda mod, args, out: seen.append(out.dtype))
    state = StreamState.new(model.config, StreamConfig(chunk_frames=3, sink_frames=3, window_frames=6),
                            SamplingConfig(), seed=0)
    StreamSampler(model).generate_chunk_inplace(state, [PromptSegment(0, "a", text(0))], (4, 4))
    assert seen and set(seen) == {torch.bfloat16}
    assert state.branches["cond"].layers[0].g.dtype == torch.float32


def test_a_compiled_model_keeps_compiling_new_stream_variants():
    """Window sizes, memory on/off, guidance and a re-cache each need their own graph of the streaming
    block; past dynamo's default limit of 8 the rest of the process would silently run eager."""
    from torch._dynamo.utils import counters

    from videossm_core.model import transformer

    torch._dynamo.reset()
    counters.clear()
    model = make_tiny_model(active_memory=True)
    # compile_streaming's graph, with dynamo's eager backend: the variants, not the kernels, are under test
    model._compiled_stream_block = torch.compile(transformer.stream_block, backend="eager")
    try:
        for memory in (True, False):
            for window in (12, 9, 6):
                guidance = 2.0 if window == 9 else 1.0
                state = StreamState.new(model.config, StreamConfig(chunk_frames=3, sink_frames=3, window_frames=window,
                                                                   memory=memory), SamplingConfig(guidance_scale=guidance))
                segments = [PromptSegment(0, "a", text(0), text(5)), PromptSegment(5, "b", text(1), text(5))]
                list(StreamSampler(model).stream_chunks_inplace(state, segments, 8, (4, 4)))
        assert counters["stats"]["unique_graphs"] > 8  # all compiled, none dropped at the limit
    finally:
        torch._dynamo.reset()
