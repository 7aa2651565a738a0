"""Shared fixtures: paths to the real data in ../shared/data, and small stores built once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SSL_CENSUS_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "h5ad").is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (set SSL_CENSUS_DATA)")
    return SHARED_DATA
