"""The shard build on the real local census (../shared/data studies in census layout) where
the stored cells are checked against their studies, and on the synthetic census where only the
build's handling of its output folder and of bad input is."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import tiledbsoma as soma

from ssl_census.core.config import CONFIG_ROOT
from ssl_census.core.errors import UserError
from ssl_census.core.ontology import PINNED_CL_RELEASE
from ssl_census.shards import build as build_module
from ssl_census.shards import merge, parts
from ssl_census.shards.build import PARTS_DIR, build_shards
from ssl_census.shards.config import load_shards_config
from ssl_census.shards.split import assign_splits
from ssl_census.shards.store import MANIFEST, SPLITS, open_shards, write_store_from_arrays

TENX = {"10x 3' v1", "10x 3' v2", "10x 3' v3", "10x 5' v1", "10x 5' v2",
        "10x 3' transcription profiling", "10x 5' transcription profiling"}


def _gene_list(shared_data: Path) -> str:
    return str(shared_data / "genes" / "scTab_features.parquet")


def _census_obs(uri: str) -> pd.DataFrame:
    with soma.open(str(Path(uri) / "census_data" / "homo_sapiens" / "obs")) as obs:
        return obs.read(column_names=["soma_joinid", "dataset_id", "donor_id", "assay",
                                      "is_primary_data", "cell_type"]).concat().to_pandas()


def _all_obs(store) -> pd.DataFrame:
    return pd.concat([store.split(s)[1].assign(split=s) for s in store.splits], ignore_index=True)


def test_store_is_complete_and_verifies(real_shards_dir):
    store = open_shards(real_shards_dir)
    assert store.manifest["complete"] is True
    assert store.splits == SPLITS
    assert store.manifest["gene_list"]["n_genes"] == store.n_genes > 15_000
    onto = store.manifest["cell_ontology"]
    assert onto["release"] == PINNED_CL_RELEASE == store.manifest["thresholds"]["cl_release"]
    assert onto["source"].startswith("cellxgene-ontology-guide ")
    from click.testing import CliRunner

    from ssl_census.cli import main

    res = CliRunner().invoke(main, ["shards", "verify", str(real_shards_dir)])
    assert res.exit_code == 0 and res.output.startswith("ok:"), res.output


def test_no_donor_in_two_splits(real_shards_dir):
    obs = _all_obs(open_shards(real_shards_dir))
    per_donor = obs.groupby(["dataset_id", "donor_id"], observed=True)["split"].nunique()
    assert len(per_donor) > 3 and per_donor.max() == 1
    assert obs["soma_joinid"].is_unique
    assert set(obs["split"]) == set(SPLITS)


def test_only_primary_10x_cells_and_all_of_them(real_shards_dir, real_census_uri):
    store = open_shards(real_shards_dir)
    obs = _all_obs(store)
    census = _census_obs(real_census_uri).set_index("soma_joinid")
    src = census.loc[obs["soma_joinid"]]
    assert src["is_primary_data"].all()
    assert set(src["assay"].astype(str)) <= TENX
    eligible = census[census["is_primary_data"] & census["assay"].astype(str).isin(TENX)]
    non_10x = set(census["dataset_id"].astype(str)) - set(eligible["dataset_id"].astype(str))
    assert non_10x, "the real census should hold non-10x datasets (cellbench, eccite)"
    assert not non_10x & set(obs["dataset_id"].astype(str))
    assert (~census["is_primary_data"]).any()
    # local preset keeps unlabelled cells: every eligible cell is stored unless it was empty
    dropped = store.manifest["dropped"]["empty_cells"]
    assert len(obs) + dropped == len(eligible)
    unknown = (obs["cell_type"].astype(str) == "unknown").sum()
    assert (obs["cell_type_code"] == -1).sum() == unknown > 0


def test_labels_cover_the_labelled_studies(real_shards_dir):
    store = open_shards(real_shards_dir)
    terms = set(store.labels["cell_type_ontology_term_id"])
    assert {"CL:0000624", "CL:0000236", "CL:0001054", "CL:0000815", "CL:0000576"} <= terms
    assert store.labels["cell_type_code"].tolist() == list(range(len(store.labels)))
    assert (store.labels["class_weight"][store.labels["n_train"] > 0] > 0).all()


def test_values_equal_normalised_source_counts(real_shards_dir, real_census_uri):
    store = open_shards(real_shards_dir)
    genes = None
    with soma.open(str(Path(real_census_uri) / "census_data" / "homo_sapiens")) as exp:
        var = exp.ms["RNA"].var.read().concat().to_pandas().set_index("feature_id")
        genes = var.loc[store.var["feature_id"], "soma_joinid"].to_numpy()
        position = pd.Series(np.arange(len(genes)), index=genes)
        for split in store.splits:
            x, obs = store.split(split)
            ptr, idx, data = x.rows(0, x.n_cells, values="data")
            counts = x.counts[:]
            # expm1 of every row sums to 10,000 and equals counts / library size * 1e4
            rows = np.repeat(np.arange(x.n_cells), np.diff(ptr))
            lib = np.bincount(rows, weights=counts, minlength=x.n_cells)
            np.testing.assert_array_equal(lib, obs["library_size"].to_numpy())
            sums = np.bincount(rows, weights=np.expm1(data.astype(np.float64)), minlength=x.n_cells)
            np.testing.assert_allclose(sums, 1e4, rtol=1e-4)
            expected = np.log1p(counts / lib[rows] * 1e4)
            np.testing.assert_allclose(data, expected, rtol=1e-6, atol=1e-6)
            # raw counts equal the census's, cell for cell (a sample of each split)
            pick = np.sort(np.random.default_rng(0).choice(x.n_cells, min(200, x.n_cells),
                                                           replace=False))
            ids = obs["soma_joinid"].to_numpy()[pick]
            tbl = exp.ms["RNA"].X["raw"].read(coords=(ids, genes)).tables().concat().to_pandas()
            src = pd.DataFrame({"cell": tbl["soma_dim_0"].to_numpy(),
                                "gene": position.loc[tbl["soma_dim_1"]].to_numpy(),
                                "count": tbl["soma_data"].to_numpy()})
            lens = np.diff(ptr)[pick]
            take = np.concatenate([np.arange(ptr[r], ptr[r + 1]) for r in pick])
            got = pd.DataFrame({"cell": np.repeat(ids, lens), "gene": idx[take].astype(np.int64),
                                "count": counts[take].astype(np.float32)})
            key = ["cell", "gene"]
            pd.testing.assert_frame_equal(src.sort_values(key).reset_index(drop=True),
                                          got.sort_values(key).reset_index(drop=True))


def test_split_of_tech_samples_is_stable_when_a_dataset_is_added(real_shards_dir):
    store = open_shards(real_shards_dir)
    obs = _all_obs(store)
    ts = obs.drop_duplicates("tech_sample")
    cfg = load_shards_config("local-pbmc").split
    stored = ts["split"].map({s: i for i, s in enumerate(SPLITS)}).to_numpy()
    np.testing.assert_array_equal(assign_splits(ts["tech_sample"], cfg), stored)
    # without one dataset (as in an earlier release) the others keep their splits
    largest = obs["dataset_id"].value_counts().index[0]
    rest = ts[ts["dataset_id"] != largest]
    np.testing.assert_array_equal(assign_splits(rest["tech_sample"], cfg),
                                  stored[(ts["dataset_id"] != largest).to_numpy()])


def _build(out, census_uri, shared_data, **kw):
    config = load_shards_config(kw.pop("config", "local-pbmc"))
    gene_list = kw.pop("gene_list", _gene_list(shared_data))
    return build_shards(out, config, census_uri=census_uri, gene_list=gene_list, **kw)


def _synth_build(out, synth_census_uri, synth_shards_dir, **kw):
    """A build of the synthetic census with synth_shards_dir's config and gene list."""
    config = load_shards_config(kw.pop("config", "synthetic"))
    gene_list = kw.pop("gene_list", str(synth_shards_dir.parent / "genes.txt"))
    return build_shards(out, config, census_uri=synth_census_uri, gene_list=gene_list, **kw)


