"""Page-cache control for cold-read benchmarks: eviction and residency of a store's files."""

from __future__ import annotations

import os
import subprocess

import pytest

from ssl_census.core.measure import evict_from_page_cache, page_cache_bytes


def _filesystem(path: os.PathLike[str]) -> str:
    return subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True,
                          text=True, check=True).stdout.strip()


def test_evicted_files_leave_the_page_cache_and_come_back_when_read(tmp_path):
    if _filesystem(tmp_path) in ("tmpfs", "ramfs"):
        pytest.skip("the test folder is in memory (tmpfs): its pages cannot leave the cache")
    (tmp_path / "shard").mkdir()
    data = os.urandom(3 << 20)
    (tmp_path / "shard" / "c0").write_bytes(data)
    (tmp_path / "empty").write_bytes(b"")
    assert (tmp_path / "shard" / "c0").read_bytes() == data
    assert page_cache_bytes(tmp_path) == len(data)  # just written and read: all of it cached

    assert evict_from_page_cache(tmp_path) == len(data)
    assert page_cache_bytes(tmp_path) < len(data) // 4  # read-ahead of others may keep a few

    with open(tmp_path / "shard" / "c0", "rb") as f:
        f.seek(1 << 20)
        f.read(1 << 20)
    assert page_cache_bytes(tmp_path) >= 1 << 20  # what was read (and the kernel read ahead)
