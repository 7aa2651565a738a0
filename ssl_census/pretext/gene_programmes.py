"""Gene programmes: GMT gene sets mapped into a store's gene space.

The paper masks MSigDB C8 cell-type signatures (GP masking, GP to GP) and predicts
transcription factors from MSigDB C3 TFT target sets (GP to TF). Any GMT file works
(``--gene-sets PATH``); with a network the MSigDB files are fetched once from pinned URLs
into a cache directory. Symbols are matched against ``var.parquet``'s ``feature_name``; a set
that keeps too few of its genes is dropped and reported, and too few surviving sets is an
error, because masking a handful of programmes is not the method the user asked for.
"""

from __future__ import annotations

import logging
import os
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ssl_census.core.atomic import write_bytes
from ssl_census.core.errors import UserError

log = logging.getLogger(__name__)

MSIGDB_RELEASE = "2023.1.Hs"
MSIGDB_URLS = {
    "c8": f"https://data.broadinstitute.org/gsea-msigdb/msigdb/release/{MSIGDB_RELEASE}/"
    f"c8.all.v{MSIGDB_RELEASE}.symbols.gmt",
    "c3_tft": f"https://data.broadinstitute.org/gsea-msigdb/msigdb/release/{MSIGDB_RELEASE}/"
    f"c3.tft.v{MSIGDB_RELEASE}.symbols.gmt",
}
TF_SUFFIX = "_TARGET_GENES"


def cache_dir() -> Path:
    return Path(os.environ.get("SSL_CENSUS_CACHE", Path.home() / ".cache" / "ssl-census"))


def read_gmt(path: str | os.PathLike[str]) -> dict[str, list[str]]:
    """Set name -> gene symbols (blank fields, as padded GMT files have, are skipped)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"gene-set file not found: {p}", "pass a GMT file with --gene-sets")
    sets: dict[str, list[str]] = {}
    for n, line in enumerate(p.read_text().splitlines(), 1):
        fields = [f.strip() for f in line.split("\t")]
        if not line.strip():
            continue
        if len(fields) < 3:
            raise UserError(f"{p}:{n} is not a GMT line", "use name<TAB>description<TAB>genes...")
        sets[fields[0]] = [g for g in fields[2:] if g]
    if not sets:
        raise UserError(f"{p} holds no gene sets", "pass a GMT file with --gene-sets")
    return sets


def fetch_msigdb(collection: str, cache: Path | None = None, timeout: float = 60) -> Path:
    """The cached MSigDB GMT of ``collection`` (``c8`` or ``c3_tft``), downloaded if missing."""
    if collection not in MSIGDB_URLS:
        raise UserError(f"unknown MSigDB collection {collection!r}",
                        f"use one of {', '.join(MSIGDB_URLS)}")
    url = MSIGDB_URLS[collection]
    target = (cache or cache_dir()) / "msigdb" / url.rsplit("/", 1)[1]
    if target.is_file():
        return target
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            data = r.read()
    except (urllib.error.URLError, OSError) as e:
        raise UserError(
            f"could not download MSigDB {collection} from {url} ({e})",
            "download the GMT file yourself and pass it with --gene-sets PATH",
        ) from None
    target.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(target, data)
    return target


def resolve_gene_sets(spec: str, cache: Path | None = None) -> Path:
    """``msigdb:c8`` / ``msigdb:c3_tft`` (fetched and cached) or a path to a GMT file."""
    if spec.startswith("msigdb:"):
        return fetch_msigdb(spec.split(":", 1)[1], cache)
    return Path(spec)


@dataclass
class GeneProgrammes:
    """Gene sets as index arrays into a gene space of ``n_genes`` genes."""

    names: list[str]
    genes: list[np.ndarray]
    n_genes: int
    regulators: np.ndarray | None = None  # one transcription-factor gene index per set
    dropped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.names)

    def membership(self) -> torch.Tensor:
        """Sparse ``[n_genes, n_sets]`` 0/1 matrix: column j marks the genes of set j."""
        rows = torch.from_numpy(np.concatenate(self.genes).astype(np.int64))
        cols = torch.repeat_interleave(torch.tensor([len(g) for g in self.genes]))
        values = torch.ones(len(rows), dtype=torch.float32)
        m = torch.sparse_coo_tensor(
            torch.stack([rows, cols]), values, (self.n_genes, len(self)), check_invariants=True
        )
        return m.coalesce()


def _symbol_index(gene_names: Sequence[str]) -> dict[str, int]:
    index: dict[str, int] = {}
    for i, name in enumerate(gene_names):
        index.setdefault(str(name).upper(), i)
    return index


def map_gene_sets(
    sets: dict[str, list[str]],
    gene_names: Sequence[str],
    min_genes: int = 3,
    min_fraction: float = 0.5,
    min_sets: int = 2,
    with_regulators: bool = False,
) -> GeneProgrammes:
    """Map symbol sets into the gene space, keeping sets with enough of their genes present.

    With ``with_regulators`` each set must name its transcription factor (``<TF>_TARGET_GENES``,
    as MSigDB C3 TFT and DoRothEA name them) and the factor must be in the gene space; the
    factor is removed from its own programme so it cannot be read off the input.
    """
    index = _symbol_index(gene_names)
    names, genes, regulators, dropped = [], [], [], []
    for name, symbols in sets.items():
        found = sorted({index[s.upper()] for s in symbols if s.upper() in index})
        tf = None
        if with_regulators:
            tf = index.get(name[: -len(TF_SUFFIX)].upper()) if name.endswith(TF_SUFFIX) else None
            found = [g for g in found if g != tf]
        n_unique = len({s.upper() for s in symbols})
        if (
            (with_regulators and tf is None)
            or len(found) < min_genes
            or len(found) < min_fraction * n_unique
        ):
            dropped.append(name)
            continue
        names.append(name)
        genes.append(np.asarray(found, dtype=np.int64))
        regulators.append(tf)
    if dropped:
        log.warning("gene sets: kept %d, dropped %d (too few genes in the gene space%s)",
                    len(names), len(dropped), " or no TF" if with_regulators else "")
    if len(names) < min_sets:
        raise UserError(
            f"only {len(names)} of {len(sets)} gene sets map into the {len(gene_names)}-gene space "
            f"(need {min_sets}; a set needs >= {min_genes} genes and >= {min_fraction:.0%} found)",
            "pass gene sets named by the gene symbols of this store with --gene-sets",
        )
    return GeneProgrammes(
        names, genes, len(gene_names),
        np.asarray(regulators, dtype=np.int64) if with_regulators else None, dropped,
    )


def load_gene_programmes(
    spec: str | os.PathLike[str],
    gene_names: Sequence[str],
    with_regulators: bool = False,
    **tolerance: float,
) -> GeneProgrammes:
    """Read a GMT path or ``msigdb:<collection>`` and map it into ``gene_names``."""
    path = resolve_gene_sets(str(spec))
    return map_gene_sets(read_gmt(path), gene_names, with_regulators=with_regulators, **tolerance)
