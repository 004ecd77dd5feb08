"""An exclusive lock next to an output file, so two runs never write the same video and state.

``flock`` locks belong to the open file, so the kernel drops them when the holder dies, even by
SIGKILL: a stale lock file never blocks the next run. The holder's pid is written into the file only
to name it in the message.
"""

from __future__ import annotations

import os

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; runs are not kept apart there
    fcntl = None


class OutputBusyError(OSError):
    pass


class OutputLock:
    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self.lock_path = self.path + ".lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        if fcntl is None:
            return
        while True:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise OutputBusyError(f"another videossm run (pid {holder}) is writing {self.path}") from None
            try:  # the previous holder may have removed the file between our open and flock: retry
                same = os.stat(self.lock_path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.remove(self.lock_path)  # while still held, so no one can lock the file we remove
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "OutputLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
