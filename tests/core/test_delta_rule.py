"""The chunkwise gated delta rule against its token-loop definition, plus the gates and the read."""

from __future__ import annotations

import math

import pytest
import torch

from videossm_core.model.delta_rule import (
    compute_gates,
    gated_delta_write,
    l2_normalize,
    read_memory,
    retention_gate_bias,
)
from videossm_core.model.reference import gated_delta_write_reference


def make_inputs(B=2, T=300, H=3, K=16, V=24, gate="normal", seed=0, dtype=torch.float32):
    """Random write inputs: unit keys, N(0,1) values, beta in (0,1), a random initial state."""
    gen = torch.Generator().manual_seed(seed)
    k = l2_normalize(torch.randn(B, T, H, K, generator=gen, dtype=dtype))
    v = torch.randn(B, T, H, V, generator=gen, dtype=dtype)
    beta = torch.rand(B, T, H, generator=gen, dtype=dtype)
    if gate == "normal":  # GDN-like: softplus of a spread of logits
        g = -torch.nn.functional.softplus(torch.randn(B, T, H, generator=gen, dtype=dtype) - 2.0)
    elif gate == "extreme":
        g = -50.0 * torch.rand(B, T, H, generator=gen, dtype=dtype)
    elif gate == "zero":
        g = torch.zeros(B, T, H, dtype=dtype)
    else:
        raise ValueError(gate)
    state = 0.1 * torch.randn(B, H, K, V, generator=gen, dtype=dtype)
    return state, k, v, g, beta


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-30)).item()


def as64(*tensors):
    return [t.double() if t is not None else None for t in tensors]


# ---------------------------------------------------------------------------------------------
# forward equivalence


@pytest.mark.parametrize("chunk_size", [1, 16, 64, 512])
def test_chunk_matches_token_loop_odd_length(chunk_size):
    state, k, v, g, beta = make_inputs(T=300)
    out = gated_delta_write(state, k, v, g, beta, chunk_size=chunk_size)
    assert out.dtype == torch.float32 and out.shape == state.shape
    ref32 = gated_delta_write_reference(state, k, v, g, beta)
    ref64 = gated_delta_write_reference(*as64(state, k, v, g, beta))
    assert ref32.dtype == torch.float32 and ref64.dtype == torch.float64
    assert rel_err(out, ref32) < 1e-5
    assert rel_err(out, ref64) < 1e-5


@pytest.mark.parametrize("gate", ["extreme", "zero"])
@pytest.mark.parametrize("chunk_size", [16, 64])
def test_extreme_and_no_decay_gates(gate, chunk_size):
    state, k, v, g, beta = make_inputs(T=300, gate=gate, seed=1)
    out = gated_delta_write(state, k, v, g, beta, chunk_size=chunk_size)
    assert torch.isfinite(out).all()
    ref64 = gated_delta_write_reference(*as64(state, k, v, g, beta))
    assert rel_err(out, ref64) < 1e-5


def test_split_write_equals_one_call():
    state, k, v, g, beta = make_inputs(T=300, seed=2)
    whole = gated_delta_write(state, k, v, g, beta, chunk_size=64)
    s, start = state, 0
    for length in (100, 37, 163):
        sl = slice(start, start + length)
        s = gated_delta_write(s, k[:, sl], v[:, sl], g[:, sl], beta[:, sl], chunk_size=64)
        start += length
    assert start == 300
    assert rel_err(s, whole) < 1e-5


def test_empty_single_and_short_writes():
    state, k, v, g, beta = make_inputs(T=40, seed=3)
    # T = 0: the state comes back unchanged; with no state, zeros of the right shape.
    assert torch.equal(gated_delta_write(state, k[:, :0], v[:, :0], g[:, :0], beta[:, :0]), state)
    zero = gated_delta_write(None, k[:, :0], v[:, :0], g[:, :0], beta[:, :0])
    assert zero.shape == state.shape and zero.dtype == torch.float32 and not zero.any()
    # T = 1 and T < chunk_size.
    for T in (1, 40):
        out = gated_delta_write(state, k[:, :T], v[:, :T], g[:, :T], beta[:, :T], chunk_size=64)
        ref = gated_delta_write_reference(*as64(state, k[:, :T], v[:, :T], g[:, :T], beta[:, :T]))
        assert rel_err(out, ref) < 1e-5
    # No initial state means a zero state.
    out = gated_delta_write(None, k, v, g, beta, chunk_size=16)
    ref = gated_delta_write_reference(None, *as64(k, v, g, beta))
    assert rel_err(out, ref) < 1e-5


