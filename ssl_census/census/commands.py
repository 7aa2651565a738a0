"""``ssl-census census ...``: build and inspect census-layout stores."""

from __future__ import annotations

import json

import click

from ssl_census.census.layout import SCHEMA_ALIASES

_SCHEMA = click.Choice(sorted(SCHEMA_ALIASES))


@click.group()
def census() -> None:
    """Census-layout SOMA stores: synthetic, built from local h5ad files, or a release."""


@census.command()
@click.option("--cells", "n_cells", type=click.IntRange(min=10), required=True,
              help="Number of cells.")
@click.option("--out", "out", required=True, help="Directory of the new store.")
@click.option("--profile", type=click.Choice(["pbmc", "sctab"]), default="pbmc",
              show_default=True,
              help="pbmc: a small blood census; sctab: shaped like scTab's build of census "
                   "2023-05-15 (249 datasets, 5,052 tech_samples, 164 kept types at 22.2M cells).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--schema", type=_SCHEMA, default="1.0.0", show_default=True,
              help="Census schema: 1.0.0 (as 2023-05-15) or a later one.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Shared data folder with genes/ (default $SSL_CENSUS_DATA; without it a "
                   "synthetic 60,664-gene annotation is used).")
@click.option("--datasets", "n_datasets", type=click.IntRange(min=3), default=None,
              help="Datasets of the pbmc profile [default: 10].")
@click.option("--nnz-per-cell", type=click.FloatRange(min=1), default=None,
              help="Mean non-zeros per cell [default: as fitted to real 10x cells, about 950]; "
                   "lower it to fit many cells on a disk.")
@click.option("--min-nnz", type=click.IntRange(min=1), default=None,
              help="Clip each cell's non-zeros target to at least this.")
@click.option("--max-nnz", type=click.IntRange(min=1), default=None,
              help="At most this many non-zeros per cell.")
@click.option("--shards-config", "shards_config_path", type=click.Path(dir_okay=False),
              default=None, help="sctab profile: also write the shards config (TOML) whose "
                                 "curation thresholds this size was designed for.")
def synth(n_cells: int, out: str, profile: str, seed: int, schema: str, data_dir: str | None,
          n_datasets: int | None, nnz_per_cell: float | None, min_nnz: int | None,
          max_nnz: int | None, shards_config_path: str | None) -> None:
    """Write a seeded synthetic census (streamed; any number of cells)."""
    from pathlib import Path

    from ssl_census.census.synth import write_synthetic_census
    from ssl_census.census.synth_sctab import SctabScale, shards_config
    from ssl_census.core.config import toml_dumps
    from ssl_census.core.errors import UserError

    if min_nnz is not None and max_nnz is not None and min_nnz > max_nnz:
        raise UserError("--min-nnz is larger than --max-nnz", "swap the two values")
    if shards_config_path is not None and profile != "sctab":
        raise UserError("--shards-config needs --profile sctab",
                        "use the synthetic preset (--config synthetic) for the pbmc profile")
    nnz_range = None
    if min_nnz is not None or max_nnz is not None:
        nnz_range = (min_nnz or 1, max_nnz or 1_000_000)
    summary = write_synthetic_census(out, n_cells, seed=seed, schema=schema, data_dir=data_dir,
                                     profile=profile, n_datasets=n_datasets,
                                     nnz_per_cell=nnz_per_cell, nnz_range=nnz_range)
    if shards_config_path is not None:
        Path(shards_config_path).write_text(toml_dumps(shards_config(SctabScale.at(n_cells))))
        summary["shards_config"] = shards_config_path
    click.echo(json.dumps(summary, indent=2))


@census.command("build-local")
@click.option("--config", "config", required=True,
              help="TOML file, or a preset name from configs/census (e.g. pbmc-real).")
@click.option("--out", "out", required=True, help="Directory of the new store.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Folder the config's file paths are relative to (default $SSL_CENSUS_DATA).")
@click.option("--schema", type=_SCHEMA, default=None,
              help="Census schema (default: the config's, else 1.0.0 as 2023-05-15).")
def build_local(config: str, out: str, data_dir: str | None, schema: str | None) -> None:
    """Build a census-layout store from local h5ad files described by a TOML config."""
    from ssl_census.census.build_local import build_local_census

    report = build_local_census(config, out, data_dir, schema)
    for f in report["files"]:
        click.echo(f"{f['file']}: {f['cells']} cells, genes {f['genes_matched']} matched, "
                   f"{f['genes_dropped']} dropped of {f['genes']}")
    click.echo(f"wrote {report['uri']}: {report['n_cells']} cells "
               f"({report['n_primary']} primary), {report['n_datasets']} datasets, "
               f"schema {report['schema']}, {report['seconds']} s")


@census.command()
@click.option("--directory", "directory", default=None,
              help="Release directory JSON: a path or URL (default: cellxgene_census's URL).")
@click.option("--root", type=click.Path(file_okay=False), default=None,
              help="Folder of local builds (<root>/<release>/, <root>/current).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def releases(directory: str | None, root: str | None, as_json: bool) -> None:
    """List census releases: LTS and retracted flags, aliases, which are built locally."""
    from ssl_census.census.releases import load_directory, parse_directory, release_table

    rows = release_table(parse_directory(load_directory(directory)), root)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'release':<12} {'lts':<4} {'aliases':<16} {'local':<8} soma uri")
    for r in rows:
        local = "current" if r["current"] else ("built" if r["built_locally"] else "-")
        flags = "yes" if r["lts"] else "no"
        name = r["release"] + (" (retracted)" if r["retracted"] else "")
        click.echo(f"{name:<12} {flags:<4} {r['aliases'] or '-':<16} {local:<8} {r['soma_uri']}")
