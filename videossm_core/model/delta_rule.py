"""Gated delta rule for the global memory: the chunkwise-parallel state write, the read, the gates.

Convention (GDN / fla): per head the state ``S`` is ``[K, V]`` float32, and writing token ``t`` is

    S   = exp(g_t) * S                     # decay first
    v'_t = beta_t * (v_t - S^T k_t)        # error of the decayed state's prediction
    S   = S + k_t v'_t^T                   # rank-1 correction

i.e. ``S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T``, with unit keys, ``g <= 0`` and
``beta`` in (0, 1), so every transition is non-expansive and the state stays bounded.

Chunkwise-parallel form (WY representation / UT transform). Split the tokens into blocks of ``C``. In
a block with start state ``S0`` and chunk-local log decays ``G_r = sum_{i<=r} g_i``:

    Gamma[r, i] = exp(G_r - G_i) for i <= r, else 0           # [C, C] decay from token i to token r
    A = I + strictLower(diag(beta) (Gamma * K K^T))           # [C, C] unit lower-triangular
    U = A^-1 diag(beta) V                                     # [C, V] "pseudo-values"
    W = A^-1 diag(beta * exp(G)) K                            # [C, K]
    Delta  = U - W S0                                         # [C, V] = the per-token v'_t above
    S_next = exp(G_C) S0 + (K * exp(G_C - G))^T Delta         # [K, V]

Everything except the last two lines is independent of the state, so it is computed for all blocks at
once; only the ``T / C`` state steps run in a Python loop. Numerics (see
``shared/research/gated_delta.md`` section 7):

- every decay exponent is a segment sum ``sum_{i<j<=r} g_j`` built directly, never a difference of
  cumulative sums (that loses ``ulp(|G|)`` when gates are strong) and never a global cumsum;
- exponents above the diagonal are set to ``-inf`` *before* ``exp``: ``exp`` of them would overflow
  and masking afterwards gives ``0 * inf = NaN`` gradients;
- the last block is padded with ``beta = 0, g = 0, k = v = 0``, which neither writes nor decays;
- all of it runs in float32 with autocast disabled, whatever the input dtype: under bf16 autocast the
  matmuls would silently round a state that accumulates over thousands of writes.

Nothing here checks the values of ``g`` or ``beta`` (that would force a device sync); the callers
produce them with :func:`compute_gates`. On CUDA, the global TF32 switches still apply to these
float32 matmuls; callers that need full fp32 there must leave TF32 off.
"""

from __future__ import annotations

import contextlib
import functools
import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import MEMORY_UPDATE_FORMS

__all__ = ["l2_normalize", "gated_delta_write", "read_memory", "retention_gate_bias", "compute_gates",
           "MEMORY_UPDATE_FORMS", "FLA_INSTALL_HINT", "fla_available", "fla_gated_delta_write",
           "resolve_memory_update"]


def _autocast_off(device: torch.device):
    """Disable autocast for ``device`` (a no-op on device types autocast does not know)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def l2_normalize(x: Tensor, eps: float = 1e-6) -> Tensor:
    """``x / sqrt(sum(x^2) + eps)`` over the last dim (the fla kernels' L2 norm, same eps)."""
    return x * torch.rsqrt(x.pow(2).sum(dim=-1, keepdim=True) + eps)


def _segsum(x: Tensor) -> Tensor:
    """Segment sums of ``x [..., L]`` -> ``[..., L, L]``: ``out[r, i] = sum_{i<j<=r} x_j`` for i <= r, else -inf.

    Each entry is summed from its own terms, so a small segment next to a large cumulative decay keeps
    full relative precision (unlike ``cumsum[r] - cumsum[i]``).
    """
    L = x.shape[-1]
    ones = torch.ones(L, L, dtype=torch.bool, device=x.device)
    # xs[..., r, i] = x_r where r > i, else 0; a cumsum down the rows then gives x_{i+1} + .. + x_r.
    xs = x.unsqueeze(-1).expand(*x.shape, L).masked_fill(~ones.tril(-1), 0.0)
    return xs.cumsum(dim=-2).masked_fill(~ones.tril(), -math.inf)


def _check_write_shapes(state, k, v, g, beta, chunk_size) -> None:
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"gated_delta_write: chunk_size must be an int >= 1, got {chunk_size!r}")
    if k.dim() != 4:
        raise ValueError(f"gated_delta_write: k must be [B, T, H, K], got shape {tuple(k.shape)}")
    B, T, H, K = k.shape
    if v.dim() != 4 or tuple(v.shape[:3]) != (B, T, H):
        raise ValueError(f"gated_delta_write: v must be [B, T, H, V] = [{B}, {T}, {H}, V] to match k "
                         f"{tuple(k.shape)}, got {tuple(v.shape)}")
    for name, t in (("g", g), ("beta", beta)):
        if tuple(t.shape) != (B, T, H):
            raise ValueError(f"gated_delta_write: {name} must be [B, T, H] = [{B}, {T}, {H}], got {tuple(t.shape)}")
    if state is not None and tuple(state.shape) != (B, H, K, v.shape[-1]):
        raise ValueError(f"gated_delta_write: state must be [B, H, K, V] = [{B}, {H}, {K}, {v.shape[-1]}], "
                         f"got {tuple(state.shape)}")


