"""The census releases: cellxgene_census's release directory, or a local copy of it.

The directory is JSON, one entry per build tag (``release_build``, ``flags`` with ``lts`` and
``retracted``, ``soma.uri``) and aliases mapping names to tags (``"stable": "V2"``,
``"V2": "2023-05-15"``). A release counts as built locally when ``<root>/<tag>/`` holds a
finished build (a ``manifest.json`` with ``"complete": true``, or a census store), and as
current when ``<root>/current`` points at it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from ssl_census.core.errors import UserError


@dataclass(frozen=True)
class Release:
    tag: str
    release_build: str
    release_date: str | None
    lts: bool
    retracted: bool
    soma_uri: str | None
    aliases: tuple[str, ...] = field(default=())


def _default_url() -> str:
    from cellxgene_census import _release_directory

    return _release_directory.CELL_CENSUS_RELEASE_DIRECTORY_URL


def load_directory(source: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The raw release directory from a file path or URL (default: the census's own URL)."""
    source = str(source) if source is not None else _default_url()
    if "://" in source and not source.startswith("file://"):
        try:
            response = requests.get(source, timeout=30)
            response.raise_for_status()
            return response.json()
        except (requests.RequestException, ValueError) as e:
            raise UserError(f"cannot read the release directory {source} "
                            f"({type(e).__name__})",
                            "use --directory PATH with a local copy of the JSON") from None
    path = Path(source.removeprefix("file://"))
    if not path.exists():
        raise UserError(f"release directory not found: {path}", "check --directory")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e})",
                        "give a file in cellxgene_census's release.json format") from None


def parse_directory(raw: dict[str, Any]) -> list[Release]:
    """Releases newest first, each with the aliases that resolve to it."""
    def resolve(name: str) -> str | None:
        seen = set()
        while isinstance(raw.get(name), str) and name not in seen:
            seen.add(name)
            name = raw[name]
        return name if isinstance(raw.get(name), dict) else None

    aliases: dict[str, list[str]] = {}
    for name, value in raw.items():
        if isinstance(value, str) and (target := resolve(name)) is not None:
            aliases.setdefault(target, []).append(name)
    releases = []
    for tag, entry in raw.items():
        if not isinstance(entry, dict):
            continue
        flags = entry.get("flags", {}) or {}
        releases.append(Release(
            tag=tag, release_build=str(entry.get("release_build", tag)),
            release_date=entry.get("release_date"), lts=bool(flags.get("lts", False)),
            retracted=bool(flags.get("retracted", False)),
            soma_uri=(entry.get("soma") or {}).get("uri"),
            aliases=tuple(sorted(aliases.get(tag, []))),
        ))
    return sorted(releases, key=lambda r: r.release_build, reverse=True)


def is_finished_build(path: Path) -> bool:
    manifest = path / "manifest.json"
    if manifest.is_file():
        try:
            return bool(json.loads(manifest.read_text()).get("complete"))
        except (json.JSONDecodeError, OSError):
            return False
    return (path / "census_data").is_dir()


def current_build(root: Path) -> str | None:
    """The tag ``<root>/current`` points at (a symlink, or a file holding the name)."""
    pointer = root / "current"
    if pointer.is_symlink():
        return Path(os.readlink(pointer)).name
    if pointer.is_file():
        return pointer.read_text().strip() or None
    return None


def local_builds(root: str | os.PathLike[str] | None) -> tuple[set[str], str | None]:
    if root is None:
        return set(), None
    root = Path(root)
    if not root.is_dir():
        return set(), None
    built = {p.name for p in root.iterdir()
             if p.is_dir() and not p.is_symlink() and is_finished_build(p)}
    return built, current_build(root)


def release_table(releases: list[Release], root: str | os.PathLike[str] | None) -> list[dict]:
    built, current = local_builds(root)
    return [{
        "release": r.tag, "build": r.release_build, "lts": r.lts, "retracted": r.retracted,
        "aliases": ",".join(r.aliases), "built_locally": r.tag in built,
        "current": r.tag == current, "soma_uri": r.soma_uri or "",
    } for r in releases]
