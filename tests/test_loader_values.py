"""BlockShuffleLoader batches carry the stored values and obs rows; readers agree; bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pytest
import torch
from loader_support import stored_matrix

from ssl_census.core.errors import UserError
from ssl_census.data import BlockShuffleLoader
from ssl_census.data.readers import READERS

SMALL = dict(batch_size=700, block_size=100, buffer_cells=1_000, workers=2)


@pytest.fixture(scope="session")
def store(synth_loader_store: Path) -> Path:
    return synth_loader_store


@pytest.mark.parametrize("dense", [True, False])
def test_batches_equal_stored_values_both_layers(store: Path, dense: bool) -> None:
    loader = BlockShuffleLoader(store, "train", layers=("x", "counts"), dense=dense,
                                obs_columns=(), **SMALL)
    ref = {lay: stored_matrix(store, "train", lay) for lay in ("x", "counts")}
    n_batches = 0
    for batch in loader:
        rows = batch.index.numpy()
        for lay in ("x", "counts"):
            t = batch.layers[lay]
            assert t.dtype == torch.float32 and t.shape == (len(rows), loader.n_genes)
            if dense:
                assert t.layout == torch.strided
                got = t.numpy()
            else:
                assert t.layout == torch.sparse_csr
                got = t.to_dense().numpy()
            np.testing.assert_array_equal(got, ref[lay][rows].toarray())
        n_batches += 1
    assert n_batches == len(loader)
    # the counts layer really is the raw counts, not the log1p values
    assert float(ref["counts"].max()) > 50 and float(ref["x"].max()) < 15


def test_counts_only_layer(store: Path) -> None:
    loader = BlockShuffleLoader(store, "val", layers=("counts",), shuffle=False,
                                obs_columns=(), **SMALL)
    batch = next(iter(loader))
    ref = stored_matrix(store, "val", "counts")[:700].toarray()
    np.testing.assert_array_equal(batch.counts.numpy(), ref)
    assert "x" not in batch.layers


def test_obs_columns_align_with_rows(store: Path) -> None:
    cols = ("cell_type_code", "dataset_id", "donor_id", "library_size")
    loader = BlockShuffleLoader(store, "train", obs_columns=cols, dense=False, **SMALL)
    obs = pd.read_parquet(store / "train" / "obs.parquet")
    counts = stored_matrix(store, "train", "counts")
    assert loader.categories["dataset_id"] == sorted(obs["dataset_id"].astype(str).unique())
    for batch in loader:
        rows = batch.index.numpy()
        assert set(batch.obs) == set(cols)
        np.testing.assert_array_equal(batch.obs["cell_type_code"].numpy(),
                                      obs["cell_type_code"].to_numpy()[rows])
        names = np.array(loader.categories["dataset_id"])[batch.obs["dataset_id"].numpy()]
        np.testing.assert_array_equal(names, obs["dataset_id"].astype(str).to_numpy()[rows])
        assert batch.obs["dataset_id"].dtype == torch.int64
        # library_size was computed from the counts: it must match the row it came with
        np.testing.assert_array_equal(batch.obs["library_size"].numpy(),
                                      np.asarray(counts[rows].sum(axis=1)).ravel())


@pytest.mark.parametrize("reader", [r for r in READERS if r != "direct"])
def test_every_reader_gives_the_same_batches(store: Path, reader: str) -> None:
    kw = dict(SMALL, seed=5, dense=False, obs_columns=(), layers=("x", "counts"))
    direct = list(BlockShuffleLoader(store, "train", reader="direct", **kw))
    other = list(BlockShuffleLoader(store, "train", reader=reader, **kw))
    assert len(direct) == len(other)
    for a, b in zip(direct, other, strict=True):
        assert torch.equal(a.index, b.index)
        for lay in ("x", "counts"):
            assert torch.equal(a.layers[lay].col_indices(), b.layers[lay].col_indices())
            assert torch.equal(a.layers[lay].values(), b.layers[lay].values())


def test_store_behind_fsspec_reads_the_same(store: Path) -> None:
    fs = fsspec.filesystem("memory")
    fs.put(str(store), "/store", recursive=True)
    try:
        kw = dict(SMALL, seed=2, dense=False, obs_columns=("dataset_id",))
        remote = BlockShuffleLoader("memory://store", "val", **kw)
        local = BlockShuffleLoader(store, "val", **kw)
        assert remote.categories == local.categories
        for a, b in zip(remote, local, strict=True):
            assert torch.equal(a.index, b.index)
            assert torch.equal(a.x.values(), b.x.values())
            assert torch.equal(a.obs["dataset_id"], b.obs["dataset_id"])
    finally:
        fs.rm("/store", recursive=True)


def test_bad_input_is_a_user_error(store: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="split 'test'"):
        BlockShuffleLoader(store, "test")
    with pytest.raises(UserError, match="unknown obs column"):
        BlockShuffleLoader(store, "val", obs_columns=("cell_type_code", "no_such_column"))
    with pytest.raises(UserError, match="layers"):
        BlockShuffleLoader(store, "val", layers=("raw",))
    with pytest.raises(UserError, match="reader"):
        BlockShuffleLoader(store, "val", reader="hdf5")
    with pytest.raises(UserError, match="memory_budget_bytes"):
        BlockShuffleLoader(store, "val", memory_budget_bytes=1_000_000)
    with pytest.raises(UserError, match="not found"):
        BlockShuffleLoader(tmp_path / "nowhere", "train")
    incomplete = tmp_path / "incomplete"
    shutil.copytree(store, incomplete)
    manifest = json.loads((incomplete / "manifest.json").read_text())
    (incomplete / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    with pytest.raises(UserError, match="incomplete"):
        BlockShuffleLoader(incomplete, "train")
    (incomplete / "manifest.json").unlink()
    with pytest.raises(UserError, match="not an ssl-census shard store"):
        BlockShuffleLoader(incomplete, "train")


def test_kept_batches_are_never_overwritten(store: Path) -> None:
    """Batch arrays are reused only after the caller drops them; kept ones stay intact."""
    loader = BlockShuffleLoader(store, "train", dense=False, obs_columns=(), **SMALL)
    ref = stored_matrix(store, "train", "x")
    kept = list(loader)
    loader.set_epoch(1)
    for batch in loader:  # a second epoch, whose dropped batches recycle arrays
        del batch
    for batch in kept:
        rows = batch.index.numpy()
        np.testing.assert_array_equal(batch.x.to_dense().numpy(), ref[rows].toarray())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batches_are_dense_on_the_device_and_equal_the_stored_values(store: Path) -> None:
    loader = BlockShuffleLoader(store, "val", layers=("x", "counts"), device="cuda",
                                obs_columns=("cell_type_code",), **SMALL)
    ref = {lay: stored_matrix(store, "val", lay) for lay in ("x", "counts")}
    for batch in loader:
        rows = batch.index.cpu().numpy()
        assert batch.obs["cell_type_code"].is_cuda
        for lay in ("x", "counts"):
            t = batch.layers[lay]
            assert t.is_cuda and t.layout == torch.strided
            np.testing.assert_array_equal(t.cpu().numpy(), ref[lay][rows].toarray())
