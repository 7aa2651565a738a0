"""Users' own h5ad files, embedded and annotated by a trained run: the Python API
(ssl_census.load_model) and ``ssl-census embed``, on synthetic census cells stored the ways
published files store them."""

from __future__ import annotations

import re
import warnings

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from click.testing import CliRunner

import ssl_census
from ssl_census.cli import main
from ssl_census.core.errors import UserError
from ssl_census.data import h5ad_inputs as inputs
from ssl_census.evaluation.model import OBSM_KEY, PROBABILITY_COLUMN, Model
from ssl_census.models.mlp import mlp_head

TYPE = "ssl_census_cell_type"


@pytest.fixture(scope="module")
def run_dir(synth_loader_store, tmp_path_factory):
    """A cell-type run (classifier head) on the loader tests' synthetic store, trained for a
    few steps."""
    store = synth_loader_store
    out = tmp_path_factory.mktemp("model") / "celltype"
    r = CliRunner().invoke(main, [
        "finetune", "--task", "celltype", "--shards", str(store), "--init", "random",
        "--out", str(out), "--max-steps", "30", "--hidden", "64,16", "--batch-size", "512",
        "--val-every", "15", "--log-every", "10", "--device", "cpu", "--workers", "1"])
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def model(run_dir):
    return ssl_census.load_model(run_dir)


@pytest.fixture(scope="module")
def cells(synth_cells):
    """4,000 of the cells the run's store was written from, as raw counts with their cell
    types (the files written from them stay small)."""
    return synth_cells[:4000].copy()


def _log_normalised(counts: sp.csr_matrix, target_sum: float) -> sp.csr_matrix:
    """What scanpy's normalize_total(target_sum) + log1p store (float32)."""
    x = sp.csr_matrix(counts, dtype=np.float64)
    x = sp.csr_matrix(sp.diags(target_sum / np.asarray(x.sum(1)).ravel()) @ x)
    x.data = np.log1p(x.data)
    return x.astype(np.float32)


def _scaled(x: sp.csr_matrix) -> np.ndarray:
    """What scanpy's scale stores: every gene centred and scaled to unit variance."""
    d = x.toarray()
    return ((d - d.mean(0)) / np.maximum(d.std(0), 1e-12)).astype(np.float32)


def _copies(cells: ad.AnnData) -> dict[str, ad.AnnData]:
    counts = cells.copy()
    cellxgene = cells.copy()
    cellxgene.raw = cells.copy()
    cellxgene.X = _log_normalised(cells.X, 1e4)
    scanpy = cells.copy()
    scanpy.X = _log_normalised(cells.X, 1e4)
    scanpy.raw = scanpy.copy()
    scanpy.X = _scaled(scanpy.X)
    log_only = cells.copy()
    log_only.X = _log_normalised(cells.X, 1e6)  # any target sum: CPM here
    return {"counts": counts, "cellxgene": cellxgene, "scanpy": scanpy, "log_only": log_only}


def _write(tmp_path, adata, name):
    path = tmp_path / f"{name}.h5ad"
    adata.write_h5ad(path)
    return path


def test_four_ways_of_storing_the_cells_give_one_embedding_and_prediction(model, cells,
                                                                         tmp_path):
    read_as = {"counts": ("X", inputs.COUNTS), "cellxgene": ("X", inputs.LOG1P),
               "scanpy": (".raw", inputs.LOG1P), "log_only": ("X", inputs.LOG1P)}
    results, notes = {}, []
    for name, adata in _copies(cells).items():
        model.embed_h5ad(_write(tmp_path, adata, name), tmp_path / f"{name}.out.h5ad",
                         on_note=notes.append)
        results[name] = ad.read_h5ad(tmp_path / f"{name}.out.h5ad")
        card = results[name].uns["ssl_census"]
        assert (card["values_from"], card["values_found"]) == read_as[name]
        assert card["genes_matched"] == card["n_model_genes"] == cells.n_vars
    assert len(notes) == 1 and re.fullmatch(
        r"X holds scaled or centred values \(negative entries, min -[0-9.]+\); reading .raw "
        rf"\(log1p-normalised values, {cells.n_vars} of the model's genes\) instead", notes[0])
    ref = results["counts"]
    for name, out in results.items():
        np.testing.assert_allclose(out.obsm[OBSM_KEY], ref.obsm[OBSM_KEY], rtol=0, atol=1e-5,
                                   err_msg=name)
        np.testing.assert_allclose(out.obs[PROBABILITY_COLUMN], ref.obs[PROBABILITY_COLUMN],
                                   rtol=0, atol=1e-5, err_msg=name)
        differ = (out.obs[TYPE] != ref.obs[TYPE]).to_numpy()
        # a float-rounding difference can only flip a near tie between two types
        assert differ.sum() <= 2 and np.all(ref.obs[PROBABILITY_COLUMN][differ] < 0.5 + 1e-5)
    # the model learnt something: far more cells get the type they are annotated with than
    # naming every cell the most common type would give (the store the run was trained on
    # names types as the file does)
    truth = ref.obs["cell_type"].astype(str)
    majority = truth.value_counts(normalize=True).iloc[0]
    assert (truth == ref.obs[TYPE].astype(str)).mean() > max(0.3, 2 * majority)


