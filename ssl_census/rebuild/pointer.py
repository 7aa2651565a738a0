"""``<root>/current``: a relative symlink to the published build's directory.

It is switched by creating a temporary symlink beside it and ``os.replace``-ing it over the
old one: rename(2) is atomic, so a reader resolving ``<root>/current`` gets the old build or
the new one, never nothing. A symlink (rather than a file holding the name) lets every reader
open ``<root>/current`` as an ordinary store path, and a reader that resolved the old target
keeps reading it, because the previous build is kept. Relative, so the root can be moved or
mounted elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

from ssl_census.census.releases import current_build
from ssl_census.core.errors import UserError

CURRENT = "current"

__all__ = ["CURRENT", "current_build", "switch_current"]


def switch_current(root: Path, build: str) -> None:
    pointer = root / CURRENT
    if pointer.exists() and not pointer.is_symlink() and pointer.is_dir():
        raise UserError(f"{pointer} is a directory, not the rebuild's pointer",
                        "move it away; rebuild publishes by pointing a symlink at a build")
    tmp = root / f".{CURRENT}.tmp-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    os.symlink(build, tmp)
    os.replace(tmp, pointer)
    fd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself reaches the disk before we report it published
    finally:
        os.close(fd)
