"""Shard-build pieces that need no census build: split rule, shuffle, values, store I/O, verify."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from synth_support import store_var

from ssl_census.core.errors import UserError
from ssl_census.core.ontology import NATIVE_CELL, PINNED_CL_RELEASE, load_cell_ontology
from ssl_census.shards import build, merge
from ssl_census.shards import split as split_module
from ssl_census.shards.commands import parse_bytes
from ssl_census.shards.config import SplitConfig, load_shards_config
from ssl_census.shards.csr import concat_rows, take_rows
from ssl_census.shards.genes import match_genes
from ssl_census.shards.parts import PartIds
from ssl_census.shards.split import assign_splits, shuffle_order, tech_sample
from ssl_census.shards.store import open_shards, write_store_from_arrays
from ssl_census.shards.values import normalise
from ssl_census.shards.verify import verify_shards


def _counts(cells, n_cells=400):
    """Raw counts of the first ``n_cells`` synthetic census cells and their cell types."""
    a = cells[:n_cells]
    return sp.csr_matrix(a.X), a.obs["cell_type"].astype(str).to_numpy()


def test_split_of_a_tech_sample_ignores_the_others():
    names = pd.Series([f"ds{i % 7}/donor{i}" for i in range(3000)])
    cfg = SplitConfig()
    full = assign_splits(names, cfg)
    sub = assign_splits(names.iloc[::3].reset_index(drop=True), cfg)
    np.testing.assert_array_equal(full[::3], sub)
    frac = np.bincount(full, minlength=3) / len(full)
    np.testing.assert_allclose(frac, [0.70, 0.15, 0.15], atol=0.03)
    other = assign_splits(names, SplitConfig(salt="another"))
    assert (other != full).mean() > 0.2  # the salt matters


def test_shuffle_order_is_a_seeded_permutation_independent_of_subsets():
    # two datasets of 5,000 cells each, identified by (dataset_id, position)
    datasets = pd.Series(np.repeat(["ds-a", "ds-b"], 5_000))
    positions = np.tile(np.arange(5_000, dtype=np.int64), 2)
    order = shuffle_order(datasets, positions, seed=0)
    assert sorted(order.tolist()) == list(range(len(positions)))
    assert not np.array_equal(order, np.arange(len(positions)))
    assert not np.array_equal(order, shuffle_order(datasets, positions, seed=1))
    # the datasets interleave: neither is a block of the order
    assert 0.3 < (datasets.to_numpy()[order][:5_000] == "ds-a").mean() < 0.7
    # any subset keeps the relative order it has in the whole
    ranked = np.empty(len(order), dtype=np.int64)
    ranked[order] = np.arange(len(order))
    subset = np.sort(np.random.default_rng(0).choice(len(positions), 500, replace=False))
    sub_sorted = subset[shuffle_order(datasets.iloc[subset], positions[subset], seed=0)]
    assert ranked[sub_sorted].tolist() == sorted(ranked[subset].tolist())
    # a dataset's own order does not depend on what other datasets (or ids) exist
    only_b = np.flatnonzero(datasets == "ds-b")
    alone = shuffle_order(pd.Series(["ds-b"] * 5_000), positions[only_b], seed=0)
    in_whole = order[np.isin(order, only_b)] - 5_000
    np.testing.assert_array_equal(alone, in_whole)


def test_normalise_matches_reference_on_census_counts(synth_cells):
    m, _ = _counts(synth_cells)
    m = m[np.diff(m.indptr) > 0]
    data, lib = normalise(m.indptr, m.data)
    np.testing.assert_array_equal(lib, np.asarray(m.sum(axis=1)).ravel().astype(np.int64))
    ref = np.log1p(m.multiply(1e4 / lib[:, None]).tocsr().data).astype(np.float32)
    np.testing.assert_allclose(data, ref, rtol=1e-6)
    sums = np.add.reduceat(np.expm1(data.astype(np.float64)), m.indptr[:-1])
    np.testing.assert_allclose(sums, 1e4, rtol=1e-4)


def test_take_and_concat_rows_match_scipy():
    m = sp.random(50, 30, density=0.2, format="csr", random_state=1)
    rows = np.array([7, 3, 3, 49, 0])
    ptr, (idx, val) = take_rows(m.indptr, rows, m.indices, m.data)
    ref = m[rows]
    np.testing.assert_array_equal(ptr, ref.indptr)
    np.testing.assert_array_equal(idx, ref.indices)
    ptr2, (idx2, _) = concat_rows([(ptr, [idx, val]), (m.indptr, [m.indices, m.data])])
    np.testing.assert_array_equal(ptr2, sp.vstack([ref, m]).tocsr().indptr)
    assert len(idx2) == ref.nnz + m.nnz


def test_shard_tasks_cover_every_element_once_with_the_cells_that_hold_them():
    nnz = np.random.default_rng(0).integers(1, 100, 1000)
    order = np.random.default_rng(1).permutation(1000)
    plan = merge.SplitPlan(pd.DataFrame(), order.astype(np.int32) % 7, order, nnz, 0)
    tasks = merge.shard_tasks(plan, 512)
    cum = np.concatenate([[0], np.cumsum(nnz)])
    assert tasks[0].start == 0 and tasks[-1].stop == cum[-1]
    pairs = zip(tasks[:-1], tasks[1:], strict=True)
    assert all(a.stop == b.start and a.stop - a.start == 512 for a, b in pairs)
    for t in tasks:
        first = np.flatnonzero(order == t.row[0])[0]
        cells = nnz[first : first + len(t.row)]
        np.testing.assert_array_equal(t.row, order[first : first + len(t.row)])
        assert cum[first] + t.skip == t.start  # the window starts inside the first cell
        assert t.skip + (t.stop - t.start) <= cells.sum()  # the cells hold the whole window
        assert t.skip + (t.stop - t.start) > cells[:-1].sum()  # and no cell too many


def test_merge_bytes_do_not_depend_on_workers_or_task_order(synth_census_uri, tmp_path,
                                                            monkeypatch):
    """Many shards per array (a tiny shard size), merged by 1 and by 2 processes: same store."""
    from ssl_census.core import store as core_store
    from ssl_census.shards.build import build_shards
    from ssl_census.shards.source import CensusSpec, read_var

    with CensusSpec(uri=synth_census_uri).open() as census:
        names = read_var(census)["feature_name"].astype(str).to_numpy()[:3000]
    genes = tmp_path / "genes.txt"
    genes.write_text("\n".join(names) + "\n")
    monkeypatch.setattr(core_store, "CHUNK", 2**12)
    monkeypatch.setattr(core_store, "SHARD", 2**14)
    config = load_shards_config("synthetic")
    a = build_shards(tmp_path / "a", config, census_uri=synth_census_uri, gene_list=str(genes),
                     workers=1)
    b = build_shards(tmp_path / "b", config, census_uri=synth_census_uri, gene_list=str(genes),
                     workers=2)
    assert a.manifest["splits"]["train"]["nnz"] > 10 * 2**14  # several shards per array
    assert a.manifest["splits"] == b.manifest["splits"]
    assert verify_shards(tmp_path / "b").ok


def test_cell_ontology_offline():
    cl = load_cell_ontology()
    pinned = load_shards_config("sctab-2023-05-15").curation.cl_release
    assert cl.release == PINNED_CL_RELEASE == pinned
    assert cl.is_descendant("CL:0000624", NATIVE_CELL)  # via native cell's replacement
    assert cl.is_descendant("CL:0000624", "CL:0000084")  # CD4 ab T cell is a T cell
    assert not cl.is_descendant("CL:0000236", "CL:0000084")  # B cell is not
    assert cl.n_ancestors("CL:0000624") > 7
    assert cl.depth("CL:0000624") > cl.depth("CL:0000084") > 0
    assert "unknown" not in cl and cl.n_ancestors("unknown") == 0


def test_presets_load_and_bad_config_is_a_user_error(tmp_path):
    assert load_shards_config("sctab-2023-05-15").curation.min_cells == 5000
    assert load_shards_config("local-pbmc").curation.keep_unlabelled
    bad = tmp_path / "bad.toml"
    bad.write_text("[curation]\nmin_cels = 3\n")
    with pytest.raises(UserError, match="min_cels"):
        load_shards_config(bad)
    bad.write_text("[split]\nfractions = [0.5, 0.6, 0.1]\n")
    with pytest.raises(UserError, match="fractions"):
        load_shards_config(bad)


def test_gene_list_matching_too_few_is_a_user_error(shared_data, tmp_path):
    var = pd.DataFrame({"soma_joinid": np.arange(3), "feature_id": ["E1", "E2", "E3"],
                        "feature_name": ["TSPAN6", "TNMD", "NOTAGENE"]})
    with pytest.raises(UserError, match="matches only 2"):
        match_genes(var, shared_data / "genes" / "scTab_features.parquet", 1000)
    space = match_genes(var, shared_data / "genes" / "scTab_features.parquet", 2)
    assert space.var["feature_name"].tolist() == ["TSPAN6", "TNMD"]


def test_parse_bytes():
    assert parse_bytes("4GiB") == 4 << 30
    assert parse_bytes("512M") == 512 << 20
    with pytest.raises(UserError):
        parse_bytes("lots")


@pytest.fixture(scope="module")
def small_store(synth_cells, tmp_path_factory):
    m, labels = _counts(synth_cells)
    keep = np.diff(m.indptr) > 0
    m, labels = m[keep], labels[keep]
    var = store_var(synth_cells)
    terms = dict(zip(synth_cells.obs["cell_type"], synth_cells.obs["cell_type_ontology_term_id"],
                     strict=True))
    unlabelled = pd.Series(labels).value_counts().index[-3:]  # the rarest types lose labels
    obs = pd.DataFrame({"cell_type": labels,
                        "cell_type_ontology_term_id": [terms[x] for x in labels]})
    obs.loc[obs["cell_type"].isin(unlabelled), ["cell_type", "cell_type_ontology_term_id"]] = \
        "unknown"
    obs["donor_id"] = np.where(np.arange(len(obs)) < 300, "d1", "d2")
    obs["dataset_id"] = "synth"
    obs["tech_sample"] = "synth/" + obs["donor_id"]
    out = tmp_path_factory.mktemp("small") / "store"
    write_store_from_arrays(out, var, {"train": (m[:300], obs[:300]), "test": (m[300:], obs[300:])})
    return out, m


def test_write_store_from_arrays_roundtrip(small_store):
    out, m = small_store
    store = open_shards(out)
    x, obs = store.split("train")
    assert (x.n_cells, x.n_genes) == (300, m.shape[1])
    ptr, idx, counts = x.rows(0, 300, values="counts")
    np.testing.assert_array_equal(counts, m[:300].data)
    np.testing.assert_array_equal(idx, m[:300].indices)
    assert set(obs["cell_type_code"]) <= set(range(-1, len(store.labels)))
    assert (obs["cell_type_code"] == -1).sum() == (obs["cell_type"] == "unknown").sum()
    assert verify_shards(out).ok, verify_shards(out).problems
    with pytest.raises(UserError, match="not in shard store"):
        store.split("val")


def test_verify_catches_a_flipped_byte(small_store, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(small_store[0], out)
    f = next(p for p in (out / "train" / "X.zarr" / "counts").rglob("*")
             if p.is_file() and p.name != "zarr.json")
    raw = bytearray(f.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    f.write_bytes(bytes(raw))
    report = verify_shards(out)
    assert not report.ok
    assert any("checksum of counts" in p for p in report.problems)


def test_verify_catches_mislabelled_and_leaking_donors(small_store, tmp_path):
    import shutil

    from ssl_census.shards.store import read_parquet, tidy_obs, write_parquet

    out = tmp_path / "copy"
    shutil.copytree(small_store[0], out)
    obs = read_parquet(out / "test" / "obs.parquet")
    obs["tech_sample"] = "synth/d1"  # now also in train
    write_parquet(out / "test" / "obs.parquet", tidy_obs(obs))
    manifest = json.loads((out / "manifest.json").read_text())
    from ssl_census.core.store import tree_checksum

    manifest["splits"]["test"]["checksums"]["obs.parquet"] = tree_checksum(
        out / "test" / "obs.parquet")
    (out / "manifest.json").write_text(json.dumps(manifest))
    report = verify_shards(out)
    assert any("synth/d1" in p and "both" in p for p in report.problems), report.problems


def test_open_refuses_incomplete_and_foreign_dirs(small_store, tmp_path):
    import shutil

    with pytest.raises(UserError, match="not an ssl-census shard store"):
        open_shards(tmp_path)
    out = tmp_path / "copy"
    shutil.copytree(small_store[0], out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["complete"] = False
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="incomplete"):
        open_shards(out)
    assert not verify_shards(out).ok


def test_obs_read_batch_by_batch_equals_the_whole_read(synth_census_uri):
    import cellxgene_census

    from ssl_census.shards import source

    flt = "is_primary_data == True"
    with cellxgene_census.open_soma(uri=synth_census_uri) as census:
        streamed = source.read_eligible_obs(census, flt)
        whole = (source.experiment(census).obs.read(value_filter=flt,
                                                     column_names=list(source.OBS_COLUMNS))
                 .concat().to_pandas().sort_values("soma_joinid").reset_index(drop=True))
    assert len(streamed) == len(whole) > 0
    assert np.all(np.diff(streamed["soma_joinid"].to_numpy()) > 0)
    for col in source.OBS_COLUMNS[1:]:
        assert isinstance(streamed[col].dtype, pd.CategoricalDtype)
        assert list(streamed[col].cat.categories) == sorted(streamed[col].cat.categories)
        assert streamed[col].astype(str).tolist() == whole[col].astype(str).tolist()


def test_parts_are_sized_for_the_densest_sampled_dataset():
    from ssl_census.shards import parts

    budget, main = 4 * 2**30, 1 * 2**30
    sparse = parts.cells_per_part(budget, 2, main, densest_nnz_per_cell=200)
    dense = parts.cells_per_part(budget, 2, main, densest_nnz_per_cell=3000)
    assert sparse > 10 * dense  # a sparse census is not cut into needlessly many parts
    # every part of a worker fits its share of the budget at the densest density (+ margin)
    share = (budget - main) // 2 - parts.PROCESS_BASELINE
    assert dense * 3000 * parts.BYTES_PER_NNZ <= share
    assert parts.cells_per_part(budget, 2, budget, 3000) == parts.READ_BLOCK_CELLS


def test_obs_grouped_by_dataset_keeps_joinid_order_and_positions():
    # datasets interleaved in joinid order (not what a census does, but allowed): the build
    # groups them without changing any cell's dataset-relative position
    rng = np.random.default_rng(3)
    ds = rng.choice(["b", "a", "c"], size=500)
    obs = pd.DataFrame({"soma_joinid": np.arange(500) * 2,
                        "dataset_id": pd.Categorical(ds)})
    want = obs.groupby("dataset_id", observed=True).cumcount().to_numpy()
    grouped = build.group_by_dataset(obs)
    runs = build.dataset_runs(grouped)
    assert [r[0] for r in runs] == ["a", "b", "c"]
    for name, start, stop in runs:
        block = grouped.iloc[start:stop]
        assert (block["dataset_id"] == name).all()
        assert np.all(np.diff(block["soma_joinid"].to_numpy()) > 0)
    positions = build.dataset_positions(grouped)
    np.testing.assert_array_equal(positions, want[grouped["soma_joinid"].to_numpy() // 2])
    contiguous = obs.sort_values(["dataset_id", "soma_joinid"]).reset_index(drop=True)
    assert build.group_by_dataset(contiguous) is contiguous  # the census case: no copy


def test_part_ids_map_positions_to_joinids_across_gaps():
    joinids = np.array([10, 11, 12, 40, 41, 7, 100], dtype=np.int64)
    ids = PartIds.of(5, joinids)
    assert len(ids.run_offsets) == 4  # stored per run of consecutive joinids
    positions = np.array([11, 5, 8, 6, 10, 9, 7])
    np.testing.assert_array_equal(ids.lookup(positions), joinids[positions - 5])


def test_tech_sample_table_path_equals_the_sorting_path(monkeypatch):
    rng = np.random.default_rng(1)
    ds = pd.Series(pd.Categorical(rng.choice([f"d{i}" for i in range(9)], 2000)))
    dn = pd.Series(pd.Categorical(rng.choice([f"x{i}" for i in range(40)], 2000)))
    table = tech_sample(ds, dn)
    monkeypatch.setattr(split_module, "PAIR_TABLE_MAX", 0)
    sorting = tech_sample(ds, dn)
    assert list(table.cat.categories) == list(sorting.cat.categories)
    np.testing.assert_array_equal(table.cat.codes, sorting.cat.codes)
    assert list(table.astype(str)) == [f"{a}/{b}" for a, b in zip(ds, dn, strict=True)]
