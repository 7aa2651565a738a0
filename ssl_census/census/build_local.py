"""Build a census-layout store from local h5ad files described by a TOML config.

The config (``configs/census/pbmc-real.toml`` is the worked example, ``docs/census.md`` the
reference) names the files and, per file, where its labels, donors, batches and assay come
from, how labels map to Cell Ontology terms, what kind of gene identifiers it uses and which
cells duplicate cells of another file (``is_primary_data = False``).

The build has two passes: a plan that reads only obs and var of every file and checks
everything it can (files, label mappings, cell ids, gene identifiers), then the write, which
streams every file's counts in row blocks. A failure in either leaves no store.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ssl_census.census.genes import (
    GENE_ID_KINDS,
    GeneMapping,
    map_genes,
    read_annotation,
    resolve_data_dir,
)
from ssl_census.census.layout import (
    ASSAYS,
    CensusWriter,
    is_census_store,
    local_path,
    normalise_schema,
)
from ssl_census.core.config import load_toml
from ssl_census.core.errors import UserError
from ssl_census.core.progress import progress

# Namespace of the dataset and collection ids derived from names (stable across builds).
ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/ssl-census/census-local")
UNKNOWN = "unknown"
ROW_BLOCK = 16_384
# Obs terms a dataset may set (ontology term ids, or "unknown"); defaults below.
TERM_DEFAULTS = {
    "tissue": "UBERON:0000178",
    "tissue_general": "UBERON:0000178",
    "disease": "PATO:0000461",
    "development_stage": UNKNOWN,
    "sex": UNKNOWN,
    "self_reported_ethnicity": UNKNOWN,
}


@cache
def _ontology():
    from cellxgene_ontology_guide.ontology_parser import OntologyParser

    return OntologyParser()


def term_label(term_id: str, where: str) -> str:
    """The ontology label of ``term_id`` ("unknown" stays "unknown")."""
    if term_id == UNKNOWN:
        return UNKNOWN
    try:
        return _ontology().get_term_label(term_id)
    except (KeyError, ValueError):
        raise UserError(f"{where}: {term_id!r} is not a known ontology term id",
                        "use an id such as CL:0000236, UBERON:0000178 or 'unknown'") from None


def stable_id(*parts: str) -> str:
    return str(uuid.uuid5(ID_NAMESPACE, "/".join(parts)))


@dataclass
class DatasetPlan:
    """One census dataset: a file, or one batch of a file."""

    name: str
    file: Path
    rows: np.ndarray  # row positions in the file, in census order
    dataset_id: str
    dataset_version_id: str
    title: str
    collection_name: str
    collection_doi: str
    obs: pd.DataFrame  # census obs columns for these rows
    genes: GeneMapping

    @property
    def n_cells(self) -> int:
        return len(self.rows)


@dataclass
class BuildPlan:
    var: pd.DataFrame
    datasets: list[DatasetPlan]
    schema: str
    build_date: str
    report: list[dict[str, Any]] = field(default_factory=list)

    @property
    def n_cells(self) -> int:
        return sum(d.n_cells for d in self.datasets)


def _file_checksum(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _column(obs: pd.DataFrame, name: str, file: Path, key: str) -> pd.Series:
    if name not in obs.columns:
        raise UserError(f"{file.name}: obs has no column {name!r} (set as {key})",
                        f"use one of: {', '.join(map(str, obs.columns)) or 'none'}")
    return obs[name].astype(str)


def _map_values(values: pd.Series, mapping: dict[str, str], file: Path, what: str,
                fix: str) -> pd.Series:
    missing = sorted(set(values.unique()) - set(mapping))
    if missing:
        raise UserError(f"{file.name}: {what} {missing[0]!r} has no mapping"
                        + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""), fix)
    return values.map(mapping)


def _assay_ids(entry: dict[str, Any], obs: pd.DataFrame, file: Path) -> pd.Series:
    if "assay_column" in entry:
        names = _map_values(_column(obs, entry["assay_column"], file, "assay_column"),
                            entry.get("assays", {}), file, "assay value",
                            "add it to the dataset's [datasets.assays] table")
    elif "assay" in entry:
        names = pd.Series(entry["assay"], index=obs.index)
    else:
        raise UserError(f"{file.name}: no assay given", "set assay or assay_column")
    unknown = sorted(set(names) - set(ASSAYS))
    if unknown:
        raise UserError(f"{file.name}: unknown assay {unknown[0]!r}",
                        f"use one of: {', '.join(ASSAYS)}")
    return names


def _obs_for_dataset(entry: dict[str, Any], obs: pd.DataFrame, labels: dict[str, str],
                     defaults: dict[str, str], dataset_id: str, file: Path) -> pd.DataFrame:
    n = len(obs)
    out: dict[str, Any] = {"dataset_id": np.full(n, dataset_id, dtype=object)}
    assays = _assay_ids(entry, obs, file)
    out["assay"] = assays.to_numpy(dtype=object)
    out["assay_ontology_term_id"] = assays.map(ASSAYS).to_numpy(dtype=object)
    if "label_column" in entry:
        mapping = {**labels, **entry.get("labels", {})}
        cell_types = _map_values(_column(obs, entry["label_column"], file, "label_column"),
                                 mapping, file, "label",
                                 "add it with its Cell Ontology term to [labels]")
    else:
        cell_types = pd.Series(UNKNOWN, index=obs.index)
    out["cell_type_ontology_term_id"] = cell_types.to_numpy(dtype=object)
    out["cell_type"] = cell_types.map(
        {t: term_label(t, f"{file.name} labels") for t in cell_types.unique()}
    ).to_numpy(dtype=object)
    if "donor_column" in entry:
        out["donor_id"] = _column(obs, entry["donor_column"], file, "donor_column").to_numpy(
            dtype=object)
    else:
        out["donor_id"] = np.full(n, str(entry.get("donor", UNKNOWN)), dtype=object)
    out["is_primary_data"] = _primary(entry, obs, file)
    out["suspension_type"] = np.full(n, entry.get("suspension_type",
                                                  defaults.get("suspension_type", "cell")),
                                     dtype=object)
    for term, default in TERM_DEFAULTS.items():
        term_id = str(entry.get(term, defaults.get(term, default)))
        out[f"{term}_ontology_term_id"] = np.full(n, term_id, dtype=object)
        out[term] = np.full(n, term_label(term_id, f"{file.name} {term}"), dtype=object)
    return pd.DataFrame(out)


def _primary(entry: dict[str, Any], obs: pd.DataFrame, file: Path) -> np.ndarray:
    primary = np.full(len(obs), bool(entry.get("is_primary_data", True)))
    dup = entry.get("duplicates")
    if dup is not None:
        values = _column(obs, dup["column"], file, "duplicates.column")
        primary &= ~values.isin([str(v) for v in dup["values"]]).to_numpy()
    return primary


def plan_build(config: dict[str, Any], data: Path, schema: str | None = None) -> BuildPlan:
    """Check the config against the files and decide every dataset's cells and genes."""
    schema = normalise_schema(schema or config.get("schema"))
    annotation = data / config.get("annotation", "genes/ensembl104_GRCh38_genes_biotype.tsv.gz")
    var = read_annotation(annotation)[["feature_id", "feature_name", "feature_length"]]
    entries = config.get("datasets", [])
    if not entries:
        raise UserError("the config lists no [[datasets]]", "add at least one [[datasets]] entry")
    labels = {str(k): str(v) for k, v in config.get("labels", {}).items()}
    defaults = {k: str(v) for k, v in config.get("obs_defaults", {}).items()}
    plans: list[DatasetPlan] = []
    report: list[dict[str, Any]] = []
    for entry in entries:
        if "file" not in entry:
            raise UserError("a [[datasets]] entry has no file", "add file = \"h5ad/NAME.h5ad\"")
        file = data / entry["file"]
        if not file.exists():
            raise UserError(f"dataset file not found: {file}",
                            "check the file name, or pass --data-dir / set SSL_CENSUS_DATA")
        kind = entry.get("gene_id")
        if kind not in GENE_ID_KINDS:
            raise UserError(f"{file.name}: unknown gene identifier kind {kind!r}",
                            f"set gene_id to one of: {', '.join(GENE_ID_KINDS)}")
        adata = ad.read_h5ad(file, backed="r")
        try:
            obs, var_names = adata.obs.copy(), adata.var
            genes_src = (var_names[entry["gene_column"]] if "gene_column" in entry
                         else var_names.index)
        finally:
            adata.file.close()
        if not obs.index.is_unique:
            dup = obs.index[obs.index.duplicated()][0]
            raise UserError(f"{file.name}: duplicate cell id {dup!r}",
                            "make the obs names unique (e.g. anndata's obs_names_make_unique)")
        mapping = map_genes(np.asarray(genes_src, dtype=str), kind, var)
        name = entry.get("name", file.stem)
        checksum = _file_checksum(file)
        batches = (_column(obs, entry["batch_column"], file, "batch_column")
                   if "batch_column" in entry else pd.Series("", index=obs.index))
        for batch in sorted(batches.unique()):
            rows = np.flatnonzero((batches == batch).to_numpy())
            key = f"{file.name}/{batch}" if batch else file.name
            dataset_id = stable_id("dataset", key)
            version = entry.get("dataset_version")
            version_id = (str(version) if version is not None
                          else stable_id("version", checksum, batch))
            title = entry.get("title", name) + (f" ({batch})" if batch else "")
            sub_obs = _obs_for_dataset(entry, obs.iloc[rows], labels, defaults, dataset_id, file)
            plans.append(DatasetPlan(
                name=f"{name}/{batch}" if batch else name, file=file, rows=rows,
                dataset_id=dataset_id, dataset_version_id=version_id, title=title,
                collection_name=entry.get("collection_name", name),
                collection_doi=entry.get("collection_doi", ""), obs=sub_obs, genes=mapping))
        report.append({"file": entry["file"], "cells": len(obs), "genes": mapping.n_genes,
                       "genes_matched": mapping.matched, "genes_dropped": mapping.dropped,
                       "datasets": int(batches.nunique())})
    return BuildPlan(var=var, datasets=plans, schema=schema,
                     build_date=str(config.get("census_build_date", "2023-05-15")),
                     report=report)