def test_half_precision_inputs_are_computed_in_float32():
    state, k, v, g, beta = make_inputs(T=100, seed=4)
    k16, v16 = k.bfloat16(), v.bfloat16()
    out = gated_delta_write(state, k16, v16, g, beta, chunk_size=32)
    assert out.dtype == torch.float32
    ref = gated_delta_write_reference(*as64(state, k16.float(), v16.float(), g, beta))
    assert rel_err(out, ref) < 1e-5


# ---------------------------------------------------------------------------------------------
# gradients


@pytest.mark.parametrize("gate", ["normal", "extreme"])
def test_gradients_match_token_loop(gate):
    state, k, v, g, beta = make_inputs(B=1, T=37, H=2, K=8, V=6, gate=gate, seed=5)
    cotangent = torch.randn(state.shape, generator=torch.Generator().manual_seed(6))

    def grads(fn, tensors):
        leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
        (fn(*leaves) * cotangent.to(leaves[0].dtype)).sum().backward()
        return [leaf.grad for leaf in leaves]

    fast = grads(lambda s, k_, v_, g_, b_: gated_delta_write(s, k_, v_, g_, b_, chunk_size=16),
                 [state, k, v, g, beta])
    slow = grads(gated_delta_write_reference, as64(state, k, v, g, beta))
    for name, a, b in zip(["state", "k", "v", "g", "beta"], fast, slow):
        assert a is not None and torch.isfinite(a).all(), name
        assert rel_err(a, b) < 1e-4, (name, rel_err(a, b))


def test_gradients_finite_when_decay_underflows():
    # Gates so strong that exp(G) underflows to exactly 0 inside a block: no inf/NaN may leak into
    # the backward pass (the masked-before-exp rule).
    state, k, v, g, beta = make_inputs(B=1, T=64, H=2, K=8, V=8, gate="zero", seed=7)
    g = torch.full_like(g, -200.0).requires_grad_(True)
    k.requires_grad_(True)
    out = gated_delta_write(state, k, v, g, beta, chunk_size=64)
    out.square().sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(g.grad).all() and torch.isfinite(k.grad).all()


# ---------------------------------------------------------------------------------------------
# boundedness


def test_state_stays_bounded_over_10000_frames():
    gen = torch.Generator().manual_seed(8)
    H, K, V, tokens_per_frame, frames_per_call, calls = 2, 32, 32, 16, 250, 40
    T = tokens_per_frame * frames_per_call
    state, max_norm, max_abs_v = None, 0.0, 0.0
    for _ in range(calls):  # 40 x 250 = 10 000 evicted frames
        k = l2_normalize(torch.randn(1, T, H, K, generator=gen))
        v = torch.randn(1, T, H, V, generator=gen)
        g = -1e-3 * torch.rand(1, T, H, generator=gen)
        beta = torch.rand(1, T, H, generator=gen)
        state = gated_delta_write(state, k, v, g, beta, chunk_size=64)
        assert torch.isfinite(state).all()
        max_norm = max(max_norm, state.flatten(2).norm(dim=-1).max().item())
        max_abs_v = max(max_abs_v, v.abs().max().item())
    assert max_norm < 10 * math.sqrt(K) * max_abs_v


def test_unordered_rank_n_write_explodes_but_delta_rule_does_not():
    # Why eviction blocks are written token by token (in chunk form) and not as one rank-N update
    # S + K^T (V - K S): with N unit keys in a K-dim space, K^T K has eigenvalues ~ N / K, so the
    # transition I - K^T K has eigenvalues ~ 1 - N/K << -1 and the state grows geometrically.
    gen = torch.Generator().manual_seed(9)
    K, V, N, blocks = 8, 16, 2000, 5
    naive = torch.zeros(K, V)
    state, max_abs_v = None, 0.0
    for _ in range(blocks):
        k = l2_normalize(torch.randn(1, N, 1, K, generator=gen))
        v = torch.randn(1, N, 1, V, generator=gen)
        keys, values = k[0, :, 0], v[0, :, 0]
        naive = naive + keys.T @ (values - keys @ naive)
        state = gated_delta_write(state, k, v, torch.zeros(1, N, 1), torch.rand(1, N, 1, generator=gen))
        max_abs_v = max(max_abs_v, v.abs().max().item())
    assert naive.norm().item() > 1e9  # ~ (N / K)^blocks
    assert torch.isfinite(state).all() and state.norm().item() < 10 * math.sqrt(K) * max_abs_v


# ---------------------------------------------------------------------------------------------
# autocast, read, gates, validation


