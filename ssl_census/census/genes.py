"""The gene annotation behind a census var, and mapping a dataset's genes into it.

Census 2023-05-15 uses Ensembl release 104 (GENCODE 38): 60,664 genes. The annotation is read
from the shared data folder (``genes/ensembl104_GRCh38_genes_biotype.tsv.gz``); without it a
deterministic stand-in with the same number of genes is made, so a synthetic census needs no
downloaded data.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ssl_census.core.errors import UserError

N_GENES_ENSEMBL_104 = 60_664
ANNOTATION_FILE = Path("genes") / "ensembl104_GRCh38_genes_biotype.tsv.gz"
SCTAB_FEATURES_FILE = Path("genes") / "scTab_features.parquet"
GENE_ID_KINDS = ("ensembl", "symbol")
# Reference-genome prefixes that multi-genome pipelines put in front of gene names.
_GENOME_PREFIX = re.compile(r"^(?:hg19|hg38|GRCh38|GRCh37|mm10)[_-]+", re.IGNORECASE)
_ENSEMBL_VERSION = re.compile(r"^(ENS[A-Z]*G\d+)\.\d+$")


def resolve_data_dir(given: str | os.PathLike[str] | None = None) -> Path | None:
    """The shared data folder: the argument, else $SSL_CENSUS_DATA, else None."""
    if given is not None:
        return Path(given)
    env = os.environ.get("SSL_CENSUS_DATA")
    return Path(env) if env else None


# The name other stages import.
data_dir = resolve_data_dir


def read_annotation(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Census var columns (feature_id, feature_name, feature_length) plus gene_biotype.

    The annotation file has no gene lengths, so ``feature_length`` is 0 for every gene.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"gene annotation not found: {path}",
                        "pass --data-dir or set SSL_CENSUS_DATA to the shared data folder")
    table = pd.read_csv(path, sep="\t", usecols=["gene_id", "gene_name", "gene_biotype"])
    return pd.DataFrame({
        "feature_id": table["gene_id"].astype(str).to_numpy(),
        "feature_name": table["gene_name"].astype(str).to_numpy(),
        "feature_length": np.zeros(len(table), dtype=np.int64),
        "gene_biotype": table["gene_biotype"].astype(str).to_numpy(),
    })


def synthetic_annotation(sctab_features: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """A deterministic 60,664-gene stand-in for Ensembl 104.

    It holds scTab's protein-coding genes (real IDs and names) when their parquet file is
    given, and numbered synthetic genes for the rest, sorted by ID like the real annotation.
    """
    ids: list[str] = []
    names: list[str] = []
    if sctab_features is not None and Path(sctab_features).exists():
        features = pd.read_parquet(sctab_features)
        ids = [str(i) for i in features.index]
        names = [str(n) for n in features["gene_names"]]
    n_coding = len(ids) or 19_357
    n_synthetic = N_GENES_ENSEMBL_104 - len(ids)
    ids += [f"ENSGSYN{i:011d}" for i in range(n_synthetic)]
    names += [f"SYN{i:05d}" for i in range(n_synthetic)]
    biotype = ["protein_coding"] * n_coding + ["lncRNA"] * (N_GENES_ENSEMBL_104 - n_coding)
    frame = pd.DataFrame({"feature_id": ids, "feature_name": names,
                          "feature_length": np.zeros(len(ids), dtype=np.int64),
                          "gene_biotype": biotype})
    return frame.sort_values("feature_id", kind="stable").reset_index(drop=True)


def load_annotation(annotation: str | os.PathLike[str] | None = None,
                    data: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """The real Ensembl 104 annotation when it can be found, else the synthetic stand-in."""
    if annotation is not None:
        return read_annotation(annotation)
    folder = resolve_data_dir(data)
    if folder is not None and (folder / ANNOTATION_FILE).exists():
        return read_annotation(folder / ANNOTATION_FILE)
    return synthetic_annotation(folder / SCTAB_FEATURES_FILE if folder is not None else None)


def clean_identifier(name: str, kind: str) -> str:
    name = _GENOME_PREFIX.sub("", str(name).strip())
    if kind == "ensembl":
        m = _ENSEMBL_VERSION.match(name)
        return m.group(1) if m else name
    return name


@dataclass(frozen=True)
class GeneMapping:
    """Where a dataset's gene columns go in the census var.

    ``source`` are column positions in the dataset, ``target`` their var positions (same
    length); columns not listed were dropped (unknown identifier, or a second column naming a
    gene already mapped).
    """

    source: np.ndarray
    target: np.ndarray
    n_genes: int

    @property
    def matched(self) -> int:
        return len(self.source)

    @property
    def dropped(self) -> int:
        return self.n_genes - len(self.source)


def map_genes(identifiers: pd.Index | np.ndarray | list[str], kind: str,
              var: pd.DataFrame) -> GeneMapping:
    """Map gene identifiers (Ensembl IDs or symbols) onto var positions.

    Symbols that Ensembl gives to several genes map to the first of them in var order, as
    matching by ``feature_name`` does in the census.
    """
    if kind not in GENE_ID_KINDS:
        raise UserError(f"unknown gene identifier kind {kind!r}",
                        f"set gene_id to one of {', '.join(GENE_ID_KINDS)}")
    column = "feature_id" if kind == "ensembl" else "feature_name"
    lookup = pd.Series(np.arange(len(var)), index=var[column].to_numpy())
    lookup = lookup[~lookup.index.duplicated(keep="first")]
    cleaned = pd.Index([clean_identifier(g, kind) for g in identifiers])
    target = lookup.reindex(cleaned).to_numpy()
    found = ~np.isnan(target)
    target_int = np.where(found, target, -1).astype(np.int64)
    # A var gene named by two columns keeps the first column only.
    first = ~pd.Series(target_int).duplicated(keep="first").to_numpy()
    keep = found & first
    return GeneMapping(np.flatnonzero(keep), target_int[keep], len(cleaned))
