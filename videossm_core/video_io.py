"""Incremental mp4 writing and reading (imageio-ffmpeg), so a video of any length never sits in RAM.

The writer produces a *fragmented* mp4 (``empty_moov`` + a fragment per keyframe): every fragment
that reached the disk is playable, so a cancelled or crashed run keeps a usable partial video.
"""

from __future__ import annotations

import os
from typing import Iterator

import numpy as np

_FRAGMENTED = ["-movflags", "+frag_keyframe+empty_moov+default_base_moof"]


class VideoWriteError(OSError):
    pass


def frames_to_uint8(frames) -> np.ndarray:
    """Frames from the core ([B, 3, T, H, W] or [3, T, H, W] torch in [-1, 1]) to uint8 [T, H, W, 3]."""
    import torch

    if isinstance(frames, torch.Tensor):
        if frames.ndim == 5:
            if frames.shape[0] != 1:
                raise ValueError("write one video at a time: batch size must be 1")
            frames = frames[0]
        frames = ((frames.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return frames.permute(1, 2, 3, 0).cpu().numpy()
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        raise ValueError(f"numpy frames must be uint8 [T, H, W, 3], got {frames.dtype}")
    return frames


class Mp4Writer:
    """Append frames to an H.264 mp4 as they are made.

    >>> with Mp4Writer("out.mp4", fps=16) as w:
    ...     w.write(frames_uint8)  # [T, H, W, 3], any number of calls
    """

    def __init__(self, path: str | os.PathLike, fps: float = 16.0, quality: int = 18, keyframe_every: int = 12):
        self.path = os.fspath(path)
        self.fps = fps
        self.quality = quality
        self.keyframe_every = keyframe_every
        self.frames_written = 0
        self.size: tuple[int, int] | None = None  # (width, height)
        self._gen = None

    def _open(self, width: int, height: int) -> None:
        import imageio_ffmpeg

        if width % 2 or height % 2:
            raise ValueError(f"H.264 needs even frame sizes, got {width}x{height}")
        folder = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(folder, exist_ok=True)
        self.size = (width, height)
        self._gen = imageio_ffmpeg.write_frames(
            self.path, (width, height), fps=self.fps, codec="libx264", pix_fmt_in="rgb24",
            pix_fmt_out="yuv420p", macro_block_size=1, ffmpeg_log_level="error",
            output_params=["-crf", str(self.quality), "-g", str(self.keyframe_every), *_FRAGMENTED])
        self._gen.send(None)

    def write(self, frames) -> None:
        frames = frames_to_uint8(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be [T, H, W, 3], got {frames.shape}")
        height, width = frames.shape[1:3]
        if self._gen is None:
            self._open(width, height)
        elif (width, height) != self.size:
            raise ValueError(f"frame size changed from {self.size} to {(width, height)}")
        try:
            for frame in frames:
                self._gen.send(np.ascontiguousarray(frame))
                self.frames_written += 1
        except (OSError, BrokenPipeError, RuntimeError) as err:
            raise VideoWriteError(
                f"could not write video frames to {self.path} ({err}); the disk may be full. The frames written "
                "so far stay playable; free space and resume from the saved stream state") from err

    def close(self) -> None:
        if self._gen is not None:
            try:
                self._gen.close()
            except (OSError, RuntimeError) as err:
                raise VideoWriteError(f"could not finish {self.path}: {err}") from err
            finally:
                self._gen = None

    def __enter__(self) -> "Mp4Writer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_video(path: str | os.PathLike) -> np.ndarray:
    """All frames of a video as uint8 [T, H, W, 3] (for tests and measurements; short videos only)."""
    return np.stack(list(iter_video(path)))


def iter_video(path: str | os.PathLike) -> Iterator[np.ndarray]:
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(os.fspath(path), pix_fmt="rgb24")
    meta = next(reader)
    width, height = meta["size"]
    for raw in reader:
        yield np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3)


def video_info(path: str | os.PathLike) -> dict:
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(os.fspath(path))
    meta = next(reader)
    reader.close()
    nframes, _ = imageio_ffmpeg.count_frames_and_secs(os.fspath(path))
    return {"fps": meta["fps"], "size": tuple(meta["size"]), "frames": nframes}
