"""One rebuild per root at a time: an exclusive, non-blocking ``flock`` on ``<root>/.lock``.

The kernel drops the lock when its holder exits, killed or not, so a crashed rebuild never
leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from ssl_census.core.errors import UserError

LOCK_FILE = ".lock"


@contextlib.contextmanager
def rebuild_lock(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise UserError(f"another rebuild is running on {root} (pid {holder})",
                            "wait for it to finish; the schedule's next run picks up the rest"
                            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)
