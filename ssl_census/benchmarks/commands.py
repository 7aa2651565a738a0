"""``ssl-census bench ...``: one subcommand per benchmark."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.group()
def bench() -> None:
    """Benchmarks: print throughput and memory figures."""


@bench.command("shards")
@click.option("--cells", default=500_000, show_default=True, type=click.IntRange(1000),
              help="Cells in the synthetic census.")
@click.option("--work", default="work/bench", show_default=True, type=click.Path(file_okay=False),
              help="Where the synthetic census and the shard store go (kept for `bench loader`).")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 256))
@click.option("--memory-budget", default="4GiB", show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--json", "json_path", default=None, type=click.Path(dir_okay=False),
              help="Also write the figures here.")
def shards_command(cells, work, workers, memory_budget, seed, json_path) -> None:
    """Shard build vs a plain census read of the same cells (cells/s, peak RSS)."""
    from ssl_census.shards.bench import format_report, run_shards_bench
    from ssl_census.shards.commands import parse_bytes

    result = run_shards_bench(Path(work), cells, workers, parse_bytes(memory_budget), seed)
    click.echo(format_report(result))
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2) + "\n")
