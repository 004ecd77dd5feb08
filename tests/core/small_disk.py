"""A small disk for full-disk tests: a tmpfs of a few KiB in a private mount namespace (``unshare``),
or, where namespaces are not allowed, a file-size limit (RLIMIT_FSIZE: writes past it fail with EFBIG
as they would with ENOSPC)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _tmpfs_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=4k tmpfs /mnt"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


TMPFS = _tmpfs_works()


def run_on_small_disk(command: list[str], small: Path, keep: Path, size_kib: int,
                      timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``command`` (which writes into ``small``) with only ``size_kib`` KiB of space there; afterwards
    the files left in ``small`` are copied into ``keep`` (a tmpfs vanishes with its namespace)."""
    small.mkdir(parents=True, exist_ok=True)
    keep.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = " ".join(shlex.quote(c) for c in command)
    copy = f"cp -a {shlex.quote(str(small))}/. {shlex.quote(str(keep))}/"
    if TMPFS:
        script = (f"mount -t tmpfs -o size={size_kib}k tmpfs {shlex.quote(str(small))} || exit 99; "
                  f"{cmd}; rc=$?; {copy}; exit $rc")
        return subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True,
                              env=env, timeout=timeout)
    limit = size_kib * 1024
    wrapped = [sys.executable, "-c", "import resource, sys, os; "
               f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); os.execv(sys.argv[1], sys.argv[1:])",
               *command]
    result = subprocess.run(wrapped, capture_output=True, text=True, env=env, timeout=timeout)
    subprocess.run(["sh", "-c", copy], check=True)
    return result
