"""The command line: the README's main job (shortened) on the bundled demo model, and its errors."""

import pytest

from videossm_core.cli import main
from videossm_core.state import StreamState
from videossm_core.video_io import video_info

from tests.demo_weights import needs_demo_weights


@needs_demo_weights
def test_generate_on_the_demo_model_then_resume(tmp_path):
    out = tmp_path / "demo.mp4"
    assert main(["generate", "--seconds", "1.5", "--out", str(out),
                 "--schedule", "0s: a red circle bouncing on a dark background\n1s: a blue square resting on a light background"]) == 0
    assert video_info(out)["frames"] == 33  # 3 chunks: 9 + 12 + 12 frames at 16 fps
    state_path = tmp_path / "demo.state.safetensors"
    assert StreamState.load(state_path).next_frame == 9
    more = tmp_path / "more.mp4"
    assert main(["generate", "--seconds", "0.75", "--out", str(more), "--resume", str(state_path),
                 "--schedule", "0s: a blue square resting on a light background"]) == 0
    assert video_info(more)["frames"] == 12
    assert StreamState.load(tmp_path / "more.state.safetensors").next_frame == 12


def test_schedule_errors_name_the_line(tmp_path, capsys):
    schedule = tmp_path / "prompts.txt"
    schedule.write_text("0s: a red circle bouncing on a dark background\nbanana\n")
    assert main(["generate", "--schedule-file", str(schedule), "--out", str(tmp_path / "x.mp4")]) == 2
    assert "line 2" in capsys.readouterr().err


def test_real_checkpoints_need_vae_and_text_encoder(tmp_path):
    with pytest.raises(SystemExit, match="--vae"):
        main(["generate", "--model", str(tmp_path / "model.safetensors"), "--out", str(tmp_path / "x.mp4")])


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