def _same_bytes(a: Path, b: Path) -> None:
    ma, mb = (json.loads((p / MANIFEST).read_text()) for p in (a, b))
    assert ma["splits"] == mb["splits"]
    assert ma["tables"] == mb["tables"]


def test_killed_build_resumes_to_the_same_bytes(real_shards_dir, real_census_uri, shared_data,
                                               tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "ssl_census.cli", "shards", "build", "--out", str(out),
           "--census-uri", str(real_census_uri), "--config", "local-pbmc",
           "--gene-list", _gene_list(shared_data), "--workers", "1", "--memory-budget", "64MiB"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    done_parts: list[Path] = []
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / PARTS_DIR).is_dir():
            done_parts = [p for p in (out / PARTS_DIR).iterdir() if not p.name.endswith(".partial")]
            if len(done_parts) >= 2:
                break
        time.sleep(0.05)
    assert proc.poll() is None, f"build ended before it was killed: {proc.stderr.read()}"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / MANIFEST).exists()
    with pytest.raises(UserError, match="incomplete|not an ssl-census"):
        open_shards(out)
    report = _build(out, real_census_uri, shared_data, workers=1, memory_budget=64 << 20)
    assert 0 < report.parts_built < report.parts_total  # finished parts were not redone
    _same_bytes(out, real_shards_dir)  # real_shards_dir passes verify
    assert not (out / PARTS_DIR).exists()


