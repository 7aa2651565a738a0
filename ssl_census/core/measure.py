"""Measuring a piece of work the way the benchmarks report it: in a fresh process, with the
peak resident memory of its whole process tree (its worker processes included)."""

from __future__ import annotations

import ctypes
import gc
import os
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import pyarrow as pa

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def current_rss() -> int:
    """This process's resident memory now (Linux /proc; not the peak)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE_SIZE


def released_rss() -> int:
    """This process's resident memory after it hands freed memory back to the system (the
    cycle collector, Arrow's memory pool, glibc's heap): what it goes on holding, where
    :func:`current_rss` also counts freed memory the allocators kept."""
    gc.collect()
    pa.default_memory_pool().release_unused()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: its heap keeps what it keeps
        pass
    return current_rss()


def tree_rss(root: int) -> int:
    """Summed resident memory of ``root`` and all its descendants (Linux /proc)."""
    parent: dict[int, int] = {}
    rss: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            parent[int(d.name)] = int(fields[1])
            rss[int(d.name)] = int(fields[21]) * PAGE_SIZE
        except (OSError, ValueError, IndexError):
            continue
    tree, frontier = {root}, [root]
    while frontier:
        frontier = [p for p, pp in parent.items() if pp in frontier and p not in tree]
        tree.update(frontier)
    return sum(rss.get(p, 0) for p in tree)


class TreeRssSampler:
    """Peak of the summed RSS of a process tree, sampled every ``interval`` seconds."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval, self.peak, self.root = interval, 0, None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self, root: int) -> None:
        self.root = root
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, tree_rss(self.root))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def in_fresh_process(fn: Callable[..., Any], *args: Any) -> tuple[Any, int]:
    """``fn(*args)`` in a new process; returns its result and the peak RSS of its tree."""
    sampler = TreeRssSampler()
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        sampler.start(pool.submit(os.getpid).result())
        try:
            result = pool.submit(fn, *args).result()
        finally:
            peak = sampler.stop()
    return result, peak


def directory_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes of the files under ``path`` (0 when it does not exist)."""
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.stat(os.path.join(root, f)).st_size
            except FileNotFoundError:  # removed while walking
                continue
    return total
