"""Incremental mp4 writing and reading (imageio-ffmpeg), so a video of any length never sits in RAM.

The writer produces a *fragmented* mp4 (``empty_moov`` + a fragment per frame): every fragment that
reached the disk is playable, so a cancelled or crashed run keeps a usable partial video, and a file
can be counted, cut back and appended to without re-encoding what it holds.
"""

from __future__ import annotations

import os
import struct
import subprocess
import threading
from dataclasses import dataclass
from typing import Iterator

import numpy as np


class VideoWriteError(OSError):
    pass


class VideoFileError(ValueError):
    """An mp4 that cannot be continued (not ours, damaged, encoded differently, or shorter than its state)."""


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


# ------------------------------------------------------------------ fragmented-mp4 boxes
# ffmpeg writes ftyp + an empty moov, then one moof+mdat fragment per frame. Knowing the boxes lets us
# count what is really on disk, cut a file back to a frame count, and append a new encoding session
# (renumbering its fragments and shifting their decode times) instead of rewriting the file.

def _boxes(buf: bytes, start: int = 0, end: int | None = None) -> Iterator[tuple[bytes, int, int, int]]:
    """(type, offset, header size, total size) of the boxes in buf[start:end]; stops at a cut-off box."""
    end = len(buf) if end is None else end
    off = start
    while off + 8 <= end:
        size, kind = struct.unpack_from(">I4s", buf, off)
        head = 8
        if size == 1:
            if off + 16 > end:
                return
            size, head = struct.unpack_from(">Q", buf, off + 8)[0], 16
        elif size == 0:
            size = end - off
        if size < head or off + size > end:
            return
        yield kind, off, head, size
        off += size


def _child(buf: bytes, box: tuple[bytes, int, int, int], *path: bytes) -> tuple[bytes, int, int, int] | None:
    for kind in path:
        _, off, head, size = box
        box = next((b for b in _boxes(buf, off + head, off + size) if b[0] == kind), None)
        if box is None:
            return None
    return box


@dataclass
class _Fragment:
    seq_at: int  # offset of mfhd's sequence number in the moof
    tfdt_at: int  # offset of tfdt's decode time, and its width (4 or 8 bytes)
    tfdt_wide: bool
    decode_time: int
    frames: int
    duration: int  # in the track's timescale


def _parse_moof(moof: bytes, default_duration: int) -> _Fragment:
    box = next(_boxes(moof))
    mfhd, traf = _child(moof, box, b"mfhd"), _child(moof, box, b"traf")
    tfhd, tfdt, trun = (_child(moof, traf, k) if traf else None for k in (b"tfhd", b"tfdt", b"trun"))
    if not (mfhd and tfhd and tfdt and trun):
        raise VideoFileError("an mp4 fragment without mfhd/tfhd/tfdt/trun")
    version = moof[tfdt[1] + 8]
    decode_time = struct.unpack_from(">Q" if version else ">I", moof, tfdt[1] + 12)[0]
    tf_flags = struct.unpack_from(">I", moof, tfhd[1] + 8)[0] & 0xFFFFFF
    off = tfhd[1] + 16 + (8 if tf_flags & 0x01 else 0) + (4 if tf_flags & 0x02 else 0)
    if tf_flags & 0x08:
        default_duration = struct.unpack_from(">I", moof, off)[0]
    tr_flags = struct.unpack_from(">I", moof, trun[1] + 8)[0] & 0xFFFFFF
    count = struct.unpack_from(">I", moof, trun[1] + 12)[0]
    duration = default_duration * count
    if tr_flags & 0x100:  # per-sample durations
        off = trun[1] + 16 + (4 if tr_flags & 0x01 else 0) + (4 if tr_flags & 0x04 else 0)
        step = 4 * bin(tr_flags & 0xF00).count("1")
        duration = sum(struct.unpack_from(">I", moof, off + i * step)[0] for i in range(count))
    return _Fragment(mfhd[1] + 12, tfdt[1] + 12, bool(version), decode_time, count, duration)


