"""The optional fla kernel for the memory write: its argument mapping (checked on the CPU through fla's own
pure-PyTorch reference), the real kernel (CUDA only), and how "auto" / "fla" / "chunkwise" are chosen.

fla-core installs on a CPU machine without triton (its only base requirement is einops), but
``fla.ops`` then fails to import (it imports triton). Its pure-PyTorch reference,
``fla/ops/gated_delta_rule/naive.py``, needs only torch and einops, so the tests load that file on
its own and run our wrapper's mapping (``delta_rule._fla_write``) with it in the kernel's place.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path
from unittest import mock

import pytest
import torch

import videossm_core.model.delta_rule as delta_rule
import videossm_core.model.memory as memory_module
from videossm_core.config import MEMORY_UPDATE_FORMS, MemoryConfig, StreamConfig
from videossm_core.model.delta_rule import (
    compute_gates,
    fla_gated_delta_write,
    gated_delta_write,
    l2_normalize,
    resolve_memory_update,
)
from videossm_core.model.memory import HybridMemory
from videossm_core.model.reference import gated_delta_write_reference


def _fla_dir() -> Path:
    fla = pytest.importorskip("fla", reason="fla-core is not installed (pip install fla-core)")
    return Path(fla.__file__).parent


def _load_fla_naive():
    """fla's ``naive.py`` as a stand-alone module (importing it through ``fla.ops`` would need triton)."""
    path = _fla_dir() / "ops" / "gated_delta_rule" / "naive.py"
    spec = importlib.util.spec_from_file_location("fla_gated_delta_rule_naive", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _real_kernel_parameters() -> set[str]:
    """Parameter names of the real ``chunk_gated_delta_rule``, read from fla's source (it cannot be imported
    without triton): the mapping may pass only names the kernel knows."""
    tree = ast.parse((_fla_dir() / "ops" / "gated_delta_rule" / "chunk.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == "chunk_gated_delta_rule":
            return {a.arg for a in node.args.args + node.args.kwonlyargs}
    raise AssertionError("chunk_gated_delta_rule not found in fla's chunk.py")


def _fla_l2norm(x: torch.Tensor) -> torch.Tensor:
    # fla's l2norm_fwd kernel: x * 1 / sqrt(sum(x^2) + eps), eps = 1e-6 (fla/modules/norm/l2norm.py)
    return x / torch.sqrt(x.pow(2).sum(-1, keepdim=True) + 1e-6)


def _kernel_from_reference(reference, calls: list[dict]):
    """A stand-in for ``chunk_gated_delta_rule`` that does what the real kernel does with each option it is
    given (the ones fla implements outside the recurrence), then runs fla's pure-PyTorch ``reference``."""

    def kernel(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
               use_qk_l2norm_in_kernel=False, use_beta_sigmoid_in_kernel=False, allow_neg_eigval=False,
               state_v_first=False, **rest):
        calls.append(dict(q=q, k=k, v=v, g=g, beta=beta, scale=scale, initial_state=initial_state,
                          output_final_state=output_final_state, use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel,
                          use_beta_sigmoid_in_kernel=use_beta_sigmoid_in_kernel, allow_neg_eigval=allow_neg_eigval,
                          state_v_first=state_v_first, **rest))
        assert not rest, f"options the stand-in does not model: {sorted(rest)}"
        if use_qk_l2norm_in_kernel:
            q, k = _fla_l2norm(q), _fla_l2norm(k)
        if use_beta_sigmoid_in_kernel:
            beta = torch.sigmoid(beta) * (2.0 if allow_neg_eigval else 1.0)
        h0 = initial_state.transpose(-1, -2) if (state_v_first and initial_state is not None) else initial_state
        o, ht = reference(q=q, k=k, v=v, g=g, beta=beta, scale=scale, initial_state=h0,
                          output_final_state=output_final_state)
        if state_v_first and ht is not None:
            ht = ht.transpose(-1, -2)
        return o, ht

    return kernel


def _inputs(B=2, T=150, H=3, K=8, V=12, seed=0):
    """Raw (un-normalised) keys, values, GDN gates from random logits and a random state. K != V, so a
    transposed state layout would not even have the right shape."""
    gen = torch.Generator().manual_seed(seed)
    k = 3.0 * torch.randn(B, T, H, K, generator=gen)
    v = torch.randn(B, T, H, V, generator=gen)
    g, beta = compute_gates(torch.randn(B, T, H, generator=gen) - 2.0, torch.randn(B, T, H, generator=gen),
                            0.5 * torch.randn(H, generator=gen))
    state = 0.3 * torch.randn(B, H, K, V, generator=gen)
    return state, k, v, g, beta


@pytest.mark.parametrize("reference_name", ["naive_chunk_gated_delta_rule", "naive_recurrent_gated_delta_rule"])
@pytest.mark.parametrize("T", [150, 64, 1])
def test_fla_argument_mapping_through_fla_reference_equals_our_chunkwise_form(reference_name, T):
    """Layout, gate convention (log decay, decay before the correction), initial/final state, in-kernel L2
    norm and scale: through fla's own reference the wrapper's call gives our chunkwise form's state."""
    naive = _load_fla_naive()
    calls: list[dict] = []
    kernel = _kernel_from_reference(getattr(naive, reference_name), calls)
    state, k, v, g, beta = _inputs(T=T)
    ours = gated_delta_write(state, l2_normalize(k), v, g, beta, chunk_size=64)
    truth = gated_delta_write_reference(*(t.double() for t in (state, l2_normalize(k), v, g, beta)))
    through_fla = delta_rule._fla_write(kernel, state, k, v, g, beta)
    assert through_fla.dtype == torch.float32 and through_fla.shape == state.shape
    scale = truth.abs().max()
    assert (through_fla.double() - truth).abs().max() < 2e-5 * scale
    assert (through_fla - ours).abs().max() < 2e-5 * scale
    # Only names the real kernel knows, and what it was given: the caller's state (not a copy in another
    # layout), the final state asked for.
    (call,) = calls
    assert set(call) <= _real_kernel_parameters()
    assert call["output_final_state"] is True and call["state_v_first"] is False
    assert torch.equal(call["initial_state"], state)
    assert torch.equal(call["k"], k) and call["k"].shape == (2, T, 3, 8)  # [B, T, H, K], raw keys
    assert call["g"].shape == call["beta"].shape == (2, T, 3)


def test_fla_mapping_starts_from_zeros_and_leaves_an_empty_write_alone():
    naive = _load_fla_naive()
    kernel = _kernel_from_reference(naive.naive_chunk_gated_delta_rule, [])
    state, k, v, g, beta = _inputs(T=70)
    from_zero = delta_rule._fla_write(kernel, None, k, v, g, beta)
    torch.testing.assert_close(from_zero, gated_delta_write(None, l2_normalize(k), v, g, beta), rtol=0, atol=2e-5)
    empty = delta_rule._fla_write(kernel, state, k[:, :0], v[:, :0], g[:, :0], beta[:, :0])
    assert torch.equal(empty, state)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the fla kernel needs a CUDA GPU")
@pytest.mark.parametrize("T", [4680, 333])
def test_real_fla_kernel_matches_our_chunkwise_form_on_cuda(T):
    """One eviction at full size (3 frames x 1560 tokens, 12 heads of 128) and an odd length."""
    if not delta_rule.fla_available():
        pytest.skip(f"fla's kernel does not import here: {delta_rule._fla_probe()[1]}")
    state, k, v, g, beta = (t.cuda() for t in _inputs(B=1, T=T, H=12, K=128, V=128))
    ours = gated_delta_write(state, l2_normalize(k), v, g, beta, chunk_size=64)
    fla = fla_gated_delta_write(state, k, v, g, beta)
    assert fla.dtype == torch.float32 and fla.shape == state.shape and torch.isfinite(fla).all()
    # fla rounds its intra-chunk matmuls (TF32): agreement to a few 1e-3 of the state's size
    assert (fla - ours).abs().max() < 5e-3 * ours.abs().max()


# ---------------------------------------------------------------------------------------------------
# choosing the form


def test_the_forms_are_the_stream_configs_and_auto_is_the_default():
    assert MEMORY_UPDATE_FORMS == delta_rule.MEMORY_UPDATE_FORMS == ("auto", "chunkwise", "recurrent", "fla")
    assert StreamConfig().memory_update == "auto"
    # state files written before "auto" existed say "chunkwise" and still load
    assert StreamConfig.from_dict({**StreamConfig().to_dict(), "memory_update": "chunkwise"}).memory_update == "chunkwise"
    with pytest.raises(ValueError, match="'auto', 'chunkwise', 'recurrent', 'fla'"):
        StreamConfig(memory_update="triton")
    with pytest.raises(ValueError, match="memory_update must be one of"):
        resolve_memory_update("fast", torch.device("cpu"))


def test_auto_is_chunkwise_off_cuda_and_fla_with_cuda_and_fla(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for form in ("chunkwise", "recurrent", "fla"):
        assert resolve_memory_update(form, cpu) == form
    assert resolve_memory_update("auto", cpu) == "chunkwise"
    monkeypatch.setattr(delta_rule, "_fla_probe", lambda: (object(), ""))
    assert resolve_memory_update("auto", cuda) == "fla"
    assert resolve_memory_update("auto", cpu) == "chunkwise"
    monkeypatch.setattr(delta_rule, "_fla_probe", lambda: (None, "ModuleNotFoundError: No module named 'fla'"))
    assert resolve_memory_update("auto", cuda) == "chunkwise"


def test_fla_form_says_what_it_needs(monkeypatch):
    state, k, v, g, beta = _inputs(T=10)
    with pytest.raises(RuntimeError, match=r"CUDA GPU.*pip install fla-core"):
        fla_gated_delta_write(state, k, v, g, beta)  # on the CPU, whether or not fla is installed
    monkeypatch.setattr(delta_rule, "_fla_probe", lambda: (None, "ModuleNotFoundError: No module named 'triton'"))
    with pytest.raises(ImportError, match=r"pip install fla-core.*No module named 'triton'"):
        delta_rule._fla_kernel()
    memory = HybridMemory(16, 2, MemoryConfig())
    s, k2, v2, g2, b2 = _inputs(B=1, T=10, H=2, K=8, V=8)
    with pytest.raises(RuntimeError, match="pip install fla-core"):
        memory.write(s, k2, v2, g2, b2, form="fla")


def test_memory_write_auto_on_cpu_is_the_chunkwise_write():
    memory = HybridMemory(16, 2, MemoryConfig())
    state, k, v, g, beta = _inputs(B=1, T=40, H=2, K=8, V=8)
    with mock.patch.object(memory_module, "gated_delta_write", side_effect=gated_delta_write) as write:
        auto = memory.write(state, k, v, g, beta)  # the default form
    assert write.call_count == 1
    assert torch.equal(auto, memory.write(state, k, v, g, beta, form="chunkwise"))
    recurrent = memory.write(state, k, v, g, beta, form="recurrent")
    torch.testing.assert_close(auto, recurrent, rtol=0, atol=1e-5)


def test_auto_resolution_compiles_without_a_graph_break():
    """The import probe is a constant to torch.compile (no import is traced inside a compiled block)."""
    probe = torch.compile(lambda x: x + 1 if delta_rule.fla_available() else x - 1, fullgraph=True, backend="eager")
    assert probe(torch.zeros(1)).item() == (1.0 if delta_rule.fla_available() else -1.0)
    memory = HybridMemory(16, 2, MemoryConfig())
    state, k, v, g, beta = _inputs(B=1, T=20, H=2, K=8, V=8)
    compiled = torch.compile(memory.write, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(state, k, v, g, beta), memory.write(state, k, v, g, beta))