def _datasets_frame(plan: BuildPlan) -> pd.DataFrame:
    return pd.DataFrame({
        "collection_id": [stable_id("collection", d.collection_name) for d in plan.datasets],
        "collection_name": [d.collection_name for d in plan.datasets],
        "collection_doi": [d.collection_doi for d in plan.datasets],
        "dataset_id": [d.dataset_id for d in plan.datasets],
        "dataset_version_id": [d.dataset_version_id for d in plan.datasets],
        "dataset_title": [d.title for d in plan.datasets],
        "dataset_h5ad_path": [f"{d.dataset_id}.h5ad" for d in plan.datasets],
        "dataset_total_cell_count": [d.n_cells for d in plan.datasets],
    })


def _presence(plan: BuildPlan) -> np.ndarray:
    presence = np.zeros((len(plan.datasets), len(plan.var)), dtype=bool)
    for i, d in enumerate(plan.datasets):
        presence[i, d.genes.target] = True
    return presence


def read_counts(x: Any, rows: np.ndarray, genes: GeneMapping, n_var: int,
                file: Path) -> sp.csr_matrix:
    """Rows of a file's X as integer counts in census var columns (CSR, sorted indices)."""
    # One contiguous read (h5py reads row lists one row at a time), then the rows wanted.
    lo, hi = int(rows[0]), int(rows[-1]) + 1
    block = sp.csr_matrix(x[lo:hi])
    if hi - lo != len(rows):
        block = block[rows - lo]
    block = block[:, genes.source]
    data = block.data
    if data.size and (not np.all(np.isfinite(data)) or np.any(data < 0)
                      or np.any(data != np.round(data))):
        raise UserError(f"{file.name}: X holds non-integer or negative counts",
                        "give raw integer UMI/read counts (not normalised or log values)")
    out = sp.csr_matrix((data.astype(np.float32), genes.target[block.indices], block.indptr),
                        shape=(len(rows), n_var))
    out.eliminate_zeros()
    out.sort_indices()
    return out


