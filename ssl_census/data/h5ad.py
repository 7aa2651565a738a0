"""Cells from a dataset the model never saw (an h5ad), brought into the model's gene space.

Genes are matched by Ensembl ID (version suffix ignored) or by symbol (a reference prefix such
as ``hg19_`` stripped), in whichever identifier column matches most genes; genes the model has
but the file lacks stay zero. Values are then normalised exactly as the shards are
(:func:`ssl_census.shards.values.normalise`: library size over the model's gene space, 10,000
counts, log1p), so a cell looks to the model as it would have in a shard store.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ssl_census.core.errors import UserError, require_file
from ssl_census.shards.values import normalise

_PREFIX = re.compile(r"^(hg19|hg38|grch37|grch38|mm10)[_\-]+", re.IGNORECASE)
_ENSEMBL = re.compile(r"^ENS[A-Z]*G\d+", re.IGNORECASE)
_INTEGER_CHECK_ENTRIES = 5_000_000


def clean_identifier(name: str) -> str:
    """``hg19_CD3E`` -> ``CD3E``; ``ENSG00000198851.9`` -> ``ENSG00000198851``."""
    name = _PREFIX.sub("", str(name).strip())
    if _ENSEMBL.match(name):
        return name.split(".")[0].upper()
    return name


@dataclass(frozen=True)
class GeneMatch:
    """Where each file gene goes in the model's gene space (-1: not in the model)."""

    target: np.ndarray  # int64 [n_file_genes]
    column: str  # the file's identifier column that matched best ('index' or a var column)
    n_model_genes: int
    matched_genes: list[str] = field(repr=False)  # model feature_ids that received a file gene

    @property
    def n_matched(self) -> int:
        return len(self.matched_genes)


def _lookup(model_var: pd.DataFrame) -> dict[str, int]:
    """Identifier -> model gene position; IDs first, then symbols (first occurrence wins)."""
    table: dict[str, int] = {}
    for col in ("feature_id", "feature_name"):
        for i, name in enumerate(model_var[col].astype(str)):
            table.setdefault(clean_identifier(name), i)
    return table


def match_genes(file_var: pd.DataFrame, model_var: pd.DataFrame) -> GeneMatch:
    """Map the file's genes into ``model_var`` (columns feature_id, feature_name).

    A model gene receives at most one file gene (the first that names it), so duplicated
    symbols in a file are not double counted.
    """
    lookup = _lookup(model_var)
    candidates = {"index": file_var.index.to_series()}
    for col in file_var.columns:
        if file_var[col].dtype == object or isinstance(file_var[col].dtype, pd.CategoricalDtype):
            candidates[col] = file_var[col]
    best: tuple[int, str, np.ndarray] | None = None
    for col, names in candidates.items():
        target = np.array([lookup.get(clean_identifier(n), -1) for n in names.astype(str)],
                          dtype=np.int64)
        # keep only the first file gene per model gene
        _, first = np.unique(np.where(target >= 0, target, -1 - np.arange(len(target))),
                             return_index=True)
        keep = np.zeros(len(target), dtype=bool)
        keep[first] = True
        target[~keep] = -1
        n = int((target >= 0).sum())
        if best is None or n > best[0]:
            best = (n, col, target)
    assert best is not None
    n, col, target = best
    ids = model_var["feature_id"].astype(str).to_numpy()
    matched = [str(g) for g in ids[np.sort(target[target >= 0])]]
    return GeneMatch(target, col, len(model_var), matched)


def check_raw_counts(x: sp.csr_matrix, what: str) -> None:
    """Refuse normalised or log-transformed values: the model expects raw integer counts."""
    sample = x.data[:_INTEGER_CHECK_ENTRIES]
    if len(sample) == 0:
        raise UserError(f"{what} holds no non-zero counts", "give a file with raw UMI counts")
    if np.any(sample < 0) or not np.all(np.equal(np.mod(sample, 1), 0)):
        raise UserError(
            f"{what} holds non-integer or negative values (normalised or log-transformed data)",
            "give the raw integer counts (e.g. adata.raw or a 'counts' layer via --layer)",
        )


def to_model_space(x: sp.csr_matrix, match: GeneMatch) -> sp.csr_matrix:
    """Raw counts with columns moved to the model's gene positions (unmatched genes dropped)."""
    cols = np.flatnonzero(match.target >= 0)
    move = sp.csr_matrix(
        (np.ones(len(cols), dtype=np.float32), (cols, match.target[cols])),
        shape=(x.shape[1], match.n_model_genes),
    )
    out = sp.csr_matrix(x @ move)
    out.eliminate_zeros()
    out.sort_indices()
    return out


@dataclass(frozen=True)
class UnseenCells:
    """An h5ad's cells in the model's gene space: log1p values and raw counts (cells x genes)."""

    adata: ad.AnnData
    x: sp.csr_matrix  # float32 log1p(counts / library_size * 1e4)
    counts: sp.csr_matrix  # float32 raw counts, model genes only
    library_size: np.ndarray
    match: GeneMatch


def _matrix(adata: ad.AnnData, layer: str | None, path: Path) -> sp.csr_matrix:
    if layer is None:
        m = adata.X
    elif layer not in adata.layers:
        raise UserError(f"{path} has no layer {layer!r}",
                        f"use one of: {', '.join(adata.layers) or '(none: leave --layer out)'}")
    else:
        m = adata.layers[layer]
    return sp.csr_matrix(m, dtype=np.float32)


def load_unseen(
    path: str | os.PathLike[str],
    model_var: pd.DataFrame,
    layer: str | None = None,
    required_obs: tuple[str, ...] = (),
) -> UnseenCells:
    """Read ``path`` and bring its cells into ``model_var``'s gene space, normalised."""
    path = Path(path)
    require_file(path, "h5ad file")
    adata = ad.read_h5ad(path)
    for key in required_obs:
        if key not in adata.obs.columns:
            raise UserError(f"{path} has no obs column {key!r}",
                            f"use one of: {', '.join(map(str, adata.obs.columns)) or '(none)'}")
    raw = _matrix(adata, layer, path)
    check_raw_counts(raw, f"{path}" + (f" layer {layer!r}" if layer else " X"))
    match = match_genes(adata.var, model_var)
    if match.n_matched == 0:
        raise UserError(
            f"none of the {adata.n_vars} genes of {path} is in the model's gene space",
            "name genes by Ensembl ID or HGNC symbol (in var_names or a var column)",
        )
    counts = to_model_space(raw, match)
    data, lib = normalise(counts.indptr, counts.data.astype(np.int64))
    x = sp.csr_matrix((data, counts.indices, counts.indptr), shape=counts.shape)
    return UnseenCells(adata, x, counts, lib, match)