def test_autocast_is_disabled_inside():
    state, k, v, g, beta = make_inputs(T=200, seed=10)
    q = l2_normalize(torch.randn(2, 50, 3, 16, generator=torch.Generator().manual_seed(11)))
    plain = gated_delta_write(state, k, v, g, beta)
    plain_read = read_memory(plain, q)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = gated_delta_write(state, k, v, g, beta)
        auto_read = read_memory(auto, q)
    assert auto.dtype == torch.float32 and auto_read.dtype == torch.float32
    assert rel_err(auto, plain) < 1e-6
    assert rel_err(auto_read, plain_read) < 1e-6


def test_read_memory_is_q_times_state():
    gen = torch.Generator().manual_seed(12)
    state = torch.randn(2, 3, 16, 24, generator=gen)
    q = torch.randn(2, 7, 3, 16, generator=gen)
    out = read_memory(state, q)
    assert out.shape == (2, 7, 3, 24) and out.dtype == torch.float32
    expected = torch.stack([torch.stack([q[b, :, h] @ state[b, h] for h in range(3)], dim=1) for b in range(2)])
    assert torch.allclose(out, expected, atol=1e-5)
    # Any input dtype is read in float32.
    assert read_memory(state.double(), q.bfloat16()).dtype == torch.float32


def test_l2_normalize():
    x = torch.randn(4, 5, 32)
    y = l2_normalize(x)
    assert torch.allclose(y.norm(dim=-1), torch.ones(4, 5), atol=1e-5)
    assert torch.allclose(y, x / torch.sqrt(x.square().sum(-1, keepdim=True) + 1e-6))
    assert not l2_normalize(torch.zeros(3, 8)).isnan().any()


@pytest.mark.parametrize("target", [-4.4e-4, -6.4e-7, -1e-9, -0.7, -30.0])
def test_retention_gate_bias_round_trips(target):
    b = retention_gate_bias(target)
    # In float64 directly, and through compute_gates (float32) with A_log = 0.
    assert math.isclose(-math.log1p(math.exp(b)), target, rel_tol=1e-12)
    g, _ = compute_gates(torch.full((1, 1, 2), b), torch.zeros(1, 1, 2), torch.zeros(2))
    assert torch.allclose(g.double(), torch.full((1, 1, 2), target, dtype=torch.float64), rtol=1e-5, atol=0)
    # With a nonzero A_log the bias compensates for exp(A_log).
    b2 = retention_gate_bias(target, A_log=1.5)
    g2, _ = compute_gates(torch.full((1, 1, 1), b2), torch.zeros(1, 1, 1), torch.full((1,), 1.5))
    assert math.isclose(g2.item(), target, rel_tol=1e-5)


def test_retention_gate_bias_rejects_non_negative():
    for bad in (0.0, 1e-3, float("nan"), float("-inf")):
        with pytest.raises(ValueError):
            retention_gate_bias(bad)


def test_compute_gates():
    gen = torch.Generator().manual_seed(13)
    alpha, beta_logits = torch.randn(2, 5, 3, generator=gen), torch.randn(2, 5, 3, generator=gen)
    A_log = torch.randn(3, generator=gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        g, beta = compute_gates(alpha.bfloat16(), beta_logits, A_log.bfloat16())
    assert g.dtype == beta.dtype == torch.float32 and g.shape == beta.shape == (2, 5, 3)
    expected_g = -A_log.bfloat16().float().exp() * torch.nn.functional.softplus(alpha.bfloat16().float())
    assert torch.allclose(g, expected_g) and (g <= 0).all()
    assert torch.allclose(beta, torch.sigmoid(beta_logits))
    with pytest.raises(ValueError):
        compute_gates(alpha, beta_logits, torch.zeros(4))
    with pytest.raises(ValueError):
        compute_gates(alpha, beta_logits[:, :4], A_log)


def test_shape_errors():
    state, k, v, g, beta = make_inputs(B=2, T=10, H=3, K=8, V=4, seed=14)
    bad_calls = [
        (state[:, :2], k, v, g, beta),            # state heads
        (state[..., :3], k, v, g, beta),          # state V
        (state, k[..., :7], v, g, beta),          # key dim vs state
        (state, k[0], v, g, beta),                # k not 4-D
        (state, k, v[:, :9], g, beta),            # v length
        (state, k, v, g[:, :9], beta),            # g length
        (state, k, v, g, beta[..., :2]),          # beta heads
        (state, k, v, g.unsqueeze(-1), beta),     # g rank
    ]
    for args in bad_calls:
        with pytest.raises(ValueError):
            gated_delta_write(*args)
    for chunk_size in (0, -1, 2.5):
        with pytest.raises(ValueError):
            gated_delta_write(state, k, v, g, beta, chunk_size=chunk_size)
    with pytest.raises(ValueError):
        read_memory(state, torch.randn(2, 5, 3, 7))
    with pytest.raises(ValueError):
        read_memory(state[0], torch.randn(2, 5, 3, 8))
