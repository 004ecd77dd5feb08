"""VideoSSM's global memory: a gated delta-rule state per block and head, fed by evicted tokens.

Per block (one state per attention head, sharing the block's Q/K/V projections):

    gates (computed from the block input H_in while the token is in the window, cached with its K/V)
        beta  = sigmoid(W_beta H_in + b_beta)                    write strength, [B, N, H]
        g     = -exp(A_log) * softplus(W_alpha H_in + B)         log decay (<= 0), [B, N, H]
    write (once per chunk, the tokens leaving the window, in eviction order)
        S_i = exp(g_i) (I - beta_i k_i k_i^T) S_{i-1} + beta_i k_i v_i^T     (chunkwise WY form)
    read (every call, the current queries)
        H_global = SiLU(g_out * RMSNorm(q S)),   g_out = Linear(H_in)
    route
        gamma_t = sigmoid(w log((t + 1) / T) + b),   H = H_local + gamma_t H_global

Keys and queries are the block's RMS-normed q/k before RoPE, L2-normalised per head (the delta rule
needs unit keys; rotary positions mean nothing to a compressed state). ``g_out`` starts at zero, so a
model with fresh memory computes exactly what its base checkpoint computes. The state and all gate
math are float32 with autocast off.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import MemoryConfig
from .delta_rule import (_autocast_off, fla_gated_delta_write, gated_delta_write, l2_normalize, read_memory,
                         resolve_memory_update, retention_gate_bias)


class HeadRMSNorm(nn.Module):
    """RMSNorm over the last (head) dim with a weight shared across heads, computed in float32."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x.float()
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.float()


class HybridMemory(nn.Module):
    """Gates, write, read and router of one block's global memory. Holds parameters only: the state
    itself lives in the stream state and is passed in and returned."""

    def __init__(self, dim: int, num_heads: int, config: MemoryConfig):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.config = config
        self.beta_proj = nn.Linear(dim, num_heads)
        self.alpha_proj = nn.Linear(dim, num_heads)
        self.A_log = nn.Parameter(torch.zeros(num_heads))
        self.out_gate = nn.Linear(dim, dim)
        self.out_norm = HeadRMSNorm(self.head_dim, config.norm_eps)
        self.router_w = nn.Parameter(torch.tensor([config.router_w_init]))
        self.router_b = nn.Parameter(torch.tensor([config.router_b_init]))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        cfg = self.config
        # Gates start input-independent, at the target retention and write strength; training
        # makes them content-dependent.
        nn.init.zeros_(self.beta_proj.weight)
        self.beta_proj.bias.fill_(math.log(cfg.beta_init / (1.0 - cfg.beta_init)))
        nn.init.zeros_(self.alpha_proj.weight)
        self.alpha_proj.bias.fill_(retention_gate_bias(cfg.init_log_decay_per_token))
        self.A_log.zero_()
        # Identity at init: SiLU(0 * anything) == 0, so the global branch adds exactly nothing.
        nn.init.zeros_(self.out_gate.weight)
        nn.init.zeros_(self.out_gate.bias)
        self.out_norm.weight.fill_(1.0)
        self.router_w.fill_(cfg.router_w_init)
        self.router_b.fill_(cfg.router_b_init)

    def gates(self, h_in: Tensor) -> tuple[Tensor, Tensor]:
        """h_in: [B, N, dim] -> (g, beta), each [B, N, H] float32."""
        with _autocast_off(h_in.device):
            alpha_logits = F.linear(h_in.float(), self.alpha_proj.weight.float(), self.alpha_proj.bias.float())
            beta_logits = F.linear(h_in.float(), self.beta_proj.weight.float(), self.beta_proj.bias.float())
            g = -torch.exp(self.A_log.float()) * F.softplus(alpha_logits)
            beta = torch.sigmoid(beta_logits)
        return g, beta

    def write(self, state: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, form: str = "auto") -> Tensor:
        """Write evicted tokens in eviction order. k, v: [B, T, H, D] (k RMS-normed, un-rotated);
        g, beta: [B, T, H]; state: [B, H, D, D] float32. Returns the new state. ``form`` (see
        ``StreamConfig.memory_update``) picks the computation, all of the same result: "chunkwise" (our
        WY form), "fla" (flash-linear-attention's Triton kernel, CUDA only), "auto" (fla where it runs,
        else chunkwise) or "recurrent" (the token loop; much slower, for checking)."""
        form = resolve_memory_update(form, k.device)
        if form == "fla":
            return fla_gated_delta_write(state, k, v, g, beta)  # L2-normalises the keys in the kernel
        if form == "recurrent":
            from .reference import gated_delta_write_reference

            return gated_delta_write_reference(state, l2_normalize(k.float()), v.float(), g, beta)
        return gated_delta_write(state, l2_normalize(k.float()), v.float(), g, beta,
                                 chunk_size=self.config.delta_chunk_size)

    def router(self, frame_positions: Tensor, horizon: int) -> Tensor:
        """gamma_t for absolute latent-frame indices t: [F] -> [F] float32."""
        rho = (frame_positions.float() + 1.0) / float(horizon)
        return torch.sigmoid(self.router_w.float() * torch.log(rho) + self.router_b.float())

    def read(self, state: Tensor, q: Tensor, h_in: Tensor, gamma_per_token: Tensor) -> Tensor:
        """gamma_t * SiLU(g_out * RMSNorm(q S)).

        q: [B, N, H, D] RMS-normed, un-rotated queries; h_in: [B, N, dim]; gamma_per_token: [N].
        Returns [B, N, H, D] float32, to be added to the local attention output. The out-gate is an
        ordinary [dim, dim] projection and runs in the compute dtype like the block's other linears;
        only the read of the float32 state and its norm stay float32.
        """
        gate = self.out_gate(h_in).unflatten(-1, (self.num_heads, self.head_dim))  # [B, N, H, D]
        with _autocast_off(q.device):
            retrieved = self.out_norm(read_memory(state, l2_normalize(q.float())))  # [B, N, H, D]
            return gamma_per_token.float()[None, :, None, None] * F.silu(gate.float() * retrieved)


def empty_memory_state(batch: int, num_heads: int, head_dim: int, device: torch.device | str) -> Tensor:
    """A fresh memory state: [B, H, D_k, D_v] float32 zeros."""
    return torch.zeros(batch, num_heads, head_dim, head_dim, dtype=torch.float32, device=device)
