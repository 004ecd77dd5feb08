"""Bad input on the command line: one line that says what is wrong and what to do, exit status 2, no
traceback, and nothing written (table-driven; every case fails before any video is generated, most
before a model is loaded)."""

import json
import os

import pytest
import torch
from safetensors.torch import save_file

from videossm_core.cli import demo_schedule, main
from videossm_core.config import get_preset
from videossm_core.schedule import parse_schedule
from videossm_core.state import StreamState

from tests.demo_weights import needs_demo_weights

from .small_disk import REPO, TMPFS

PROMPT = "0s: a red circle bouncing on a dark background"


def _state(tmp_path, name="good.state.safetensors", config=None):
    path = tmp_path / name
    StreamState.new(config or get_preset("tiny")).save(path)
    return path


def _edited_state(tmp_path, edit):
    """A state file whose metadata JSON was edited by hand."""
    good = _state(tmp_path)
    from safetensors import safe_open

    with safe_open(str(good), framework="pt") as f:
        meta = json.loads(f.metadata()["videossm"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    text = edit(meta)
    path = tmp_path / "edited.state.safetensors"
    save_file(tensors or {"x": torch.zeros(1)}, str(path), metadata={"videossm": text if isinstance(text, str)
                                                                      else json.dumps(text)})
    return path


def _truncated(tmp_path):
    good = _state(tmp_path)
    data = good.read_bytes()
    path = tmp_path / "cut.state.safetensors"
    path.write_bytes(data[: len(data) // 2])
    return path


def _write(tmp_path, name, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _model_file(tmp_path, kind):
    if kind == "folder":
        (tmp_path / "a_folder").mkdir()
        return tmp_path / "a_folder"
    if kind == "empty":
        return _write(tmp_path, "empty.safetensors", b"")
    if kind == "random":
        return _write(tmp_path, "random.safetensors", os.urandom(4096))
    if kind == "random_pt":
        return _write(tmp_path, "random.pt", os.urandom(4096))
    if kind == "truncated":
        path = tmp_path / "model.safetensors"
        save_file({"blocks.0.self_attn.q.weight": torch.zeros(64, 64)}, str(path))
        data = path.read_bytes()
        return _write(tmp_path, "cut.safetensors", data[: len(data) - 100])
    if kind == "state":  # a stream state is not a model
        return _state(tmp_path)
    raise AssertionError(kind)


def _bad_lines(tmp_path):
    return _write(tmp_path, "garbage.txt", ("0s: fine\n" + "no colon here\n" * 1999).encode())


CASES = [
    # (id, arguments (callables get tmp_path), text the line must contain)
    ("seconds nan", ["--seconds", "nan"], "--seconds: nan is not a finite number"),
    ("seconds inf", ["--seconds", "inf"], "--seconds: inf is not a finite number"),
    ("seconds negative", ["--seconds", "-5"], "--seconds: must be more than 0"),
    ("seconds zero", ["--seconds", "0"], "--seconds: must be more than 0"),
    ("seconds absurd", ["--seconds", "1e9"], "--seconds: must be at most 36000"),
    ("seconds text", ["--seconds", "ten"], "--seconds: 'ten' is not a number"),
    ("width zero", ["--width", "0"], "--width: must be at least 16"),
    ("width negative", ["--width", "-64"], "--width: must be at least 16"),
    ("width huge", ["--width", "100000"], "--width: must be at most 4096"),
    ("guidance nan", ["--guidance", "nan"], "--guidance: nan is not a finite number"),
    ("lora strength inf", ["--lora-strength", "inf"], "--lora-strength: inf is not a finite number"),
    ("seed negative", ["--seed", "-1"], "--seed: must be at least 0"),
    ("window smaller than sink", ["--window", "3", "--sink", "6"], "--window 3 must hold the --sink (6)"),
    ("empty schedule", ["--schedule", ""], "the schedule is empty"),
    ("clock time is not swallowed", ["--schedule", "0s: a\\n1:30: b", "--seconds", "60"],
     "after the video ends (60 s)"),
    ("schedule file missing", lambda t: ["--schedule-file", str(t / "nope.txt")], "no such file"),
    ("schedule file is a folder", lambda t: ["--schedule-file", str(t)], "is a folder"),
    ("schedule file not utf-8", lambda t: ["--schedule-file", str(_write(t, "latin1.txt", "0s: caf\xe9".encode("latin-1")))],
     "is not UTF-8 text"),
    ("schedule with 1999 bad lines", lambda t: ["--schedule-file", str(_bad_lines(t))], "and 1989 more bad lines"),
    ("out under a file", lambda t: ["--out", str(_write(t, "file.txt", b"x") / "v.mp4")], "choose another --out"),
    ("out in a read-only place", ["--out", "/proc/videossm/v.mp4"], "choose another --out"),
    ("resume missing", lambda t: ["--resume", str(t / "nope.state.safetensors")], "no stream-state file"),
    ("resume truncated", lambda t: ["--resume", str(_truncated(t))], "may be truncated or damaged"),
    ("resume random bytes", lambda t: ["--resume", str(_write(t, "r.state.safetensors", os.urandom(2000)))],
     "not a readable safetensors file"),
    ("resume a model file", lambda t: ["--resume", str(_model_file(t, "truncated"))], "not a readable"),
    ("resume metadata not json", lambda t: ["--resume", str(_edited_state(t, lambda m: "{not json"))],
     "damaged stream-state metadata"),
    ("resume metadata a list", lambda t: ["--resume", str(_edited_state(t, lambda m: [1, 2]))],
     "damaged stream-state metadata"),
    ("resume metadata missing key", lambda t: ["--resume", str(_edited_state(t, lambda m: {k: v for k, v in m.items()
                                                                                          if k != "stream"}))],
     "damaged stream-state metadata (KeyError: missing 'stream')"),
    ("resume metadata wrong type", lambda t: ["--resume", str(_edited_state(t, lambda m: {**m, "next_frame": "9"}))],
     "next_frame must be a non-negative integer"),
    ("resume metadata wrong nested type", lambda t: ["--resume", str(_edited_state(t, lambda m: {**m, "branches": 5}))],
     "damaged stream-state metadata"),
    ("resume metadata wrong config", lambda t: ["--resume", str(_edited_state(t, lambda m: {**m, "stream": "x"}))],
     "damaged stream-state metadata"),
]
MODEL_CASES = [
    ("model folder", "folder", "not a diffusers model folder"),
    ("model empty", "empty", "empty.safetensors"),
    ("model random bytes", "random", "random.safetensors"),
    ("model random .pt", "random_pt", "random.pt"),
    ("model truncated", "truncated", "cut.safetensors"),
    ("model is a stream state", "state", "this is a VideoSSM stream state (a saved run), not a model"),
]


def _check_one_line(capsys, code, want):
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("videossm"), lines[0]
    assert want in lines[0], lines[0]
    assert len(lines[0]) < 2200
    assert code == 2


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_generate_arguments(tmp_path, capsys, case):
    _, args, want = case
    args = args(tmp_path) if callable(args) else args
    out = tmp_path / "outputs" / "v.mp4"
    full = ["generate", "--schedule", PROMPT, "--seconds", "1", "--out", str(out), *args]
    code = main(full)
    _check_one_line(capsys, code, want)
    assert not out.exists() and not (tmp_path / "outputs" / "v.state.safetensors").exists()


@pytest.mark.parametrize("case", MODEL_CASES, ids=[c[0] for c in MODEL_CASES])
def test_bad_model_files(tmp_path, capsys, case):
    _, kind, want = case
    path = _model_file(tmp_path, kind)
    code = main(["generate", "--schedule", PROMPT, "--seconds", "1", "--out", str(tmp_path / "v.mp4"),
                 "--model", str(path), "--vae", str(tmp_path / "vae.pth"), "--text-encoder", str(tmp_path)])
    _check_one_line(capsys, code, want)
    assert not (tmp_path / "v.mp4").exists()


@pytest.mark.parametrize("make", [_truncated, lambda t: _edited_state(t, lambda m: "{not json"),
                                  lambda t: _write(t, "r.safetensors", os.urandom(100))],
                         ids=["truncated", "not json", "random"])
def test_inspect_of_a_bad_file(tmp_path, capsys, make):
    code = main(["inspect", str(make(tmp_path))])
    captured = capsys.readouterr()
    assert code == 2 and "Traceback" not in captured.err and len(captured.err.strip().splitlines()) == 1


@needs_demo_weights
def test_a_state_of_another_model_is_named(tmp_path, capsys):
    path = _state(tmp_path)
    code = main(["generate", "--schedule", PROMPT, "--seconds", "1", "--resume", str(path), "--width", "32",
                 "--height", "32", "--out", str(tmp_path / "v.mp4")])
    _check_one_line(capsys, code, "belongs to a model of another shape")
    assert not (tmp_path / "v.mp4").exists()


def test_usage_errors_from_argparse_are_one_line(capsys):
    assert main(["generate", "--positions", "sideways"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "invalid choice" in err and "--help" in err


@pytest.mark.parametrize("seconds", [0.3, 1.5, 6, 60])
def test_without_a_schedule_the_demo_prompts_fit_the_length(seconds):
    schedule = parse_schedule(demo_schedule(seconds))
    schedule.check_duration(seconds)
    assert schedule.prompts[0].startswith("a red circle")
    if seconds >= 6:
        assert len(schedule.prompts) == 3


def test_inspect_a_checkpoint_before_a_long_run(tmp_path, capsys):
    from tests.core import checkpoint_fixtures as fx

    weights = fx.reference_weights(seed=0, memory=True)
    base = {k: v for k, v in weights.items() if ".self_attn.memory." not in k}
    torch.save(fx.training_checkpoint(fx.wan_layout(base)), tmp_path / "base.pt")
    from videossm_core.checkpoints import save_model

    from .tiny import make_tiny_model

    save_model(make_tiny_model(), tmp_path / "videossm.safetensors")
    save_file(fx.peft_lora_layout(fx.make_lora(rank=4)), str(tmp_path / "lora.safetensors"))
    assert main(["inspect", str(tmp_path / "base.pt")]) == 0
    out = capsys.readouterr().out
    assert "format: training (the training dict's 'generator' entry)" in out
    assert f"dim {fx.TINY.dim}, {fx.TINY.num_layers} blocks" in out and "memory parameters: absent" in out
    assert "LoRA: no" in out
    assert main(["inspect", str(tmp_path / "videossm.safetensors")]) == 0
    assert "memory parameters: present" in capsys.readouterr().out
    assert main(["inspect", str(tmp_path / "lora.safetensors")]) == 0
    assert "LoRA: yes" in capsys.readouterr().out
    assert main(["inspect", str(_state(tmp_path))]) == 0
    assert "frames generated: 0" in capsys.readouterr().out


@needs_demo_weights
def test_the_demo_encoder_warns_about_words_it_drops(tmp_path, capsys):
    long = "a red circle " + "bouncing " * 40 + "on a dark background"
    assert main(["generate", "--seconds", "1", "--width", "32", "--height", "32", "--out", str(tmp_path / "v.mp4"),
                 "--schedule", f"0s: a purple dog bouncing on a dark background\\n0.5s: {long}"]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert any("does not know dog (in " in w for w in warnings), err
    assert any(f"has {len(long.split())} words; the demo text encoder reads only the first" in w for w in warnings), err


@pytest.mark.skipif(not TMPFS, reason="needs a private mount namespace (unshare -rm) for a read-only mount")
def test_a_read_only_out_folder_is_named(tmp_path):
    """As root every folder is writable by permission, so the read-only place is a read-only mount."""
    import shlex
    import subprocess
    import sys

    folder = tmp_path / "ro"
    folder.mkdir()
    command = shlex.join([sys.executable, "-m", "videossm_core", "generate", "--seconds", "1",
                          "--out", str(folder / "v.mp4")])
    script = f"mount -t tmpfs -o ro tmpfs {shlex.quote(str(folder))} || exit 99; exec {command}"
    result = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=300,
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert "read-only" in lines[0] and "choose another --out" in lines[0]
