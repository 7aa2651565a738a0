"""The gene space: a gene list (scTab's by default) matched by name against the census var."""

from __future__ import annotations

import hashlib
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ssl_census.core.errors import UserError, require_file
from ssl_census.shards.config import GenesConfig


@dataclass(frozen=True)
class GeneSpace:
    """Census var rows kept, in census var order."""

    var: pd.DataFrame  # soma_joinid, feature_id, feature_name
    sha256: str  # of the gene-list file
    source: str
    n_listed: int

    @property
    def n_genes(self) -> int:
        return len(self.var)


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_gene_names(path: str | os.PathLike[str]) -> list[str]:
    """Gene names from a parquet (column gene_names or feature_name) or a text file (one a line)."""
    path = Path(path)
    require_file(path, "gene list")
    if path.suffix == ".parquet":
        df = pd.read_parquet(path)
        for col in ("gene_names", "feature_name", "gene_name"):
            if col in df:
                return df[col].astype(str).tolist()
        raise UserError(f"gene list {path} has no gene_names/feature_name column",
                        "give a parquet with a gene_names column or a text file, one name a line")
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]


def fetch_gene_list(cfg: GenesConfig, cache_dir: Path) -> Path:
    """Download the pinned gene list (checked against its sha256) into ``cache_dir``."""
    if not cfg.url or not cfg.sha256:
        raise UserError("no gene list given and the config pins no URL",
                        "pass --gene-list PATH (e.g. scTab_features.parquet)")
    target = cache_dir / f"gene-list-{cfg.sha256[:16]}{Path(cfg.url).suffix}"
    if target.is_file() and file_sha256(target) == cfg.sha256:
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(cfg.url, timeout=60) as r:
            data = r.read()
    except OSError as e:
        raise UserError(f"cannot fetch the gene list from {cfg.url} ({e})",
                        "pass --gene-list PATH when offline") from None
    if hashlib.sha256(data).hexdigest() != cfg.sha256:
        raise UserError(f"gene list from {cfg.url} does not match its pinned sha256",
                        "check the URL, or pass --gene-list PATH")
    target.write_bytes(data)
    return target


def match_genes(census_var: pd.DataFrame, gene_list: str | os.PathLike[str],
                min_matched: int) -> GeneSpace:
    """Census var rows whose feature_name is in the list, kept in census var order."""
    names = read_gene_names(gene_list)
    var = census_var.sort_values("soma_joinid")
    kept = var[var["feature_name"].astype(str).isin(set(names))]
    kept = kept.drop_duplicates("feature_name", keep="first")
    if len(kept) < min_matched:
        raise UserError(
            f"the gene list {gene_list} matches only {len(kept)} of its {len(names)} genes in the "
            f"census var (at least {min_matched} needed)",
            "give a gene list of census feature_names (gene symbols), or lower genes.min_matched",
        )
    return GeneSpace(kept[["soma_joinid", "feature_id", "feature_name"]].reset_index(drop=True),
                     file_sha256(gene_list), str(gene_list), len(names))
