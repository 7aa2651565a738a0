"""One rebuild: choose a release, build it incrementally, verify, publish, write the changelog.

Layout of a rebuild root::

    <root>/
      current -> <tag>          the published build (relative symlink, see pointer.py)
      <tag>/                    a published shard store + rebuild.json, changelog.json,
                                CHANGELOG.md; earlier builds stay
      .staging/<tag>/           the build in progress (resumed by the next run after a crash)
      .parts-cache/             phase-1 parts shared by all versions, keyed by dataset content
      .lock                     flock'ed while a rebuild runs

A build is renamed from ``.staging/<tag>`` to ``<tag>`` only after it verified and its
changelog showed no donor changing split; ``current`` is switched only after that rename.
A kill at any point leaves ``current`` on the previous build, and the next run picks the
work up (finished parts and splits are kept by the shards stage; a renamed but unpublished
build is published directly).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ssl_census.census.releases import Release, is_finished_build, load_directory, parse_directory
from ssl_census.core import atomic
from ssl_census.core.errors import UserError
from ssl_census.rebuild.changelog import (
    BuildSummary,
    compare_builds,
    render_markdown,
    summarise_build,
)
from ssl_census.rebuild.choose import choose_release, is_newer, soma_uri
from ssl_census.rebuild.lock import rebuild_lock
from ssl_census.rebuild.pointer import current_build, switch_current
from ssl_census.shards import source
from ssl_census.shards.build import DEFAULT_MEMORY_BUDGET, BuildReport, build_shards
from ssl_census.shards.config import load_shards_config
from ssl_census.shards.source import CensusSpec
from ssl_census.shards.verify import verify_shards

log = logging.getLogger(__name__)

STAGING = ".staging"
PARTS_CACHE = ".parts-cache"
RECORD = "rebuild.json"
CHANGELOG_JSON = "changelog.json"
CHANGELOG_MD = "CHANGELOG.md"


@dataclass
class RebuildResult:
    release: Release
    published: bool  # False: the published build was already up to date
    current: str | None  # the build ``current`` points at when the run ends
    previous: str | None = None
    build_dir: Path | None = None
    changelog: dict[str, Any] = field(default_factory=dict)


def run_rebuild(root: str | os.PathLike[str], release: str = "latest",
                directory: str | os.PathLike[str] | None = None,
                config: str | os.PathLike[str] = "sctab-2023-05-15",
                gene_list: str | os.PathLike[str] | None = None, workers: int = 1,
                memory_budget: int = DEFAULT_MEMORY_BUDGET) -> RebuildResult:
    """Rebuild ``root`` on ``release`` when it is newer than the published build."""
    root = Path(root)
    chosen = choose_release(parse_directory(load_directory(directory)), release)
    with rebuild_lock(root):
        previous = current_build(root)
        if not is_newer(chosen, _published_release_build(root, previous)):
            log.info("up to date: %s/current is %s", root, previous)
            return RebuildResult(chosen, False, previous)
        final = root / chosen.tag
        if not _is_published_build(final):
            if final.exists():
                raise UserError(f"{final} exists but holds no finished rebuild",
                                "move it away and rerun")
            _build_verify_stage(root, chosen, soma_uri(chosen, directory), previous,
                                str(config), gene_list, workers, memory_budget)
        switch_current(root, chosen.tag)
        changelog = json.loads((final / CHANGELOG_JSON).read_text())
        log.info("published %s%s", chosen.tag,
                 f" (previous build {previous} kept)" if previous else "")
        return RebuildResult(chosen, True, chosen.tag, previous, final, changelog)


def _is_published_build(path: Path) -> bool:
    return is_finished_build(path) and (path / RECORD).is_file()


def _read_record(build: Path) -> dict[str, Any] | None:
    try:
        return json.loads((build / RECORD).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _published_release_build(root: Path, current: str | None) -> str | None:
    if current is None:
        return None
    record = _read_record(root / current)
    return record["release"]["release_build"] if record else current


def _build_verify_stage(root: Path, release: Release, uri: str, previous: str | None,
                        config: str, gene_list: str | os.PathLike[str] | None, workers: int,
                        memory_budget: int) -> None:
    """Build into .staging/<tag>, verify, write record and changelog, rename to <tag>."""
    staging = root / STAGING / release.tag
    _drop_stale_staging(root / STAGING, keep=release.tag)
    resumed = staging.exists()
    log.info("building %s from %s into %s%s", release.tag, uri, staging,
             " (resuming an interrupted build)" if resumed else "")
    report = build_shards(staging, load_shards_config(config), census_uri=uri,
                          gene_list=str(gene_list) if gene_list else None, workers=workers,
                          memory_budget=memory_budget, parts_dir=root / PARTS_CACHE)
    reuse = reuse_counters(report, resumed)
    log.info("datasets reused %d, read %d (%d cells read, %d of %d parts built)",
             reuse["datasets_reused"], reuse["datasets_read"], reuse["cells_read"],
             reuse["parts_built"], reuse["parts_total"])
    verification = verify_shards(staging)
    if not verification.ok:
        raise UserError(f"the build of {release.tag} failed verification: "
                        f"{verification.problems[0]} ({len(verification.problems)} problems)",
                        f"nothing was published; inspect with 'ssl-census shards verify "
                        f"{staging}', delete it to start that build over")
    census_datasets = read_census_datasets(uri)
    new = summarise_build(staging, census_datasets)
    old = _summary_of(root, previous)
    changelog = {"release": _release_fields(release, uri), "previous": previous,
                 "built_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                 "reuse": reuse, **compare_builds(old, new)}
    moved = changelog["donors_changed_split"]
    if moved:
        raise UserError(f"the build of {release.tag} failed verification: {len(moved)} donors "
                        f"changed split since {previous} (first {moved[0]['tech_sample']})",
                        "nothing was published; the split rule or salt must not change "
                        "between builds of one root")
    atomic.write_json(staging / RECORD, {"release": changelog["release"],
                                         "datasets": census_datasets, "previous": previous,
                                         "config": config, "built_at": changelog["built_at"]})
    atomic.write_json(staging / CHANGELOG_JSON, changelog)
    atomic.write_text(staging / CHANGELOG_MD, render_markdown(changelog))
    os.replace(staging, root / release.tag)


def _drop_stale_staging(staging_root: Path, keep: str) -> None:
    """Half-built stores of releases no longer chosen: never published; their parts stay in
    the cache, so nothing read is lost."""
    if staging_root.is_dir():
        for stale in staging_root.iterdir():
            # dot-names are caches the shards stage keeps beside its builds (the gene list)
            if stale.name != keep and not stale.name.startswith("."):
                log.info("removing the abandoned build %s", stale)
                shutil.rmtree(stale)


def reuse_counters(report: BuildReport, resumed: bool) -> dict[str, Any]:
    """Datasets whose parts all came from the parts cache vs datasets read from the census."""
    per_dataset = report.datasets
    reused = [d for d, c in per_dataset.items() if c["parts_reused"] == c["parts"]]
    return {"datasets_reused": len(reused), "datasets_read": len(per_dataset) - len(reused),
            "cells_read": report.cells_read, "parts_built": report.parts_built,
            "parts_total": report.parts_total, "resumed": resumed,
            "per_dataset": per_dataset}


def read_census_datasets(uri: str) -> dict[str, dict[str, str]]:
    """dataset_id -> content fingerprint and title, from the census's datasets table."""
    with CensusSpec(uri=uri).open() as census:
        table = source.read_datasets(census)
    fingerprints = source.dataset_fingerprints(table)
    titles = dict(zip(table["dataset_id"].astype(str),
                      table.get("dataset_title", table["dataset_id"]).astype(str), strict=True))
    return {d: {"fingerprint": fp, "title": titles.get(d, "")} for d, fp in fingerprints.items()}


def _summary_of(root: Path, build: str | None) -> BuildSummary | None:
    if build is None:
        return None
    record = _read_record(root / build) or {"datasets": {}}
    return summarise_build(root / build, record["datasets"])


def _release_fields(release: Release, uri: str) -> dict[str, Any]:
    return {"tag": release.tag, "release_build": release.release_build,
            "release_date": release.release_date, "lts": release.lts, "soma_uri": uri}
