"""GMT reading and mapping into a gene space, with the real gene-set files where their
conventions matter (padded lines, MSigDB and DoRothEA names)."""

from __future__ import annotations

import socket

import pandas as pd
import pytest

from ssl_census.core.errors import UserError
from ssl_census.pretext import gene_programmes as gp

SCTAB = "genes/scTab_features.parquet"


@pytest.fixture(scope="module")
def sctab_genes(shared_data):
    return pd.read_parquet(shared_data / SCTAB)["gene_names"].astype(str).tolist()


def test_reads_padded_gmt_without_blank_genes(shared_data):
    sets = gp.read_gmt(shared_data / "genesets/besca_celltype_signatures.gmt")
    assert len(sets) >= 120
    assert sets["Bcell"][:2] == ["CD19", "MS4A1"]
    assert all(g for genes in sets.values() for g in genes)


def test_maps_symbols_into_gene_positions(shared_data, sctab_genes):
    sets = gp.read_gmt(shared_data / "genesets/h.all.v7.5.1.symbols.gmt")
    progs = gp.map_gene_sets(sets, sctab_genes)
    assert len(progs) == 50 and not progs.dropped
    i = progs.names.index("HALLMARK_HYPOXIA")
    named = {sctab_genes[j] for j in progs.genes[i]}
    assert named <= set(sets["HALLMARK_HYPOXIA"]) and len(named) > 150
    m = progs.membership().to_dense()
    assert m.shape == (len(sctab_genes), 50) and int(m[:, i].sum()) == len(named)


def test_tolerance_drops_and_reports_poorly_matched_sets(shared_data, sctab_genes):
    sets = gp.read_gmt(shared_data / "genesets/besca_celltype_signatures.gmt")
    half = sctab_genes[::2]
    loose = gp.map_gene_sets(sets, half, min_fraction=0.1)
    strict = gp.map_gene_sets(sets, half, min_fraction=0.7)
    assert len(strict) < len(loose)
    assert set(strict.dropped) >= set(loose.dropped)
    assert len(strict) + len(strict.dropped) == len(sets)


def test_too_few_sets_is_a_user_error():
    sets = {"Bcell": ["CD19", "MS4A1", "PAX5", "CR2"], "NK": ["NCAM1", "KLRD1", "NKG7"],
            "Monocyte": ["CD14", "LYZ", "FCN1", "S100A8"]}
    with pytest.raises(UserError, match="only 1 of 3 gene sets map"):
        gp.map_gene_sets(sets, ["CD19", "MS4A1", "PAX5", "GAPDH"])


def test_tf_programmes_exclude_their_factor(shared_data, sctab_genes):
    sets = gp.read_gmt(shared_data / "genesets/dorothea_ABC_tf_targets.gmt")
    progs = gp.map_gene_sets(sets, sctab_genes, with_regulators=True)
    assert len(progs) > 200
    for name, genes, tf in zip(progs.names, progs.genes, progs.regulators, strict=True):
        assert sctab_genes[tf] == name.removesuffix("_TARGET_GENES")
        assert tf not in genes


def test_missing_file_and_offline_fetch_are_user_errors(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="not found"):
        gp.read_gmt(tmp_path / "nope.gmt")
    with socket.socket() as s:  # a port nobody listens on: the fetch fails like no network
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setitem(gp.MSIGDB_URLS, "c8", f"http://127.0.0.1:{port}/c8.gmt")
    with pytest.raises(UserError, match="--gene-sets"):
        gp.fetch_msigdb("c8", cache=tmp_path)


def test_fetch_uses_the_cache(tmp_path, monkeypatch):
    url = gp.MSIGDB_URLS["c3_tft"]
    cached = tmp_path / "msigdb" / url.rsplit("/", 1)[1]
    cached.parent.mkdir(parents=True)
    cached.write_text("SPI1_TARGET_GENES\tcached\tCD14\tLYZ\tFCN1\n")
    monkeypatch.setenv("SSL_CENSUS_CACHE", str(tmp_path))
    assert gp.resolve_gene_sets("msigdb:c3_tft") == cached
