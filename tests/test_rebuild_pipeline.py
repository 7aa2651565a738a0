"""Scheduled rebuilds end to end on two local census releases built from ../shared/data.

Release A (2023-05-15): pbmc_3tech (three datasets), zheng_sorted, pbmc5k_rna. Release B
(2023-07-25): the same, with zheng_sorted re-published (a new dataset_version_id) and
pbmc_donorA added BEFORE the others, so every cell of the unchanged datasets has another
soma_joinid in B than in A (as in a real census release). Both use the later census schema,
where datasets carry dataset_version_id; the 2023-05-15 schema's fallback fingerprint is
covered in test_rebuild_units.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tiledbsoma as soma
from click.testing import CliRunner

from ssl_census.cli import main
from ssl_census.core.config import CONFIG_ROOT
from ssl_census.core.errors import UserError
from ssl_census.rebuild.lock import rebuild_lock
from ssl_census.rebuild.pointer import switch_current
from ssl_census.rebuild.run import PARTS_CACHE, STAGING, run_rebuild
from ssl_census.shards.build import build_shards
from ssl_census.shards.config import load_shards_config
from ssl_census.shards.store import SPLITS, open_shards, read_manifest
from ssl_census.shards.verify import verify_shards

HERE = Path(__file__).resolve().parent
TAG_A, TAG_B = "2023-05-15", "2023-07-25"
# cells of the files (data/README.md); all are primary 10x cells, so all are eligible
ZHENG, DONOR_A = 2_140, 2_896
CELLS_A = 2_000 + ZHENG + 3_994


def _entry(tag: str, store: str, lts: bool) -> dict:
    return {"release_date": tag, "release_build": tag, "flags": {"lts": lts},
            "soma": {"uri": store, "s3_region": "us-west-2"}}


def write_directory(path: Path, with_b: bool) -> None:
    """The release directory as cellxgene_census publishes it; soma uris relative to it."""
    raw = {"stable": TAG_A, "latest": TAG_B if with_b else TAG_A,
           TAG_A: _entry(TAG_A, "census-a", lts=True)}
    if with_b:
        raw[TAG_B] = _entry(TAG_B, "census-b", lts=False)
    path.write_text(json.dumps(raw))


@pytest.fixture(scope="module")
def releases(tmp_path_factory, shared_data) -> Path:
    """A folder with census-a/, census-b/ and release.json (listing A only, for now)."""
    from ssl_census.census.build_local import build_local_census

    folder = tmp_path_factory.mktemp("releases")
    for name in ("a", "b"):
        build_local_census(HERE / "rebuild_configs" / f"census-{name}.toml",
                           folder / f"census-{name}", shared_data)
    write_directory(folder / "release.json", with_b=False)
    return folder


@pytest.fixture(scope="module")
def build_args(shared_data) -> dict:
    return {"config": str(CONFIG_ROOT / "shards" / "local-pbmc.toml"),
            "gene_list": str(shared_data / "genes" / "scTab_features.parquet"), "workers": 1}


def cli_args(root: Path, releases: Path, build_args: dict) -> list[str]:
    return ["rebuild", "--root", str(root), "--directory", str(releases / "release.json"),
            "--config", build_args["config"], "--gene-list", build_args["gene_list"],
            "--workers", "1"]


@pytest.fixture(scope="module")
def first(tmp_path_factory, releases, build_args):
    """Root after the first rebuild (release A), and a copy of it taken right then (tests
    that need that state copy the copy)."""
    root = tmp_path_factory.mktemp("rebuild") / "root"
    result = run_rebuild(root, directory=releases / "release.json", **build_args)
    snapshot = tmp_path_factory.mktemp("rebuild") / "snapshot"
    shutil.copytree(root, snapshot, symlinks=True)
    return root, result, snapshot


@pytest.fixture(scope="module")
def second(first, releases, build_args):
    """The same root after release B appeared in the directory and the rebuild ran again."""
    root = first[0]
    write_directory(releases / "release.json", with_b=True)
    return root, run_rebuild(root, directory=releases / "release.json", **build_args)


def test_first_rebuild_publishes_a_verified_build(first):
    root, result, _ = first
    assert result.published and result.previous is None
    assert os.readlink(root / "current") == TAG_A  # relative symlink
    store = open_shards(root / "current")
    assert verify_shards(root / "current").ok
    n_stored = sum(store.manifest["splits"][s]["n_cells"] for s in SPLITS)
    log = result.changelog
    assert len(log["datasets"]["added"]) == 5 and not log["datasets"]["changed"]
    assert sum(v["now"] for v in log["cells_per_split"].values()) == n_stored
    reuse = log["reuse"]
    assert (reuse["datasets_reused"], reuse["datasets_read"]) == (0, 5)
    assert reuse["cells_read"] == CELLS_A
    assert (root / TAG_A / "CHANGELOG.md").read_text().count("- added:") == 5
    assert not (root / STAGING / TAG_A).exists()


def test_second_run_with_nothing_new_is_a_no_op(first, releases, build_args):
    root = first[0]
    before = sorted(p.name for p in (root / PARTS_CACHE).iterdir())
    manifest = read_manifest(root / TAG_A)
    out = CliRunner().invoke(main, cli_args(root, releases, build_args))
    assert out.exit_code == 0, out.output
    assert "up to date" in out.output
    assert os.readlink(root / "current") == TAG_A
    assert sorted(p.name for p in (root / PARTS_CACHE).iterdir()) == before
    assert read_manifest(root / TAG_A) == manifest


def test_new_release_rebuilds_incrementally_and_switches_current(second, first):
    root, result = second
    assert result.published and result.previous == TAG_A
    assert os.readlink(root / "current") == TAG_B
    assert verify_shards(root / "current").ok
    # the previous build is kept, intact
    assert verify_shards(root / TAG_A).ok
    reuse = result.changelog["reuse"]
    # unchanged: pbmc_3tech's three datasets and pbmc5k; read: zheng (new version), donorA
    assert (reuse["datasets_reused"], reuse["datasets_read"]) == (4, 2)
    assert reuse["cells_read"] == ZHENG + DONOR_A
    assert sorted(c["cells_read"] for c in reuse["per_dataset"].values()) == [
        0, 0, 0, 0, ZHENG, DONOR_A]
    assert not reuse["resumed"]


def _split_obs(store: Path, split: str) -> pd.DataFrame:
    return open_shards(store).split(split)[1]


def test_renumbered_unchanged_datasets_are_reused_and_equal_a_build_from_scratch(
        second, releases, build_args, tmp_path):
    root, result = second
    per_dataset = result.changelog["reuse"]["per_dataset"]
    reused = {d for d, c in per_dataset.items() if c["cells_read"] == 0}
    assert len(reused) == 4
    with soma.open(str(releases / "census-b" / "census_data" / "homo_sapiens" / "obs")) as f:
        census_b = f.read(column_names=["soma_joinid", "dataset_id", "donor_id",
                                        "cell_type"]).concat().to_pandas()
    for split in SPLITS:
        old, new = _split_obs(root / TAG_A, split), _split_obs(root / TAG_B, split)
        # stored soma_joinids are B's: they name the same cells in census B
        src = census_b.set_index("soma_joinid").loc[new["soma_joinid"]]
        for col in ("dataset_id", "donor_id", "cell_type"):
            assert (src[col].astype(str).to_numpy() == new[col].astype(str).to_numpy()).all()
        # cells of the reused datasets moved by pbmc_donorA's cells, and kept their order
        old_kept = old[old["dataset_id"].astype(str).isin(reused)]
        new_kept = new[new["dataset_id"].astype(str).isin(reused)]
        assert len(old_kept) == len(new_kept)
        np.testing.assert_array_equal(new_kept["soma_joinid"].to_numpy(),
                                      old_kept["soma_joinid"].to_numpy() + DONOR_A)
    scratch = build_shards(tmp_path / "scratch", load_shards_config(build_args["config"]),
                           census_uri=str(releases / "census-b"),
                           gene_list=build_args["gene_list"], workers=1)
    assert scratch.cells_read == CELLS_A + DONOR_A
    incremental = read_manifest(root / TAG_B)
    assert scratch.manifest["splits"] == incremental["splits"]
    assert scratch.manifest["tables"] == incremental["tables"]


def test_changelog_lists_added_changed_cells_genes_and_no_donor_moves(second, first):
    root, result = second
    log = json.loads((root / TAG_B / "changelog.json").read_text())
    assert log == json.loads(json.dumps(result.changelog))
    ds = log["datasets"]
    assert [d["title"] for d in ds["added"]] == ["pbmc_donorA"]
    assert [d["title"] for d in ds["changed"]] == ["zheng_sorted"]
    changed = ds["changed"][0]
    assert changed["fingerprint"].endswith("@zheng_sorted-v2")
    assert changed["previous_fingerprint"].endswith("@zheng_sorted-v1")
    assert ds["removed"] == [] and ds["unchanged"] == 4
    assert log["donors_changed_split"] == []
    old = read_manifest(root / TAG_A)["splits"]
    new = read_manifest(root / TAG_B)["splits"]
    for s in SPLITS:
        assert log["cells_per_split"][s] == {"previous": old[s]["n_cells"],
                                             "now": new[s]["n_cells"]}
    assert sum(new[s]["n_cells"] for s in SPLITS) > sum(old[s]["n_cells"] for s in SPLITS)
    # same gene list, same census annotation: the gene space did not change
    assert log["genes"]["previous"] == log["genes"]["now"] > 15_000
    assert log["genes"]["added"] == log["genes"]["removed"] == []
    md = (root / TAG_B / "CHANGELOG.md").read_text()
    assert "1 added, 0 removed, 1 changed, 4 unchanged" in md
    assert "0 (must be 0)" in md


def test_killed_rebuild_leaves_current_and_the_next_run_completes_it(
        first, second, releases, build_args, tmp_path):
    root = tmp_path / "root"  # the root as it was after release A, before B was built
    shutil.copytree(first[2], root, symlinks=True)
    cache = root / PARTS_CACHE
    parts_before = {p.name for p in cache.iterdir()}
    env = {**os.environ, "SSL_CENSUS_NO_PROGRESS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "ssl_census.cli",
                             *cli_args(root, releases, build_args)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        # kill as soon as the first new part is finished: midway through phase 1
        while not ({p.name for p in cache.iterdir() if not p.name.endswith(".partial")}
                   - parts_before):
            assert proc.poll() is None, "the rebuild ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert os.readlink(root / "current") == TAG_A
    assert not (root / TAG_B).exists() and (root / STAGING / TAG_B).is_dir()
    out = CliRunner().invoke(main, ["census", "releases", "--root", str(root), "--directory",
                                    str(releases / "release.json"), "--json"])
    rows = {r["release"]: r for r in json.loads(out.output)}
    assert rows[TAG_A]["current"] and not rows[TAG_B]["built_locally"]

    out = CliRunner().invoke(main, cli_args(root, releases, build_args))
    assert out.exit_code == 0, out.output
    assert os.readlink(root / "current") == TAG_B
    reuse = json.loads((root / TAG_B / "changelog.json").read_text())["reuse"]
    assert reuse["resumed"] and reuse["cells_read"] < ZHENG + DONOR_A
    assert f"published {TAG_B}" in out.output
    assert (f"datasets reused {reuse['datasets_reused']}, read {reuse['datasets_read']} "
            f"({reuse['cells_read']:,} cells read)") in out.output
    assert verify_shards(root / TAG_B).ok
    # the resumed build holds the same bytes as the uninterrupted one
    resumed, straight = read_manifest(root / TAG_B), read_manifest(second[0] / TAG_B)
    assert resumed["splits"] == straight["splits"]


def test_lock_refuses_a_concurrent_rebuild(second, releases, build_args):
    root = second[0]
    with rebuild_lock(root):
        out = CliRunner().invoke(main, cli_args(root, releases, build_args))
        assert out.exit_code == 2
        assert "another rebuild is running" in out.output
        assert f"pid {os.getpid()}" in out.output
        with pytest.raises(UserError, match="another rebuild is running"):
            run_rebuild(root, directory=releases / "release.json", **build_args)
    out = CliRunner().invoke(main, cli_args(root, releases, build_args))
    assert out.exit_code == 0 and "up to date" in out.output


def test_a_build_that_moves_donors_between_splits_is_not_published(
        first, second, releases, build_args, tmp_path):
    """A changed split salt reassigns donors (4 of the 6 here, with every split still
    populated): the build fails verification and current stays."""
    root = tmp_path / "root"
    shutil.copytree(first[2], root, symlinks=True)
    preset = Path(build_args["config"]).read_text()
    assert 'salt = "ssl-census/split/v1"' in preset
    config = tmp_path / "other-salt.toml"
    config.write_text(preset.replace('salt = "ssl-census/split/v1"',
                                     'salt = "ssl-census/split/v2"'))
    with pytest.raises(UserError, match="donors changed split"):
        run_rebuild(root, directory=releases / "release.json",
                    **{**build_args, "config": str(config)})
    assert os.readlink(root / "current") == TAG_A
    assert not (root / TAG_B).exists()


def test_a_verified_build_that_was_not_yet_published_is_published_without_building(
        second, releases, build_args):
    """A kill between the rename into <root>/<release> and the switch of current."""
    root = second[0]
    switch_current(root, TAG_A)
    cache = sorted(p.name for p in (root / PARTS_CACHE).iterdir())
    changelog = (root / TAG_B / "changelog.json").read_text()
    result = run_rebuild(root, directory=releases / "release.json", **build_args)
    assert result.published and os.readlink(root / "current") == TAG_B
    assert (root / TAG_B / "changelog.json").read_text() == changelog
    assert sorted(p.name for p in (root / PARTS_CACHE).iterdir()) == cache
    assert not (root / STAGING / TAG_B).exists()