def test_failed_merge_resumes_without_redoing_finished_work(real_shards_dir, real_census_uri,
                                                            shared_data, tmp_path, monkeypatch):
    # the session build kept its parts in a shared cache: this build reuses all of them
    cache = real_shards_dir.parent / "parts-cache"
    out = tmp_path / "failed"
    real_merge = merge.merge_split

    def merge_then_fail(part_dirs, split, *args, **kw):
        if split == "test":
            raise RuntimeError("injected failure")
        return real_merge(part_dirs, split, *args, **kw)

    monkeypatch.setattr(merge, "merge_split", merge_then_fail)
    with pytest.raises(RuntimeError, match="injected"):
        _build(out, real_census_uri, shared_data, workers=1, parts_dir=cache)
    assert not (out / MANIFEST).exists()
    train_stamp = (out / "train" / "X.zarr" / "zarr.json").stat().st_mtime_ns
    monkeypatch.setattr(merge, "merge_split", real_merge)
    report = _build(out, real_census_uri, shared_data, workers=1, parts_dir=cache)
    assert report.parts_total > 0 and report.parts_built == 0
    assert (out / "train" / "X.zarr" / "zarr.json").stat().st_mtime_ns == train_stamp
    _same_bytes(out, real_shards_dir)
    assert cache.is_dir()  # a shared cache outlives the build


def test_rerun_of_a_complete_build_does_nothing(synth_shards_dir, synth_census_uri):
    before = (synth_shards_dir / MANIFEST).read_bytes()
    report = _synth_build(synth_shards_dir, synth_census_uri, synth_shards_dir)
    assert report.parts_total == 0
    assert (synth_shards_dir / MANIFEST).read_bytes() == before


def test_out_dir_holding_another_build_is_refused(synth_shards_dir, synth_census_uri, tmp_path):
    other = tmp_path / "other.toml"
    text = (CONFIG_ROOT / "shards" / "synthetic.toml").read_text()
    assert "min_cells = 50 " in text
    other.write_text(text.replace("min_cells = 50 ", "min_cells = 51 "))
    before = (synth_shards_dir / MANIFEST).read_bytes()
    with pytest.raises(UserError, match="another shard store"):
        _synth_build(synth_shards_dir, synth_census_uri, synth_shards_dir, config=str(other))
    assert (synth_shards_dir / MANIFEST).read_bytes() == before
    tiny = tmp_path / "tiny"  # a store made by write_store_from_arrays has no build_id
    var = pd.DataFrame({"feature_id": ["E1", "E2"], "feature_name": ["A", "B"]})
    obs = pd.DataFrame({"cell_type": ["B cell"], "cell_type_ontology_term_id": ["CL:0000236"]})
    write_store_from_arrays(tiny, var, {"train": (sp.csr_matrix(np.array([[1, 2]])), obs)})
    with pytest.raises(UserError, match="another shard store"):
        _synth_build(tiny, synth_census_uri, synth_shards_dir)
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        _synth_build(stranger, synth_census_uri, synth_shards_dir)


