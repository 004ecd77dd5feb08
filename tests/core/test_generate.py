"""The whole job: schedule -> chunks -> streaming VAE decode -> mp4 + state; stop and resume."""

import numpy as np
import pytest
import torch

from videossm_core.config import StreamConfig
from videossm_core.generate import generate_video
from videossm_core.schedule import ScheduleError, parse_schedule
from videossm_core.state import StreamState
from videossm_core.vae import build_vae, small_vae_config
from videossm_core.video_io import read_video, video_info

from .tiny import make_tiny_model

SCHEDULE = parse_schedule("0s: first prompt\n1.3s: second prompt\n")
SIZE = 32  # px -> 4x4 latents -> 2x2 tokens per frame


@pytest.fixture(scope="module")
def parts():
    model = make_tiny_model(active_memory=True, in_dim=16, out_dim=16)
    vae = build_vae(small_vae_config(), seed=0)
    table = {"first prompt": torch.randn(1, 8, 32, generator=torch.Generator().manual_seed(1)),
             "second prompt": torch.randn(1, 8, 32, generator=torch.Generator().manual_seed(2))}
    return model, vae, table.__getitem__


def _run(parts, tmp_path, name, seconds, state=None, stop_after=None, **kwargs):
    model, vae, encode = parts
    events = generate_video(model, vae, encode, SCHEDULE, seconds, SIZE, SIZE, video_path=tmp_path / f"{name}.mp4",
                            state=state, seed=4, stream=StreamConfig(window_frames=6),
                            state_path=tmp_path / f"{name}.state.safetensors", **kwargs)
    frames = []
    for event in events:
        frames.append(event.frames)
        if stop_after is not None and event.done == stop_after:
            events.close()  # what a Cancel does between chunks
            break
    return frames


def test_generate_writes_a_video_of_the_requested_length(parts, tmp_path):
    frames = _run(parts, tmp_path, "full", 3.0)
    assert [len(f) for f in frames] == [9, 12, 12, 12, 12]  # 5 chunks cover 3 s at 16 fps
    info = video_info(tmp_path / "full.mp4")
    assert info["frames"] == 57 and info["size"] == (SIZE, SIZE) and info["fps"] == 16
    state = StreamState.load(tmp_path / "full.state.safetensors")
    assert state.next_frame == 15 and state.prompt == "second prompt"


def test_stopped_run_keeps_a_playable_video_and_resumes_seamlessly(parts, tmp_path):
    full = _run(parts, tmp_path, "full", 3.0)
    partial = _run(parts, tmp_path, "part", 3.0, stop_after=2)
    assert len(read_video(tmp_path / "part.mp4")) == 21  # the two chunks made before the stop
    state = StreamState.load(tmp_path / "part.state.safetensors")
    assert state.next_frame == 6 and state.vae_cache  # the decoder's causal caches travel with the state
    # Continue for the remaining 3 chunks; the schedule's times are relative to the resume point, so
    # continue with the prompt that was active there.
    rest_schedule = parse_schedule("0s: second prompt\n")
    model, vae, encode = parts
    rest = [e.frames for e in generate_video(model, vae, encode, rest_schedule, 2.25, SIZE, SIZE,
                                             video_path=tmp_path / "rest.mp4", state=state)]
    assert [len(f) for f in rest] == [12, 12, 12]
    np.testing.assert_array_equal(np.concatenate(partial + rest), np.concatenate(full))


def test_schedule_past_the_video_end_is_refused(parts, tmp_path):
    model, vae, encode = parts
    with pytest.raises(ScheduleError, match="after the video ends"):
        next(generate_video(model, vae, encode, SCHEDULE, 1.0, SIZE, SIZE))


def test_bad_resolution_is_refused(parts):
    model, vae, encode = parts
    with pytest.raises(ValueError, match="multiples of 8"):
        next(generate_video(model, vae, encode, SCHEDULE, 3.0, 30, 32))


