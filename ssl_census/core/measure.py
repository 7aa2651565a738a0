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

import numpy as np
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


def _files(path: str | os.PathLike[str]) -> list[str]:
    return [os.path.join(root, f) for root, _, files in os.walk(path) for f in files]


def evict_from_page_cache(path: str | os.PathLike[str]) -> int:
    """Drop the files under ``path`` from the OS page cache, as if never read since boot, so a
    benchmark can time a cold read without root or a reboot (a sync first: only clean pages
    can go). ``posix_fadvise`` DONTNEED; returns the bytes of the files advised, 0 where the
    call does not exist (macOS), and then reads stay as warm as they were."""
    advice = getattr(os, "POSIX_FADV_DONTNEED", None)
    if advice is None:
        return 0
    os.sync()
    total = 0
    for name in _files(path):
        fd = os.open(name, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, advice)
            total += os.fstat(fd).st_size
        finally:
            os.close(fd)
    return total


def page_cache_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes of the files under ``path`` that sit in the OS page cache now (``mincore`` over a
    read-only map of each file; Linux and the BSDs). What a benchmark reports beside a read
    rate: a store read from memory and one read from disk differ by an order of magnitude."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    prot_read, map_shared = 1, 1
    resident = 0
    for name in _files(path):
        size = os.path.getsize(name)
        if size == 0:
            continue
        fd = os.open(name, os.O_RDONLY)
        try:
            addr = libc.mmap(None, size, prot_read, map_shared, fd, 0)
            if addr in (None, ctypes.c_void_p(-1).value):
                raise OSError(ctypes.get_errno(), f"mmap of {name} failed")
            pages = (size + PAGE_SIZE - 1) // PAGE_SIZE
            vec = ctypes.create_string_buffer(pages)
            try:
                if libc.mincore(ctypes.c_void_p(addr), size, vec) != 0:
                    raise OSError(ctypes.get_errno(), f"mincore of {name} failed")
            finally:
                libc.munmap(ctypes.c_void_p(addr), size)
            in_cache = np.frombuffer(vec.raw, dtype=np.uint8) & 1
            resident += min(int(in_cache.sum()) * PAGE_SIZE, size)
        finally:
            os.close(fd)
    return resident
