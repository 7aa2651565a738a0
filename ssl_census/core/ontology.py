"""The Cell Ontology (CL), offline, from a release shipped in ``cellxgene-ontology-guide``
(pinned: PINNED_CL_RELEASE).

The package ships each CL release as zstd-compressed JSON: term id -> label, ``ancestors``
(term id -> distance), ``deprecated`` and ``replaced_by``. That is all curation and evaluation
need, so this module reads it directly (fast, no network) and answers ancestor questions.

Obsolete terms are followed to their replacement: CL made ``CL:0000003`` (native cell)
obsolete in favour of ``CL:0000000`` (cell), so "descends from native cell" is answered with
the replacement in current releases.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ssl_census.core.errors import UserError

NATIVE_CELL = "CL:0000003"
# The CL release everything uses unless told otherwise (curation, hierarchy-aware scores, the
# synthetic census). scTab curated against census 2023-05-15; the oldest release the
# cellxgene-ontology-guide versions the project supports ship (pyproject) is this one. The
# nearest to 2023-05-15 that any registry package ships, v2024-01-04 (cellxgene-ontology-guide
# 0.1.1), comes only with a package version the project cannot install beside its own; in
# both, native cell is already obsolete. Pinned so curation does not change with the package.
PINNED_CL_RELEASE = "v2025-02-13"


def _data_root() -> Path:
    import cellxgene_ontology_guide

    return Path(cellxgene_ontology_guide.__file__).parent / "data"


def available_releases() -> list[str]:
    """CL release tags shipped with the installed package, oldest first (e.g. 'v2025-02-13')."""
    names = (p.name for p in _data_root().glob("CL-ontology-*.json.zst"))
    return sorted(re.sub(r"^CL-ontology-(.*)\.json\.zst$", r"\1", n) for n in names)


@dataclass(frozen=True)
class CellOntology:
    """One CL release: ``terms`` maps a term id to its JSON record."""

    release: str
    terms: dict[str, dict[str, Any]]

    def __contains__(self, term: str) -> bool:
        return term in self.terms

    def resolve(self, term: str) -> str:
        """``term``, or the term that replaces it when it is obsolete (followed to the end)."""
        seen = {term}
        while term in self.terms and self.terms[term].get("replaced_by"):
            term = self.terms[term]["replaced_by"]
            if term in seen:
                break
            seen.add(term)
        return term

    def label(self, term: str) -> str:
        return str(self.terms[term]["label"]) if term in self.terms else term

    def ancestors(self, term: str) -> dict[str, int]:
        """Ancestors of ``term`` (not itself) with their distance; {} for an unknown term."""
        rec = self.terms.get(term)
        return dict(rec.get("ancestors", {})) if rec else {}

    def is_descendant(self, term: str, ancestor: str) -> bool:
        """True when ``term`` is ``ancestor`` or below it (an obsolete ``ancestor`` is resolved)."""
        if term not in self.terms:
            return False
        ancestor = self.resolve(ancestor)
        return term == ancestor or ancestor in self.ancestors(term)

    def n_ancestors(self, term: str) -> int:
        """How many terms lie above ``term`` (scTab's depth criterion: 'more than 7 ancestors')."""
        return len(self.ancestors(term))

    def depth(self, term: str) -> int:
        """Length of the longest path from ``term`` up to a root (0 for a root or unknown term)."""
        dist = self.ancestors(term).values()
        return max(dist) if dist else 0

    def check_term(self, term: str, root: str, min_ancestors: int) -> TermCheck:
        """The ontology part of scTab's cell-type rule for ``term``: in this release (an
        obsolete term stands for its replacement), below ``root`` and more than
        ``min_ancestors`` ancestors."""
        resolved = self.resolve(term)
        return TermCheck(
            term=term, resolved=resolved, label=self.label(resolved),
            obsolete=bool(self.terms.get(term, {}).get("deprecated")),
            in_ontology=resolved in self, n_ancestors=self.n_ancestors(resolved),
            below_root=self.is_descendant(resolved, root), root=self.resolve(root),
            min_ancestors=min_ancestors)


@dataclass(frozen=True)
class TermCheck:
    """One term against the ontology part of scTab's rule (CellOntology.check_term)."""

    term: str  # as given
    resolved: str  # the term itself, or what replaces it when it is obsolete
    label: str  # of ``resolved`` in the release
    obsolete: bool
    in_ontology: bool
    n_ancestors: int
    below_root: bool
    root: str  # after following an obsolete root to its replacement
    min_ancestors: int

    @property
    def passes(self) -> bool:
        return self.in_ontology and self.below_root and self.n_ancestors > self.min_ancestors

    @property
    def reasons(self) -> list[str]:
        """Why the term fails ([] when it passes)."""
        if not self.in_ontology:
            return ["not in the release"]
        if self.obsolete and self.resolved == self.term:
            return ["obsolete without a replacement"]
        out = []
        if not self.below_root:
            out.append(f"not below {self.root}")
        if self.n_ancestors <= self.min_ancestors:
            out.append(f"{self.n_ancestors} ancestors, needs more than {self.min_ancestors}")
        return out


def ontology_package() -> str:
    """The package the CL releases come from, with its version (for manifests)."""
    from importlib.metadata import version

    return f"cellxgene-ontology-guide {version('cellxgene-ontology-guide')}"


@functools.cache
def load_cell_ontology(release: str | None = None) -> CellOntology:
    """The CL ``release`` shipped with cellxgene-ontology-guide (PINNED_CL_RELEASE when
    None)."""
    from cellxgene_ontology_guide.supported_versions import load_ontology_file

    releases = available_releases()
    if not releases:
        raise UserError("no Cell Ontology release found in cellxgene-ontology-guide",
                        "reinstall it: pip install cellxgene-ontology-guide")
    release = release or PINNED_CL_RELEASE
    if release not in releases:
        raise UserError(f"Cell Ontology release {release!r} is not shipped by the installed "
                        "cellxgene-ontology-guide",
                        f"use one of {', '.join(releases)} (cl_release in [curation]), or "
                        "install the package version pyproject.toml names")
    return CellOntology(release, load_ontology_file(f"CL-ontology-{release}.json.zst"))


def ancestors(term: str) -> dict[str, int]:
    return load_cell_ontology().ancestors(term)


def is_descendant(term: str, ancestor: str) -> bool:
    return load_cell_ontology().is_descendant(term, ancestor)


def depth(term: str) -> int:
    return load_cell_ontology().depth(term)
