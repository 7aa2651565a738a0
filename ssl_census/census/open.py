"""Open a census: a published release by version, or a local store by URI, one code path.

Both go through ``cellxgene_census.open_soma`` with small TileDB read buffers (the default
1 GiB ``soma.init_buffer_bytes`` per column would need several GiB on a 24 GiB machine).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import cellxgene_census
import requests
import tiledbsoma as soma
from cellxgene_census import _release_directory

from ssl_census.core.errors import UserError

DEFAULT_VERSION = "2023-05-15"
READ_BUFFER_BYTES = 64 * 1024**2


def tiledb_config(buffer_bytes: int = READ_BUFFER_BYTES) -> dict[str, Any]:
    return {"soma.init_buffer_bytes": buffer_bytes, "py.init_buffer_bytes": buffer_bytes}


def open_census(version: str | None = DEFAULT_VERSION,
                uri: str | os.PathLike[str] | None = None,
                buffer_bytes: int = READ_BUFFER_BYTES) -> soma.Collection:
    """The opened census collection (close it, or use it as a context manager).

    ``uri`` (a local path or an s3:// URI) wins over ``version``. An unknown version or an
    unreachable release directory raises :class:`UserError`.
    """
    config = tiledb_config(buffer_bytes)
    if uri is not None:
        return _open_uri(str(uri), config)
    if version is None:
        raise UserError("no census given", "pass a census version or --census-uri")
    try:
        return cellxgene_census.open_soma(census_version=version, tiledb_config=config)
    except ValueError:
        raise UserError(f"unknown census version {version!r}",
                        f"use one of: {', '.join(available_versions())}") from None
    except (requests.RequestException, OSError) as e:
        raise _unreachable(e) from None


def _open_uri(uri: str, config: dict[str, Any]) -> soma.Collection:
    if "://" not in uri or uri.startswith("file://"):
        path = Path(uri.removeprefix("file://"))
        if not (path / "census_data").exists():
            raise UserError(f"no census store at {path}",
                            "build one with 'ssl-census census build-local' or "
                            "'ssl-census census synth', or fix --census-uri")
    try:
        return cellxgene_census.open_soma(uri=uri, tiledb_config=config)
    except (soma.SOMAError, OSError) as e:
        raise UserError(f"cannot open census at {uri} ({e})", "check --census-uri") from None


def available_versions() -> list[str]:
    """Names of the published, non-retracted census versions (needs the network)."""
    try:
        directory = cellxgene_census.get_census_version_directory()
    except (requests.RequestException, OSError) as e:
        raise _unreachable(e) from None
    return sorted(directory)


def _unreachable(e: Exception) -> UserError:
    url = _release_directory.CELL_CENSUS_RELEASE_DIRECTORY_URL
    return UserError(f"the census release directory {url} is unreachable "
                     f"({type(e).__name__})",
                     "use a local store with --census-uri PATH (see 'ssl-census census "
                     "build-local' and 'ssl-census census synth')")
