"""The mp4 writer: every frame reaches the file as it is encoded, a failure is an error (never a short
video reported as written), and a file can be counted, cut back and appended to without re-encoding."""

import sys
import time

import numpy as np
import pytest

from videossm_core.video_io import (Mp4Writer, VideoFileError, copy_mp4_prefix, mp4_frames, read_video, trim_mp4,
                                    video_info)

from .small_disk import run_on_small_disk


def frames(n, start=0, size=32):
    """Smooth moving waves: they compress like real video, and every frame differs from the others."""
    y, x = np.mgrid[0:size, 0:size] / size
    out = [np.stack([128 + 90 * np.sin(6 * x + 0.37 * t), 128 + 90 * np.cos(5 * y - 0.23 * t),
                     np.full_like(x, 20 + 3 * t)], -1) for t in range(start, start + n)]
    return np.asarray(out).round().astype(np.uint8)


def close_to(decoded, original):
    """Each decoded frame is nearest to the original frame at its own index (no gap, no repeat) and
    close to it (H.264 is lossy)."""
    errors = np.abs(decoded[:, None].astype(int) - original[None].astype(int)).mean(axis=(2, 3, 4))
    return len(decoded) == len(original) and (errors.argmin(axis=1) == np.arange(len(decoded))).all() \
        and errors.diagonal().max() < 6


def on_disk(path):
    try:
        return mp4_frames(path)
    except (VideoFileError, FileNotFoundError):  # not even the header yet
        return 0


def wait_for(condition, deadline=60.0):
    end = time.monotonic() + deadline
    while not condition() and time.monotonic() < end:
        time.sleep(0.05)
    return condition()


def test_frames_are_in_the_file_while_the_run_goes_on(tmp_path):
    path = tmp_path / "live.mp4"
    writer = Mp4Writer(path)
    writer.write(frames(20))
    # no close, no sync: ffmpeg has no lookahead and each frame is its own fragment, so all but the
    # frame the muxer holds until the next one arrives are on disk (the old writer: 0 until a keyframe)
    assert wait_for(lambda: on_disk(path) >= 19)
    assert writer.sync() == 20 and mp4_frames(path) == 20
    writer.write(frames(5, start=20))
    writer.close()
    assert mp4_frames(path) == 25 and close_to(read_video(path), frames(25))


def test_append_trim_and_copy_keep_one_continuous_video(tmp_path):
    path = tmp_path / "v.mp4"
    with Mp4Writer(path) as writer:
        writer.write(frames(21))
    with Mp4Writer(path, append=True) as writer:
        assert writer.frames_written == 21
        writer.write(frames(12, start=21))
    info = video_info(path)
    assert info["frames"] == 33 and info["fps"] == 16  # timestamps continue: no gap, no overlap
    assert close_to(read_video(path), frames(33))
    copy_mp4_prefix(path, tmp_path / "copy.mp4", 21)
    assert trim_mp4(path, 30) == 3 and mp4_frames(path) == 30
    assert close_to(read_video(path), frames(30))
    assert close_to(read_video(tmp_path / "copy.mp4"), frames(21))
    with pytest.raises(VideoFileError, match="holds 30 frames"):
        trim_mp4(path, 31)


def test_a_cut_off_fragment_after_a_crash_is_dropped_on_append(tmp_path):
    path = tmp_path / "v.mp4"
    with Mp4Writer(path) as writer:
        writer.write(frames(10))
    size = path.stat().st_size
    with open(path, "ab") as f:  # half a fragment, as a killed process may leave
        f.write(open(path, "rb").read()[size - 300: size - 100])
    assert mp4_frames(path) == 10
    with Mp4Writer(path, append=True) as writer:
        writer.write(frames(5, start=10))
    assert video_info(path)["frames"] == 15 and close_to(read_video(path), frames(15))


@pytest.mark.parametrize("content", [b"", b"not a video at all" * 10])
def test_a_foreign_file_is_not_appended_to(tmp_path, content):
    path = tmp_path / "other.mp4"
    path.write_bytes(content)
    with pytest.raises(VideoFileError, match="not a video written by VideoSSM"):
        Mp4Writer(path, append=True)
    assert path.read_bytes() == content


def test_a_differently_encoded_file_is_not_appended_to(tmp_path):
    path = tmp_path / "v.mp4"
    with Mp4Writer(path) as writer:
        writer.write(frames(5))
    before = path.read_bytes()
    writer = Mp4Writer(path, append=True)
    with pytest.raises(VideoFileError, match="other settings"):
        writer.write(frames(5, size=48))
        writer.close()
    assert path.read_bytes() == before


WRITE_UNTIL_FULL = """
import sys
import numpy as np
from videossm_core.video_io import Mp4Writer, VideoWriteError
rng = np.random.default_rng(0)
writer = Mp4Writer(sys.argv[1])
try:
    for _ in range(40):
        writer.write(rng.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8))  # noise: incompressible
        writer.sync()
    writer.close()
except VideoWriteError as err:
    print("ERROR", writer.frames_on_disk, err)
    sys.exit(1)
print("OK", writer.frames_written)
"""


def test_a_full_disk_is_an_error_and_the_file_keeps_whole_frames(tmp_path):
    small, keep = tmp_path / "small", tmp_path / "keep"
    result = run_on_small_disk([sys.executable, "-c", WRITE_UNTIL_FULL, str(small / "v.mp4")], small, keep,
                               size_kib=64, timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    word, on_disk, message = result.stdout.split(" ", 2)
    assert word == "ERROR" and ("No space left" in message or "too large" in message), message
    on_disk = int(on_disk)
    assert 0 < on_disk < 160
    assert mp4_frames(keep / "v.mp4") == on_disk  # no half fragment at the end
    assert video_info(keep / "v.mp4")["frames"] == on_disk  # and ffmpeg reads every one of them
