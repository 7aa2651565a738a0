"""Writes that are never seen half-done.

A file is written to a temporary sibling and renamed into place; a directory is built under a
``.partial`` name and renamed only when complete. ``os.replace`` is atomic on POSIX file
systems, so a reader sees the old content or the new one, never a mix.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


@contextlib.contextmanager
def staged_dir(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield ``<final>.partial`` to build in; rename it to ``final`` only on success.

    On failure the partial directory stays for a resumed run to continue from; it never has
    the final name, so nothing mistakes it for a finished product.
    """
    final = Path(final)
    partial = final.with_name(final.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    yield partial
    if final.exists():
        shutil.rmtree(final)
    os.replace(partial, final)
