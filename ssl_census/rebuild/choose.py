"""Which release a rebuild targets, and whether it is newer than the published build."""

from __future__ import annotations

import os
from pathlib import Path

from ssl_census.census.releases import Release
from ssl_census.core.errors import UserError

CHOICES_HELP = "use lts, latest, or a release tag or alias listed by 'ssl-census census releases'"


def _newest(releases: list[Release]) -> Release | None:
    return max(releases, key=release_order, default=None)


def release_order(release: Release) -> tuple[str, str]:
    return (release.release_build, release.tag)


def choose_release(releases: list[Release], which: str) -> Release:
    """``lts``: the newest long-term-support release; ``latest``: the release the directory's
    ``latest`` alias names (else the newest); otherwise a tag or alias. Retracted releases
    are never chosen by lts/latest and refused by name."""
    usable = [r for r in releases if not r.retracted]
    if which == "lts":
        chosen = _newest([r for r in usable if r.lts])
    elif which == "latest":
        chosen = next((r for r in usable if "latest" in r.aliases), None) or _newest(usable)
    else:
        chosen = next((r for r in releases if which in (r.tag, *r.aliases)), None)
        if chosen is not None and chosen.retracted:
            raise UserError(f"census release {chosen.tag} is retracted", CHOICES_HELP)
    if chosen is None:
        raise UserError(f"no census release matches {which!r} in the release directory",
                        CHOICES_HELP)
    return chosen


def soma_uri(release: Release, directory: str | os.PathLike[str] | None) -> str:
    """The release's SOMA URI; a relative path in a local directory file is taken relative to
    that file, so a directory and its stores can move together."""
    uri = release.soma_uri
    if not uri:
        raise UserError(f"census release {release.tag} has no soma uri in the release directory",
                        "fix the directory entry (soma.uri)")
    if "://" in uri or Path(uri).is_absolute() or directory is None or "://" in str(directory):
        return uri
    return str((Path(directory).resolve().parent / uri).resolve())


def is_newer(release: Release, published_build: str | None) -> bool:
    """True when ``release`` was built after the published build (release_build dates)."""
    return published_build is None or release.release_build > published_build
