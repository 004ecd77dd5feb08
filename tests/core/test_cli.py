"""The command line on the bundled demo model (at 32x32, a chunk takes about a second): its main job,
resuming, and everything that must never lose or replace video: a resume into the same file, a rerun
onto an existing output, two runs on one output, a SIGKILL of the whole process tree, a full disk."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from videossm_core.cli import main
from videossm_core.locks import OutputLock
from videossm_core.state import StreamState
from videossm_core.video_io import VideoFileError, mp4_frames, read_video, video_info

from tests.demo_weights import needs_demo_weights

from .small_disk import REPO, TMPFS, run_on_small_disk

PROMPT = "0s: a red circle bouncing on a dark background"
SMALL = ["--width", "32", "--height", "32"]


def cli(*args, **popen):
    """The CLI as a user runs it: a separate process."""
    return [sys.executable, "-m", "videossm_core", *args]


def run(*args, timeout=600):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(cli(*args), capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)


def frames_close(video, reference):
    """Same length, and every frame nearest to the reference frame at its index (no gap, no repeat)."""
    assert len(video) == len(reference)
    errors = np.abs(video[:, None].astype(int) - reference[None].astype(int)).mean(axis=(2, 3, 4))
    assert (errors.argmin(axis=1) == np.arange(len(video))).all()
    assert errors.diagonal().max() < 4


def on_disk(path):
    try:
        return mp4_frames(path)
    except (VideoFileError, FileNotFoundError):
        return 0


@needs_demo_weights
def test_generate_on_the_demo_model_then_resume_into_the_same_video(tmp_path):
    out = tmp_path / "demo.mp4"
    # the README's example, as bash passes it: a literal backslash-n between the lines
    assert main(["generate", "--seconds", "1.5", "--out", str(out), *SMALL,
                 "--schedule", "0s: a red circle bouncing on a dark background\\n1s: a blue square resting on a "
                               "light background"]) == 0
    assert video_info(out)["frames"] == 33  # 3 chunks: 9 + 12 + 12 frames at 16 fps
    state_path = tmp_path / "demo.state.safetensors"
    state = StreamState.load(state_path)
    assert state.next_frame == 9 and state.segment_index == 1  # two prompts, not one with "\n1s:" in it
    first = read_video(out)
    # what the Ctrl-C message suggests: --resume alone (or with the same --out) grows the same video
    assert main(["generate", "--seconds", "0.75", "--resume", str(state_path), "--out", str(out), *SMALL,
                 "--schedule", "0s: a blue square resting on a light background"]) == 0
    assert video_info(out)["frames"] == 45
    np.testing.assert_array_equal(read_video(out)[:33], first)  # the old frames are untouched
    state = StreamState.load(state_path)
    assert state.next_frame == 12 and state.video["frames"] == 45
    # into a new file: the whole stream, the old video kept as it was
    more = tmp_path / "more.mp4"
    assert main(["generate", "--seconds", "0.75", "--resume", str(state_path), "--out", str(more), *SMALL,
                 "--schedule", "0s: a blue square resting on a light background"]) == 0
    assert video_info(more)["frames"] == 57 and video_info(out)["frames"] == 45
    assert StreamState.load(tmp_path / "more.state.safetensors").video["frames"] == 57


@needs_demo_weights
def test_existing_outputs_are_never_replaced_silently(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs").mkdir()
    old = {"outputs/videossm.mp4": b"an earlier video", "outputs/videossm.state.safetensors": b"its state"}
    for name, data in old.items():
        (tmp_path / name).write_bytes(data)
    # an explicit --out that exists: refused before any work, saying what to pass
    assert main(["generate", "--seconds", "0.5", "--out", "outputs/videossm.mp4", "--schedule", PROMPT]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already exists" in err and "--overwrite" in err and "--resume" in err
    # the default --out takes the next free numbered name
    assert main(["generate", "--seconds", "0.5", *SMALL, "--schedule", PROMPT]) == 0
    assert "outputs/videossm_0001.mp4" in capsys.readouterr().out
    assert video_info("outputs/videossm_0001.mp4")["frames"] == 9
    for name, data in old.items():
        assert (tmp_path / name).read_bytes() == data
    assert not list(tmp_path.glob("outputs/*.lock"))  # released
    # --overwrite is the explicit way to replace
    assert main(["generate", "--seconds", "0.5", *SMALL, "--out", "outputs/videossm.mp4", "--overwrite",
                 "--schedule", PROMPT]) == 0
    assert video_info("outputs/videossm.mp4")["frames"] == 9


@needs_demo_weights
def test_two_runs_on_one_output_are_kept_apart(tmp_path, capsys):
    out = tmp_path / "shared.mp4"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.Popen(cli("generate", "--seconds", "1.5", *SMALL, "--out", str(out), "--schedule", PROMPT),
                             cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not (tmp_path / "shared.mp4.lock").exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, "the first run ended before the second started"
        assert main(["generate", "--seconds", "1.5", *SMALL, "--out", str(out), "--schedule", PROMPT]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"pid {first.pid}" in err and "is writing" in err
        assert first.wait(timeout=600) == 0, first.stderr.read()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert video_info(out)["frames"] == 33
    assert StreamState.load(tmp_path / "shared.state.safetensors").video["frames"] == 33
    assert not (tmp_path / "shared.mp4.lock").exists()


def test_a_lock_left_by_a_killed_run_does_not_block(tmp_path):
    (tmp_path / "v.mp4.lock").write_text("12345")  # the file stays behind; the kernel dropped the lock
    with OutputLock(tmp_path / "v.mp4"):
        assert (tmp_path / "v.mp4.lock").read_text() == str(os.getpid())
    assert not (tmp_path / "v.mp4.lock").exists()


@needs_demo_weights
def test_sigkill_of_the_process_tree_then_resume_gives_the_uninterrupted_video(tmp_path):
    args = ["generate", "--seconds", "3", *SMALL, "--schedule", PROMPT, "--seed", "3", "--checkpoint-every", "0"]
    reference = run(*args, "--out", str(tmp_path / "ref.mp4"))
    assert reference.returncode == 0, reference.stderr
    out, state_path = tmp_path / "run.mp4", tmp_path / "run.state.safetensors"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cli(*args, "--out", str(out)), cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while (on_disk(out) < 22 or not state_path.exists()) and proc.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be killed"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # python and its ffmpeg, as a crash or the OOM killer would
        proc.wait()
    state = StreamState.load(state_path)
    assert 0 < state.video["frames"] <= on_disk(out) < 57  # the file is never behind its state
    remaining = 5 - state.chunk_index
    resumed = run("generate", "--seconds", f"{remaining * 0.75}", *SMALL, "--resume", str(state_path),
                  "--schedule", "0s: a red circle bouncing on a dark background")
    assert resumed.returncode == 0, resumed.stderr
    assert video_info(out)["frames"] == 57
    frames_close(read_video(out), read_video(tmp_path / "ref.mp4"))


@needs_demo_weights
@pytest.mark.skipif(not TMPFS, reason="needs a tmpfs in a private mount namespace (unshare -rm); "
                                      "tests/core/test_generate.py covers the failing writer without one")
def test_a_full_disk_is_an_error_the_state_agrees_and_the_resume_completes(tmp_path):
    small, keep = tmp_path / "small", tmp_path / "keep"
    args = ["generate", "--seconds", "6", *SMALL, "--schedule", PROMPT, "--checkpoint-every", "0"]
    result = run_on_small_disk(cli(*args, "--out", str(small / "v.mp4"), "--state-out",
                                   str(keep / "v.state.safetensors")), small, keep, size_kib=16)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert "No space left on device" in last and "--resume" in last and "Traceback" not in result.stderr
    assert "wrote" not in result.stdout
    state = StreamState.load(keep / "v.state.safetensors")
    assert 0 < state.video["frames"] <= mp4_frames(keep / "v.mp4") < 105
    # space freed (here: the video moved to a bigger disk, next to its state): the resume completes it
    remaining = 9 - state.chunk_index
    resumed = run("generate", "--seconds", f"{remaining * 0.75}", *SMALL, "--resume", str(keep / "v.state.safetensors"),
                  "--schedule", PROMPT)
    assert resumed.returncode == 0, resumed.stderr
    assert video_info(keep / "v.mp4")["frames"] == 105


def test_real_checkpoints_need_vae_and_text_encoder(tmp_path, capsys):
    assert main(["generate", "--model", str(tmp_path / "model.safetensors"), "--out", str(tmp_path / "x.mp4")]) == 2
    err = capsys.readouterr().err
    assert "--vae" in err and err.count("\n") == 1


@needs_demo_weights
def test_compile_and_checkpoint_options_reach_the_run(tmp_path):
    """--compile runs the streaming block through torch.compile (same video as eager, to float rounding);
    --checkpoint-every reaches the checkpoint policy."""
    from unittest import mock

    import torch
    from torch._dynamo.utils import counters

    from videossm_core import generate

    schedule = "0s: a red circle bouncing on a dark background"
    assert main(["generate", "--seconds", "1.5", "--out", str(tmp_path / "eager.mp4"), "--schedule", schedule]) == 0
    torch._dynamo.reset()
    counters.clear()
    with mock.patch("videossm_core.generate.generate_video", wraps=generate.generate_video) as spy:
        assert main(["generate", "--seconds", "1.5", "--out", str(tmp_path / "compiled.mp4"), "--schedule", schedule,
                     "--compile", "--checkpoint-every", "0"]) == 0
    assert spy.call_args.kwargs["checkpoint_seconds"] == 0
    assert counters["stats"]["unique_graphs"] >= 1  # the block really went through dynamo
    eager = StreamState.load(tmp_path / "eager.state.safetensors")
    compiled = StreamState.load(tmp_path / "compiled.state.safetensors")
    assert compiled.next_frame == eager.next_frame == 9
    torch.testing.assert_close(compiled.recent_latents, eager.recent_latents, rtol=1e-4, atol=1e-4)
    torch._dynamo.reset()


@needs_demo_weights
def test_six_seconds_then_six_more_is_the_twelve_second_video(tmp_path):
    """The router's T is the model's (what it was trained with), not the requested length: a 6-s run resumed for 6 s
    is the 12-s run (same seed, one prompt). When T followed --seconds the two streams weighted the memory
    differently (T = 24 vs 48 latent frames) and parted as soon as the memory was read."""
    one, parts = tmp_path / "one.mp4", tmp_path / "parts.mp4"
    assert main(["generate", "--seconds", "12", "--out", str(one), *SMALL, "--schedule", PROMPT]) == 0
    assert main(["generate", "--seconds", "6", "--out", str(parts), *SMALL, "--schedule", PROMPT]) == 0
    first = StreamState.load(tmp_path / "parts.state.safetensors")
    assert first.stream.router_horizon_frames == first.model_config.memory.router_horizon_frames == 240
    assert main(["generate", "--seconds", "6", "--resume", str(tmp_path / "parts.state.safetensors"),
                 "--out", str(parts), *SMALL, "--schedule", PROMPT]) == 0
    whole, resumed = StreamState.load(tmp_path / "one.state.safetensors"), StreamState.load(
        tmp_path / "parts.state.safetensors")
    assert whole.next_frame == resumed.next_frame == 51 and whole.counters["evicted_frames"] > 0  # 17 chunks
    for a, b in zip(whole.branches["cond"].layers, resumed.branches["cond"].layers):
        assert a.memory.norm() > 0
        torch.testing.assert_close(b.memory, a.memory, rtol=0, atol=1e-6)
    frames_close(read_video(parts), read_video(one))