def gated_delta_write(state: Tensor | None, k: Tensor, v: Tensor, g: Tensor, beta: Tensor,
                      chunk_size: int = 64) -> Tensor:
    """Write ``T`` tokens into the memory, in order, with the gated delta rule; return the new state.

    state ``[B, H, K, V]`` (None = zeros), k ``[B, T, H, K]`` (L2-normalised by the caller), v
    ``[B, T, H, V]``, g ``[B, T, H]`` log decay (<= 0), beta ``[B, T, H]`` in (0, 1). Returns a float32
    ``[B, H, K, V]`` state; ``T == 0`` returns the (float32) state unchanged. Differentiable in all
    inputs. ``chunk_size`` (any int >= 1) changes only the speed, not the result (up to rounding).
    """
    _check_write_shapes(state, k, v, g, beta, chunk_size)
    B, T, H, Kd = k.shape
    Vd = v.shape[-1]
    device = k.device
    with _autocast_off(device):
        if state is None:
            S = torch.zeros(B, H, Kd, Vd, dtype=torch.float32, device=device)
        else:
            S = state.float()
        if T == 0:
            return S

        C = min(chunk_size, T)  # a block longer than T would only add padding
        N = -(-T // C)
        pad = N * C - T

        # [B, T, H, *] -> [B, H, T, *] float32, padded with exact no-op tokens, -> [B, H, N, C, *].
        kf = k.float().transpose(1, 2)
        vf = v.float().transpose(1, 2)
        gf = g.float().transpose(1, 2)
        bf = beta.float().transpose(1, 2)
        if pad:
            kf = F.pad(kf, (0, 0, 0, pad))
            vf = F.pad(vf, (0, 0, 0, pad))
            gf = F.pad(gf, (0, pad))
            bf = F.pad(bf, (0, pad))
        kc = kf.reshape(B, H, N, C, Kd)
        vc = vf.reshape(B, H, N, C, Vd)
        gc = gf.reshape(B, H, N, C)
        bc = bf.reshape(B, H, N, C)

        # Segment sums over [0, g_0, ..., g_{C-1}]: index 0 stands for "the block start", so
        # seg[r+1, 0] = G_r, seg[C, r+1] = G_C - G_r and seg[r+1, i+1] = G_r - G_i, all built as sums.
        seg = _segsum(F.pad(gc, (1, 0)))                     # [B, H, N, C+1, C+1]
        log_gamma = seg[..., 1:, 0]                          # [B, H, N, C]   G_r
        log_to_end = seg[..., -1, 1:]                        # [B, H, N, C]   G_C - G_r
        gamma_end = seg[..., -1, 0].exp()                    # [B, H, N]      exp(G_C)
        decay = seg[..., 1:, 1:].exp()                       # [B, H, N, C, C] Gamma, 0 above the diagonal

        # Strictly lower part of A; solve_triangular(unitriangular=True) supplies the unit diagonal.
        kk = kc @ kc.transpose(-1, -2)                       # [B, H, N, C, C]
        lower = (bc.unsqueeze(-1) * decay * kk).tril(-1)
        # One solve for both right-hand sides: [beta V | beta exp(G) K] -> [U | W].
        rhs = torch.cat([bc.unsqueeze(-1) * vc, (bc * log_gamma.exp()).unsqueeze(-1) * kc], dim=-1)
        uw = torch.linalg.solve_triangular(lower, rhs, upper=False, unitriangular=True)
        U, W = uw.split([Vd, Kd], dim=-1)                    # [B, H, N, C, V], [B, H, N, C, K]
        k_end_t = (kc * log_to_end.exp().unsqueeze(-1)).transpose(-1, -2)  # [B, H, N, K, C]

        # The only sequential part: one state step per block.
        for n in range(N):
            delta = U[:, :, n] - W[:, :, n] @ S              # [B, H, C, V]
            S = gamma_end[:, :, n, None, None] * S + k_end_t[:, :, n] @ delta
        return S


def read_memory(state: Tensor, q: Tensor) -> Tensor:
    """Read the memory: q ``[B, T, H, K]`` -> ``[B, T, H, V]`` = ``q @ S`` per head, float32, no scale."""
    if state.dim() != 4 or q.dim() != 4:
        raise ValueError(f"read_memory: state must be [B, H, K, V] and q [B, T, H, K], got "
                         f"{tuple(state.shape)} and {tuple(q.shape)}")
    B, _, H, Kd = q.shape
    if tuple(state.shape[:3]) != (B, H, Kd):
        raise ValueError(f"read_memory: state {tuple(state.shape)} does not match q {tuple(q.shape)}: "
                         f"expected state [B={B}, H={H}, K={Kd}, V]")
    with _autocast_off(q.device):
        return torch.einsum("bthk,bhkv->bthv", q.float(), state.float())


def retention_gate_bias(log_decay_per_token: float, A_log: float = 0.0) -> float:
    """The ``dt_bias`` b with ``-exp(A_log) * softplus(0 + b) == log_decay_per_token``.

    Inverse softplus of ``y = -log_decay / exp(A_log)``, written as ``y + log(-expm1(-y))``: exact for
    tiny y (where ``log(exp(y) - 1)`` would cancel) and for large y (where ``exp(y)`` would overflow).
    """
    x = float(log_decay_per_token)
    if not (math.isfinite(x) and x < 0.0):
        raise ValueError(f"retention_gate_bias: log_decay_per_token must be finite and < 0, got {x}")
    y = -x / math.exp(float(A_log))
    return y + math.log(-math.expm1(-y))


def compute_gates(alpha_logits: Tensor, beta_logits: Tensor, A_log: Tensor) -> tuple[Tensor, Tensor]:
    """Per-token gates: ``g = -exp(A_log) * softplus(alpha_logits)``, ``beta = sigmoid(beta_logits)``.

    alpha_logits, beta_logits ``[B, T, H]`` (alpha already includes the bias), A_log ``[H]``. Both
    outputs are float32 and computed with autocast off: mixed-precision wrappers may hand A_log over
    in half precision, and a per-token decay of 1e-7 does not survive bf16.
    """
    if alpha_logits.dim() != 3 or tuple(beta_logits.shape) != tuple(alpha_logits.shape):
        raise ValueError(f"compute_gates: alpha_logits and beta_logits must both be [B, T, H], got "
                         f"{tuple(alpha_logits.shape)} and {tuple(beta_logits.shape)}")
    if tuple(A_log.shape) != (alpha_logits.shape[-1],):
        raise ValueError(f"compute_gates: A_log must be [H] = [{alpha_logits.shape[-1]}], got {tuple(A_log.shape)}")
    with _autocast_off(alpha_logits.device):
        g = -A_log.float().exp() * F.softplus(alpha_logits.float())
        beta = torch.sigmoid(beta_logits.float())
    return g, beta


# ---------------------------------------------------------------------------------------------------
# Optional: flash-linear-attention's Triton kernel for the same write (CUDA only).

# The forms of the memory write (StreamConfig.memory_update, MEMORY_UPDATE_FORMS): "chunkwise" is
# gated_delta_write above, "recurrent" the token loop of model.reference (the ground truth), "fla"
# flash-linear-attention's chunk_gated_delta_rule, "auto" fla where it can run (CUDA, fla imports),
# else "chunkwise".
FLA_INSTALL_HINT = "pip install fla-core (flash-linear-attention's kernels; it needs triton and a CUDA GPU)"


@functools.cache
def _fla_probe() -> tuple[Callable | None, str]:
    """Import fla's chunk kernel once: ``(chunk_gated_delta_rule, "")`` or ``(None, why not)``.

    Any exception counts as "not available": on a machine without triton fla fails with
    ModuleNotFoundError, and a triton that does not support the GPU can fail otherwise.
    """
    try:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    except Exception as err:  # noqa: BLE001 - whatever the reason, the kernel is not usable here
        return None, f"{type(err).__name__}: {err}"
    return chunk_gated_delta_rule, ""


# torch.compile treats the answer as a constant instead of tracing the import.
@torch.compiler.assume_constant_result
def fla_available() -> bool:
    """Whether ``fla.ops.gated_delta_rule.chunk_gated_delta_rule`` imports (probed once per process)."""
    return _fla_probe()[0] is not None


def _fla_kernel() -> Callable:
    kernel, why = _fla_probe()
    if kernel is None:
        raise ImportError(f"memory_update='fla' needs flash-linear-attention's kernels: {FLA_INSTALL_HINT}. "
                          f"Importing fla.ops.gated_delta_rule failed with {why}")
    return kernel


def resolve_memory_update(form: str, device: torch.device) -> str:
    """The concrete write form for tensors on ``device``: "auto" -> "fla" on CUDA when fla imports,
    else "chunkwise"; the other forms stay as they are (an unknown one raises)."""
    if form not in MEMORY_UPDATE_FORMS:
        raise ValueError(f"memory_update must be one of {MEMORY_UPDATE_FORMS}, got {form!r}")
    if form != "auto":
        return form
    return "fla" if device.type == "cuda" and fla_available() else "chunkwise"


def fla_gated_delta_write(state: Tensor | None, k: Tensor, v: Tensor, g: Tensor, beta: Tensor) -> Tensor:
    """:func:`gated_delta_write` with fla's ``chunk_gated_delta_rule`` Triton kernel (CUDA only).

    Same shapes and gate convention; ``k`` may be raw: the kernel L2-normalises it exactly like
    :func:`l2_normalize` (``x / sqrt(sum(x^2) + 1e-6)``), so unit keys pass through unchanged. Inputs
    go in as float32 and the state comes back float32. fla's kernel rounds its intra-chunk matmuls
    (TF32 on recent GPUs), so the result agrees with the chunkwise form to about 1e-3 relative, not to
    float32 rounding. Raises if the tensors are not on a CUDA device or fla does not import.
    """
    _check_write_shapes(state, k, v, g, beta, 64)
    if k.device.type != "cuda":
        raise RuntimeError(f"memory_update='fla' runs Triton kernels that need a CUDA GPU, but the memory is on "
                           f"{k.device}; use 'auto' or 'chunkwise' here ({FLA_INSTALL_HINT} on a CUDA machine)")
    return _fla_write_outside_graphs(state, k, v, g, beta)


# fla's kernel is a third-party Triton autograd.Function: torch.compile runs it as it is (a graph break).
@torch.compiler.disable
def _fla_write_outside_graphs(state: Tensor | None, k: Tensor, v: Tensor, g: Tensor, beta: Tensor) -> Tensor:
    return _fla_write(_fla_kernel(), state, k, v, g, beta)


def _fla_write(kernel: Callable, state: Tensor | None, k: Tensor, v: Tensor, g: Tensor, beta: Tensor) -> Tensor:
    """The argument mapping onto fla's ``chunk_gated_delta_rule`` (``kernel``), shared with the tests, which
    pass fla's pure-PyTorch reference in its place to check the mapping without a GPU.

    Layouts are the same on both sides (``[B, T, H, *]`` tokens, ``[B, H, K, V]`` state, not fla's
    ``state_v_first``); ``g`` is the same log decay, applied before the correction (fla's convention);
    ``beta`` is already a sigmoid (no in-kernel sigmoid, no negative eigenvalues). Only the final
    state is wanted: the keys double as queries and the output (scale 1) is dropped.
    """
    B, T, H, Kd = k.shape
    Vd = v.shape[-1]
    with _autocast_off(k.device):
        S = (torch.zeros(B, H, Kd, Vd, dtype=torch.float32, device=k.device) if state is None
             else state.float().contiguous())
        if T == 0:
            return S
        keys = k.float().contiguous()
        _, final = kernel(q=keys, k=keys, v=v.float().contiguous(), g=g.float().contiguous(),
                          beta=beta.float().contiguous(), scale=1.0, initial_state=S, output_final_state=True,
                          use_qk_l2norm_in_kernel=True, use_beta_sigmoid_in_kernel=False, state_v_first=False)
        return final.float()
