"""The whole job: a prompt schedule in, an mp4 out, streamed chunk by chunk at constant memory.

    schedule -> text conditioning per segment -> sampler yields chunk latents -> streaming VAE decode
    -> frames appended to a fragmented mp4 -> stream state (with the decoder's caches) checkpointed

``generate_video`` is a generator of ``ChunkEvent``s so callers (the CLI's progress bar, ComfyUI's
progress bar and Cancel button) see every chunk and can stop between chunks. Stopping, an error or a
full disk closes the video (everything written stays playable) and leaves the last checkpoint, from
which ``generate_video(state=StreamState.load(...))`` continues the same stream.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
from torch import Tensor

from .config import DEFAULT_FPS, SamplingConfig, StreamConfig
from .model.transformer import CausalWanModel
from .sampling import PromptSegment, StreamSampler
from .schedule import PromptSchedule, chunks_for_duration
from .state import StreamState
from .vae import StreamingDecoder, WanVAE
from .video_io import Mp4Writer, VideoFileError, frames_to_uint8, mp4_frames, trim_mp4

# Stream-state checkpoints: every minute of wall time (a full-size state is GBs), and at every stop;
# further apart when one save is slow (a slow disk), so that saving takes at most this share of a run.
DEFAULT_CHECKPOINT_SECONDS = 60.0
MAX_CHECKPOINT_SHARE = 0.05

# A prompt -> conditioning [1, L, text_dim] function (demo encoder, UMT5, ComfyUI's CLIP, ...).
PromptEncoder = Callable[[str], Tensor]


@dataclass
class ChunkEvent:
    chunk: int  # index of this chunk in the stream
    done: int  # chunks finished in this run
    total: int  # chunks this run will make
    latents: Tensor  # [1, C, 3, h, w] the chunk's clean latents
    frames: np.ndarray  # uint8 [T, H, W, 3] the chunk's decoded video frames
    prompt: str
    switched: bool
    state: StreamState  # live state after the chunk (do not modify)
    video_path: str | None
    frames_written: int


def build_segments(schedule: PromptSchedule, encode: PromptEncoder, first_chunk: int = 0,
                   negative: str | None = None, guidance: bool = False) -> list[PromptSegment]:
    """One segment per schedule entry, shifted to start at ``first_chunk`` (a resumed stream's next
    chunk). Identical prompts are encoded once."""
    cache: dict[str, Tensor] = {}

    def enc(text: str) -> Tensor:
        if text not in cache:
            cache[text] = encode(text)
        return cache[text]

    segments = []
    for start, prompt in schedule.segment_starts(continuing=first_chunk > 0):
        uncond = enc(negative or "") if guidance else None
        segments.append(PromptSegment(first_chunk + start, prompt, enc(prompt), uncond))
    return segments


def new_stream(model: CausalWanModel, seed: int = 0, stream: StreamConfig | None = None,
               sampling: SamplingConfig | None = None) -> StreamState:
    return StreamState.new(model.config, stream or StreamConfig(), sampling or SamplingConfig(), seed=seed)


def prefill_from_frames(model: CausalWanModel, vae: WanVAE, state: StreamState, frames: Tensor,
                        prompt: str, conditioning: Tensor) -> StreamState:
    """A new state that continues after a given clip: frames [1, 3, T, H, W] in [-1, 1] are VAE-encoded
    and fed in at t=0 (window and memory filled, decoder caches warmed), under ``prompt``. Uses the
    last 12m - 3 frames (whole chunks; at least 9)."""
    per_chunk = 4 * state.stream.chunk_frames
    usable = ((frames.shape[2] + 3) // per_chunk) * per_chunk - 3
    if usable < per_chunk - 3:
        raise ValueError(f"a clip to continue from needs at least {per_chunk - 3} frames, got {frames.shape[2]}")
    state = state.clone()
    if state.next_frame > 0:
        raise ValueError("continue from a clip with a new stream state (this one has already generated frames)")
    clip = frames[:, :, -usable:].to(vae.device, vae.dtype)
    with torch.no_grad():
        latents = vae.encode(clip).float().cpu()
        decoder = vae.stream_decoder()
        decoder.decode_chunk(latents.to(vae.device, vae.dtype))  # warm the causal caches; frames are known
    StreamSampler(model).prefill_inplace(state, latents, PromptSegment(0, prompt, conditioning))
    store_decoder(state, decoder)
    return state


def restore_decoder(vae: WanVAE, state: StreamState) -> StreamingDecoder:
    """The streaming decoder of a state: continued from its saved caches, or fresh for a new stream."""
    if state.vae_cache:
        return StreamingDecoder.from_state_tensors(vae, {f"vae_cache.{k}": v for k, v in state.vae_cache.items()})
    if state.next_frame > 0:
        raise ValueError("this stream state has no saved VAE decoder caches, so its video cannot be continued "
                         "seamlessly; continue it from a state saved by the video generator")
    return vae.stream_decoder()


def store_decoder(state: StreamState, decoder: StreamingDecoder) -> None:
    state.vae_cache = {k[len("vae_cache."):]: v for k, v in decoder.state_tensors().items()}


def stream_video_frames(state: StreamState) -> int:
    """Video frames the stream's mp4 held when ``state`` was saved (states from before this was recorded:
    the frames of every chunk so far)."""
    frames = state.video.get("frames")
    if isinstance(frames, int) and not isinstance(frames, bool) and frames >= 0:
        return frames
    return state.video_frames


def reconcile_video(state: StreamState, video_path: str | os.PathLike) -> int:
    """Make the mp4 agree with the state before appending to it: frames after the state's (made after
    its last save, e.g. before a crash) are cut off, as the resumed run makes them again. Returns how
    many were cut. Raises VideoFileError if the file holds fewer frames than the state claims."""
    want = stream_video_frames(state)
    have = mp4_frames(video_path) if os.path.exists(video_path) else 0
    if have < want:
        raise VideoFileError(f"{os.fspath(video_path)} holds {have} video frames but the stream state continues "
                             f"after frame {want}; continue into a new output, or resume from the state saved "
                             "with this video")
    return trim_mp4(video_path, want) if os.path.exists(video_path) else 0


def save_checkpoint(state: StreamState, state_path: str | os.PathLike, writer: Mp4Writer | None) -> None:
    """Save the state only once the video holds every frame it covers (the mp4 may run ahead of a
    state, never behind it), and record how many that is."""
    if writer is not None:
        state.video = {"path": os.path.abspath(writer.path), "frames": writer.sync()}
    state.save(state_path)


def generate_video(
    model: CausalWanModel,
    vae: WanVAE,
    encode: PromptEncoder,
    schedule: PromptSchedule,
    seconds: float,
    width: int,
    height: int,
    video_path: str | os.PathLike | None = None,
    state: StreamState | None = None,
    seed: int = 0,
    stream: StreamConfig | None = None,
    sampling: SamplingConfig | None = None,
    negative_prompt: str | None = None,
    state_path: str | os.PathLike | None = None,
    checkpoint_seconds: float = DEFAULT_CHECKPOINT_SECONDS,
    fps: int = DEFAULT_FPS,
    copy_state: bool = True,
    append_video: bool = False,
) -> Iterator[ChunkEvent]:
    """Generate ``seconds`` of video following ``schedule`` (times relative to where the stream is).

    With ``state`` the stream continues (the caller's state is not modified: a copy advances, unless
    ``copy_state=False`` hands over a state the caller will not use again). The
    mp4 at ``video_path`` is written as the chunks come; ``state_path`` receives the state (with the
    decoder caches) when ``checkpoint_seconds`` of wall time have passed since the last save, at the
    last chunk, and when the run is stopped or fails between chunks. A save is a full write of the
    state (about 5 GB at 832x480), so the interval also stretches to keep saving under
    ``MAX_CHECKPOINT_SHARE`` of the wall time when saves are slow; ``checkpoint_seconds=0`` saves
    after every chunk whatever it costs. With ``append_video`` the stream continues the mp4 at
    ``video_path`` (first cut back to the frames the state records, see ``reconcile_video``) instead
    of starting a new one.
    """
    stride = vae.spatial_stride  # Wan2.1: 8; the demo's reduced VAE: 4
    if width % stride or height % stride:
        raise ValueError(f"width and height must be multiples of {stride}, got {width}x{height}")
    patch = model.config.patch_size
    latent_hw = (height // stride, width // stride)
    if latent_hw[0] % patch[1] or latent_hw[1] % patch[2]:
        raise ValueError(f"{width}x{height} does not fit the model's {patch[1]}x{patch[2]} patches; "
                         f"use multiples of {stride * patch[1]}")
    if state is None:
        state = new_stream(model, seed, stream, sampling)
    elif copy_state:
        state = state.clone()
    state.check_compatible(model.config)
    continuing = state.next_frame > 0
    schedule.check_duration(seconds, continuing)
    total = chunks_for_duration(seconds, fps, state.stream.chunk_frames, continuing)
    segments = build_segments(schedule, encode, state.chunk_index, negative_prompt,
                              guidance=state.sampling.guidance_scale != 1.0)
    decoder = restore_decoder(vae, state)
    if video_path is not None and append_video:
        reconcile_video(state, video_path)
    writer = Mp4Writer(video_path, fps=fps, append=append_video) if video_path is not None else None
    sampler = StreamSampler(model)
    done = 0
    saved = 0  # chunks covered by the state file
    last_save = time.monotonic()
    interval = checkpoint_seconds
    # True only while the consumer holds a chunk: then the live state matches the frames written. A
    # failure anywhere else (inside a chunk, in the mp4 writer or in a checkpoint) must not save it.
    between_chunks = False
    try:
        for _ in range(total):
            out = sampler.generate_chunk_inplace(state, segments, latent_hw)
            with torch.no_grad():
                frames = frames_to_uint8(decoder.decode_chunk(out.latents.to(vae.device, vae.dtype)))
            store_decoder(state, decoder)
            if writer is not None:
                writer.write(frames)
            done += 1
            if state_path is not None and (done == total or time.monotonic() - last_save >= interval):
                started = time.monotonic()
                save_checkpoint(state, state_path, writer)
                saved, last_save = done, time.monotonic()
                if checkpoint_seconds > 0:
                    spent = last_save - started
                    interval = max(checkpoint_seconds, spent * (1 - MAX_CHECKPOINT_SHARE) / MAX_CHECKPOINT_SHARE)
            between_chunks = True
            yield ChunkEvent(out.index, done, total, out.latents, frames, state.prompt, out.switched, state,
                             None if video_path is None else os.fspath(video_path),
                             0 if writer is None else writer.frames_written)
            between_chunks = False
    except BaseException:
        # Stopped between chunks (Cancel, Ctrl-C, a consumer that has seen enough): the live state is
        # consistent with the video written so far, so keep it. After a failure inside a chunk (or a
        # full disk) the last checkpoint stands; the mp4 may run ahead of it and a resume cuts it back.
        if state_path is not None and between_chunks and done > saved:
            try:
                save_checkpoint(state, state_path, writer)
            except OSError as err:
                print(f"warning: {err}", file=sys.stderr)  # the error that stopped the run matters more
        raise
    finally:
        if writer is not None:
            try:
                writer.close()
            except OSError:
                if sys.exc_info()[0] is None:  # don't hide the error that got us here (e.g. a full disk)
                    raise
