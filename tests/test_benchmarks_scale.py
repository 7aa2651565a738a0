"""bench scale: its size parsing and its table (the benchmark itself is not a test)."""

from __future__ import annotations

import pytest

from ssl_census.benchmarks.commands import parse_cells
from ssl_census.benchmarks.scale import HEADER, format_table
from ssl_census.core.errors import UserError


def test_cell_counts_in_the_usual_spellings():
    assert parse_cells("500000") == 500_000
    assert parse_cells("500k") == 500_000
    assert parse_cells("2M") == 2_000_000
    assert parse_cells("22.2M") == 22_200_000
    with pytest.raises(UserError, match="not a cell count"):
        parse_cells("lots")


def _row(cells: int, build: float, loader: float) -> dict:
    split = {"cells": cells // 3, "tech_samples": 10}
    return {
        "cells": cells, "census_bytes": 2**30,
        "census": {"cells_per_s": 30_000.0},
        "build": {"cells_per_s": build, "phases": {"parts": 1.0}, "peak_rss_tree_bytes": 2**31,
                  "peak_rss_main_bytes": 2**30,
                  "parts_bytes": 2**30, "store_bytes": 2**31},
        "verify": {"seconds": 3.0, "ok": True},
        "curation": {"types_kept": 16, "kept_equals_intended": False,
                     "splits": {"train": split, "val": split, "test": split}},
        "loader_startup_ws1": {"first_batch_seconds": 1.0},
        "loader_startup_ws8": {"first_batch_seconds": 0.5},
        "loader_epoch_cold": {"cells_per_s": loader / 4, "peak_rss_tree_bytes": 2**30},
        "loader_epoch": {"cells_per_s": loader, "peak_rss_tree_bytes": 2**30,
                         "store_cached_bytes": 2**30, "store_bytes": 2**31},
        "trainer": {"cells_per_s": 1000.0},
    }


def test_table_has_a_row_per_finished_size_and_the_ratio_of_last_to_first():
    result = {"sizes": [_row(500_000, 10_000, 400_000), _row(2_000_000, 8_000, 600_000),
                        {"cells": 8_000_000}]}  # an unfinished size is left out
    table = format_table(result).splitlines()
    assert table[0].count("|") == len(HEADER) + 1
    assert sum(line.startswith("| 5") or line.startswith("| 2") for line in table) == 2
    assert "(not as intended)" in table[2]
    assert "| 100,000 / 400,000 | 50 % |" in table[2]
    assert "build cells/s 0.80x, loader cells/s 1.50x cold and 1.50x warm" in table[-1]
