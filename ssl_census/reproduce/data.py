"""The data of the experiment: the census, the gene list, the shard stores and the h5ad views.

Everything is made by the stages' own APIs (census build-local, shards build) and kept while
it still matches the config, so a rerun of ``make reproduce`` resumes: the local census and
each view record a key of their inputs (``<name>.key`` beside them) and are rebuilt when it
changes; the gene list is recomputed on every run and rewritten only when it differs; a shard
store built from other inputs (its build_id) is replaced. :func:`identity` is what the steps'
keys (reproduce.runs) record of each input.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from ssl_census.census.build_local import build_local_census
from ssl_census.census.layout import is_census_store
from ssl_census.census.open import open_census
from ssl_census.core import atomic
from ssl_census.core.config import load_toml
from ssl_census.core.errors import UserError
from ssl_census.core.store import tree_checksum
from ssl_census.pretext.gene_programmes import TF_SUFFIX, read_gmt
from ssl_census.reproduce.config import H5adView, ReproduceConfig
from ssl_census.shards.build import build_shards
from ssl_census.shards.config import load_shards_config
from ssl_census.shards.selection import matching_dataset_ids
from ssl_census.shards.store import read_manifest

log = logging.getLogger(__name__)


def digest(inputs: dict[str, Any]) -> str:
    """A short, stable digest of a JSON-able description of inputs (the keys of steps)."""
    blob = json.dumps(inputs, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def identity(path: Path) -> str:
    """Content identity of an input: a shard store's checksums, a view's key, a file's bytes."""
    path = Path(path)
    manifest = read_manifest(path) if path.is_dir() else None
    if manifest is not None:
        return digest({"splits": manifest.get("splits"), "tables": manifest.get("tables")})
    sidecar = _key_file(path)
    if sidecar.is_file():
        return sidecar.read_text().strip()
    return tree_checksum(path)[:16]


def _key_file(path: Path) -> Path:
    return path.with_name(path.name.removesuffix(".h5ad") + ".key")


def ensure_census(conf: ReproduceConfig, work: Path, data_dir: Path,
                  census_uri: str | None) -> str:
    """The census to read: ``census_uri`` as given, else the local census, built again when its
    config or data files changed (and then the stores made from it go too)."""
    if census_uri:
        return census_uri
    out = work / "census"
    spec = load_toml(conf.census_config, kind="census")
    files = [spec.get("annotation"), *(d.get("file") for d in spec.get("datasets", []))]
    key = digest({"config": spec, "files": {f: tree_checksum(data_dir / f)[:16]
                                            for f in files if f and (data_dir / f).is_file()}})
    if is_census_store(out) and _recorded(out) == key:
        log.info(f"[census] {out} exists, kept")
        return str(out)
    if is_census_store(out):
        log.info(f"[census] {out} was built from another config or data: built again")
        shutil.rmtree(out)
        shutil.rmtree(work / "shards", ignore_errors=True)
    report = build_local_census(conf.census_config, out, data_dir)
    atomic.write_text(_key_file(out), key + "\n")
    log.info(f"[census] built {out}: {report['n_cells']} cells, {report['n_datasets']} datasets "
             f"in {report['seconds']} s")
    return str(out)


def _recorded(path: Path) -> str | None:
    f = _key_file(path)
    return f.read_text().strip() if f.is_file() else None


def _measured_gene_names(census_uri: str, titles: tuple[str, ...]) -> set[str]:
    """Genes the named datasets measured (census feature_dataset_presence_matrix)."""
    with open_census(uri=census_uri) as census:
        datasets = census["census_info"]["datasets"].read().concat().to_pandas()
        rna = census["census_data"]["homo_sapiens"].ms["RNA"]
        var = rna.var.read(column_names=["soma_joinid", "feature_name"]).concat().to_pandas()
        presence = rna["feature_dataset_presence_matrix"].read().tables().concat().to_pandas()
    ids = matching_dataset_ids(datasets, titles, "genes.measured_by")
    rows = datasets.loc[datasets["dataset_id"].astype(str).isin(ids), "soma_joinid"]
    genes = presence.loc[presence["soma_dim_0"].isin(rows), "soma_dim_1"]
    return set(var.loc[var["soma_joinid"].isin(genes), "feature_name"].astype(str))


def _gene_set_genes(conf: ReproduceConfig, data_dir: Path) -> set[str]:
    """Members of ``genes.add_set_members`` GMTs and the transcription factors named by
    ``genes.add_set_regulators`` GMTs (``<TF>_TARGET_GENES``), so gene-programme methods find
    their programmes in a reduced gene space."""
    out: set[str] = set()
    for gmt in conf.genes_add_set_members:
        out.update(g for genes in read_gmt(data_dir / gmt).values() for g in genes)
    for gmt in conf.genes_add_set_regulators:
        out.update(n[: -len(TF_SUFFIX)] for n in read_gmt(data_dir / gmt) if n.endswith(TF_SUFFIX))
    return out


