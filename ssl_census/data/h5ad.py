"""Cells from a dataset the model never saw (an h5ad), brought into the model's gene space.

The matrix read is X, a named layer or ``.raw`` (see :func:`resolve`); it may hold raw
counts, log1p-normalised values or per-cell scaled counts (:mod:`ssl_census.data.h5ad_inputs`).
Genes are matched by Ensembl ID (version suffix ignored) or by symbol (a reference prefix such
as ``hg19_`` stripped), in whichever identifier column matches most genes; genes the model has
but the file lacks stay zero. Values are then normalised exactly as the shards are
(:func:`ssl_census.shards.values.normalise`: library size over the model's gene space, 10,000
counts, log1p), so a cell looks to the model as it would have in a shard store.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ssl_census.core.errors import UserError
from ssl_census.data.h5ad_inputs import (
    CHECK_ROWS,
    CHUNK_CELLS,
    COUNTS,
    LOG1P,
    CellSource,
    Finding,
    holds,
    open_h5ad,
    quiet_anndata,
    recognise,
    sources_in_memory,
)
from ssl_census.shards.values import normalise, normalise_scaled

log = logging.getLogger(__name__)

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

    @property
    def coverage(self) -> float:
        """The fraction of the model's genes the file has."""
        return self.n_matched / self.n_model_genes if self.n_model_genes else 0.0


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


def to_model_space(x: sp.csr_matrix, match: GeneMatch) -> sp.csr_matrix:
    """``x`` with columns moved to the model's gene positions (unmatched genes dropped); a
    model gene receives at most one file gene, so values are moved, never summed."""
    cols = np.flatnonzero(match.target >= 0)
    move = sp.csr_matrix(
        (np.ones(len(cols), dtype=x.dtype), (cols, match.target[cols])),
        shape=(x.shape[1], match.n_model_genes),
    )
    out = sp.csr_matrix(x @ move)
    out.eliminate_zeros()
    out.sort_indices()
    return out




def model_values(chunk: sp.csr_matrix, kind: str, match: GeneMatch) -> sp.csr_matrix:
    """Cells (CSR, values of ``kind``) in the model's gene space, normalised as the shards
    are: raw counts go through the build's own integer path; log1p-normalised values are
    ``expm1``-ed first, and per-cell scaled values renormalised as they are (the per-cell
    factor cancels in the library size)."""
    if kind == COUNTS:
        moved = to_model_space(chunk, match)
        data, _ = normalise(moved.indptr, moved.data.astype(np.int64))
    else:
        y = chunk.astype(np.float64)
        if kind == LOG1P:
            np.expm1(y.data, out=y.data)
        moved = to_model_space(y, match)
        del y  # memory: a chunk's float64 copies one at a time
        data = normalise_scaled(moved.indptr, moved.data)
    return sp.csr_matrix((data, moved.indices, moved.indptr), shape=moved.shape)


# -- which matrix to read ---------------------------------------------------------------------

AUTO_SOURCES = ("X", ".raw", "layers['counts']")
MIN_GENE_COVERAGE = 0.5  # below this fraction of the model's genes, say so


@dataclass(frozen=True)
class Resolved:
    """The matrix the model reads, what it holds, and how its genes map."""

    source: CellSource
    kind: str
    match: GeneMatch
    notes: tuple[str, ...]


def _candidates(sources: list[CellSource], layer: str | None, what: str) -> list[CellSource]:
    by_where = {s.where: s for s in sources}
    if layer is None:
        return [by_where[w] for w in AUTO_SOURCES if w in by_where]
    if layer == "raw" and ".raw" in by_where:
        return [by_where[".raw"]]
    if f"layers[{layer!r}]" in by_where:
        return [by_where[f"layers[{layer!r}]"]]
    names = (["raw (.raw)"] if ".raw" in by_where else []) + [
        s.where[8:-2] for s in sources if s.where.startswith("layers[")]
    missing = ".raw and no layer 'raw'" if layer == "raw" else f"layer {layer!r}"
    raise UserError(f"{what} has no {missing}",
                    f"use one of: {', '.join(names) or '(none: leave the layer out, X is read)'}")


def _refusal(what: str, checked: list[tuple[CellSource, Finding]],
             sources: list[CellSource], layer: str | None) -> UserError:
    found = [f"{s.where} holds {f.detail}" for s, f in checked]
    if layer is None:
        seen = {s.where for s, _ in checked}
        found += [f"no {w}" for w in AUTO_SOURCES if w not in seen]
        others = [s.where for s in sources if s.where not in AUTO_SOURCES]
        if others:
            found.append(f"not checked: {', '.join(others)}")
    return UserError(
        f"no values the model can read in {what}: {'; '.join(found)}",
        "give raw counts or log1p-normalised values (of counts scaled per cell) in X, .raw or "
        "layers['counts'], or name the layer that holds them (--layer NAME, layer=NAME)",
    )


