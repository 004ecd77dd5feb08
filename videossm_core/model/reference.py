"""Slow, obviously-correct versions of the model's fast code, used only by tests as ground truth.

Each function here follows the definition literally (token loops, no blocking, no caching) and trades
all speed for readability; the fast implementations elsewhere are tested against them.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor


def gated_delta_write_reference(state: Tensor | None, k: Tensor, v: Tensor, g: Tensor, beta: Tensor) -> Tensor:
    """Token loop of the gated delta rule (GDN / fla convention): the ground truth for ``gated_delta_write``.

    state ``[B, H, K, V]`` (None = zeros), k ``[B, T, H, K]``, v ``[B, T, H, V]``, g and beta ``[B, T, H]``.
    For each token in order: ``S = exp(g_t) S;  v'_t = beta_t (v_t - S^T k_t);  S = S + k_t v'_t^T``.
    Computes in float64 if any input is float64 (for an fp64 ground truth), else float32.
    """
    inputs = [t for t in (state, k, v, g, beta) if t is not None]
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in inputs) else torch.float32
    B, T, H, K = k.shape
    V = v.shape[-1]
    device = k.device
    no_autocast = (torch.autocast(device_type=device.type, enabled=False)
                   if torch.amp.is_autocast_available(device.type) else contextlib.nullcontext())
    with no_autocast:
        S = torch.zeros(B, H, K, V, dtype=dtype, device=device) if state is None else state.to(dtype)
        for t in range(T):
            k_t = k[:, t].to(dtype)                                   # [B, H, K]
            v_t = v[:, t].to(dtype)                                   # [B, H, V]
            S = S * torch.exp(g[:, t].to(dtype))[..., None, None]     # decay first
            prediction = torch.einsum("bhk,bhkv->bhv", k_t, S)        # S^T k_t
            v_new = beta[:, t].to(dtype)[..., None] * (v_t - prediction)
            S = S + k_t[..., :, None] * v_new[..., None, :]           # rank-1 write k_t v'_t^T
    return S


# ---------------------------------------------------------------------------------------------------
# Streaming with the hybrid memory, the slow way.


class ReferenceStream:
    """Slow ground truth for ``CausalWanModel.forward_stream``.

    It keeps every frame's cached K/V and gates forever (no ring buffer, no eviction bookkeeping) and,
    at every call, rebuilds each block's global memory from zero with the token loop over *all* frames
    that have left the window so far, in frame order. Attention context is recomputed from the
    sink + window rule with explicit positions. It shares only the model's weights and its block
    arithmetic (``WanBlock.forward`` with our own ``attend``), not its cache or memory code.
    """

    def __init__(self, model, stream):
        self.model = model
        self.stream = stream
        self.frames: list[dict[int, dict[str, Tensor]]] = [dict() for _ in model.blocks]
        self.text: list[tuple[Tensor, Tensor]] | None = None
        self.max_end = 0

    def set_prompt(self, context: Tensor) -> None:
        self.text = self.model.text_kv(context)

    def _first_window_frame(self, end: int) -> int:
        s = self.stream
        return 0 if s.full_cache else max(s.sink_frames, end - (s.window_frames - s.sink_frames))

    @torch.no_grad()
    def forward(self, x: Tensor, timestep: Tensor, start: int) -> Tensor:
        from .rope import apply_rope, rope_cos_sin
        from .attention import attention
        model, s = self.model, self.stream
        grid = model._check_latents(x, timestep)
        f, h, w = grid
        n = h * w
        end = start + f
        self.max_end = max(self.max_end, end)
        sink = 0 if s.full_cache else s.sink_frames
        oldest_cached = self._first_window_frame(self.max_end)
        first = max(self._first_window_frame(end), oldest_cached)
        memory_on = s.memory and not s.full_cache and model.config.memory.enabled
        e, e0 = model.embed_time(timestep)
        tokens = model._patchify(x)

        for i, block in enumerate(model.blocks):
            store = self.frames[i]
            attn = block.self_attn

            def attend(h_in, attn=attn, store=store):
                q, k, v = attn.project(h_in)
                context = sorted(fr for fr in store if fr < start and (fr < sink or fr >= first))
                if s.position_mode == "absolute":
                    ctx_pos, q_pos = torch.tensor(context), torch.arange(start, end)
                else:
                    ctx_pos = torch.arange(len(context))
                    q_pos = torch.arange(len(context), len(context) + f)
                ctx_cos, ctx_sin = rope_cos_sin(model.config, ctx_pos, h, w, check_limit=False)
                q_cos, q_sin = rope_cos_sin(model.config, q_pos, h, w, check_limit=False)
                keys = torch.cat([store[fr]["k"] for fr in context] + [k], 1) if context else k
                values = torch.cat([store[fr]["v"] for fr in context] + [v], 1) if context else v
                k_cos = torch.cat([ctx_cos, q_cos]) if context else q_cos
                k_sin = torch.cat([ctx_sin, q_sin]) if context else q_sin
                out = attention(apply_rope(q, q_cos, q_sin), apply_rope(keys, k_cos, k_sin), values)
                if memory_on:
                    # Rebuild the memory from scratch over every frame that has left the window.
                    evicted = sorted(fr for fr in store if sink <= fr < oldest_cached)
                    b, _, heads, d = q.shape
                    state = torch.zeros(b, heads, d, d)
                    for fr in evicted:
                        item = store[fr]
                        state = gated_delta_write_reference(
                            state, l2_normalize_reference(item["k"]), item["v"], item["g"], item["beta"])
                    gamma = attn.memory.router(torch.arange(start, end), model.router_horizon(s))
                    out = out.float() + attn.memory.read(state, q, h_in, gamma.repeat_interleave(n))
                    g, beta = attn.memory.gates(h_in)
                for j, fr in enumerate(range(start, end)):
                    sl = slice(j * n, (j + 1) * n)
                    store[fr] = {"k": k[:, sl], "v": v[:, sl]}
                    if memory_on:
                        store[fr].update(g=g[:, sl], beta=beta[:, sl])
                return attn.o(out.to(h_in.dtype).flatten(-2))

            tokens = block(tokens, e0, n, self.text[i], attend)
        return model._unpatchify(model.head(tokens, e, n), grid)


def l2_normalize_reference(x: Tensor) -> Tensor:
    return x / torch.sqrt((x.float() ** 2).sum(-1, keepdim=True) + 1e-6)
