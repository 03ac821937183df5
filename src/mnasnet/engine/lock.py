"""One run per folder: an advisory ``fcntl.flock`` on ``RUN_DIR/.lock``, held for the whole run.

The kernel drops the lock when the holder exits, however it exits (even ``kill -9``),
so a stale lock never blocks a later run. Where ``fcntl`` does not exist (Windows)
runs are not locked.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from mnasnet.errors import MnasNetError

try:
    import fcntl
except ImportError:  # not POSIX
    fcntl = None

__all__ = ["LOCK_NAME", "RunLock", "RunLockedError"]

LOCK_NAME = ".lock"


class RunLockedError(MnasNetError):
    """Another process is training into the same run folder."""


class RunLock:
    """The lock on a run folder; :meth:`acquire` creates the folder, :meth:`release` removes the lock file."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None

    def _refuse(self) -> RunLockedError:
        try:
            pid = self.path.read_text().strip()
        except OSError:
            pid = ""
        holder = f" (process {pid})" if pid.isdigit() else ""
        return RunLockedError(
            f"another training run is writing to {self.run_dir}{holder}; wait for it to end, or choose another --output"
        )

    def check(self) -> None:
        """Raises RunLockedError if another process holds the lock now (creates nothing)."""
        if fcntl is None or self._fd is not None or not self.path.is_file():
            return
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise self._refuse() from None
        finally:
            os.close(fd)  # closing also drops a lock this probe took

    def acquire(self) -> RunLock:
        """Takes the lock (creating the run folder), or raises RunLockedError."""
        if self._fd is not None:
            return self
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if fcntl is None:
            return self
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise self._refuse() from None
            # the holder before us may have removed the file between our open and our lock: retry on the new one
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        # remove the file while still holding the lock, so no one can lock the old file after us
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