def test_api_and_cli_give_identical_outputs_and_leave_the_input_alone(model, run_dir, cells,
                                                                    tmp_path):
    copy = _copies(cells)["cellxgene"]
    copy.layers["counts"] = cells.X.copy()
    copy.obsm["X_pca"] = np.arange(copy.n_obs * 2, dtype=np.float32).reshape(-1, 2)
    copy.uns["provenance"] = {"source": "synthetic census", "seed": 1}
    path = _write(tmp_path, copy, "in")
    out = tmp_path / "cli.h5ad"
    r = CliRunner().invoke(main, ["embed", "--run", str(run_dir), "--h5ad", str(path),
                                  "--out", str(out), "--batch-size", "1000"])
    assert r.exit_code == 0, r.output
    assert f"{cells.n_vars} of {cells.n_vars} model genes matched" in r.output
    cli = ad.read_h5ad(out)

    api = ad.read_h5ad(path)
    model.annotate(model.embed(api))
    assert np.array_equal(cli.obsm[OBSM_KEY], api.obsm[OBSM_KEY])
    backed = model.embed(ad.read_h5ad(path, backed="r"))
    assert np.array_equal(backed.obsm[OBSM_KEY], api.obsm[OBSM_KEY])
    new = [TYPE, TYPE + "_ontology_term_id", PROBABILITY_COLUMN]
    pd.testing.assert_frame_equal(cli.obs[new], api.obs[new])
    assert list(cli.obs[TYPE].cat.categories) == list(model.cell_types["cell_type"])
    for key, value in api.uns["ssl_census"].items():
        np.testing.assert_equal(cli.uns["ssl_census"][key], value)
    assert cli.uns["ssl_census"]["run"] == str(run_dir.resolve())

    # everything the input had is there unchanged, in the output file and in the AnnData
    before = ad.read_h5ad(path)
    for after in (cli, api):
        pd.testing.assert_frame_equal(after.obs.drop(columns=new), before.obs)
        pd.testing.assert_frame_equal(after.var, before.var)
        assert (after.X != before.X).nnz == 0 and (after.raw.X != before.raw.X).nnz == 0
        pd.testing.assert_frame_equal(after.raw.var, before.raw.var)
        assert (after.layers["counts"] != before.layers["counts"]).nnz == 0
        assert np.array_equal(after.obsm["X_pca"], before.obsm["X_pca"])
        assert after.uns["provenance"] == before.uns["provenance"]


def test_a_cells_result_does_not_depend_on_its_batch(model, cells):
    whole = model.annotate(model.embed(cells.copy()))
    probability = whole.obs[PROBABILITY_COLUMN].to_numpy()
    rows = np.random.default_rng(0).permutation(cells.n_obs)[:37]
    for batch_size in (1, 5, 4096):
        part = model.annotate(model.embed(cells[rows].copy(), batch_size=batch_size),
                              batch_size=batch_size)
        assert np.array_equal(part.obsm[OBSM_KEY], whole.obsm[OBSM_KEY][rows])
        assert np.array_equal(part.obs[PROBABILITY_COLUMN], probability[rows])
        assert (part.obs[TYPE].to_numpy() == whole.obs[TYPE].to_numpy()[rows]).all()


def test_networks_with_batch_statistics_are_refused(model):
    head = mlp_head(model.latent_dim, 8, 3)  # the pre-training heads' BatchNorm: batch stats
    with pytest.raises(RuntimeError, match="batch statistics"):
        Model(model.run_dir, model.card, model.var, model.encoder, head)
    plain = Model(model.run_dir, model.card, model.var, model.encoder)  # an embedding run
    with pytest.raises(UserError, match="has no cell-type head"):
        plain.annotate(ad.AnnData(sp.csr_matrix((2, len(model.var)), dtype=np.float32)))


def test_files_are_streamed_a_chunk_at_a_time(model, cells, tmp_path, monkeypatch):
    path = _write(tmp_path, cells, "counts")
    asked: list[int] = []
    reader = inputs._csr_rows

    def spy(group, n_cols):
        read = reader(group, n_cols)

        def counted(start, stop):
            asked.append(stop - start)
            return read(start, stop)
        return counted

    monkeypatch.setattr(inputs, "_csr_rows", spy)
    card = model.embed_h5ad(path, tmp_path / "out.h5ad", batch_size=1000)
    assert card["n_cells"] == cells.n_obs and max(asked) <= 1000  # sampled 256 cells at a time
    assert asked[-4:] == [1000] * 4  # then 4 chunks of 1,000 cells


