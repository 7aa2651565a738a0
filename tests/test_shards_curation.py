"""scTab's cell-type rule: its ontology part (one implementation, CellOntology.check_term)
applied to scTab's own 164 types in the pinned CL release, and the curation of a store using
the same checks. Ontology only: no census."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import pytest
from click.testing import CliRunner

from ssl_census.cli import main
from ssl_census.core.ontology import NATIVE_CELL, PINNED_CL_RELEASE, load_cell_ontology
from ssl_census.shards.config import CurationConfig
from ssl_census.shards.curation import compare_with_sctab, curate_cell_types, sctab_cell_types

B_CELL, LEUKOCYTE, HEMATOPOIETIC_CELL, NEURON = (
    "CL:0000236", "CL:0000738", "CL:0000988", "CL:0000540")


@pytest.fixture(scope="module")
def sctab():
    return compare_with_sctab()


def _row(result, term: str) -> pd.Series:
    return result.table.set_index("cell_type_ontology_term_id").loc[term]


def test_the_list_is_scTabs_164_types_and_each_id_is_the_named_term():
    types = sctab_cell_types()
    assert len(types) == 164
    assert types["cell_type_ontology_term_id"].is_unique and types["cell_type"].is_unique
    onto = load_cell_ontology()
    for term, name, short in types.itertuples(index=False):
        rec = onto.terms[term]
        # the name is the term's label, a synonym, its label before it went obsolete, or
        # scTab's short form of the name is a synonym (a label CL changed since)
        names = {rec["label"].lower(), rec["label"].lower().removeprefix("obsolete ")}
        names |= {s.lower() for s in rec.get("synonyms", [])}
        assert name.lower() in names or short.lower() in names, (term, name)


def test_counts_agree_with_the_ontology_read_directly(sctab):
    onto = load_cell_ontology()
    cell = onto.resolve(NATIVE_CELL)
    expected = set()
    for term in sctab_cell_types()["cell_type_ontology_term_id"]:
        ancestors = onto.terms[onto.resolve(term)]["ancestors"]
        if len(ancestors) > 7 and cell in ancestors:
            expected.add(term)
    assert sctab.release == PINNED_CL_RELEASE
    assert set(sctab.passing["cell_type_ontology_term_id"]) == expected
    assert len(sctab.passing) + len(sctab.failing) == 164
    assert 0 < len(sctab.failing) < 164
    assert (sctab.failing["reason"] != "").all() and (sctab.passing["reason"] == "").all()
    assert len(sctab.failure_lines()) == len(sctab.failing)
    assert sctab.summary().startswith(f"{len(expected)} of scTab's 164 cell types pass")


def test_a_deep_type_passes_and_a_shallow_one_fails_for_its_depth(sctab):
    b_cell, leukocyte = _row(sctab, B_CELL), _row(sctab, LEUKOCYTE)
    assert b_cell["passes"] and b_cell["n_ancestors"] > 7 and b_cell["below_root"]
    assert not leukocyte["passes"] and leukocyte["below_root"]
    n = load_cell_ontology().n_ancestors(LEUKOCYTE)
    assert n <= 7 and leukocyte["reason"] == f"{n} ancestors, needs more than 7"


def test_more_than_min_ancestors_is_strict(sctab):
    """A type with exactly 7 ancestors fails, one with 8 passes (scTab: more than 7)."""
    table = sctab.table[sctab.table["below_root"]]
    assert not table[table["n_ancestors"] == 7].empty
    assert not table[table["n_ancestors"] == 7]["passes"].any()
    assert table[table["n_ancestors"] == 8]["passes"].all()
    lower = compare_with_sctab(replace(CurationConfig(), min_ancestors=6))
    assert len(lower.passing) > len(sctab.passing)


def test_a_type_outside_the_root_fails_for_that(sctab):
    blood = compare_with_sctab(replace(CurationConfig(), root=HEMATOPOIETIC_CELL))
    neuron = _row(blood, NEURON)
    assert not neuron["passes"] and f"not below {HEMATOPOIETIC_CELL}" in neuron["reason"]
    assert _row(blood, B_CELL)["passes"]
    assert len(blood.passing) < len(sctab.passing)


def test_obsolete_and_unknown_terms(sctab):
    cge = _row(sctab, "CL:4023070")  # obsolete since scTab, replaced
    assert cge["obsolete"] and cge["resolved"] == "CL:4023064" and cge["in_ontology"]
    assert any(line.startswith("caudal ganglionic eminence derived GABAergic cortical "
                               "interneuron (CL:4023070): obsolete, replaced by CL:4023064")
               for line in sctab.change_lines())
    check = load_cell_ontology().check_term("CL:9999999", NATIVE_CELL, 7)
    assert not check.passes and check.reasons == ["not in the release"]
    assert sctab.in_sctab(["CL:4023064", "CL:4023070", B_CELL, "CL:0000556"]) == [
        True, True, True, False]


def test_store_curation_applies_the_same_ontology_checks(sctab):
    """scTab's types with enough cells and tech_samples: curation keeps exactly those the
    comparison passes."""
    types = sctab_cell_types()
    cfg = replace(CurationConfig(), min_cells=2, min_tech_samples=1)
    obs = pd.DataFrame({
        "cell_type_ontology_term_id": types["cell_type_ontology_term_id"].repeat(2),
        "cell_type": types["cell_type"].repeat(2),
        "tech_sample": ["a", "b"] * len(types),
    })
    stats = curate_cell_types(obs, load_cell_ontology(), cfg)
    assert set(stats.kept["cell_type_ontology_term_id"]) == set(
        sctab.passing["cell_type_ontology_term_id"])
    too_few = curate_cell_types(obs, load_cell_ontology(), replace(cfg, min_tech_samples=2))
    assert too_few.kept.empty


def test_cli_reports_the_comparison(sctab):
    r = CliRunner().invoke(main, ["shards", "sctab-types"])
    assert r.exit_code == 0, r.output
    assert r.output.splitlines()[0] == sctab.summary()
    assert f"  fails: leukocyte ({LEUKOCYTE}): " in r.output
    bad = CliRunner().invoke(main, ["shards", "sctab-types", "--cl-release", "v1999-01-01"])
    assert bad.exit_code == 2 and "not shipped" in bad.output