def test_full_disk_while_writing_keeps_what_was_made(parts, tmp_path, monkeypatch):
    from videossm_core import video_io

    real_write = video_io.Mp4Writer.write
    calls = {"n": 0}

    def failing_write(self, frames):
        calls["n"] += 1
        if calls["n"] == 3:  # the third chunk hits a full disk
            raise video_io.VideoWriteError(28, "could not write video frames (No space left on device); the disk "
                                               "may be full. The frames written so far stay playable")
        return real_write(self, frames)

    monkeypatch.setattr(video_io.Mp4Writer, "write", failing_write)
    with pytest.raises(video_io.VideoWriteError, match="disk may be full"):
        _run(parts, tmp_path, "disk", 3.0, checkpoint_seconds=0)  # a checkpoint after every chunk
    assert len(read_video(tmp_path / "disk.mp4")) == 21  # chunks 0 and 1 are in the video
    state = StreamState.load(tmp_path / "disk.state.safetensors")
    assert state.next_frame == 6  # the state matches the video: resume from it after freeing space


def _saved_chunks(parts, tmp_path, name, seconds, chunk_seconds, save_seconds=0.0, **kwargs):
    """Run on a fake wall clock (each chunk takes ``chunk_seconds``, each save ``save_seconds``); the
    chunk counts at which the state file was written."""
    from unittest import mock

    model, vae, encode = parts
    clock = {"now": 0.0}
    saves = []
    real_save = StreamState.save

    def timed_save(state, path):
        saves.append(state.next_frame // 3)
        clock["now"] += save_seconds
        return real_save(state, path)

    with mock.patch("videossm_core.generate.time.monotonic", side_effect=lambda: clock["now"]), \
            mock.patch.object(StreamState, "save", timed_save):
        for _ in generate_video(model, vae, encode, SCHEDULE, seconds, SIZE, SIZE, video_path=tmp_path / f"{name}.mp4",
                                seed=4, stream=StreamConfig(window_frames=6),
                                state_path=tmp_path / f"{name}.state.safetensors", **kwargs):
            clock["now"] += chunk_seconds
    return saves


def test_state_checkpoints_follow_wall_time_not_chunks(parts, tmp_path):
    # 5 chunks of 25 s: the first save once 60 s have passed (after chunk 4), then the last chunk's
    assert _saved_chunks(parts, tmp_path, "timed", 3.0, 25) == [4, 5]
    assert _saved_chunks(parts, tmp_path, "short", 3.0, 1) == [5]  # a short run: only its end
    assert _saved_chunks(parts, tmp_path, "every", 3.0, 1, checkpoint_seconds=0) == [1, 2, 3, 4, 5]


def test_slow_saves_are_spaced_to_cost_at_most_five_percent(parts, tmp_path):
    # 13 chunks of 25 s; a save takes 10 s, so after the first one the interval grows from 60 s to
    # 10 s * 0.95 / 0.05 = 190 s: saves after chunks 4 and 12 (and the last), not every 60 s
    saves = _saved_chunks(parts, tmp_path, "slow", 9.5625, 25, save_seconds=10)
    assert saves == [4, 12, 13]  # from the second save on, 10 s of saving per >= 190 s of run: <= 5 %
    # an explicit "every chunk" is kept whatever it costs
    assert _saved_chunks(parts, tmp_path, "every", 3.0, 25, save_seconds=10, checkpoint_seconds=0) == [1, 2, 3, 4, 5]


def test_a_stop_between_timed_checkpoints_saves_the_state_of_the_video(parts, tmp_path):
    model, vae, encode = parts
    events = generate_video(model, vae, encode, SCHEDULE, 3.0, SIZE, SIZE, video_path=tmp_path / "s.mp4",
                            seed=4, stream=StreamConfig(window_frames=6), state_path=tmp_path / "s.state.safetensors",
                            checkpoint_seconds=3600)
    for event in events:
        if event.done == 3:
            break
    assert not (tmp_path / "s.state.safetensors").exists()  # nothing was due yet
    events.close()  # what Cancel and Ctrl-C do
    assert StreamState.load(tmp_path / "s.state.safetensors").next_frame == 9
    assert len(read_video(tmp_path / "s.mp4")) == 9 + 12 + 12


def test_every_saved_state_is_covered_by_the_mp4_on_disk(parts, tmp_path, monkeypatch):
    """A state saved while the video lags would claim frames a crash then loses (the state is the only
    way to continue, so they could never be made again): at every save the file must already hold them."""
    from videossm_core.video_io import mp4_frames

    seen = []
    real_save = StreamState.save

    def checking_save(self, path):
        seen.append((mp4_frames(tmp_path / "sync.mp4"), self.video["frames"], self.next_frame))
        return real_save(self, path)

    monkeypatch.setattr(StreamState, "save", checking_save)
    _run(parts, tmp_path, "sync", 3.0, checkpoint_seconds=0)  # a save after every chunk
    assert [(on_disk, claimed) for on_disk, claimed, _ in seen] == [(9, 9), (21, 21), (33, 33), (45, 45), (57, 57)]


def test_a_failed_state_save_says_what_to_do_and_the_resume_is_gap_free(parts, tmp_path, monkeypatch):
    """A state save that fails (a full disk) ends the run with the free-space message, and the chunk whose
    state was not saved (already in the mp4) is cut off on resume."""
    from videossm_core import state as state_module

    full = _run(parts, tmp_path, "full", 3.0, checkpoint_seconds=0)  # the same mp4 segments (keyframes) as below
    real_write = state_module.write_safetensors
    calls = {"n": 0}

    def full_disk(filename, tensors, metadata):
        calls["n"] += 1
        if calls["n"] >= 3:  # the disk fills at the third save and stays full (the save on the way out fails too)
            with open(filename, "wb") as f:
                f.write(b"\0" * 100)  # what a full disk leaves: a partial temp file
            raise OSError(28, "No space left on device")
        return real_write(filename, tensors, metadata)

    monkeypatch.setattr(state_module, "write_safetensors", full_disk)
    with pytest.raises(OSError, match="Free some disk space"):
        _run(parts, tmp_path, "disk", 3.0, checkpoint_seconds=0)  # a save after every chunk
    monkeypatch.setattr(state_module, "write_safetensors", real_write)
    assert not list(tmp_path.glob("*.partial"))
    state = StreamState.load(tmp_path / "disk.state.safetensors")
    assert state.next_frame == 6 and state.video["frames"] == 21
    assert video_info(tmp_path / "disk.mp4")["frames"] == 33  # the third chunk reached the video, not the state
    model, vae, encode = parts
    list(generate_video(model, vae, encode, parse_schedule("0s: second prompt\n"), 2.25, SIZE, SIZE,
                        video_path=tmp_path / "disk.mp4", state=state, append_video=True,
                        state_path=tmp_path / "disk.state.safetensors", checkpoint_seconds=0))
    video, reference = read_video(tmp_path / "disk.mp4"), read_video(tmp_path / "full.mp4")
    assert len(video) == len(reference) == sum(len(f) for f in full) == 57
    assert np.abs(video.astype(int) - reference.astype(int)).mean(axis=(1, 2, 3)).max() < 3
    assert StreamState.load(tmp_path / "disk.state.safetensors").video["frames"] == 57


def test_appending_to_a_video_shorter_than_its_state_is_refused(parts, tmp_path):
    from videossm_core.video_io import VideoFileError, trim_mp4

    _run(parts, tmp_path, "short", 3.0, stop_after=3)
    trim_mp4(tmp_path / "short.mp4", 21)  # as if the file lost its last chunk
    state = StreamState.load(tmp_path / "short.state.safetensors")
    model, vae, encode = parts
    with pytest.raises(VideoFileError, match="holds 21 video frames but the stream state continues after frame 33"):
        next(generate_video(model, vae, encode, parse_schedule("0s: second prompt\n"), 1.0, SIZE, SIZE,
                            video_path=tmp_path / "short.mp4", state=state, append_video=True))
    assert video_info(tmp_path / "short.mp4")["frames"] == 21
