"""One run per output folder: an exclusive ``flock`` on ``<output_dir>/.lock`` for the whole run.

A second run of the same name (same folder) fails at once, naming the holder, instead of sharing the
checkpoints and the record. The kernel drops the lock when its process dies, so a crash never leaves a
stale lock; the file itself stays and only tells who held it last.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path

LOCK_FILE = ".lock"


class RunLocked(RuntimeError):
    """Another run holds the output folder."""


class FolderLock:
    """``acquire()`` / ``release()`` an exclusive, non-blocking lock on ``directory``."""

    def __init__(self, directory: str | Path) -> None:
        self.path = Path(directory) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`RunLocked` (another run has it) / ``OSError`` (folder not writable)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise PermissionError(f"cannot create the run folder's lock {self.path}: {err}") from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "a process that is still starting"
            os.close(fd)
            raise RunLocked(
                f"{self.path.parent} is in use by another run of the same name ({holder}); it would share its "
                "checkpoints and record. Wait for it to end, or change seed / record_tag for a separate run."
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
                 .encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
