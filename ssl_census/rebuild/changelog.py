"""What changed between two published builds, and the check that no donor changed split.

A build's summary (``BuildSummary``) is read from its shard store plus the census's datasets
table as recorded at build time (``rebuild.json``), so an old build can be compared with a
new one after the old census has gone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from ssl_census.shards.split import tech_sample
from ssl_census.shards.store import SPLITS, read_manifest

LIST_LIMIT = 20  # names shown per list in CHANGELOG.md (the JSON has them all)


@dataclass
class BuildSummary:
    """The parts of a build a changelog compares."""

    datasets: dict[str, dict[str, Any]]  # dataset_id -> fingerprint, title, cells (stored)
    cells_per_split: dict[str, int]
    genes: list[str]  # feature_id in store order
    donor_split: dict[str, str]  # tech_sample (dataset_id/donor_id) -> split


def read_donor_split(store: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for split in SPLITS:
        obs = pq.read_table(store / split / "obs.parquet",
                            columns=["dataset_id", "donor_id"]).to_pandas()
        # duplicates dropped on the categorical codes first: a census split has millions of rows
        pairs = obs.drop_duplicates().astype(str)
        out.update(dict.fromkeys(tech_sample(pairs["dataset_id"], pairs["donor_id"]), split))
    return out


def stored_cells_per_dataset(store: Path) -> dict[str, int]:
    counts: pd.Series | None = None
    for split in SPLITS:
        ids = pq.read_table(store / split / "obs.parquet", columns=["dataset_id"]).to_pandas()
        vc = ids["dataset_id"].value_counts()
        vc.index = vc.index.astype(str)
        counts = vc if counts is None else counts.add(vc, fill_value=0)
    return {k: int(v) for k, v in (counts if counts is not None else pd.Series()).items()}


def summarise_build(store: Path, census_datasets: dict[str, dict[str, str]]) -> BuildSummary:
    """``census_datasets``: dataset_id -> {fingerprint, title}, from the build's census."""
    manifest = read_manifest(store) or {}
    cells = stored_cells_per_dataset(store)
    datasets = {d: {**info, "cells": cells.get(d, 0)} for d, info in census_datasets.items()}
    genes = pq.read_table(store / "var.parquet", columns=["feature_id"]).column(0).to_pylist()
    return BuildSummary(
        datasets=datasets,
        cells_per_split={s: int(v["n_cells"]) for s, v in manifest.get("splits", {}).items()},
        genes=[str(g) for g in genes],
        donor_split=read_donor_split(store),
    )


def compare_builds(old: BuildSummary | None, new: BuildSummary) -> dict[str, Any]:
    """Datasets added/removed/changed, cells per split, gene-space and donor-split changes."""
    before = old.datasets if old else {}
    added = sorted(set(new.datasets) - set(before))
    removed = sorted(set(before) - set(new.datasets))
    changed = sorted(d for d in set(new.datasets) & set(before)
                     if new.datasets[d]["fingerprint"] != before[d]["fingerprint"])
    old_genes = old.genes if old else []
    old_split = old.donor_split if old else {}
    moved = sorted(t for t in set(new.donor_split) & set(old_split)
                   if new.donor_split[t] != old_split[t])
    return {
        "datasets": {
            "added": [_dataset_line(d, new.datasets[d]) for d in added],
            "removed": [_dataset_line(d, before[d]) for d in removed],
            "changed": [{**_dataset_line(d, new.datasets[d]),
                         "previous_fingerprint": before[d]["fingerprint"],
                         "previous_cells": before[d]["cells"]} for d in changed],
            "unchanged": len(set(new.datasets) & set(before)) - len(changed),
        },
        "cells_per_split": {s: {"previous": (old.cells_per_split.get(s, 0) if old else 0),
                                "now": new.cells_per_split.get(s, 0)} for s in SPLITS},
        # a first build has no gene space to differ from: nothing listed as added
        "genes": {"previous": len(old_genes), "now": len(new.genes),
                  "added": sorted(set(new.genes) - set(old_genes)) if old else [],
                  "removed": sorted(set(old_genes) - set(new.genes)),
                  "order_changed": bool(old and set(old_genes) == set(new.genes)
                                        and old_genes != new.genes)},
        "donors_changed_split": [{"tech_sample": t, "previous": old_split[t],
                                  "now": new.donor_split[t]} for t in moved],
    }


def _dataset_line(dataset_id: str, info: dict[str, Any]) -> dict[str, Any]:
    return {"dataset_id": dataset_id, "title": info.get("title", ""),
            "fingerprint": info["fingerprint"], "cells": info["cells"]}


def render_markdown(log: dict[str, Any]) -> str:
    """CHANGELOG.md of a build, from its changelog.json content."""
    release, reuse, ds = log["release"], log["reuse"], log["datasets"]
    lines = [f"# Build {release['tag']} (census release {release['release_build']})", "",
             f"Previous build: {log['previous'] or 'none'}. Built {log['built_at']}.", "",
             "## Datasets", "",
             f"{len(ds['added'])} added, {len(ds['removed'])} removed, "
             f"{len(ds['changed'])} changed, {ds['unchanged']} unchanged.", ""]
    for kind in ("added", "removed", "changed"):
        for d in ds[kind][:LIST_LIMIT]:
            lines.append(f"- {kind}: {d['title'] or d['dataset_id']} ({d['dataset_id']}, "
                         f"{d['cells']:,} cells stored)")
    lines += ["", "## Cells per split", "", "| split | previous | now |", "|---|---|---|"]
    lines += [f"| {s} | {v['previous']:,} | {v['now']:,} |"
              for s, v in log["cells_per_split"].items()]
    genes = log["genes"]
    lines += ["", "## Gene space", "",
              f"{genes['previous']:,} -> {genes['now']:,} genes; {len(genes['added'])} added, "
              f"{len(genes['removed'])} removed"
              + ("; same genes in another order" if genes["order_changed"] else "") + "."]
    for kind in ("added", "removed"):
        if genes[kind]:
            lines.append(f"- {kind}: {', '.join(genes[kind][:LIST_LIMIT])}"
                         + (" ..." if len(genes[kind]) > LIST_LIMIT else ""))
    moved = log["donors_changed_split"]
    lines += ["", "## Donors that changed split", "", f"{len(moved)} (must be 0)."]
    lines += [f"- {m['tech_sample']}: {m['previous']} -> {m['now']}" for m in moved[:LIST_LIMIT]]
    lines += ["", "## Work reused", "",
              f"Datasets taken from the parts cache: {reuse['datasets_reused']}; read from the "
              f"census: {reuse['datasets_read']} ({reuse['cells_read']:,} cells, "
              f"{reuse['parts_built']} of {reuse['parts_total']} parts built)"
              + (" in the run that finished the build (it resumed an interrupted one)"
                 if reuse["resumed"] else "") + ".", ""]
    return "\n".join(lines)
