import numpy as np
import pytest
import scipy.sparse as sp

from ssl_census.core import store


def _random_csr(n, g, density, seed):
    m = sp.random(n, g, density=density, format="csr", random_state=seed, dtype=np.float32)
    m.data = np.ceil(m.data * 50).astype(np.float32)
    return m


def test_writer_roundtrip_in_blocks(tmp_path, monkeypatch):
    # small chunks and shards so several shards are written and the last one is partial
    monkeypatch.setattr(store, "CHUNK", 64)
    monkeypatch.setattr(store, "SHARD", 256)
    m = _random_csr(300, 1000, 0.01, 0)
    w = store.CsrWriter(tmp_path / "X.zarr", m.shape[0], m.nnz, m.shape[1], np.uint16)
    for lo in range(0, 300, 37):
        b = m[lo : lo + 37]
        w.append(b.indptr, b.indices, np.log1p(b.data), b.data)
    w.close()
    arr = store.open_csr(tmp_path / "X.zarr")
    assert (arr.n_cells, arr.n_genes, arr.nnz) == (300, 1000, m.nnz)
    assert arr.indices.dtype == np.uint16
    np.testing.assert_array_equal(arr.indptr[:], m.indptr)
    ptr, idx, cnt = arr.rows(10, 50, values="counts")
    ref = m[10:50]
    np.testing.assert_array_equal(ptr, ref.indptr)
    np.testing.assert_array_equal(idx, ref.indices)
    np.testing.assert_array_equal(cnt, ref.data)


def test_writer_refuses_wrong_totals(tmp_path):
    m = _random_csr(10, 50, 0.2, 1)
    w = store.CsrWriter(tmp_path / "X.zarr", 11, m.nnz, 50)
    w.append(m.indptr, m.indices, m.data, m.data)
    with pytest.raises(ValueError, match="declared"):
        w.close()


def test_checksum_sees_a_flipped_byte(tmp_path):
    m = _random_csr(50, 100, 0.1, 2)
    w = store.CsrWriter(tmp_path / "X.zarr", 50, m.nnz, 100)
    w.append(m.indptr, m.indices, m.data, m.data)
    w.close()
    before = store.tree_checksum(tmp_path / "X.zarr")
    shard_files = (tmp_path / "X.zarr" / "data").rglob("*")
    f = next(p for p in shard_files if p.is_file() and p.name != "zarr.json")
    raw = bytearray(f.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    f.write_bytes(bytes(raw))
    assert store.tree_checksum(tmp_path / "X.zarr") != before


def test_index_dtype_is_smallest_that_fits():
    assert store.index_dtype(256) == np.uint8
    assert store.index_dtype(19331) == np.uint16
    assert store.index_dtype(60664) == np.uint16
    assert store.index_dtype(70000) == np.uint32
