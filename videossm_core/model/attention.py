"""Local memory: the sink + rolling-window KV cache, and the attention over it.

The cache holds ``window_frames`` frame slots per block (sink included). Slots are a ring: a new
frame takes a free slot or the slot of the oldest non-sink frame, whose tokens are handed to the
global memory first (eviction). Eviction therefore happens exactly once per new chunk, on its first
model call; the later denoising calls and the clean pass of the same chunk overwrite its slots.

Which cached frames a query chunk ending at frame ``end`` sees (LongLive's rule, in latent frames):
the sink frames ``[0, sink)`` plus the frames ``[end - (window - sink), end)``. The same rule gives
the block-causal mask of a one-shot forward over a whole sequence (``block_causal_mask``), which is
what streaming is tested against.

``CachePlan`` is decided once per model call and shared by all blocks, so every block evicts and
reads the same slots.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import ModelConfig, StreamConfig
from .rope import rope_cos_sin


class StreamPositionError(ValueError):
    """A model call for frames that are neither the stream's next frames nor still in its window."""


@dataclass
class CachePlan:
    """What one streaming model call does with the per-block caches (token indices into the cache)."""

    write_tokens: Tensor  # [F * n] where the call's own tokens are stored
    evict_tokens: Tensor | None  # [E * n] tokens leaving the window, in eviction order (None: no eviction)
    read_tokens: Tensor  # [R * n] attended cached tokens of *other* frames (sink, window), by frame
    read_cos: Tensor  # [R * n, D / 2]
    read_sin: Tensor
    query_cos: Tensor  # [F * n, D / 2]
    query_sin: Tensor
    query_frames: Tensor  # [F] absolute latent-frame indices of the call's frames (router positions)
    capacity_tokens: int  # cache length the blocks must hold after this call (grows in full-cache mode)
    evicted_frames: list[int]


def visible_frames(end: int, stream: StreamConfig) -> tuple[int, int]:
    """For a query chunk ending (exclusive) at ``end``: the sink count and the first window frame."""
    if stream.full_cache:
        return 0, 0
    return stream.sink_frames, max(stream.sink_frames, end - (stream.window_frames - stream.sink_frames))


def plan_cache(
    slot_frames: list[int],
    start: int,
    num_frames: int,
    next_frame: int,
    tokens_per_frame: int,
    grid_hw: tuple[int, int],
    model_config: ModelConfig,
    stream: StreamConfig,
    device: torch.device | str = "cpu",
) -> tuple[CachePlan, list[int], int]:
    """Decide slots for frames ``[start, start + num_frames)``.

    Returns the plan, the new slot->frame table and the new ``next_frame``. Pure: the caller's table
    is not modified. The slot bookkeeping is Python on the host; the plan's tensors are built there
    and copied to ``device`` once per model call, so the blocks never copy indices or sync.
    """
    end = start + num_frames
    slots = list(slot_frames)
    evicted_slots: list[int] = []
    evicted_frames: list[int] = []
    if start == next_frame:  # new frames: allocate (and evict) once per chunk
        for frame in range(start, end):
            if stream.full_cache:
                slots.append(frame)
                continue
            if -1 in slots:
                slots[slots.index(-1)] = frame
                continue
            candidates = [(f, s) for s, f in enumerate(slots) if f >= stream.sink_frames and f < start]
            if not candidates:
                raise StreamPositionError(
                    f"the window ({stream.window_frames} frames) cannot hold frame {frame}: every slot is "
                    f"sink or part of this call; use a call of at most {stream.window_frames - stream.sink_frames} frames")
            oldest_frame, slot = min(candidates)
            evicted_slots.append(slot)
            evicted_frames.append(oldest_frame)
            slots[slot] = frame
        next_frame = end
    else:
        missing = [f for f in range(start, end) if f not in slots]
        if missing or end > next_frame:
            raise StreamPositionError(
                f"frames {start}..{end - 1} are neither the stream's next frames (next is {next_frame}) nor all "
                f"still in its window (cached: {sorted(f for f in slots if f >= 0)}); only the current window "
                "can be recomputed")

    sink, first = visible_frames(end, stream)
    # The call's own frames are attended straight from its fresh K/V (so gradients reach them);
    # from the cache it reads the other visible frames.
    visible = sorted((f, s) for s, f in enumerate(slots)
                     if 0 <= f < start and (f < sink or f >= first))
    read_frames = [f for f, _ in visible]
    read_slots = [s for _, s in visible]
    write_slots = [slots.index(f) for f in range(start, end)]

    def tokens_of(slot_list: list[int]) -> Tensor:
        idx = torch.tensor(slot_list, dtype=torch.long)
        return (idx[:, None] * tokens_per_frame + torch.arange(tokens_per_frame)[None]).reshape(-1)

    if stream.position_mode == "absolute":
        read_pos = torch.tensor(read_frames)
        query_pos = torch.arange(start, end)
    else:  # unbounded: a frame's position is its rank in the attended set (the call's frames come last)
        read_pos = torch.arange(len(read_frames))
        query_pos = torch.arange(len(read_frames), len(read_frames) + num_frames)
    h, w = grid_hw
    check = stream.position_mode == "absolute"
    read_cos, read_sin = rope_cos_sin(model_config, read_pos, h, w, check_limit=check)
    query_cos, query_sin = rope_cos_sin(model_config, query_pos, h, w, check_limit=check)
    def dev(t: Tensor) -> Tensor:
        return t.to(device, non_blocking=True)

    plan = CachePlan(
        write_tokens=dev(tokens_of(write_slots)),
        evict_tokens=dev(tokens_of(evicted_slots)) if evicted_slots else None,
        read_tokens=dev(tokens_of(read_slots)),
        read_cos=dev(read_cos),
        read_sin=dev(read_sin),
        query_cos=dev(query_cos),
        query_sin=dev(query_sin),
        query_frames=dev(torch.arange(start, end)),
        capacity_tokens=len(slots) * tokens_per_frame,
        evicted_frames=evicted_frames,
    )
    return plan, slots, next_frame


def block_causal_mask(num_frames: int, tokens_per_frame: int, stream: StreamConfig) -> Tensor:
    """[N, N] boolean mask (True = attend) of a one-shot forward equivalent to streaming.

    Query frames of chunk c attend to the sink and to the window that ends with their own chunk.
    """
    frames = torch.arange(num_frames)
    chunk_end = (frames // stream.chunk_frames + 1) * stream.chunk_frames  # [F] exclusive end per query frame
    if stream.full_cache:
        first = torch.zeros_like(chunk_end)
        sink = 0
    else:
        sink = stream.sink_frames
        first = (chunk_end - (stream.window_frames - stream.sink_frames)).clamp(min=sink)
    key = frames[None, :]
    allowed = (key < chunk_end[:, None]) & ((key < sink) | (key >= first[:, None]))  # [F, F]
    return allowed.repeat_interleave(tokens_per_frame, 0).repeat_interleave(tokens_per_frame, 1)


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """Softmax attention through SDPA (PyTorch picks its flash / cuDNN / memory-efficient kernel on a
    GPU). q: [B, N, H, D]; k, v: [B, M, H, D]; mask: [N, M] bool on q's device. Returns [B, N, H, D]."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    return out.transpose(1, 2)
