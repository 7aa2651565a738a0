"""Presets as package data: found inside the installed package, shipped by the wheel's
package-data globs, mirrored by the repository's top-level configs/."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

import pytest

import ssl_census
from ssl_census.core.config import CONFIG_ROOT, load_toml, resolve_config_path
from ssl_census.core.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(ssl_census.__file__).resolve().parent
KINDS = ("census", "finetune", "pretrain", "reproduce", "shards")


def _package_data_globs() -> list[str]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["tool"]["setuptools"]["package-data"]["ssl_census"]


@pytest.mark.parametrize("kind", KINDS)
def test_every_preset_lies_in_the_package_and_ships_in_the_wheel(kind: str) -> None:
    names = sorted(p.stem for p in (CONFIG_ROOT / kind).glob("*.toml"))
    assert names, f"no {kind} presets found"
    globs = _package_data_globs()
    for name in names:
        path = resolve_config_path(name, kind).resolve()
        inside = path.relative_to(PACKAGE).as_posix()  # raises when outside the package
        assert any(fnmatch.fnmatch(inside, g) for g in globs), f"{inside} not in package-data"
        assert load_toml(name, kind)  # readable by name


def test_configs_folder_mirrors_the_package_presets() -> None:
    """configs/ is the user-facing copy: the same files with the same bytes."""
    ours = {p.relative_to(CONFIG_ROOT): p.read_bytes() for p in CONFIG_ROOT.rglob("*.toml")}
    top = ROOT / "configs"
    theirs = {p.relative_to(top): p.read_bytes() for p in top.rglob("*.toml")}
    assert sorted(theirs) == sorted(ours)
    assert [k for k in ours if ours[k] != theirs[k]] == []


def test_unknown_preset_names_the_presets_of_its_kind() -> None:
    with pytest.raises(UserError, match="random_mask") as e:
        resolve_config_path("no-such-method", kind="pretrain")
    assert "config not found: no-such-method" in str(e.value)
