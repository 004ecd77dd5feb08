"""Issue #20, "nothing generated is ever lost", under the sampler node: a ComfyUI server whose output
folder is a small tmpfs (in the server's own mount namespace, see ComfyServer(output_tmpfs_kib=...))
fills up during a run; the run fails saying so and how to continue, the files left agree, and once
space is freed the saved state continues the stream into the full video.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from tests.comfy_server import ComfyServer
from tests.core.small_disk import TMPFS
from tests.nodes.test_nodes import (RUN_TIMEOUT, assert_success, chunks, demo_graph, load_state, progress_of,
                                    read_mp4, require_demo_bundle, sampler_outputs, video_frames)

# The demo's 64x64 stream state is about 10.2 MB (10.18 MB after one chunk, 10.33 MB from the 4th on), its mp4
# about 6 kB a chunk. A state is written next to the previous one before it replaces it, so 16 MiB free holds
# the first chunk's state and not the second's. Freeing the ballast then leaves room for the old state, the
# continued stream's and a reference run's (each 2 states at its peak).
TMPFS_KIB = 64 * 1024
BALLAST_KIB = 48 * 1024


def frames_close(video, reference):
    """Same length, and every frame nearest to the reference frame at its index (no gap, no repeat)."""
    assert len(video) == len(reference)
    errors = np.abs(video[:, None].astype(int) - reference[None].astype(int)).mean(axis=(2, 3, 4))
    assert (errors.argmin(axis=1) == np.arange(len(video))).all()
    assert errors.diagonal().max() < 4


@pytest.mark.skipif(not TMPFS, reason="needs `unshare -rm` and a tmpfs mount in a private mount namespace")
def test_a_full_disk_fails_the_sampler_keeps_what_was_made_and_the_state_continues_it():
    require_demo_bundle()
    total = 9
    seconds = video_frames(total) / 16
    assert chunks(seconds) == total
    with ComfyServer(label="small-disk", output_tmpfs_kib=TMPFS_KIB) as srv:
        out = srv.output_dir   # the tmpfs, through /proc/<pid>/root
        if not out.is_dir():
            pytest.skip(f"the server's mount namespace is not readable here ({out})")
        disk = os.statvfs(out)
        assert disk.f_blocks * disk.f_frsize == TMPFS_KIB * 1024, "output/ is not the small tmpfs"
        ballast = out / "ballast"
        with open(ballast, "wb") as f:
            for _ in range(BALLAST_KIB // 1024):
                f.write(bytes(1 << 20))

        graph = demo_graph(seconds, "videossm/full", seed=3)
        graph["4"]["inputs"]["checkpoint_every"] = 0   # a state after every chunk
        run = srv.run_and_collect(graph, timeout=RUN_TIMEOUT)
        assert not run.success and run.error, run.types
        error = run.error
        assert error["node_id"] == "4" and error["exception_type"].endswith("OSError"), error
        message = error["exception_message"]
        folder = out / "videossm"
        mp4s = sorted(folder.glob("full_*_.mp4"))
        states = sorted(folder.glob("full_*_.state.safetensors"))
        assert len(mp4s) == 1 and [s.name for s in states] == [mp4s[0].name[:-len(".mp4")] + ".state.safetensors"], \
            sorted(p.name for p in folder.iterdir())
        assert not list(folder.glob("*.partial")), "a half-written state was left behind"
        # says what happened, what to do and which state continues the stream (not just a traceback)
        assert "No space left on device" in message and "Free some disk space" in message, message
        assert f"'{states[0].name} [output]' with VideoSSM Load State" in message, message

        # the files left agree: the state covers whole chunks the mp4 holds (the mp4 may run ahead of it)
        state = load_state(states[0])
        partial = read_mp4(mp4s[0])
        done = state.next_frame // 3
        assert state.next_frame == 3 * done and 1 <= done < total, state.next_frame
        assert state.video["frames"] == video_frames(done) <= partial.shape[0] < video_frames(total)

        # space again: the stream continues from the state into one gap-free video of the full length
        ballast.unlink()
        rest = demo_graph(12 * (total - done) / 16, "videossm/full_rest", seed=3)
        rest["2"] = {"class_type": "VideoSSMLoadState", "inputs": {"state_file": f"{states[0].name} [output]"}}
        rest["4"]["inputs"]["checkpoint_every"] = 0
        resumed = srv.run_and_collect(rest, timeout=RUN_TIMEOUT)
        assert_success(resumed)
        assert progress_of(resumed, "4") == [(k, total - done) for k in range(1, total - done + 1)]
        mp4, state_path = sampler_outputs(srv, resumed, "4")
        video = read_mp4(mp4)
        after = load_state(state_path)
        assert video.shape[0] == video_frames(total) == after.video["frames"]
        assert after.next_frame == 3 * total
        np.testing.assert_array_equal(video[:video_frames(done)], partial[:video_frames(done)])

        # the same as an uninterrupted run, frame for frame
        graph["4"]["inputs"]["filename_prefix"] = "videossm/full_reference"
        reference = srv.run_and_collect(graph, timeout=RUN_TIMEOUT)
        assert_success(reference)
        frames_close(video, read_mp4(sampler_outputs(srv, reference, "4")[0]))
