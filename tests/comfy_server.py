"""Start and talk to a real ComfyUI server (headless, CPU) from the test suite.

Not a test module. ComfyUI itself comes from `bash scripts/install_comfyui.sh`
(default location `<repo>/.comfyui/ComfyUI`, or `$VIDEOSSM_COMFYUI_DIR`).

    with ComfyServer(models={"vae": ["/tmp/tiny_vae.safetensors"]}) as srv:
        info = srv.object_info()
        run = srv.run_and_collect(graph, timeout=120)
        assert run.success, run.error

Each server gets a fresh temporary `--base-directory` (custom_nodes/, models/, user/, input/,
output/, temp/) and a free port on 127.0.0.1. This repository is symlinked into
`custom_nodes/comfyui-videossm`, so the server loads the pack exactly as a user's install would.
The server runs with the same interpreter as the tests (`sys.executable`). Its log goes to
`<repo>/test-artifacts/comfyui-<label>-<port>.log` and survives the run.
"""
from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

REPO_ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS_DIR = REPO_ROOT / "test-artifacts"
PACK_DIR_NAME = "comfyui-videossm"   # folder name of this pack under custom_nodes/
HOST = "127.0.0.1"

# First-run settings: without Comfy.TutorialCompleted the frontend replaces the default graph
# by a blank one and opens the template browser some seconds after boot (races with tests).
DEFAULT_SETTINGS = {
    "Comfy.TutorialCompleted": True,
    "Comfy.InstalledVersion": "1.32.9",
}

# Everything a server process needs to be told to stay offline (it never needs the network).
_SERVER_ENV = {
    "PYTHONUNBUFFERED": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
}

# urllib honours http_proxy; loopback traffic must never go through a proxy.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ComfyUINotInstalled(RuntimeError):
    """ComfyUI is missing: tests that need it fail (they do not skip)."""


class ComfyServerError(RuntimeError):
    """The server did not start, died, or answered with an error."""


class ComfyHTTPError(ComfyServerError):
    def __init__(self, method: str, path: str, status: int, body: Any):
        self.status, self.body = status, body
        super().__init__(f"{method} {path} -> HTTP {status}: {str(body)[:2000]}")


def comfyui_dir() -> Path:
    """The installed ComfyUI tree, or ComfyUINotInstalled with instructions."""
    env = os.environ.get("VIDEOSSM_COMFYUI_DIR")
    path = Path(env).expanduser().resolve() if env else REPO_ROOT / ".comfyui" / "ComfyUI"
    if not (path / "main.py").is_file() or not (path / "comfyui_version.py").is_file():
        where = f"$VIDEOSSM_COMFYUI_DIR={env}" if env else str(path)
        raise ComfyUINotInstalled(
            f"ComfyUI not found at {where}. Install it (and the test dependencies) into this "
            f"python with:  PYTHON={sys.executable} bash scripts/install_comfyui.sh")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@dataclass
class RunResult:
    """Everything the websocket said about one queued prompt."""
    prompt_id: str
    messages: list[dict] = field(default_factory=list)        # JSON messages, in order
    binary: list[tuple[int, bytes]] = field(default_factory=list)  # (event type, payload)
    seconds: float = 0.0

    @property
    def types(self) -> list[str]:
        return [m["type"] for m in self.messages]

    def of_type(self, kind: str) -> list[dict]:
        """The `data` of every message of this type (for this prompt where it says)."""
        return [m.get("data", {}) for m in self.messages if m["type"] == kind]

    @property
    def progress(self) -> list[tuple[str, int, int]]:
        return [(d.get("node"), d["value"], d["max"]) for d in self.of_type("progress")]

    @property
    def preview_frames(self) -> int:
        """Binary preview-image frames (types 1 and 4)."""
        return sum(1 for kind, _ in self.binary if kind in (1, 4))

    @property
    def outputs(self) -> dict[str, Any]:
        """node id -> ui output, from the `executed` messages."""
        return {d["node"]: d.get("output") for d in self.of_type("executed")}

    @property
    def error(self) -> dict | None:
        errs = self.of_type("execution_error")
        return errs[0] if errs else None

    @property
    def interrupted(self) -> bool:
        return bool(self.of_type("execution_interrupted"))

    @property
    def success(self) -> bool:
        return bool(self.of_type("execution_success"))


_LIVE: set["ComfyServer"] = set()   # stopped at interpreter exit if a test run is aborted


@atexit.register
def _stop_leftovers() -> None:
    for srv in list(_LIVE):
        srv.stop()