def test_replace_rebuilds_an_out_dir_holding_another_build(real_shards_dir, real_census_uri,
                                                           shared_data, tmp_path):
    import shutil

    out = tmp_path / "store"
    shutil.copytree(real_shards_dir, out)
    old = json.loads((out / MANIFEST).read_text())
    small = tmp_path / "small.toml"  # other inputs: one dataset only (fast to build)
    text = (CONFIG_ROOT / "shards" / "local-pbmc.toml").read_text()
    only = 'include_datasets = ["10x frozen PBMC donor A (Zheng et al. 2017)"]'
    small.write_text(text.replace("[query]\n", f"[query]\n{only}\n"))
    _build(out, real_census_uri, shared_data, config=str(small), replace=True)
    new = json.loads((out / MANIFEST).read_text())
    assert new["complete"] is True and new["build_id"] != old["build_id"]
    datasets = [set(open_shards(d).split(s)[1]["dataset_id"].astype(str))
                for d in (out, real_shards_dir) for s in SPLITS]
    assert len(set().union(*datasets[:3])) == 1 < len(set().union(*datasets[3:]))
    stranger = tmp_path / "stranger"  # what is not a shard build is still refused
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        _build(stranger, real_census_uri, shared_data, replace=True)
    assert (stranger / "notes.txt").read_text() == "mine"


def test_bad_input_gives_one_line_errors_and_no_store(synth_census_uri, synth_shards_dir,
                                                     tmp_path):
    nothing = tmp_path / "nothing.toml"
    nothing.write_text('[query]\nassays = ["Smart-seq9"]\n')
    with pytest.raises(UserError, match="selects no"):
        _synth_build(tmp_path / "a", synth_census_uri, synth_shards_dir, config=str(nothing))
    genes = tmp_path / "genes.txt"
    known = open_shards(synth_shards_dir).var["feature_name"].astype(str).tolist()[:2]
    genes.write_text("\n".join([*known, "NOTAGENE"]) + "\n")
    with pytest.raises(UserError, match="matches only 2"):
        _synth_build(tmp_path / "b", synth_census_uri, synth_shards_dir, gene_list=str(genes))
    for d in ("a", "b"):  # refused before anything was written
        assert not (tmp_path / d).exists()


def test_disk_space_problems_are_user_errors(synth_census_uri, synth_shards_dir, tmp_path,
                                             monkeypatch):
    class Tiny:
        free = 1 << 20

    monkeypatch.setattr(build_module.shutil, "disk_usage", lambda _p: Tiny)
    with pytest.raises(UserError, match="not enough free disk space"):
        _synth_build(tmp_path / "a", synth_census_uri, synth_shards_dir)
    monkeypatch.undo()

    def full(_task):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(parts, "write_part", full)
    with pytest.raises(UserError, match="no space left"):
        _synth_build(tmp_path / "b", synth_census_uri, synth_shards_dir, workers=1)
    assert not (tmp_path / "b" / MANIFEST).exists()


