"""The causal Wan2.1 text-to-video DiT with VideoSSM's hybrid memory in every block.

Module names match the original Wan2.1 state-dict keys (``blocks.N.self_attn.q``, ``head.head`` ...),
so Wan / Self-Forcing / LongLive / CausVid checkpoints load 1:1. The memory's own parameters live
under ``blocks.N.self_attn.memory.*``.

Two ways to run it:
- ``forward``: one pass over a whole clip with a given attention mask (bidirectional for the teacher,
  block-causal sink+window for training the student and for testing streaming against);
- ``forward_stream``: one chunk (or a re-cache of window frames) against a ``BranchState`` whose
  caches and memory it advances in place.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..config import ModelConfig, StreamConfig
from ..state import BranchState, LayerCache
from .attention import CachePlan, attention, block_causal_mask, plan_cache
from .memory import HybridMemory, empty_memory_state
from .rope import apply_rope, rope_cos_sin


class WanRMSNorm(nn.Module):
    """RMSNorm over the full feature dim (Wan normalises q and k across all heads)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        out = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return out.to(x.dtype) * self.weight


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the module's dtype: the residual stream it normalises is
    float32 (Wan's design), and a bf16/fp16 affine weight must not force it down or mix dtypes."""

    def forward(self, x: Tensor) -> Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps)


def sinusoidal_embedding(timesteps: Tensor, dim: int) -> Tensor:
    """Wan's timestep embedding: cat(cos, sin) with 10000^(-i/half). [N] -> [N, dim] float32."""
    half = dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=timesteps.device) / half)
    args = timesteps.to(torch.float64)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1).float()


class _Projections(nn.Module):
    """Wan's attention projections: q, k, v, o and the q/k RMSNorms across all heads."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        dim, self.num_heads, self.head_dim = config.dim, config.num_heads, config.head_dim
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = WanRMSNorm(dim, config.eps)
        self.norm_k = WanRMSNorm(dim, config.eps)


class SelfAttention(_Projections):
    """Window attention (local memory) fused with the gated delta-rule state (global memory)."""

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.memory = HybridMemory(config.dim, config.num_heads, config.memory) if config.memory.enabled else None

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x: [B, N, dim] -> q, k, v: [B, N, H, D] (q, k RMS-normed, not rotated)."""
        q = self.norm_q(self.q(x)).unflatten(-1, (self.num_heads, self.head_dim))
        k = self.norm_k(self.k(x)).unflatten(-1, (self.num_heads, self.head_dim))
        v = self.v(x).unflatten(-1, (self.num_heads, self.head_dim))
        return q, k, v

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None) -> Tensor:
        """One-shot pass over a whole clip (no cache, no global memory)."""
        q, k, v = self.project(x)
        out = attention(apply_rope(q, cos, sin), apply_rope(k, cos, sin), v, mask)
        return self.o(out.flatten(-2))

    def forward_stream(self, x: Tensor, cache: LayerCache, plan: CachePlan, memory_on: bool,
                       gamma_per_token: Tensor | None, memory_update: str = "auto") -> Tensor:
        """One streaming call: evict to memory, store this call's K/V (and gates), attend, read memory.

        Cached K/V are stored detached (gradients stop at the chunk boundary, as in Self-Forcing);
        cached gates keep their graph to the gate parameters when grad is on, so long-rollout training
        reaches them through the memory write.
        """
        q, k, v = self.project(x)
        use_memory = memory_on and self.memory is not None
        if use_memory and plan.evict_tokens is not None:
            idx = plan.evict_tokens
            cache.memory = self.memory.write(cache.memory, cache.k[:, idx], cache.v[:, idx],
                                             cache.g[:, idx], cache.beta[:, idx], memory_update)
        _ensure_capacity(cache, plan.capacity_tokens, k, with_gates=use_memory)
        write = plan.write_tokens
        # In the cache's dtype: under autocast v comes out of its Linear in bf16 while k, after the RMSNorm's
        # float32 weight, is float32.
        cache.k[:, write] = k.detach().to(cache.k.dtype)
        cache.v[:, write] = v.detach().to(cache.v.dtype)
        if use_memory:
            # From the detached input: a cached gate's graph then holds only the gate parameters, small enough for
            # stage 2 to carry it across training windows to the eviction that uses it (the input's graph is the
            # whole network, which the optimizer changes in place between windows).
            g, beta = self.memory.gates(x.detach())
            if torch.is_grad_enabled():
                cache.g = cache.g.index_copy(1, write, g)
                cache.beta = cache.beta.index_copy(1, write, beta)
            else:  # in place, so the other slots' gates keep the graph they carry (a rollout's no-grad steps)
                cache.g[:, write] = g
                cache.beta[:, write] = beta
        read = plan.read_tokens
        keys = torch.cat([apply_rope(cache.k[:, read], plan.read_cos, plan.read_sin),
                          apply_rope(k, plan.query_cos, plan.query_sin)], dim=1)
        values = torch.cat([cache.v[:, read], v], dim=1)
        out = attention(apply_rope(q, plan.query_cos, plan.query_sin), keys, values)
        if use_memory:
            local, read = out.float(), self.memory.read(cache.memory, q, x, gamma_per_token)
            cache.read_share = read.detach().norm() / local.detach().norm().clamp_min(1e-12)  # stays on the device
            out = local + read
        return self.o(out.to(x.dtype).flatten(-2))


