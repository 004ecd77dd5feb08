"""The stream-state file: the safetensors writer, dtypes kept, no second copy of the state in RAM."""

import weakref

import pytest
import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode
from safetensors import safe_open
from safetensors.torch import load_file

from videossm_core.config import SamplingConfig, StreamConfig
from videossm_core.sampling import PromptSegment, StreamSampler
from videossm_core.state import LayerCache, StreamState, write_safetensors

from .tiny import make_tiny_model, text


def test_writer_output_is_read_back_exactly_by_safetensors(tmp_path):
    gen = torch.Generator().manual_seed(0)
    tensors = {
        "bf16": torch.randn(3, 5, generator=gen).bfloat16(),
        "fp16": torch.randn(7, generator=gen).half(),
        "fp32": torch.randn(2, 3, 4, generator=gen),
        "i64": torch.arange(5),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
        "strided": torch.randn(4, 6, generator=gen).t(),  # not contiguous
        "u8": torch.arange(3, dtype=torch.uint8),  # odd byte count: later tensors are unaligned
    }
    path = tmp_path / "t.safetensors"
    write_safetensors(str(path), tensors, {"videossm": "{\"a\": 1}"})
    back = load_file(path)
    assert set(back) == set(tensors)
    for name, t in tensors.items():
        assert back[name].dtype == t.dtype and torch.equal(back[name], t), name
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == {"videossm": "{\"a\": 1}"}


def _big_state(dtype: torch.dtype) -> StreamState:
    """A state with ~64 MB of window caches (the shape of a real one, scaled to fit a test)."""
    model = make_tiny_model(active_memory=True).to(dtype)
    state = StreamState.new(model.config, StreamConfig(), SamplingConfig(), seed=0)
    sampler = StreamSampler(model)
    list(sampler.stream_chunks_inplace(state, [PromptSegment(0, "a", text(0))], 1, (4, 4)))
    for layer in state.branches["cond"].layers:
        layer.k = torch.randn(1, 64 * 1024, 2, 64).to(dtype)  # 16 MB each in bf16
        layer.v = torch.randn(1, 64 * 1024, 2, 64).to(dtype)
    return state


class HostCopies(TorchFunctionMode):
    """Stands in for a GPU: tensors live on ``meta``, and each copy to the host becomes a real CPU
    tensor whose bytes are counted while it is alive."""

    def __init__(self):
        super().__init__()
        self.alive = self.peak = 0

    def _freed(self, nbytes: int) -> None:
        self.alive -= nbytes

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        src = args[0] if args else None
        to_host = func is Tensor.cpu or (func is Tensor.to and "cpu" in [str(a) for a in (*args[1:], *kwargs.values())])
        if to_host and isinstance(src, Tensor) and src.device.type == "meta":
            host = torch.zeros(src.shape, dtype=src.dtype)
            self.alive += host.nbytes
            self.peak = max(self.peak, self.alive)
            weakref.finalize(host, self._freed, host.nbytes)
            return host
        return func(*args, **kwargs)


def test_saving_a_device_state_holds_one_tensor_at_a_time_in_host_memory(tmp_path):
    """A full-size state is GBs of GPU cache: saving must not gather all of it in host RAM first."""
    state = _big_state(torch.bfloat16).to("meta")
    largest = max(t.nbytes for b in state.branches.values() for layer in b.layers
                  for t in (getattr(layer, n) for n in LayerCache.TENSOR_FIELDS) if t is not None)
    with HostCopies() as copies:
        state.save(tmp_path / "s.safetensors")
    assert copies.peak > 0  # the mode saw the copies
    assert copies.peak <= largest, f"{copies.peak / 2**20:.0f} MiB held at once for a {state.nbytes() / 2**20:.0f} MiB state"
    loaded = StreamState.load(tmp_path / "s.safetensors")
    assert loaded.branches["cond"].layers[0].k.shape == state.branches["cond"].layers[0].k.shape


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_caches_are_stored_in_the_compute_dtype_and_memory_in_float32(tmp_path, dtype):
    model = make_tiny_model(active_memory=True).to(dtype)
    state = StreamState.new(model.config, StreamConfig(chunk_frames=3, sink_frames=3, window_frames=6),
                            SamplingConfig(), seed=0)
    list(StreamSampler(model).stream_chunks_inplace(state, [PromptSegment(0, "a", text(0))], 3, (4, 4)))
    state.save(tmp_path / "s.safetensors")
    loaded = StreamState.load(tmp_path / "s.safetensors")
    layer = loaded.branches["cond"].layers[0]
    assert layer.k.dtype == layer.v.dtype == layer.text_k.dtype == layer.text_v.dtype == dtype
    assert layer.memory.dtype == layer.g.dtype == layer.beta.dtype == torch.float32
    assert loaded.nbytes() == state.nbytes()
    for name in ("k", "v", "memory", "g", "beta"):
        assert torch.equal(getattr(layer, name), getattr(state.branches["cond"].layers[0], name))
