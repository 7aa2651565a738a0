"""Rebuild pieces on their own: release choice, the current pointer, the lock, fingerprints of
the 2023-05-15 schema (no dataset_version_id) and the changelog's comparisons."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pandas as pd
import pytest

from ssl_census.census.releases import current_build, parse_directory
from ssl_census.core.errors import UserError
from ssl_census.rebuild.changelog import BuildSummary, compare_builds, render_markdown
from ssl_census.rebuild.choose import choose_release, is_newer, soma_uri
from ssl_census.rebuild.lock import rebuild_lock
from ssl_census.rebuild.pointer import switch_current
from ssl_census.shards.source import dataset_fingerprints


def _entry(tag: str, lts: bool = False, retracted: bool = False, uri: str | None = None):
    return {"release_date": tag, "release_build": tag,
            "flags": {"lts": lts, "retracted": retracted},
            "soma": {"uri": uri or f"s3://cellxgene-data-public/cell-census/{tag}/soma/",
                     "s3_region": "us-west-2"}}


DIRECTORY = {
    "stable": "2023-12-15", "latest": "2024-01-10", "LTS-2": "2023-12-15",
    "2024-02-01": _entry("2024-02-01", retracted=True),
    "2024-01-10": _entry("2024-01-10"),
    "2023-12-15": _entry("2023-12-15", lts=True),
    "2023-05-15": _entry("2023-05-15", lts=True),
}


def test_choose_release_by_lts_latest_tag_and_alias():
    releases = parse_directory(DIRECTORY)
    assert choose_release(releases, "lts").tag == "2023-12-15"
    assert choose_release(releases, "latest").tag == "2024-01-10"
    assert choose_release(releases, "2023-05-15").tag == "2023-05-15"
    assert choose_release(releases, "stable").tag == "2023-12-15"
    # without a 'latest' alias: the newest release that is not retracted
    no_alias = {k: v for k, v in DIRECTORY.items() if k != "latest"}
    assert choose_release(parse_directory(no_alias), "latest").tag == "2024-01-10"
    with pytest.raises(UserError, match="retracted"):
        choose_release(releases, "2024-02-01")
    with pytest.raises(UserError, match="no census release matches"):
        choose_release(releases, "2099-01-01")


def test_newer_compares_release_builds():
    by_tag = {r.tag: r for r in parse_directory(DIRECTORY)}
    assert is_newer(by_tag["2023-05-15"], None)
    assert is_newer(by_tag["2024-01-10"], "2023-12-15")
    assert not is_newer(by_tag["2023-12-15"], "2023-12-15")
    assert not is_newer(by_tag["2023-05-15"], "2023-12-15")


def test_soma_uri_relative_to_a_local_directory_file(tmp_path):
    raw = {"2023-05-15": _entry("2023-05-15", uri="stores/a")}
    release = parse_directory(raw)[0]
    directory = tmp_path / "dir" / "release.json"
    assert soma_uri(release, directory) == str(tmp_path / "dir" / "stores" / "a")
    s3 = parse_directory(DIRECTORY)[1]
    assert soma_uri(s3, directory) == s3.soma_uri  # URIs are left alone


def test_switch_current_replaces_the_symlink_atomically(tmp_path):
    (tmp_path / "v1").mkdir()
    (tmp_path / "v2").mkdir()
    switch_current(tmp_path, "v1")
    assert os.readlink(tmp_path / "current") == "v1" and current_build(tmp_path) == "v1"
    switch_current(tmp_path, "v2")
    assert os.readlink(tmp_path / "current") == "v2"
    assert (tmp_path / "current").resolve() == (tmp_path / "v2").resolve()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current", "v1", "v2"]  # no temp left
    blocked = tmp_path / "blocked"
    (blocked / "current").mkdir(parents=True)
    with pytest.raises(UserError, match="is a directory"):
        switch_current(blocked, "v1")


def test_lock_is_exclusive_across_processes_and_freed_when_the_holder_dies(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from pathlib import Path
            from ssl_census.rebuild.lock import rebuild_lock
            with rebuild_lock(Path({str(tmp_path)!r})):
                print("locked", flush=True)
                time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=f"another rebuild is running.*pid {holder.pid}"):
            with rebuild_lock(tmp_path):
                pass
    finally:
        holder.kill()
        holder.wait()
    with rebuild_lock(tmp_path):  # the kernel dropped the dead holder's lock
        assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())


def test_fingerprint_fallback_without_dataset_version_id():
    """Census 2023-05-15 (schema 1.0.0) has no dataset_version_id: h5ad path and cell count
    identify a dataset's content instead, so a re-published dataset shows as changed."""
    old = pd.DataFrame({"dataset_id": ["d1", "d2"], "dataset_h5ad_path": ["d1.h5ad", "d2.h5ad"],
                        "dataset_total_cell_count": [100, 200]})
    new = old.assign(dataset_total_cell_count=[100, 250])
    fp_old, fp_new = dataset_fingerprints(old), dataset_fingerprints(new)
    assert fp_old["d1"] == fp_new["d1"] == "d1@d1.h5ad#100"
    assert fp_old["d2"] != fp_new["d2"]
    # a later schema's dataset_version_id wins over path and count
    later = new.assign(dataset_version_id=["v1", "v1"])
    assert dataset_fingerprints(later) == {"d1": "d1@v1", "d2": "d2@v1"}

    def summary(fps, counts):
        return BuildSummary({d: {"fingerprint": fp, "title": d, "cells": counts[d]}
                             for d, fp in fps.items()}, {"train": sum(counts.values())},
                            ["ENSG1"], {})
    log = compare_builds(summary(fp_old, {"d1": 100, "d2": 200}),
                         summary(fp_new, {"d1": 100, "d2": 250}))
    assert [d["dataset_id"] for d in log["datasets"]["changed"]] == ["d2"]
    assert log["datasets"]["unchanged"] == 1


def test_changelog_reports_donors_that_changed_split_and_gene_space_changes():
    def summary(donors, genes):
        return BuildSummary({"d1": {"fingerprint": "d1@v1", "title": "one", "cells": 10}},
                            {"train": 8, "val": 1, "test": 1}, genes, donors)
    old = summary({"d1/a": "train", "d1/b": "val", "d1/c": "test"}, ["G1", "G2", "G3"])
    new = summary({"d1/a": "train", "d1/b": "test", "d1/d": "val"}, ["G2", "G1", "G4"])
    log = compare_builds(old, new)
    assert log["donors_changed_split"] == [{"tech_sample": "d1/b", "previous": "val",
                                            "now": "test"}]
    assert log["genes"]["added"] == ["G4"] and log["genes"]["removed"] == ["G3"]
    assert not log["genes"]["order_changed"]
    reordered = compare_builds(old, summary(old.donor_split, ["G3", "G2", "G1"]))
    assert reordered["genes"]["order_changed"] and reordered["donors_changed_split"] == []
    first = compare_builds(None, new)
    assert first["genes"]["added"] == [] and first["genes"]["previous"] == 0
    assert [d["dataset_id"] for d in first["datasets"]["added"]] == ["d1"]
    md = render_markdown({**log, "release": {"tag": "t", "release_build": "t"},
                          "previous": "p", "built_at": "now",
                          "reuse": {"datasets_reused": 1, "datasets_read": 0, "cells_read": 0,
                                    "parts_built": 0, "parts_total": 1, "resumed": False}})
    assert "1 (must be 0)" in md and "d1/b: val -> test" in md
    assert json.loads(json.dumps(log)) == log  # the changelog is plain JSON