class ComfyServer:
    """A ComfyUI server process with its own temporary base directory.

    models: {"<models subfolder>": [path, ...] or {"<name in folder>": path}}; files are
        symlinked into <base>/models/<folder>/ (more can be added while running, see
        add_model_files; ComfyUI re-lists a folder when its mtime changes).
    extra_custom_nodes: more custom-node packs (directories or single .py files), symlinked
        into custom_nodes/ next to this repository's pack.
    include_repo_pack: symlink this repository as custom_nodes/comfyui-videossm.
    settings: merged over DEFAULT_SETTINGS into user/default/comfy.settings.json.
    extra_args: more main.py flags (e.g. ["--cache-none"]).
    output_tmpfs_kib: put output/ on a tmpfs of this many KiB, in a private mount namespace of the
        server (`unshare -rm`; a small disk for full-disk tests). The files are then visible only
        through /proc/<pid>/root, which `output_dir` points into, and vanish when the server stops.
    """

    def __init__(self, *, models: Mapping[str, Any] | None = None,
                 extra_custom_nodes: Iterable[str | os.PathLike] = (),
                 include_repo_pack: bool = True, settings: Mapping[str, Any] | None = None,
                 extra_args: Iterable[str] = (), label: str = "server",
                 startup_timeout: float = 180.0, keep_base_dir: bool = False,
                 output_tmpfs_kib: int | None = None):
        self.comfy_dir = comfyui_dir()
        self.models = dict(models or {})
        # keep the given name (a symlink's own name), link to the real target
        self.extra_custom_nodes = [Path(p).absolute() for p in extra_custom_nodes]
        self.include_repo_pack = include_repo_pack
        self.settings = {**DEFAULT_SETTINGS, **(settings or {})}
        self.extra_args = list(extra_args)
        self.label = label
        self.startup_timeout = startup_timeout
        self.keep_base_dir = keep_base_dir
        self.output_tmpfs_kib = output_tmpfs_kib
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.base_dir: Path | None = None
        self.log_path: Path | None = None
        self.startup_seconds: float | None = None
        self._log_file = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def output_dir(self) -> Path:
        """<base>/output (SaveImage & co. write here; removed when the server stops). With
        output_tmpfs_kib: the server's tmpfs there, seen through /proc/<pid>/root."""
        if self.output_tmpfs_kib is not None and self.proc is not None:
            return Path(f"/proc/{self.proc.pid}/root") / self.base_dir.relative_to("/") / "output"
        return self.base_dir / "output"

    @property
    def input_dir(self) -> Path:
        """<base>/input (what LoadImage & co. list)."""
        return self.base_dir / "input"

    @property
    def pack_names(self) -> list[str]:
        """custom_nodes/ entries this server loads on top of the built-in nodes."""
        names = [PACK_DIR_NAME] if self.include_repo_pack else []
        return names + [p.name for p in self.extra_custom_nodes]

    def __enter__(self) -> "ComfyServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _prepare_base_dir(self) -> None:
        base = Path(tempfile.mkdtemp(prefix="videossm-comfy-"))
        self.base_dir = base
        for sub in ("custom_nodes", "models", "input", "output", "temp", "user/default"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        nodes = base / "custom_nodes"
        if self.include_repo_pack:
            (nodes / PACK_DIR_NAME).symlink_to(REPO_ROOT, target_is_directory=True)
        for pack in self.extra_custom_nodes:
            if not pack.exists():
                raise FileNotFoundError(f"extra custom node pack {pack} does not exist")
            if (nodes / pack.name).exists():
                raise ValueError(f"two custom node packs named {pack.name!r}")
            (nodes / pack.name).symlink_to(pack.resolve(), target_is_directory=pack.is_dir())
        (base / "user" / "default" / "comfy.settings.json").write_text(
            json.dumps(self.settings, indent=1))
        self.add_model_files(self.models)

    def add_model_files(self, models: Mapping[str, Any]) -> None:
        """Symlink model files into <base>/models/<folder>/ (before or after start)."""
        if self.base_dir is None:   # not started yet: remember for start()
            for folder, files in models.items():
                self.models.setdefault(folder, [])
                self.models[folder] = _merge_files(self.models[folder], files)
            return
        for folder, files in models.items():
            dest_dir = self.base_dir / "models" / folder
            dest_dir.mkdir(parents=True, exist_ok=True)
            items = files.items() if isinstance(files, Mapping) else \
                [(Path(f).name, f) for f in files]
            for name, src in items:
                src = Path(src).resolve()
                if not src.exists():
                    raise FileNotFoundError(f"model file {src} does not exist")
                dest = dest_dir / name
                if dest.is_symlink() or dest.exists():
                    if dest.resolve() == src:
                        continue
                    raise ValueError(f"models/{folder}/{name} already holds {dest.resolve()}")
                dest.symlink_to(src, target_is_directory=src.is_dir())

    def start(self) -> "ComfyServer":
        if self.proc is not None:
            raise ComfyServerError("server already started")
        self._prepare_base_dir()
        self.port = free_port()
        ARTIFACTS_DIR.mkdir(exist_ok=True)
        self.log_path = ARTIFACTS_DIR / f"comfyui-{self.label}-{self.port}.log"
        self._log_file = open(self.log_path, "wb")
        cmd = [sys.executable, "main.py", "--cpu", "--listen", HOST, "--port", str(self.port),
               "--disable-auto-launch", "--disable-api-nodes",
               "--base-directory", str(self.base_dir),
               "--database-url", "sqlite:///:memory:", "--verbose", "WARNING", *self.extra_args]
        if self.output_tmpfs_kib is not None:   # sh execs the server: same pid, same process group
            mount = f"mount -t tmpfs -o size={int(self.output_tmpfs_kib)}k tmpfs \"$0\" && exec \"$@\""
            cmd = ["unshare", "-rm", "sh", "-c", mount, str(self.base_dir / "output"), *cmd]
        env = {**os.environ, **_SERVER_ENV}
        t0 = time.monotonic()
        # own process group: a stuck server (and anything it spawned) can be killed as a unit
        self.proc = subprocess.Popen(cmd, cwd=self.comfy_dir, stdout=self._log_file,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, start_new_session=True)
        _LIVE.add(self)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ComfyServerError(
                    f"ComfyUI exited with code {self.proc.returncode} during start-up.\n"
                    f"--- log tail ({self.log_path}) ---\n{self.log_tail()}")
            try:
                self.get_json("/system_stats", timeout=2)
                return
            except (OSError, ComfyServerError):
                time.sleep(0.1)
        raise ComfyServerError(f"ComfyUI did not answer on {self.url} within "
                               f"{self.startup_timeout:.0f} s.\n--- log tail ---\n{self.log_tail()}")

    def stop(self, timeout: float = 20.0) -> None:
        """Terminate the server (SIGTERM, then SIGKILL), wait for it, remove the base dir."""
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.poll() is None:
                _signal_group(proc, signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    _signal_group(proc, signal.SIGKILL)
                    proc.wait(10)
            # (children that outlived a clean exit are none of ours to hunt: the group is gone)
        _LIVE.discard(self)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self.base_dir is not None and not self.keep_base_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)   # removes symlinks, not targets
            self.base_dir = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # ------------------------------------------------------------------ log
    def log_text(self) -> str:
        if self._log_file is not None:
            self._log_file.flush()
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def import_errors(self, pack_names: Iterable[str] | None = None) -> list[str]:
        """Import/registration failures of our custom-node packs found in the server log.

        Returns one text block per failure (the traceback when there is one, then the
        ComfyUI message). Default packs: this repository's plus the extra ones.
        """
        names = set(self.pack_names if pack_names is None else pack_names)
        lines = self.log_text().splitlines()
        pat = re.compile(
            r"(?:Cannot import (?P<a>.+?) module for custom nodes"
            r"|Error while calling comfy_entrypoint in (?P<b>.+?):"
            r"|comfy_entrypoint in (?P<c>.+?) (?:is not callable|did not return)"
            r"|Skip (?P<d>.+?) module for custom nodes"
            r"|\(IMPORT FAILED\): (?P<e>.+)$)")
        found, tb_start = [], None
        for i, line in enumerate(lines):
            if line.startswith("Traceback (most recent call last)"):
                tb_start = i
            m = pat.search(line)
            if not m:
                continue
            path = next(g for g in m.groups() if g)
            if os.path.basename(path.rstrip("/")) in names:
                start = tb_start if tb_start is not None and i - tb_start < 200 else i
                found.append("\n".join(lines[start:i + 1]))
            tb_start = None
        return found

    # ------------------------------------------------------------------ HTTP
    def _request(self, method: str, path: str, body: Any = None, timeout: float = 30.0):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with _OPENER.open(req, timeout=timeout) as r:
                raw = r.read()
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                payload = json.loads(raw)
            except ValueError:
                payload = raw.decode(errors="replace")
            raise ComfyHTTPError(method, path, e.code, payload) from None
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return raw

    def get_json(self, path: str, timeout: float = 30.0) -> Any:
        return self._request("GET", path, timeout=timeout)

    def post_json(self, path: str, body: Any, timeout: float = 30.0) -> Any:
        """POST JSON; returns the parsed reply, raises ComfyHTTPError on HTTP errors."""
        return self._request("POST", path, body, timeout=timeout)

    def get_bytes(self, path: str, timeout: float = 30.0) -> bytes:
        with _OPENER.open(self.url + path, timeout=timeout) as r:
            return r.read()

    def view(self, filename: str, subfolder: str = "", type: str = "output") -> bytes:
        """Bytes of an output/temp/input file, as the frontend fetches them."""
        q = urllib.parse.urlencode({"filename": filename, "subfolder": subfolder, "type": type})
        return self.get_bytes(f"/view?{q}")

    def object_info(self, node_class: str | None = None) -> dict:
        if node_class is None:
            return self.get_json("/object_info")
        return self.get_json(f"/object_info/{urllib.parse.quote(node_class)}")[node_class]

    def history(self, prompt_id: str | None = None) -> dict:
        """/history/<id> entry for one prompt ({} while it has not finished), or all of it."""
        if prompt_id is None:
            return self.get_json("/history")
        return self.get_json(f"/history/{prompt_id}").get(prompt_id, {})

    def queue_prompt(self, graph: dict, client_id: str | None = None,
                     extra_data: dict | None = None) -> tuple[str | None, dict]:
        """POST /prompt. Returns (prompt_id, node_errors) when queued, or (None, error body)
        when ComfyUI rejects the graph (HTTP 400: {"error": ..., "node_errors": ...})."""
        body: dict[str, Any] = {"prompt": graph}
        if client_id:
            body["client_id"] = client_id
        if extra_data:
            body["extra_data"] = extra_data
        try:
            reply = self.post_json("/prompt", body)
        except ComfyHTTPError as e:
            if e.status == 400 and isinstance(e.body, dict):
                return None, e.body
            raise
        return reply["prompt_id"], reply.get("node_errors") or {}

    def interrupt(self, prompt_id: str | None = None) -> None:
        self.post_json("/interrupt", {"prompt_id": prompt_id} if prompt_id else {})

    def run_and_collect(self, graph: dict, timeout: float = 300.0,
                        on_message: Callable[[dict], None] | None = None,
                        extra_data: dict | None = None) -> RunResult:
        """Queue `graph` and follow the websocket until ComfyUI says the prompt is done
        (`executing` with node None for this prompt). Returns every message.

        on_message(msg) is called for each JSON message as it arrives (e.g. to interrupt()).
        Raises ComfyServerError if the graph is rejected, the server dies, or on timeout.
        An execution_error does not raise: check result.error / result.success.
        """
        import websocket   # websocket-client

        client_id = uuid.uuid4().hex
        ws = websocket.create_connection(f"ws://{HOST}:{self.port}/ws?clientId={client_id}",
                                         timeout=5)
        try:
            t0 = time.monotonic()
            prompt_id, errors = self.queue_prompt(graph, client_id, extra_data)
            if prompt_id is None:
                raise ComfyServerError(f"prompt rejected: {json.dumps(errors)[:4000]}")
            result = RunResult(prompt_id)
            deadline = t0 + timeout
            while True:
                if time.monotonic() > deadline:
                    raise ComfyServerError(
                        f"prompt {prompt_id} not finished after {timeout} s; message types so "
                        f"far: {result.types}\n--- log tail ---\n{self.log_tail()}")
                try:
                    frame = ws.recv()
                except websocket.WebSocketTimeoutException:
                    if not self.running:
                        raise ComfyServerError(f"server died:\n{self.log_tail()}") from None
                    continue
                if isinstance(frame, bytes):
                    if len(frame) >= 4:
                        result.binary.append((int.from_bytes(frame[:4], "big"), frame[4:]))
                    continue
                msg = json.loads(frame)
                data = msg.get("data") or {}
                if data.get("prompt_id") not in (None, prompt_id):
                    continue    # another prompt's messages (e.g. a queued neighbour)
                result.messages.append(msg)
                if on_message is not None:
                    on_message(msg)
                if msg["type"] == "executing" and data.get("node") is None \
                        and data.get("prompt_id") == prompt_id:
                    break
            result.seconds = time.monotonic() - t0
            return result
        finally:
            ws.close()

    def wait_history(self, prompt_id: str, timeout: float = 300.0) -> dict:
        """Poll /history until the prompt finished (no websocket needed)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.history(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None:
                return entry
            if not self.running:
                raise ComfyServerError(f"server died:\n{self.log_tail()}")
            time.sleep(0.1)
        raise ComfyServerError(f"prompt {prompt_id} not in /history after {timeout} s")


def _merge_files(old: Any, new: Any) -> Any:
    """Combine two `models` values (lists of paths or {name: path} mappings)."""
    as_map = lambda v: dict(v) if isinstance(v, Mapping) else {Path(p).name: p for p in v}
    return {**as_map(old), **as_map(new)}


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)   # the server leads its own session (start_new_session)
    except ProcessLookupError:
        pass