def _ensure_capacity(cache: LayerCache, tokens: int, like: Tensor, with_gates: bool) -> None:
    """Allocate (or, in full-cache mode, grow) a block's cache to ``tokens`` token slots."""
    b, _, h, d = like.shape
    have = 0 if cache.k is None else cache.k.shape[1]
    if have >= tokens:
        return
    grow = tokens - have

    def extend(t: Tensor | None, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        fresh = torch.zeros(shape, dtype=dtype, device=like.device)
        return fresh if t is None else torch.cat([t, fresh], dim=1)

    cache.k = extend(cache.k, (b, grow, h, d), like.dtype)
    cache.v = extend(cache.v, (b, grow, h, d), like.dtype)
    if with_gates:
        cache.g = extend(cache.g, (b, grow, h), torch.float32)
        cache.beta = extend(cache.beta, (b, grow, h), torch.float32)
        if cache.memory is None:
            cache.memory = empty_memory_state(b, h, d, like.device)


class CrossAttention(_Projections):
    """Attention from video tokens to the prompt's tokens; K/V are computed once per prompt."""

    def project_context(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """context: [B, L, dim] (after the text embedding) -> k, v: [B, L, H, D]."""
        k = self.norm_k(self.k(context)).unflatten(-1, (self.num_heads, self.head_dim))
        v = self.v(context).unflatten(-1, (self.num_heads, self.head_dim))
        return k, v

    def forward(self, x: Tensor, k: Tensor, v: Tensor) -> Tensor:
        q = self.norm_q(self.q(x)).unflatten(-1, (self.num_heads, self.head_dim))
        return self.o(attention(q, k, v).flatten(-2))


class WanBlock(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        dim = config.dim
        self.norm1 = FP32LayerNorm(dim, eps=config.eps, elementwise_affine=False)
        self.self_attn = SelfAttention(config)
        self.norm3 = FP32LayerNorm(dim, eps=config.eps, elementwise_affine=True)
        self.cross_attn = CrossAttention(config)
        self.norm2 = FP32LayerNorm(dim, eps=config.eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(dim, config.ffn_dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(config.ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(self, x: Tensor, e: Tensor, tokens_per_frame: int, text_kv: tuple[Tensor, Tensor], attend) -> Tensor:
        """x: [B, N, dim] float32 residual stream; e: [B, F, 6, dim] per-frame modulation;
        ``attend(h_in) -> [B, N, dim]`` is the self-attention (one-shot or streaming)."""
        mod = (self.modulation.float()[:, None] + e.float())  # [B, F, 6, dim]
        shift_a, scale_a, gate_a, shift_f, scale_f, gate_f = (m.repeat_interleave(tokens_per_frame, 1)
                                                               for m in mod.unbind(2))
        dtype = self.ffn[0].weight.dtype
        h = self.norm1(x) * (1 + scale_a) + shift_a
        x = x + attend(h.to(dtype)).float() * gate_a
        x = x + self.cross_attn(self.norm3(x).to(dtype), *text_kv).float()
        h = self.norm2(x) * (1 + scale_f) + shift_f
        return x + self.ffn(h.to(dtype)).float() * gate_f


def _recompile_room():
    """Room for every compiled variant of the streaming block, for this call only. A stream compiles
    one graph per cache situation (window filling, evicting, memory on or off, a re-cache...), and
    past dynamo's default of 8 it would silently fall back to eager for the rest of the process."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    return config.patch(**{name: 64})


def stream_block(block: WanBlock, tokens: Tensor, e0: Tensor, tokens_per_frame: int, cache: LayerCache,
                 plan: CachePlan, memory_on: bool, gamma: Tensor | None, memory_update: str) -> Tensor:
    """One block of a streaming call, advancing ``cache`` in place: the unit ``compile_streaming`` compiles.
    tokens: [B, N, dim] float32; e0: [B, F, 6, dim]; gamma: [N] router weight per query token or None."""
    def attend(h_in: Tensor) -> Tensor:
        return block.self_attn.forward_stream(h_in, cache, plan, memory_on, gamma, memory_update)

    return block(tokens, e0, tokens_per_frame, (cache.text_k, cache.text_v), attend)


class Head(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.norm = FP32LayerNorm(config.dim, eps=config.eps, elementwise_affine=False)
        self.head = nn.Linear(config.dim, config.out_dim * math.prod(config.patch_size))
        self.modulation = nn.Parameter(torch.randn(1, 2, config.dim) / config.dim**0.5)

    def forward(self, x: Tensor, e: Tensor, tokens_per_frame: int) -> Tensor:
        """x: [B, N, dim]; e: [B, F, dim] time embedding (before the 6-way projection)."""
        shift, scale = (self.modulation.float()[:, None] + e.float()[:, :, None]).unbind(2)  # [B, F, dim]
        shift, scale = shift.repeat_interleave(tokens_per_frame, 1), scale.repeat_interleave(tokens_per_frame, 1)
        h = self.norm(x) * (1 + scale) + shift
        return self.head(h.to(self.head.weight.dtype))


class CausalWanModel(nn.Module):
    """Wan2.1 DiT, predicting the flow ``noise - x0`` for latents ``[B, C, F, H, W]`` with per-frame timesteps."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        dim = config.dim
        self.patch_embedding = nn.Conv3d(config.in_dim, dim, kernel_size=config.patch_size, stride=config.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(config.text_dim, dim), nn.GELU(approximate="tanh"),
                                            nn.Linear(dim, dim))
        self.time_embedding = nn.Sequential(nn.Linear(config.freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.blocks = nn.ModuleList(WanBlock(config) for _ in range(config.num_layers))
        self.head = Head(config)
        self._compiled_stream_block = None  # set by compile_streaming()
        self.init_weights()

    # ------------------------------------------------------------------ init
    @torch.no_grad()
    def init_weights(self) -> None:
        """Wan's init: xavier linears, zero biases, small embeddings, a zero output head."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.xavier_uniform_(self.patch_embedding.weight.flatten(1))
        nn.init.zeros_(self.patch_embedding.bias)
        for seq in (self.text_embedding, self.time_embedding):
            for layer in seq:
                if isinstance(layer, nn.Linear):
                    nn.init.normal_(layer.weight, std=0.02)
        nn.init.zeros_(self.head.head.weight)
        for block in self.blocks:
            if block.self_attn.memory is not None:
                block.self_attn.memory.reset_parameters()

    # ------------------------------------------------------------------ pieces
    @property
    def dtype(self) -> torch.dtype:
        return self.patch_embedding.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.patch_embedding.weight.device

    def _check_latents(self, x: Tensor, timestep: Tensor) -> tuple[int, int, int]:
        cfg = self.config
        if x.ndim != 5 or x.shape[1] != cfg.in_dim:
            raise ValueError(f"latents must be [B, {cfg.in_dim}, F, H, W], got {tuple(x.shape)}")
        pt, ph, pw = cfg.patch_size
        _, _, f, h, w = x.shape
        if f % pt or h % ph or w % pw:
            raise ValueError(f"latent size {f}x{h}x{w} is not divisible by the patch size {cfg.patch_size}")
        if timestep.shape != (x.shape[0], f // pt):
            raise ValueError(f"timestep must be per latent frame, [B, F] = {(x.shape[0], f // pt)}, "
                             f"got {tuple(timestep.shape)}")
        return f // pt, h // ph, w // pw

    def embed_time(self, timestep: Tensor) -> tuple[Tensor, Tensor]:
        """timestep [B, F] -> e [B, F, dim] and e0 [B, F, 6, dim] (float32)."""
        b, f = timestep.shape
        emb = sinusoidal_embedding(timestep.reshape(-1), self.config.freq_dim).to(self.dtype)
        e = self.time_embedding(emb)
        e0 = self.time_projection(e).unflatten(-1, (6, self.config.dim))
        return e.float().reshape(b, f, -1), e0.float().reshape(b, f, 6, -1)

    def embed_text(self, context: Tensor) -> Tensor:
        """context [B, L, text_dim] zero-padded -> [B, L, dim]."""
        if context.ndim != 3 or context.shape[-1] != self.config.text_dim:
            raise ValueError(f"text conditioning must be [B, L, {self.config.text_dim}], got {tuple(context.shape)}")
        if context.shape[1] > self.config.text_len:
            raise ValueError(f"text conditioning has {context.shape[1]} tokens, more than the model's {self.config.text_len}")
        if context.shape[1] < self.config.text_len:  # Wan pads the umT5 output with zeros to text_len
            context = F.pad(context, (0, 0, 0, self.config.text_len - context.shape[1]))
        return self.text_embedding(context.to(self.dtype))

    def text_kv(self, context: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Cross-attention K/V of every block for one prompt (computed once per prompt)."""
        ctx = self.embed_text(context)
        return [block.cross_attn.project_context(ctx) for block in self.blocks]

    def _patchify(self, x: Tensor) -> Tensor:
        return self.patch_embedding(x.to(self.dtype)).flatten(2).transpose(1, 2).float()  # [B, N, dim]

    def _unpatchify(self, out: Tensor, grid: tuple[int, int, int]) -> Tensor:
        """[B, F*h*w, pt*ph*pw*C] head output -> [B, C, F*pt, h*ph, w*pw] (Wan's channel-last patch order)."""
        f, h, w = grid
        pt, ph, pw = self.config.patch_size
        return rearrange(out.float(), "b (f h w) (pt ph pw c) -> b c (f pt) (h ph) (w pw)",
                         f=f, h=h, w=w, pt=pt, ph=ph, pw=pw)

    # ------------------------------------------------------------------ one-shot
    def forward(self, x: Tensor, timestep: Tensor, context: Tensor, mask: Tensor | None = None,
                frame_offset: int = 0) -> Tensor:
        """Whole-clip pass. x: [B, C, F, H, W]; timestep: [B, F]; context: [B, L, text_dim];
        mask: [N, N] bool (True = attend) or None for bidirectional attention. Global memory is not
        used here (it only exists along a stream). Returns the flow prediction, shaped like x."""
        grid = self._check_latents(x, timestep)
        f, h, w = grid
        cos, sin = rope_cos_sin(self.config, torch.arange(frame_offset, frame_offset + f), h, w)
        cos, sin = cos.to(self.device), sin.to(self.device)  # once per call, not per block
        mask = None if mask is None else mask.to(self.device)
        e, e0 = self.embed_time(timestep)
        kv = self.text_kv(context)
        tokens = self._patchify(x)
        for block, text in zip(self.blocks, kv):
            tokens = block(tokens, e0, h * w, text, lambda hin, b=block: b.self_attn(hin, cos, sin, mask))
        return self._unpatchify(self.head(tokens, e, h * w), grid)

    def causal_mask(self, num_frames: int, height: int, width: int, stream: StreamConfig) -> Tensor:
        """Block-causal sink+window mask for a latent clip of the given size (training, tests)."""
        _, ph, pw = self.config.patch_size
        return block_causal_mask(num_frames, (height // ph) * (width // pw), stream)

    # ------------------------------------------------------------------ streaming
    def set_prompt_inplace(self, branch: BranchState, context: Tensor) -> None:
        """Load a prompt's cross-attention K/V into a branch (resets the previous prompt's cache)."""
        branch.text_embedding = context
        for layer, (k, v) in zip(branch.layers, self.text_kv(context)):
            layer.text_k, layer.text_v = k, v

    def forward_stream(self, x: Tensor, timestep: Tensor, branch: BranchState, start_frame: int,
                       next_frame: int, stream: StreamConfig, counters: dict[str, int] | None = None
                       ) -> tuple[Tensor, int]:
        """One streaming call over frames ``[start_frame, start_frame + F)``, advancing ``branch`` in place.

        The frames are either the stream's next frames (``start_frame == next_frame``: the call evicts
        what no longer fits, once) or frames still in the window (a later denoising step, the clean
        pass, or a re-cache after a prompt switch: their slots are overwritten, nothing is evicted).
        Returns the flow prediction and the stream's new ``next_frame``.
        """
        grid = self._check_latents(x, timestep)
        f, h, w = grid
        if branch.layers[0].text_k is None:
            raise ValueError("no prompt is loaded into this stream branch; call set_prompt_inplace first")
        plan, branch.slot_frames, new_next = plan_cache(
            branch.slot_frames, start_frame, f, next_frame, h * w, (h, w), self.config, stream, device=x.device)
        memory_on = stream.memory and not stream.full_cache and self.config.memory.enabled
        if counters is not None:
            counters["model_calls"] = counters.get("model_calls", 0) + 1
            if plan.evicted_frames:
                counters["eviction_events"] = counters.get("eviction_events", 0) + 1
                counters["evicted_frames"] = counters.get("evicted_frames", 0) + len(plan.evicted_frames)
                if memory_on:
                    counters["memory_writes"] = counters.get("memory_writes", 0) + 1
        e, e0 = self.embed_time(timestep)
        tokens = self._patchify(x)
        query_frames = plan.query_frames
        step = self._compiled_stream_block or stream_block
        horizon = self.router_horizon(stream)
        with _recompile_room() if self._compiled_stream_block else contextlib.nullcontext():
            for block, layer in zip(self.blocks, branch.layers):
                gamma = None  # the router weight per query token, [N]
                if memory_on:
                    gamma = block.self_attn.memory.router(query_frames, horizon)
                    gamma = gamma.repeat_interleave(h * w)
                tokens = step(block, tokens, e0, h * w, layer, plan, memory_on, gamma, stream.memory_update)
        return self._unpatchify(self.head(tokens, e, h * w), grid), new_next

    def compile_streaming(self, **compile_options) -> None:
        """``torch.compile`` the streaming block (all blocks share one compiled graph per cache shape).

        The first chunks compile (the window fills, so the attended length changes until the stream
        evicts; later chunks reuse the graphs). Options go to ``torch.compile`` (e.g. ``mode``).
        """
        self._compiled_stream_block = torch.compile(stream_block, **compile_options)

    def router_horizon(self, stream: StreamConfig) -> int:
        """The router's T for a stream: its override, else the one the model was trained with."""
        return stream.router_horizon_frames or self.config.memory.router_horizon_frames

    def router_gammas(self, frame: int, horizon: int) -> list[float]:
        """gamma_t of every block at latent frame ``frame`` (for inspection; one host sync)."""
        return self.router_gamma_tensor(frame, horizon).tolist()

    def router_gamma_tensor(self, frame: int, horizon: int) -> Tensor:
        """gamma_t of every block at latent frame ``frame``: [num_layers] float32 on the model's device."""
        position = torch.tensor([frame], device=self.device)
        zero = torch.zeros(1, device=self.device)
        return torch.cat([zero if b.self_attn.memory is None else b.self_attn.memory.router(position, horizon)
                          for b in self.blocks])

    def memory_parameters(self) -> dict[str, Tensor]:
        """The VideoSSM-only parameters (what a memory-only file holds)."""
        return {k: v for k, v in self.state_dict().items() if ".self_attn.memory." in k}
