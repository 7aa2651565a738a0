"""``ssl-census shards build|verify|sctab-types``."""

from __future__ import annotations

import re
from collections.abc import Callable

import click

from ssl_census.core.errors import UserError

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1000, "kib": 1 << 10, "m": 1 << 20, "mb": 10**6,
          "mib": 1 << 20, "g": 1 << 30, "gb": 10**9, "gib": 1 << 30, "t": 1 << 40, "tib": 1 << 40}


def parse_bytes(text: str) -> int:
    """'4GiB', '512M', '1e9' -> bytes."""
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise UserError(f"cannot read {text!r} as a size", "write e.g. 4GiB, 512MiB or 2000000000")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


@click.group()
def shards() -> None:
    """Census -> donor-split, normalised, sharded Zarr v3 CSR stores."""


def build_options(command: Callable) -> Callable:
    """The options every command that builds a store takes (shards build, rebuild)."""
    for option in reversed((
        click.option("--config", "config_path", default="sctab-2023-05-15", show_default=True,
                     help="Shards TOML file or preset name under configs/shards/."),
        click.option("--gene-list", default=None, type=click.Path(dir_okay=False),
                     help="Gene list (parquet with gene_names, or text); default: the "
                          "config's pinned URL."),
        click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 256)),
        click.option("--memory-budget", default="4GiB", show_default=True,
                     help="Peak memory the build sizes its work to."),
    )):
        command = option(command)
    return command


@shards.command("build")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Store directory.")
@click.option("--census-version", default=None, help="Census release (default 2023-05-15).")
@click.option("--census-uri", default=None, help="A local census-layout store instead.")
@build_options
@click.option("--parts-dir", default=None, type=click.Path(file_okay=False),
              help="Phase-1 part cache shared between builds (kept after the build).")
@click.option("--keep-parts", is_flag=True, help="Keep <out>/.parts after a successful build.")
def build_command(out, census_version, census_uri, config_path, gene_list, workers,
                  memory_budget, parts_dir, keep_parts) -> None:
    """Build (or resume) a shard store."""
    from ssl_census.shards.build import build_shards
    from ssl_census.shards.config import load_shards_config

    if census_version and census_uri:
        raise UserError("give --census-version or --census-uri, not both", "drop one of them")
    report = build_shards(out, load_shards_config(config_path), census_version=census_version,
                          census_uri=census_uri, gene_list=gene_list, workers=workers,
                          memory_budget=parse_bytes(memory_budget), parts_dir=parts_dir,
                          keep_parts=keep_parts)
    m = report.manifest
    cells = ", ".join(f"{s} {v['n_cells']:,}" for s, v in m.get("splits", {}).items())
    click.echo(f"shard store {report.out}: {cells}; {m['gene_list']['n_genes']:,} genes, "
               f"{m['cell_types']['kept']} cell types")
    if report.parts_total:
        rate = report.cells_read / report.seconds if report.seconds else 0.0
        click.echo(f"parts built {report.parts_built}/{report.parts_total}, "
                   f"{report.cells_read:,} cells read in {report.seconds:.1f} s "
                   f"({rate:,.0f} cells/s), "
                   f"peak RSS {report.peak_rss_bytes / 2**20:,.0f} MiB (workers "
                   f"{report.peak_rss_worker_bytes / 2**20:,.0f} MiB)")
    else:
        click.echo("already complete: nothing to do")


@shards.command("verify")
@click.argument("path", type=click.Path(file_okay=False))
def verify_command(path) -> None:
    """Recompute checksums, counts, split disjointness and normalisation of a store."""
    from ssl_census.shards.verify import verify_shards

    report = verify_shards(path)
    if not report.ok:
        for p in report.problems:
            click.echo(f"FAIL {p}", err=True)
        raise SystemExit(1)
    cells = ", ".join(f"{s} {n:,}" for s, n in report.n_cells.items())
    click.echo(f"ok: {path} ({cells})")


@shards.command("sctab-types")
@click.option("--config", "config_path", default="sctab-2023-05-15", show_default=True,
              help="Shards TOML file or preset name: its [curation] root, min_ancestors and "
                   "cl_release.")
@click.option("--cl-release", default=None,
              help="Another shipped CL release instead of the config's (e.g. v2026-03-26).")
def sctab_types_command(config_path, cl_release) -> None:
    """Which of scTab's 164 cell types the ontology part of the curation rule keeps."""
    from dataclasses import replace

    from ssl_census.shards.config import load_shards_config
    from ssl_census.shards.curation import compare_with_sctab

    curation = load_shards_config(config_path).curation
    if cl_release:
        curation = replace(curation, cl_release=cl_release)
    result = compare_with_sctab(curation)
    click.echo(result.summary())
    for line in result.failure_lines():
        click.echo(f"  fails: {line}")
    for line in result.change_lines():
        click.echo(f"  changed: {line}")
