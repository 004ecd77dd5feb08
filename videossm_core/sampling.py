"""Few-step flow-matching sampling of a stream, chunk by chunk (Self-Forcing / LongLive inference).

Per chunk: start from seeded noise; at each step predict x0 = x_t - sigma_t * flow and re-noise it to
the next step's level with fresh seeded noise; then run the clean chunk once more at the context
timestep (0) so its keys/values (and memory gates) enter the cache. A prompt switch at a chunk
boundary loads the new prompt's cross-attention K/V and re-runs the cached window's clean latents
under it (the sink and the global memory are kept).

``stream_chunks`` is a generator: it yields each finished chunk of latents, so callers can decode,
preview, save or stop between chunks.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor

from .config import SamplingConfig
from .model.transformer import CausalWanModel
from .state import StreamState


def warped_timesteps(cfg: SamplingConfig) -> list[float]:
    """The denoising timesteps actually used. With warping (Self-Forcing), entry s of the list picks
    the shifted flow-matching timestep at sigma = s / 1000: [1000, 750, 500, 250] with shift 5 gives
    [1000, 937.5, 833.3, 625]."""
    if not cfg.warp:
        return list(cfg.denoising_steps)
    out = []
    for step in cfg.denoising_steps:
        sigma = step / cfg.num_train_timesteps
        shifted = cfg.shift * sigma / (1.0 + (cfg.shift - 1.0) * sigma)
        out.append(shifted * cfg.num_train_timesteps)
    return out


def chunk_noise(seed: int, chunk: int, step: int, shape: tuple[int, ...], branch: str = "") -> Tensor:
    """Deterministic float32 CPU noise for (seed, chunk, step): the same on every device and after a
    resume, since it depends on the stream position only."""
    digest = hashlib.sha256(f"videossm:{seed}:{chunk}:{step}:{branch}".encode()).digest()
    gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return torch.randn(shape, generator=gen, dtype=torch.float32)


@dataclass
class PromptSegment:
    """A prompt that starts at a chunk: its text and its conditioning tensors [B, L, text_dim]."""

    start_chunk: int
    prompt: str
    cond: Tensor
    uncond: Tensor | None = None


@dataclass
class ChunkOutput:
    index: int  # chunk index in the stream
    start_frame: int  # first latent frame of the chunk
    latents: Tensor  # [B, C, chunk_frames, H, W] float32 clean latents, on the model's device
    segment_index: int
    switched: bool  # a prompt switch happened right before this chunk
    state: StreamState  # the live state after this chunk (saving it is safe; do not modify it)


def segment_for_chunk(segments: list[PromptSegment], chunk: int) -> int:
    """Index of the segment active at ``chunk`` (the last one starting at or before it)."""
    if not segments or segments[0].start_chunk > chunk:
        raise ValueError(f"no prompt covers chunk {chunk}: the first prompt segment must start at or before it")
    index = 0
    for i, seg in enumerate(segments):
        if seg.start_chunk <= chunk:
            index = i
    return index


def remember_recent_latents_inplace(state: StreamState, x0: Tensor, start: int) -> None:
    """Append a chunk's clean latents [B, C, F, H, W] (first frame ``start``) and keep only those of
    the cached non-sink frames: what a prompt switch re-caches."""
    if state.recent_latents is None:
        recent, recent_start = x0, start
    else:
        recent, recent_start = torch.cat([state.recent_latents, x0.to(state.recent_latents)], 2), state.recent_start
    sink = 0 if state.stream.full_cache else state.stream.sink_frames
    cached = [f for f in state.branches["cond"].slot_frames if f >= sink]
    keep_from = min(cached) if cached else state.next_frame
    drop = max(0, keep_from - recent_start)
    state.recent_latents = recent[:, :, drop:] if drop < recent.shape[2] else None
    state.recent_start = recent_start + drop


class StreamSampler:
    """Runs a model over a stream state. Holds no stream data itself: everything is in the state."""

    def __init__(self, model: CausalWanModel):
        self.model = model

    # ------------------------------------------------------------------ model calls
    def _branch_contexts(self, state: StreamState, segment: PromptSegment) -> dict[str, Tensor]:
        contexts = {"cond": segment.cond}
        if "uncond" in state.branches:
            if segment.uncond is None:
                raise ValueError(f"guidance_scale is {state.sampling.guidance_scale} but the prompt "
                                 f"{segment.prompt!r} has no negative (unconditional) conditioning")
            contexts["uncond"] = segment.uncond
        return contexts

    def _predict(self, state: StreamState, x: Tensor, t: float, start: int, next_frame: int) -> tuple[Tensor, int]:
        """Guided flow prediction for frames [start, start + F) of every branch."""
        device, dtype = self.model.device, self.model.dtype
        timestep = torch.full((x.shape[0], x.shape[2]), float(t), device=device)
        flows, new_next = {}, next_frame
        for name, branch in state.branches.items():
            flows[name], new_next = self.model.forward_stream(
                x.to(device, dtype), timestep, branch, start, next_frame, state.stream, state.counters)
        flow = flows["cond"]
        if "uncond" in flows:
            flow = flows["uncond"] + state.sampling.guidance_scale * (flows["cond"] - flows["uncond"])
        return flow.float(), new_next

    # ------------------------------------------------------------------ prompt handling
    @torch.no_grad()
    def set_prompt_inplace(self, state: StreamState, segment: PromptSegment, index: int) -> None:
        for name, context in self._branch_contexts(state, segment).items():
            self.model.set_prompt_inplace(state.branches[name], context.to(self.model.device))
        state.prompt, state.segment_index = segment.prompt, index

    @torch.no_grad()
    def switch_prompt_inplace(self, state: StreamState, segment: PromptSegment, index: int) -> None:
        """LongLive re-cache: new cross-attention K/V, then the cached non-sink frames are recomputed
        from their clean latents under the new prompt at the context timestep. Sink and global
        memory stay as they are."""
        self.set_prompt_inplace(state, segment, index)
        if state.recent_latents is None:
            return
        chunk = state.stream.chunk_frames
        frames = state.recent_latents.shape[2]
        for offset in range(0, frames, chunk):
            latents = state.recent_latents[:, :, offset:offset + chunk]
            self._predict(state, latents, state.sampling.context_timestep,
                          state.recent_start + offset, state.next_frame)
        state.counters["recaches"] = state.counters.get("recaches", 0) + 1

    # ------------------------------------------------------------------ one chunk
    @torch.no_grad()
    def generate_chunk_inplace(self, state: StreamState, segments: list[PromptSegment],
                               latent_hw: tuple[int, int]) -> ChunkOutput:
        """Generate the stream's next chunk, advancing ``state`` in place."""
        out = self._compute_chunk_inplace(state, segments, latent_hw)
        self._log_chunk(state, out.index, out.start_frame)  # the chunk's one host sync
        return out

    @torch.no_grad()
    def _compute_chunk_inplace(self, state: StreamState, segments: list[PromptSegment],
                               latent_hw: tuple[int, int]) -> ChunkOutput:
        """The device work of one chunk (prompt switch, denoising steps, clean pass): queued without
        waiting for the device (no ``.item()``, ``.tolist()``, ``.cpu()`` of device tensors)."""
        cfg = state.sampling
        chunk_idx, start = state.chunk_index, state.next_frame
        seg_idx = segment_for_chunk(segments, chunk_idx)
        switched = False
        if state.branches["cond"].text_embedding is None:
            self.set_prompt_inplace(state, segments[seg_idx], seg_idx)
        elif segments[seg_idx].prompt != state.prompt:  # also right for a new schedule on a resumed stream
            self.switch_prompt_inplace(state, segments[seg_idx], seg_idx)
            switched = True
        state.segment_index = seg_idx
        c = self.model.config.in_dim
        shape = (state.batch, c, state.stream.chunk_frames, *latent_hw)
        if state.latent_shape is None:
            state.latent_shape = (c, *latent_hw)
        elif tuple(state.latent_shape) != (c, *latent_hw):
            raise ValueError(f"this stream's latents are {tuple(state.latent_shape)} (C, H, W); a chunk of "
                             f"{(c, *latent_hw)} cannot continue it. Use the stream's resolution.")
        steps = warped_timesteps(cfg)
        # The chunk's noise is drawn on the host (the same numbers on every device) and copied over
        # once; from here to the end of the chunk nothing waits for the device.
        noise = torch.stack([chunk_noise(state.seed, chunk_idx, i, shape) for i in range(len(steps))])
        noise = noise.to(self.model.device, non_blocking=True)
        x = x0 = noise[0]
        for i, t in enumerate(steps):
            flow, new_next = self._predict(state, x, t, start, state.next_frame)
            state.next_frame = new_next
            sigma = t / cfg.num_train_timesteps
            x0 = x - sigma * flow
            if i + 1 < len(steps):
                s_next = steps[i + 1] / cfg.num_train_timesteps
                x = (1.0 - s_next) * x0 + s_next * noise[i + 1]
        self._predict(state, x0, cfg.context_timestep, start, state.next_frame)  # write the clean chunk
        remember_recent_latents_inplace(state, x0, start)
        return ChunkOutput(chunk_idx, start, x0, state.segment_index, switched, state)

    @torch.no_grad()
    def prefill_inplace(self, state: StreamState, latents: Tensor, segment: PromptSegment) -> None:
        """Feed known clean latents [B, C, F, H, W] (F a multiple of the chunk) into the stream as if it
        had generated them: one clean pass per chunk fills the window, and what it evicts the memory.
        Used to continue from an input clip."""
        chunk = state.stream.chunk_frames
        if latents.ndim != 5 or latents.shape[2] == 0 or latents.shape[2] % chunk:
            raise ValueError(f"prefill latents must be [B, C, F, H, W] with F a multiple of {chunk}, "
                             f"got {tuple(latents.shape)}")
        shape = (latents.shape[1], *latents.shape[3:])
        if state.latent_shape is not None and tuple(state.latent_shape) != shape:
            raise ValueError(f"the clip's latents are {shape} (C, H, W) but the stream's are {tuple(state.latent_shape)}")
        state.latent_shape = shape
        if state.branches["cond"].text_embedding is None:
            self.set_prompt_inplace(state, segment, 0)
        elif segment.prompt != state.prompt:
            self.switch_prompt_inplace(state, segment, 0)
        for offset in range(0, latents.shape[2], chunk):
            x0 = latents[:, :, offset:offset + chunk].float().to(self.model.device)
            start = state.next_frame
            _, state.next_frame = self._predict(state, x0, state.sampling.context_timestep, start, state.next_frame)
            remember_recent_latents_inplace(state, x0, start)
            self._log_chunk(state, start // chunk, start)

    def _log_chunk(self, state: StreamState, chunk_idx: int, start: int) -> None:
        # Memory norms, router weights and the read's share come off the device in one transfer, after the chunk.
        layers = state.branches["cond"].layers
        zero = torch.zeros((), device=self.model.device)
        norms = [zero if layer.memory is None else layer.memory.detach().norm().to(self.model.device)
                 for layer in layers]
        values = torch.stack(norms)
        if state.memory_active:
            # The share at the chunk's last call (its clean pass): ||gamma H_global|| / ||H_local|| per layer.
            shares = torch.stack([zero if layer.read_share is None else layer.read_share.to(self.model.device)
                                  for layer in layers])
            values = torch.cat([values, self.model.router_gamma_tensor(start, self.model.router_horizon(state.stream)),
                                shares])
        values = values.tolist()
        n = len(layers)
        state.history.append({
            "chunk": chunk_idx,
            "frame": start,
            "segment": state.segment_index,
            "gamma": [round(g, 6) for g in values[n:2 * n]],
            "memory_norm": [round(v, 6) for v in values[:n]],
            "read_share": [round(v, 6) for v in values[2 * n:]],
            "window": state.window_occupancy(),
        })
        if len(state.history) > 4096:  # constant memory: keep the recent past only
            del state.history[: len(state.history) - 4096]

    # ------------------------------------------------------------------ streams
    def stream_chunks_inplace(self, state: StreamState, segments: list[PromptSegment], num_chunks: int,
                              latent_hw: tuple[int, int]) -> Iterator[ChunkOutput]:
        """Yield ``num_chunks`` new chunks, advancing ``state`` in place."""
        for _ in range(num_chunks):
            yield self.generate_chunk_inplace(state, segments, latent_hw)

    def stream_chunks(self, state: StreamState, segments: list[PromptSegment], num_chunks: int,
                      latent_hw: tuple[int, int]) -> Iterator[ChunkOutput]:
        """Like ``stream_chunks_inplace`` on a copy: the caller's state is left untouched."""
        return self.stream_chunks_inplace(state.clone(), segments, num_chunks, latent_hw)