def ensure_gene_list(conf: ReproduceConfig, work: Path, data_dir: Path, census_uri: str) -> Path:
    """The model gene list (text, one symbol a line): the configured list, restricted to the
    genes measured by ``genes.measured_by`` when that is set (rewritten only when it changes)."""
    out = work / "genes.txt"
    listed = set(pd.read_parquet(data_dir / conf.gene_list)["gene_names"].astype(str))
    names = set(listed)
    if conf.genes_measured_by:
        names &= _measured_gene_names(census_uri, conf.genes_measured_by)
    names |= _gene_set_genes(conf, data_dir) & listed
    if not names:
        raise UserError("the gene list is empty after restricting it to measured genes",
                        "check [genes] measured_by")
    text = "\n".join(sorted(names)) + "\n"
    if out.is_file() and out.read_text() == text:
        return out
    atomic.write_text(out, text)
    log.info(f"[genes] {len(names)} genes of {conf.gene_list}"
             + (f" (measured by {', '.join(conf.genes_measured_by)}, plus gene-set genes)"
                if conf.genes_measured_by else ""))
    return out


def shards_config(conf: ReproduceConfig, name: str) -> Any:
    """The base shards preset with the store's own ``[query]`` keys laid over it."""
    base = load_shards_config(conf.shards_base)
    query = {k: tuple(v) if isinstance(v, list) else v for k, v in conf.stores[name].items()}
    try:
        # named by the store alone: configs that extend one another share their stores
        return replace(base, name=f"reproduce-{name}", query=replace(base.query, **query))
    except TypeError as e:
        raise UserError(f"[shards.stores.{name}] has an unknown key ({e})",
                        "use keys of the shards [query] section") from None


def ensure_stores(conf: ReproduceConfig, work: Path, census_uri: str,
                  gene_list: Path) -> dict[str, Path]:
    """Every shard store of the config (built; kept when complete and of the same inputs)."""
    stores = {}
    for name in conf.stores:
        out = work / "shards" / name
        report = build_shards(out, shards_config(conf, name), census_uri=census_uri,
                              gene_list=str(gene_list), workers=conf.shards_workers,
                              replace=True)
        cells = {s: v["n_cells"] for s, v in report.manifest["splits"].items()}
        log.info(f"[shards] {name}: {cells} cells -> {out}")
        stores[name] = out
    return stores


def _cl_terms(conf: ReproduceConfig, labels: pd.Series) -> pd.Series | None:
    """Labels mapped to Cell Ontology terms by the census config's [labels] table, when it
    names every label (so a classifier head can be scored on the file)."""
    table = load_toml(conf.census_config, kind="census").get("labels", {})
    mapped = labels.astype(str).map(table)
    return None if mapped.isna().any() else mapped


def ensure_view(conf: ReproduceConfig, view: H5adView, work: Path,
                data_dir: Path) -> tuple[Path, str]:
    """(h5ad path, label key) of a view: the file's selected cells, written again when the
    file, the selection or the label table changed; labels get their Cell Ontology term beside
    them where the census config maps them all."""
    out = work / "data" / f"{view.name}.h5ad"
    cl_key = f"{view.label_key}_ontology_term_id"
    key = digest({"file": tree_checksum(data_dir / view.file)[:16], "select": view.select,
                  "labels": load_toml(conf.census_config, kind="census").get("labels", {})})
    if out.is_file() and _recorded(out) == key:
        obs = ad.read_h5ad(out, backed="r").obs
        return out, cl_key if cl_key in obs.columns else view.label_key
    adata = ad.read_h5ad(data_dir / view.file)
    if view.select:
        column, values = view.select["column"], [str(v) for v in view.select["values"]]
        if column not in adata.obs.columns:
            raise UserError(f"{view.file} has no obs column {column!r}",
                            f"use one of {', '.join(map(str, adata.obs.columns))}")
        adata = adata[adata.obs[column].astype(str).isin(values).to_numpy()].copy()
    terms = _cl_terms(conf, adata.obs[view.label_key])
    if terms is not None:
        adata.obs[cl_key] = terms.to_numpy()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    adata.write_h5ad(tmp)
    tmp.replace(out)
    atomic.write_text(_key_file(out), key + "\n")
    log.info(f"[data] {view.name}: {adata.n_obs} cells of {view.file}"
             + (f" where {view.select['column']} in {view.select['values']}"
                if view.select else ""))
    return out, cl_key if terms is not None else view.label_key


def n_cells(path: Path) -> int:
    return int(ad.read_h5ad(path, backed="r").n_obs)


def label_counts(path: Path, key: str) -> dict[str, int]:
    vc = ad.read_h5ad(path, backed="r").obs[key].astype(str).value_counts()
    return {str(k): int(v) for k, v in vc.items() if v > 0 and not np.isnan(v)}
