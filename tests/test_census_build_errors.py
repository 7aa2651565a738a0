"""Bad input to 'census build-local' and 'census synth': one-line error, exit 2, no store."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from click.testing import CliRunner

from ssl_census.census.genes import synthetic_annotation
from ssl_census.cli import main

LABELS = ("B cells", "CD14+ Monocytes", "CD4 T cells", "CD8 T cells", "FCGR3A+ Monocytes")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder: the stand-in Ensembl 104 annotation and 200 cells of raw counts over 500
    of its genes (named by symbol, labelled and with donors and conditions as Kang et al.'s
    file has them), good and bad."""
    root = tmp_path_factory.mktemp("data")
    (root / "genes").mkdir()
    annotation = synthetic_annotation()
    pd.DataFrame({"gene_id": annotation["feature_id"], "gene_name": annotation["feature_name"],
                  "gene_biotype": annotation["gene_biotype"]}).to_csv(
        root / "genes" / "ensembl104_GRCh38_genes_biotype.tsv.gz", sep="\t", index=False)
    (root / "h5ad").mkdir()
    rng = np.random.default_rng(0)
    obs = pd.DataFrame({"cell_type": np.resize(LABELS, 200), "donor": np.resize(["d1", "d2"], 200),
                        "condition": np.resize(["stim", "stim", "ctrl"], 200)},
                       index=[f"cell-{i}" for i in range(200)])
    cells = ad.AnnData(sp.csr_matrix(rng.poisson(0.5, (200, 500)).astype(np.float32)), obs=obs,
                       var=pd.DataFrame(index=annotation["feature_name"].iloc[:500].to_numpy()))
    cells.write_h5ad(root / "h5ad" / "good.h5ad")
    dup = cells.copy()
    dup.obs_names = [dup.obs_names[0]] + list(dup.obs_names[1:-1]) + [dup.obs_names[0]]
    dup.write_h5ad(root / "h5ad" / "duplicate_ids.h5ad")
    half = cells.copy()
    half.X = sp.csr_matrix(half.X, dtype=np.float32) * np.float32(0.5)
    half.write_h5ad(root / "h5ad" / "normalised.h5ad")
    return root


def _config(tmp_path: Path, file: str = "h5ad/good.h5ad", gene_id: str = "symbol",
            labels: str | None = None) -> Path:
    labels = labels or "\n".join(
        f'"{k}" = "{v}"' for k, v in zip(LABELS, ("CL:0000236", "CL:0001054", "CL:0000624",
                                                   "CL:0000625", "CL:0002396"), strict=True))
    path = tmp_path / "census.toml"
    path.write_text(f"""
[labels]
{labels}

[[datasets]]
file = "{file}"
gene_id = "{gene_id}"
label_column = "cell_type"
donor_column = "donor"
assay = "10x 3' v2"
duplicates = {{ column = "condition", values = ["ctrl"] }}
""")
    return path


def _build(config: Path, out: Path, data: Path):
    return CliRunner().invoke(main, ["census", "build-local", "--config", str(config),
                                     "--out", str(out), "--data-dir", str(data)])


def _assert_one_line_error(result, *words: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    for word in words:
        assert word in lines[0], lines[0]


def _assert_no_store(out: Path) -> None:
    assert not out.exists()
    assert not out.with_name(out.name + ".partial").exists()


def test_good_small_config_builds(tmp_path: Path, data: Path) -> None:
    out = tmp_path / "store"
    result = _build(_config(tmp_path), out, data)
    assert result.exit_code == 0, result.output
    assert "good.h5ad: 200 cells" in result.output
    assert (out / "census_data" / "homo_sapiens").is_dir()


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"file": "h5ad/missing.h5ad"}, ("not found", "missing.h5ad")),
    ({"labels": '"B cells" = "CL:0000236"'}, ("has no mapping", "[labels]")),
    ({"file": "h5ad/duplicate_ids.h5ad"}, ("duplicate cell id",)),
    ({"file": "h5ad/normalised.h5ad"}, ("non-integer", "raw integer")),
    ({"gene_id": "entrez"}, ("unknown gene identifier kind", "'entrez'")),
    ({"labels": '"B cells" = "CL:9999999"\n"CD14+ Monocytes" = "CL:0001054"\n'
                '"CD4 T cells" = "CL:0000624"\n"CD8 T cells" = "CL:0000625"\n'
                '"FCGR3A+ Monocytes" = "CL:0002396"'}, ("CL:9999999", "not a known")),
])
def test_bad_input_gives_one_line_and_no_store(tmp_path: Path, data: Path, kwargs: dict,
                                               words: tuple[str, ...]) -> None:
    out = tmp_path / "store"
    _assert_one_line_error(_build(_config(tmp_path, **kwargs), out, data), *words)
    _assert_no_store(out)


def test_existing_store_is_refused_and_kept(tmp_path: Path, data: Path) -> None:
    out = tmp_path / "store"
    assert _build(_config(tmp_path), out, data).exit_code == 0
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    _assert_one_line_error(_build(_config(tmp_path), out, data), "already holds a store")
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    synth = CliRunner().invoke(main, ["census", "synth", "--cells", "20", "--out", str(out)])
    _assert_one_line_error(synth, "already holds a store")


def test_missing_data_dir_is_a_user_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("SSL_CENSUS_DATA", raising=False)
    result = CliRunner().invoke(main, ["census", "build-local", "--config", "pbmc-real",
                                       "--out", str(tmp_path / "s")])
    _assert_one_line_error(result, "data directory", "SSL_CENSUS_DATA")
    _assert_no_store(tmp_path / "s")