def write_plan(plan: BuildPlan, out: str | os.PathLike[str]) -> None:
    n_var = len(plan.var)
    with CensusWriter(out, plan.var, _datasets_frame(plan), _presence(plan), plan.n_cells,
                      plan.schema, plan.build_date) as writer, \
            progress(plan.n_cells, desc="census build-local") as bar:
        for index, d in enumerate(plan.datasets):
            adata = ad.read_h5ad(d.file, backed="r")
            try:
                for start in range(0, d.n_cells, ROW_BLOCK):
                    rows = d.rows[start:start + ROW_BLOCK]
                    block = read_counts(adata.X, rows, d.genes, n_var, d.file)
                    writer.write_block(d.obs.iloc[start:start + len(rows)], block.indptr,
                                       block.indices.astype(np.int64), block.data,
                                       np.full(len(rows), index))
                    bar.update(len(rows))
            finally:
                adata.file.close()


def build_local_census(config_path: str | os.PathLike[str], out_uri: str | os.PathLike[str],
                       data_dir: str | os.PathLike[str] | None = None,
                       schema: str | None = None) -> dict[str, Any]:
    """Build the store; returns a report (per file: cells, genes matched and dropped)."""
    t0 = time.perf_counter()
    final = local_path(out_uri)
    if is_census_store(final):
        raise UserError(f"{final} already holds a store",
                        "choose a new --out path or delete the old store first")
    config = load_toml(config_path, kind="census")
    folder = resolve_data_dir(data_dir)
    if folder is None:
        raise UserError("no data directory given",
                        "pass --data-dir or set SSL_CENSUS_DATA to the folder holding h5ad/")
    if not folder.is_dir():
        raise UserError(f"data directory not found: {folder}", "check --data-dir")
    plan = plan_build(config, folder, schema)
    write_plan(plan, final)
    return {
        "uri": str(final), "schema": plan.schema, "census_build_date": plan.build_date,
        "n_cells": plan.n_cells, "n_primary": int(sum(d.obs["is_primary_data"].sum()
                                                      for d in plan.datasets)),
        "n_datasets": len(plan.datasets), "n_genes": len(plan.var), "files": plan.report,
        "seconds": round(time.perf_counter() - t0, 2),
    }