def test_gene_coverage_is_reported_and_low_coverage_warned(model, cells, tmp_path):
    notes: list[str] = []
    model.embed_h5ad(_write(tmp_path, cells[:, :500].copy(), "few"), tmp_path / "few.out.h5ad",
                     on_note=notes.append)
    assert len(notes) == 1 and notes[0].startswith(
        f"only 500 of the model's {cells.n_vars} genes ({500 / cells.n_vars:.1%}) are in the "
        "file, under the 50%")
    assert ad.read_h5ad(tmp_path / "few.out.h5ad").uns["ssl_census"]["genes_matched"] == 500


def test_bad_input_is_one_line(run_dir, cells, tmp_path):
    scaled = cells.copy()
    scaled.X = _scaled(_log_normalised(cells.X, 1e4))
    scaled.layers["spliced"] = scaled.X.copy()
    text = tmp_path / "README.md"
    text.write_text("# cells\n")
    not_h5ad = tmp_path / "cells.h5"
    with h5py.File(not_h5ad, "w") as f:
        f["matrix/data"] = np.ones(3)
    sqrt = cells.copy()
    sqrt.X = np.sqrt(cells.X)
    cases = [
        (_write(tmp_path, scaled, "scaled"), [],
         "no values the model can read in {p}: X holds scaled or centred values (negative "
         "entries, min -"),
        (_write(tmp_path, scaled, "scaled"), [], "; no .raw; no layers['counts']; not checked: "
         "layers['spliced']. give raw counts or log1p-normalised values"),
        (_write(tmp_path, scaled, "scaled"), ["--layer", "raw"],
         "{p} has no .raw and no layer 'raw'. use one of: spliced"),
        (_write(tmp_path, sqrt, "sqrt"), [], "X holds non-integer values that are neither"),
        (text, [], "{p} is not an h5ad file (not HDF5)"),
        (not_h5ad, [], "{p} is an HDF5 file but not an h5ad (no obs/var)"),
        (tmp_path / "missing.h5ad", [], "h5ad file not found"),
    ]
    for path, extra, message in cases:
        r = CliRunner().invoke(main, ["embed", "--run", str(run_dir), "--h5ad", str(path),
                                      "--out", str(tmp_path / "o.h5ad"), *extra])
        assert r.exit_code == 2, (path, r.output)
        assert message.format(p=path) in r.output and "Traceback" not in r.output
        assert r.output.count("\n") == 1
    assert not (tmp_path / "o.h5ad").exists()
    assert not list(tmp_path.glob(".o.h5ad.tmp-*"))


def test_anndata_deprecation_chatter_is_silenced_locally(model, cells, tmp_path, monkeypatch):
    import anndata.io

    original = anndata.io.read_elem

    def chatty(elem):
        warnings.warn("an old format", FutureWarning, stacklevel=2)
        return original(elem)

    monkeypatch.setattr(anndata.io, "read_elem", chatty)
    path = _write(tmp_path, cells[:300].copy(), "small")
    filters = list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.embed_h5ad(path, tmp_path / "out.h5ad")
        assert not [w for w in caught if issubclass(w.category, FutureWarning)]
        with h5py.File(path) as f:  # outside our calls the chatter is still there
            chatty(f["var"])
        assert [w for w in caught if issubclass(w.category, FutureWarning)]
    assert warnings.filters == filters


def test_values_are_recognised_by_what_they_hold():
    rng = np.random.default_rng(0)
    counts = sp.random(300, 500, density=0.1, format="csr", random_state=1,
                       data_rvs=lambda n: rng.negative_binomial(2, 0.3, n) + 1.0)
    scale = rng.uniform(0.5, 50.0, counts.shape[0])[:, None]
    as_found = {
        inputs.COUNTS: counts,
        inputs.LOG1P: sp.csr_matrix(np.log1p(counts.multiply(scale))),
        inputs.SCALED_COUNTS: sp.csr_matrix(counts.multiply(scale)),
        None: sp.csr_matrix(np.log2(1 + counts.multiply(scale).toarray())),  # another base
    }
    for kind, x in as_found.items():
        x = sp.csr_matrix(x, dtype=np.float32)
        assert inputs.recognise(x).kind == kind
        assert kind is None or inputs.holds(x, kind)
    doubled = sp.csr_matrix(np.log1p((2 * counts).multiply(scale)), dtype=np.float32)
    assert inputs.recognise(doubled).kind == inputs.LOG1P  # a cell's smallest count is 2
    assert not inputs.holds(as_found[inputs.LOG1P].astype(np.float32), inputs.COUNTS)

