"""'census releases' on a local release directory in cellxgene_census's JSON format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cellxgene_census import _release_directory
from click.testing import CliRunner

from ssl_census.census.releases import parse_directory
from ssl_census.cli import main


def _entry(tag: str, lts: bool, retracted: bool = False) -> dict:
    entry = {"release_date": tag, "release_build": tag,
             "flags": {"lts": lts, **({"retracted": True} if retracted else {})},
             "soma": {"uri": f"s3://cellxgene-data-public/cell-census/{tag}/soma/",
                      "s3_region": "us-west-2"},
             "h5ads": {"uri": f"s3://cellxgene-data-public/cell-census/{tag}/h5ads/",
                       "s3_region": "us-west-2"}}
    if retracted:
        entry["retraction"] = {"date": "2023-06-01", "reason": "test"}
    return entry


DIRECTORY = {
    "stable": "V2",
    "latest": "2023-07-25",
    "V2": "2023-05-15",
    "V1": "2022-11-01",
    "2023-07-25": _entry("2023-07-25", lts=False),
    "2023-05-15": _entry("2023-05-15", lts=True),
    "2023-02-13": _entry("2023-02-13", lts=False, retracted=True),
    "2022-11-01": _entry("2022-11-01", lts=True),
}


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    path = tmp_path / "release.json"
    path.write_text(json.dumps(DIRECTORY))
    return path


def test_parse_matches_cellxgene_census_reading_of_the_same_json(directory: Path,
                                                                  monkeypatch) -> None:
    releases = parse_directory(json.loads(directory.read_text()))
    assert [r.tag for r in releases] == ["2023-07-25", "2023-05-15", "2023-02-13", "2022-11-01"]
    by_tag = {r.tag: r for r in releases}
    assert by_tag["2023-05-15"].lts and by_tag["2023-05-15"].aliases == ("V2", "stable")
    assert by_tag["2023-07-25"].aliases == ("latest",)
    assert by_tag["2023-02-13"].retracted
    # cellxgene_census reads the same file (served by URL) to the same LTS flags.

    class Response:
        def raise_for_status(self) -> None:
            pass

        def json(self) -> dict:
            return json.loads(directory.read_text())

    monkeypatch.setattr(_release_directory.requests, "get", lambda *a, **k: Response())
    theirs = _release_directory.get_census_version_directory(retracted=None)
    for r in releases:
        assert theirs[r.tag]["flags"].get("lts", False) == r.lts


def test_cli_lists_releases_and_local_builds(directory: Path, tmp_path: Path) -> None:
    root = tmp_path / "builds"
    (root / "2023-05-15").mkdir(parents=True)
    (root / "2023-05-15" / "manifest.json").write_text(json.dumps({"complete": True}))
    (root / "2023-07-25").mkdir()  # unfinished: no complete manifest
    (root / "2023-07-25" / "manifest.json").write_text(json.dumps({"complete": False}))
    (root / "current").symlink_to("2023-05-15")
    result = CliRunner().invoke(main, ["census", "releases", "--directory", str(directory),
                                       "--root", str(root), "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["release"]: r for r in json.loads(result.output)}
    assert rows["2023-05-15"]["built_locally"] and rows["2023-05-15"]["current"]
    assert not rows["2023-07-25"]["built_locally"]
    assert rows["2023-05-15"]["lts"] and not rows["2023-07-25"]["lts"]
    table = CliRunner().invoke(main, ["census", "releases", "--directory", str(directory),
                                      "--root", str(root)])
    assert table.exit_code == 0
    line = next(x for x in table.output.splitlines() if x.startswith("2023-05-15"))
    assert "yes" in line and "current" in line and "stable" in line


def test_bad_directory_is_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "release.json"
    bad.write_text("{not json")
    for path in (bad, tmp_path / "missing.json"):
        result = CliRunner().invoke(main, ["census", "releases", "--directory", str(path)])
        assert result.exit_code == 2
        assert result.output.startswith("error: ") and len(result.output.splitlines()) == 1