def _track_info(moov: bytes) -> tuple[bytes, int]:
    """(sample description box, default sample duration) of a single-video-track moov."""
    box = next(_boxes(moov))
    stsd = _child(moov, box, b"trak", b"mdia", b"minf", b"stbl", b"stsd")
    trex = _child(moov, box, b"mvex", b"trex")
    if stsd is None or trex is None:
        raise VideoFileError("not a fragmented mp4 written by VideoSSM (no stsd/trex)")
    return moov[stsd[1]: stsd[1] + stsd[3]], struct.unpack_from(">I", moov, trex[1] + 20)[0]


@dataclass
class Mp4Layout:
    """What a fragmented mp4 on disk holds: ``ends[i]`` is the byte offset after the fragment that
    completes frame ``counts[i]`` (``ends[0]``/``counts[0]``: the header, 0 frames)."""

    stsd: bytes
    default_duration: int
    ends: list[int]
    counts: list[int]
    next_seq: int
    next_decode_time: int

    @property
    def frames(self) -> int:
        return self.counts[-1]


def scan_mp4(path: str | os.PathLike) -> Mp4Layout:
    """The complete fragments of an mp4 written by Mp4Writer (a cut-off tail, e.g. after a crash or a
    full disk, is ignored). Raises VideoFileError for any other kind of file."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        head = f.read(1 << 16)
        boxes = list(_boxes(head))
        kinds = [b[0] for b in boxes]
        if kinds[:2] != [b"ftyp", b"moov"]:
            raise VideoFileError(f"{path} is not a video written by VideoSSM (empty, damaged, or another "
                                 "kind of mp4); write the continuation to a new --out")
        moov = boxes[1]
        stsd, default_duration = _track_info(head[moov[1]: moov[1] + moov[3]])
        off = moov[1] + moov[3]
        layout = Mp4Layout(stsd, default_duration, [off], [0], 1, 0)
        size = os.fstat(f.fileno()).st_size
        while off + 8 <= size:
            f.seek(off)
            moof = f.read(8)
            length, kind = struct.unpack(">I4s", moof)
            if kind != b"moof" or length < 8 or off + length + 8 > size:
                break
            moof += f.read(length - 8)
            f.seek(off + length)
            mdat_len, mdat_kind = struct.unpack(">I4s", f.read(8))
            end = off + length + mdat_len
            if mdat_kind != b"mdat" or mdat_len < 8 or end > size:
                break
            frag = _parse_moof(moof, default_duration)
            layout.ends.append(end)
            layout.counts.append(layout.frames + frag.frames)
            layout.next_seq = struct.unpack_from(">I", moof, frag.seq_at)[0] + 1
            layout.next_decode_time = frag.decode_time + frag.duration
            off = end
    return layout


def mp4_frames(path: str | os.PathLike) -> int:
    """Frames in the complete fragments of an mp4 written by Mp4Writer (no decoding)."""
    return scan_mp4(path).frames


def trim_mp4(path: str | os.PathLike, frames: int) -> int:
    """Cut an mp4 written by Mp4Writer back to its first ``frames`` frames, in place (the fragments
    after them, e.g. made after the last saved state, are dropped). Returns the frames dropped."""
    layout = scan_mp4(path)
    if frames not in layout.counts:
        raise VideoFileError(f"{os.fspath(path)} holds {layout.frames} frames, so it cannot be cut to {frames}; "
                             "it does not belong to this stream state, or it was damaged")
    end = layout.ends[layout.counts.index(frames)]
    if os.path.getsize(path) != end:
        os.truncate(path, end)
    return layout.frames - frames


def copy_mp4_prefix(src: str | os.PathLike, dst: str | os.PathLike, frames: int) -> None:
    """Write the first ``frames`` frames of ``src`` (an Mp4Writer file) to a new file ``dst``, atomically."""
    layout = scan_mp4(src)
    if frames not in layout.counts:
        raise VideoFileError(f"{os.fspath(src)} holds {layout.frames} frames, so its first {frames} cannot be "
                             "copied; it does not belong to this stream state, or it was damaged")
    tmp = f"{os.fspath(dst)}.partial"
    try:
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            left = layout.ends[layout.counts.index(frames)]
            while left:
                block = fin.read(min(left, 1 << 20))
                if not block:
                    raise VideoFileError(f"{os.fspath(src)} changed while it was being copied")
                fout.write(block)
                left -= len(block)
            fout.flush()
            os.fsync(fout.fileno())
        os.replace(tmp, dst)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


class Mp4Writer:
    """Append frames to an H.264 mp4 as they are made, with ffmpeg in a subprocess we control.

    >>> with Mp4Writer("out.mp4", fps=16) as w:
    ...     w.write(frames_uint8)  # [T, H, W, 3], any number of calls
    ...     w.sync()  # everything written so far is in the file on disk (e.g. before saving a state)

    Every frame is its own mp4 fragment, written to the file as soon as ffmpeg has encoded it (no
    lookahead, no B-frames), so a killed run leaves a playable file that lags by a frame at most.
    ``sync()`` ends the encoding session (the next ``write`` starts another, with a keyframe), checks
    ffmpeg's exit status and fsyncs, so a state saved after it never claims frames the file lacks.
    With ``append=True`` an existing file (from this writer) is continued, after its last complete
    fragment; nothing already in it is rewritten.
    """

    def __init__(self, path: str | os.PathLike, fps: float = 16.0, quality: int = 18, keyframe_every: int = 12,
                 append: bool = False):
        self.path = os.fspath(path)
        self.fps = fps
        self.quality = quality
        self.keyframe_every = keyframe_every
        self.size: tuple[int, int] | None = None  # (width, height)
        self._layout = scan_mp4(self.path) if append and os.path.exists(self.path) else None
        self.frames_written = 0 if self._layout is None else self._layout.frames  # sent to the encoder
        self.frames_on_disk = self.frames_written  # in complete fragments in the file
        self._fd: int | None = None
        self._proc: subprocess.Popen | None = None
        self._threads: list[threading.Thread] = []
        self._error: BaseException | None = None
        self._stderr = b""

    # -------------------------------------------------------------- the file
    def _open_file(self) -> None:
        folder = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(folder, exist_ok=True)
        if self._layout is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            self._end = 0
        else:
            self._fd = os.open(self.path, os.O_WRONLY)
            self._end = self._layout.ends[-1]
            os.ftruncate(self._fd, self._end)  # a cut-off fragment from a crash

    def _append(self, data: bytes) -> None:
        os.lseek(self._fd, self._end, os.SEEK_SET)
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view):]
        except OSError:
            os.ftruncate(self._fd, self._end)  # never leave half a fragment
            raise
        self._end += len(data)

    # -------------------------------------------------------------- one ffmpeg session
    def _start(self, width: int, height: int) -> None:
        import imageio_ffmpeg

        cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error",
               "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", f"{self.fps:g}", "-i", "pipe:0",
               "-an", "-c:v", "libx264", "-crf", str(self.quality), "-g", str(self.keyframe_every), "-bf", "0",
               "-tune", "zerolatency", "-pix_fmt", "yuv420p",
               "-movflags", "+frag_every_frame+empty_moov+default_base_moof+skip_trailer",
               "-flush_packets", "1", "-f", "mp4", "pipe:1"]
        try:
            self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, start_new_session=False)
        except OSError as err:
            raise VideoWriteError(err.errno, f"could not start ffmpeg to write {self.path}: {err}") from err
        self._stderr = b""
        self._threads = [threading.Thread(target=self._pump, args=(self._proc,), daemon=True),
                         threading.Thread(target=self._drain_stderr, args=(self._proc,), daemon=True)]
        for t in self._threads:
            t.start()

    def _drain_stderr(self, proc: subprocess.Popen) -> None:
        for line in proc.stderr:
            self._stderr = (self._stderr + line)[-2000:]

    def _pump(self, proc: subprocess.Popen) -> None:
        """ffmpeg's output -> the file, one complete fragment at a time, renumbered to follow the file."""
        try:
            out = proc.stdout
            moof = None
            ftyp = b""
            default_duration = 0
            seq_base = decode_base = 0
            while True:
                head = out.read(8)
                if len(head) < 8:
                    break
                size, kind = struct.unpack(">I4s", head)
                if size == 1:
                    extra = out.read(8)
                    head += extra
                    size = struct.unpack(">Q", extra)[0]
                box = head + out.read(size - len(head))
                if len(box) < size:
                    break
                if kind == b"moov":
                    stsd, default_duration = _track_info(box)
                    if self._layout is None:
                        self._append(ftyp + box)
                        self._layout = Mp4Layout(stsd, default_duration, [self._end], [0], 1, 0)
                    elif stsd != self._layout.stsd:
                        raise VideoFileError(f"{self.path} was encoded with other settings (size or codec), so "
                                             "it cannot be continued; write the continuation to a new file")
                    seq_base, decode_base = self._layout.next_seq - 1, self._layout.next_decode_time
                elif kind == b"ftyp":
                    ftyp = box
                elif kind == b"moof":
                    frag = _parse_moof(box, default_duration)
                    moof = bytearray(box)
                    struct.pack_into(">I", moof, frag.seq_at, struct.unpack_from(">I", box, frag.seq_at)[0] + seq_base)
                    fmt = ">Q" if frag.tfdt_wide else ">I"
                    struct.pack_into(fmt, moof, frag.tfdt_at, frag.decode_time + decode_base)
                    pending = frag
                elif kind == b"mdat" and moof is not None:
                    self._append(bytes(moof) + box)
                    moof = None
                    layout = self._layout
                    layout.ends.append(self._end)
                    layout.counts.append(layout.frames + pending.frames)
                    layout.next_seq += 1
                    layout.next_decode_time = decode_base + pending.decode_time + pending.duration
                    self.frames_on_disk = layout.frames
        except BaseException as err:  # a full disk, a foreign file: stop ffmpeg, report in the caller's thread
            self._error = err
            proc.kill()
            for _ in iter(lambda: proc.stdout.read(1 << 16), b""):
                pass

    def _fail(self, err: BaseException | None = None) -> None:
        err = self._error or err
        if isinstance(err, VideoFileError):
            raise err
        errno = getattr(err, "errno", None)
        reason = getattr(err, "strerror", None) or str(err or "") or self._stderr.decode(errors="replace").strip()
        raise VideoWriteError(errno, f"could not write video frames to {self.path} ({reason}); the disk may be "
                                     f"full. The file keeps its first {self.frames_on_disk} frames, playable; free "
                                     "space and resume from the saved stream state") from err

    # -------------------------------------------------------------- public
    def write(self, frames) -> None:
        frames = frames_to_uint8(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be [T, H, W, 3], got {frames.shape}")
        height, width = frames.shape[1:3]
        if self.size is None:
            if width % 2 or height % 2:
                raise ValueError(f"H.264 needs even frame sizes, got {width}x{height}")
            self.size = (width, height)
        elif (width, height) != self.size:
            raise ValueError(f"frame size changed from {self.size} to {(width, height)}")
        if self._error is not None:
            self._fail()
        try:
            if self._fd is None:
                self._open_file()
            if self._proc is None:
                self._start(width, height)
            for frame in frames:
                self._proc.stdin.write(np.ascontiguousarray(frame).tobytes())
                self.frames_written += 1
            self._proc.stdin.flush()
        except OSError as err:  # a broken pipe: ffmpeg or our pump stopped
            self._end_session(check=False)
            self._fail(err)
        if self._error is not None:
            self._end_session(check=False)
            self._fail()

    def _end_session(self, check: bool = True) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            proc.stdin.close()
        except OSError:
            pass
        for t in self._threads:
            t.join()
        code = proc.wait()
        if check and (self._error is not None or code != 0 or self.frames_on_disk != self.frames_written):
            self._fail(None if code == 0 else OSError(f"ffmpeg exited with status {code}: "
                                                      f"{self._stderr.decode(errors='replace').strip()[-300:]}"))

    def sync(self) -> int:
        """Make every frame written so far durable in the file; returns how many frames it holds."""
        if self._proc is not None:
            self._end_session()
        if self._fd is not None:
            try:
                os.fsync(self._fd)
            except OSError as err:
                self._fail(err)
        return self.frames_on_disk

    def close(self) -> None:
        try:
            self.sync()
        finally:
            if self._proc is not None:
                self._proc.kill()
                self._end_session(check=False)
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

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
