"""Shared fixtures: paths to the real data in ../shared/data, and small stores built once."""

from __future__ import annotations

import os
from pathlib import Path

import anndata as ad
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SSL_CENSUS_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "h5ad").is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (set SSL_CENSUS_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def annotation_dir() -> Path | None:
    """The data folder for a synthetic census's var: ../shared/data when it has the real
    Ensembl 104 annotation, else None (the synthetic 60,664-gene stand-in)."""
    return SHARED_DATA if (SHARED_DATA / "genes").is_dir() else None


@pytest.fixture(scope="session")
def synth_census_uri(tmp_path_factory: pytest.TempPathFactory, annotation_dir: Path | None
                     ) -> str:
    """A 3,000-cell synthetic census (pbmc profile, seed 0, schema 1.0.0), built once per
    session."""
    from ssl_census.census.synth import write_synthetic_census

    uri = tmp_path_factory.mktemp("census") / "synth-3000"
    write_synthetic_census(uri, 3_000, seed=0, data_dir=annotation_dir)
    return str(uri)


@pytest.fixture(scope="session")
def real_census_uri(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> str:
    """The real local census (configs/census/pbmc-real.toml, schema 1.0.0), built once.

    34,169 cells of ten h5ad files in 16 datasets; the ctrl cells of kang_ctrlstim are
    is_primary_data == False.
    """
    from ssl_census.census.build_local import build_local_census

    uri = tmp_path_factory.mktemp("census") / "pbmc-real"
    build_local_census(ROOT / "configs" / "census" / "pbmc-real.toml", uri, shared_data)
    return str(uri)


@pytest.fixture(scope="session")
def real_shards_dir(tmp_path_factory: pytest.TempPathFactory, real_census_uri: str,
                    shared_data: Path) -> Path:
    """Shards of the real local census (configs/shards/local-pbmc.toml, scTab gene list),
    built once per session: unlabelled 10x cells kept with cell_type_code -1. Its phase-1
    parts stay in the sibling ``parts-cache`` directory for builds that reuse them."""
    from ssl_census.shards.build import build_shards
    from ssl_census.shards.config import load_shards_config

    out = tmp_path_factory.mktemp("shards") / "pbmc-real"
    build_shards(out, load_shards_config("local-pbmc"), census_uri=real_census_uri,
                 gene_list=str(shared_data / "genes" / "scTab_features.parquet"), workers=1,
                 parts_dir=out.parent / "parts-cache")
    return out


@pytest.fixture(scope="session")
def synth_shards_dir(tmp_path_factory: pytest.TempPathFactory, synth_census_uri: str) -> Path:
    """Shards of the synthetic census (configs/shards/synthetic.toml), built once per session,
    over the annotation's protein-coding genes (the ones the census's programmes draw from):
    16 cell types, train / val / test by donor."""
    from ssl_census.census.genes import load_annotation
    from ssl_census.shards.build import build_shards
    from ssl_census.shards.config import load_shards_config

    folder = tmp_path_factory.mktemp("shards")
    annotation = load_annotation(data=SHARED_DATA if (SHARED_DATA / "genes").is_dir() else None)
    genes = annotation.loc[annotation["gene_biotype"] == "protein_coding", "feature_name"]
    gene_list = folder / "genes.txt"
    gene_list.write_text("\n".join(genes.astype(str)) + "\n")
    out = folder / "synth-3000"
    build_shards(out, load_shards_config("synthetic"), census_uri=synth_census_uri,
                 gene_list=str(gene_list), workers=1)
    return out


@pytest.fixture(scope="session")
def synth_cells(tmp_path_factory: pytest.TempPathFactory, annotation_dir: Path | None
                ) -> ad.AnnData:
    """The primary cells of a 16,000-cell synthetic census (pbmc profile, seed 1) over its
    2,000 most often measured genes, as an AnnData of raw counts (synth_support.census_cells):
    the cells of the loader, pre-training, fine-tuning and embedding tests. Built once."""
    from synth_support import census_cells

    from ssl_census.census.synth import write_synthetic_census

    census = tmp_path_factory.mktemp("census") / "synth-16000"
    write_synthetic_census(census, 16_000, seed=1, data_dir=annotation_dir)
    return census_cells(census)


@pytest.fixture(scope="session")
def synth_gene_sets(tmp_path_factory: pytest.TempPathFactory, synth_cells: ad.AnnData
                    ) -> dict[str, Path]:
    """GMT files over synth_cells' genes: ``programmes`` (cell-type programmes, for GP masking
    and GP to GP) and ``tf_targets`` (for GP to TF); synth_support.write_gene_sets."""
    from synth_support import write_gene_sets

    return write_gene_sets(synth_cells, tmp_path_factory.mktemp("genesets"))


@pytest.fixture(scope="session")
def synth_loader_store(tmp_path_factory: pytest.TempPathFactory, synth_cells: ad.AnnData
                       ) -> Path:
    """synth_cells as the loader tests' store (loader_support.build_synth_store): train and
    2,000 val cells, ordered by donor, the rarer cell types thinned."""
    from loader_support import build_synth_store

    return build_synth_store(synth_cells, tmp_path_factory.mktemp("shards") / "loader")
