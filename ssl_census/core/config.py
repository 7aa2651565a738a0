"""TOML presets with command-line overrides (stdlib ``tomllib``).

The presets are package data (``ssl_census/presets/<kind>/<name>.toml``), read through
``importlib.resources`` so that a wheel install finds them as an editable one does; the
top-level ``configs/`` of the repository is a link to the same folder, for reading and copying.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import fields, is_dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ssl_census.core.errors import UserError

# Wheels install as plain files, so the package's presets folder is a real directory.
CONFIG_ROOT = Path(str(resources.files("ssl_census") / "presets"))


def preset_names(kind: str) -> list[str]:
    """The preset names of one kind (``pretrain``, ``finetune``, ``shards``, ...)."""
    return sorted(p.stem for p in (CONFIG_ROOT / kind).glob("*.toml"))


def resolve_config_path(path: str | Path, kind: str | None = None) -> Path:
    """A path as given, or the name of a preset under ``ssl_census/presets/<kind>/``."""
    p = Path(path)
    if p.exists():
        return p
    if kind is not None:
        preset = CONFIG_ROOT / kind / (p.name if p.suffix == ".toml" else f"{p.name}.toml")
        if preset.exists():
            return preset
        names = ", ".join(preset_names(kind)) or "(none)"
        raise UserError(f"config not found: {path}",
                        f"give a TOML file path or a {kind} preset name ({names})")
    raise UserError(f"config not found: {path}", "give a TOML file path")


def load_toml(path: str | Path, kind: str | None = None) -> dict[str, Any]:
    p = resolve_config_path(path, kind)
    try:
        with open(p, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise UserError(
            f"{p} is not valid TOML ({e})", "fix the syntax at the position shown"
        ) from None


def merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge ``overrides`` into ``base``; ``None`` values in overrides are ignored, at any
    depth (a table of unset options adds no keys)."""
    out: dict[str, Any] = dict(base)
    for k, v in overrides.items():
        if v is None:
            continue
        if isinstance(v, Mapping) and isinstance(out.get(k, {}), Mapping):
            out[k] = merge(out.get(k, {}), v)
        else:
            out[k] = v
    return out


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(str(v))  # a JSON string is a valid TOML basic string


def toml_dumps(config: Mapping[str, Any], prefix: str = "") -> str:
    """Nested dicts of scalars and lists as TOML (enough for configs; None values are left out)."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in config.items()
             if v is not None and not isinstance(v, Mapping)]
    for k, v in config.items():
        if isinstance(v, Mapping):
            name = f"{prefix}{k}"
            lines += ["", f"[{name}]", toml_dumps(v, name + ".").strip()]
    return "\n".join(lines).strip() + "\n"


def check_keys(raw: Mapping[str, Any], known: Iterable[str], where: str) -> None:
    """Refuse keys a config table does not know (a typo would otherwise be ignored)."""
    known = sorted(set(known))
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise UserError(f"unknown keys in {where}: {', '.join(unknown)}",
                        f"use only {', '.join(known)}")


def section(cls: type, raw: Mapping[str, Any], where: str) -> Any:
    """A config table as the dataclass ``cls``: unknown keys refused, lists made tuples."""
    assert is_dataclass(cls)
    check_keys(raw, (f.name for f in fields(cls)), where)
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
