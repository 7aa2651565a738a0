"""One progress bar style for all long work (tqdm), quiet when not on a terminal in CI."""

from __future__ import annotations

import os
import sys
from typing import Any

from tqdm.auto import tqdm


def progress(total: int | None = None, desc: str = "", unit: str = "cells", **kw: Any) -> tqdm:
    disable = kw.pop("disable", None)
    if disable is None:
        disable = bool(os.environ.get("SSL_CENSUS_NO_PROGRESS")) or not sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, dynamic_ncols=True,
                disable=disable, **kw)