def _source_note(chosen: CellSource, kind: str, match: GeneMatch,
                 checked: list[tuple[CellSource, Finding, GeneMatch | None]]) -> str | None:
    if chosen.where == "X":
        return None
    x = next(((f, m) for s, f, m in checked if s.where == "X"), None)
    reading = f"reading {chosen.where} ({kind}, {match.n_matched} of the model's genes)"
    if x is None:
        return f"there is no X; {reading}"
    if x[0].kind is None:
        return f"X holds {x[0].detail}; {reading} instead"
    n_x = x[1].n_matched if x[1] is not None else 0
    return f"{reading} rather than X ({x[0].kind}, {n_x} of the model's genes)"


def coverage_note(match: GeneMatch) -> str | None:
    """One line when the file has fewer than MIN_GENE_COVERAGE of the model's genes."""
    if match.coverage >= MIN_GENE_COVERAGE:
        return None
    return (f"only {match.n_matched} of the model's {match.n_model_genes} genes "
            f"({match.coverage:.1%}) are in the file, under the {MIN_GENE_COVERAGE:.0%} this "
            "tool warns at: the missing genes are read as zero (not expressed), so the "
            "embedding and the predictions rest on fewer genes than the model learnt from and "
            "are less reliable")


def resolve(sources: list[CellSource], layer: str | None, model_var: pd.DataFrame,
            what: str) -> Resolved:
    """Choose the matrix to read: the named ``layer`` ('raw' = .raw), or without one the first
    of X, .raw, layers['counts'] that holds values the model can read, preferring another to
    X only when it has more of the model's genes. Refuses, in one line, when none does."""
    candidates = _candidates(sources, layer, what)
    checked = []
    for source in candidates:
        finding = recognise(source.sample())
        match = match_genes(source.var, model_var) if finding.kind else None
        checked.append((source, finding, match))
    usable = [(s, f, m) for s, f, m in checked if f.kind and m is not None]
    if not usable:
        raise _refusal(what, [(s, f) for s, f, _ in checked], sources, layer)
    source, finding, match = max(usable, key=lambda c: c[2].n_matched)  # first wins a tie
    if match.n_matched == 0:
        raise UserError(
            f"none of the {len(source.var)} genes of {what} is in the model's gene space",
            "name genes by Ensembl ID or HGNC symbol (in var_names or a var column)",
        )
    assert finding.kind is not None
    notes = [source.note, _source_note(source, finding.kind, match, checked) if layer is None
             else None, coverage_note(match)]
    return Resolved(source, finding.kind, match, tuple(n for n in notes if n))


# -- a whole file in memory (evaluate --h5ad, cross-modality) ---------------------------------


@dataclass(frozen=True)
class UnseenCells:
    """An h5ad's cells in the model's gene space, log1p-normalised (cells x genes)."""

    adata: ad.AnnData
    x: sp.csr_matrix  # float32 log1p(counts / library_size * 1e4)
    match: GeneMatch
    source: str  # the matrix read: X, .raw or a layer
    kind: str  # what it held (inputs.KINDS)


def read_h5ad(path: str | os.PathLike[str]) -> ad.AnnData:
    """A whole h5ad in memory, or one line saying why it cannot be read."""
    with open_h5ad(path):
        pass
    with quiet_anndata():
        return ad.read_h5ad(path)


def load_unseen(
    path: str | os.PathLike[str],
    model_var: pd.DataFrame,
    layer: str | None = None,
    required_obs: tuple[str, ...] = (),
    on_note: Callable[[str], None] = log.warning,
) -> UnseenCells:
    """Read ``path`` and bring its cells into ``model_var``'s gene space, normalised."""
    path = Path(path)
    adata = read_h5ad(path)
    for key in required_obs:
        if key not in adata.obs.columns:
            raise UserError(f"{path} has no obs column {key!r}",
                            f"use one of: {', '.join(map(str, adata.obs.columns)) or '(none)'}")
    resolved = resolve(sources_in_memory(adata), layer, model_var, str(path))
    for note in resolved.notes:
        on_note(note)
    x = resolved.source.rows(0, adata.n_obs)
    for start in range(0, adata.n_obs, CHUNK_CELLS):
        check_chunk(resolved, start, x[start : start + CHUNK_CELLS])
    return UnseenCells(adata, model_values(x, resolved.kind, resolved.match), resolved.match,
                       resolved.source.where, resolved.kind)


def check_chunk(resolved: Resolved, start: int, chunk: sp.csr_matrix) -> None:
    """Refuse a chunk (cells from row ``start``) whose first cells hold another kind of
    values than the file's first cells did."""
    if not holds(chunk[:CHECK_ROWS], resolved.kind):
        raise UserError(f"{resolved.source.where} holds {resolved.kind} in its first cells but "
                        f"not in the cells from row {start} on",
                        "give one kind of values (raw counts or log1p-normalised) for all cells")