def test_cli_verify_fails_on_a_flipped_byte(synth_shards_dir, tmp_path):
    import shutil

    from click.testing import CliRunner

    from ssl_census.cli import main

    bad = tmp_path / "bad"
    shutil.copytree(synth_shards_dir, bad)
    f = next(p for p in (bad / "val" / "X.zarr" / "data").rglob("*")
             if p.is_file() and p.name != "zarr.json")
    raw = bytearray(f.read_bytes())
    raw[len(raw) // 3] ^= 0x10
    f.write_bytes(bytes(raw))
    res = CliRunner().invoke(main, ["shards", "verify", str(bad)])
    assert res.exit_code == 1
    assert "checksum of data" in res.output


def test_sctab_rule_without_unlabelled_cells(real_shards_dir, real_census_uri, shared_data,
                                             tmp_path):
    text = (CONFIG_ROOT / "shards" / "local-pbmc.toml").read_text()
    labelled_only = tmp_path / "labelled.toml"
    labelled_only.write_text(text.replace("keep_unlabelled = true", "keep_unlabelled = false"))
    # phase-1 parts do not depend on curation: the session's cached parts serve this build
    report = _build(tmp_path / "labelled", real_census_uri, shared_data, workers=1,
                    config=str(labelled_only), parts_dir=real_shards_dir.parent / "parts-cache")
    assert report.parts_built == 0
    full = _all_obs(open_shards(real_shards_dir))
    mine = _all_obs(open_shards(tmp_path / "labelled"))
    assert (mine["cell_type_code"] >= 0).all()
    expected = full[full["cell_type_code"] >= 0]
    assert sorted(mine["soma_joinid"]) == sorted(expected["soma_joinid"])
    merged = mine.merge(expected, on="soma_joinid", suffixes=("", "_full"))
    assert (merged["split"] == merged["split_full"]).all()
    # scTab's own thresholds keep nothing of a 30,000-cell census
    with pytest.raises(UserError, match="no cell type passes"):
        _build(tmp_path / "sctab", real_census_uri, shared_data,
               config=str(CONFIG_ROOT / "shards" / "sctab-2023-05-15.toml"))


def test_a_split_without_cells_is_written_empty_and_verifies(real_shards_dir, real_census_uri,
                                                             shared_data, tmp_path):
    """zheng_sorted alone has one donor, so two of the three splits get no cell."""
    from ssl_census.data import BlockShuffleLoader
    from ssl_census.shards.verify import verify_shards

    text = (CONFIG_ROOT / "shards" / "local-pbmc.toml").read_text()
    one_donor = tmp_path / "one-donor.toml"
    zheng = "Zheng et al. 2017 FACS-sorted PBMC populations"
    one_donor.write_text(text.replace("[query]\n", f'[query]\ninclude_datasets = ["{zheng}"]\n'))
    out = tmp_path / "one-donor"
    _build(out, real_census_uri, shared_data, config=str(one_donor),
           parts_dir=real_shards_dir.parent / "parts-cache")
    store = open_shards(out)
    sizes = {s: store.manifest["splits"][s]["n_cells"] for s in SPLITS}
    assert sorted(sizes.values())[:2] == [0, 0] and sum(sizes.values()) > 2_000
    assert verify_shards(out).ok
    empty = [s for s in SPLITS if sizes[s] == 0]
    full = next(s for s in SPLITS if sizes[s])
    columns = list(store.split(full)[1].columns)
    for s in empty:
        X, obs = store.split(s)
        assert X.n_cells == X.nnz == 0 and list(X.indptr[:]) == [0]
        assert obs.empty and list(obs.columns) == columns
    # training on an empty split is refused with a one-line error
    with pytest.raises(UserError, match="has no cells"):
        BlockShuffleLoader(out, split=empty[0], batch_size=64)
    loader = BlockShuffleLoader(out, split=full, batch_size=512, workers=1)
    assert sum(len(b.index) for b in loader) == sizes[full]


def test_unknown_census_version_lists_the_available_ones(tmp_path, monkeypatch):
    import cellxgene_census
    from click.testing import CliRunner

    from ssl_census.cli import main

    def no_such_version(census_version=None, **_kw):
        raise ValueError(f"The census_version {census_version!r} is not valid")

    # the release directory as cellxgene_census would fetch it (no network here)
    monkeypatch.setattr(cellxgene_census, "open_soma", no_such_version)
    monkeypatch.setattr(cellxgene_census, "get_census_version_directory",
                        lambda **_kw: {"2023-05-15": {}, "2023-07-25": {}, "stable": {}})
    res = CliRunner().invoke(main, ["shards", "build", "--out", str(tmp_path / "s"),
                                    "--census-version", "1999-01-01", "--config", "local-pbmc"])
    assert res.exit_code == 2
    assert "unknown census version '1999-01-01'" in res.output and "2023-05-15" in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "s").exists()
