"""``ssl-census reproduce``: the paper's comparisons on real data, and the results page."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option("--config", default="paper", show_default=True,
              help="TOML file or preset name under configs/reproduce")
@click.option("--work", type=click.Path(path_type=Path), default=Path("work/reproduce"),
              show_default=True, help="where the census, stores and runs go (reused on rerun)")
@click.option("--page", type=click.Path(path_type=Path), default=Path("docs/results.md"),
              show_default=True, help="the results page; figures go to <page dir>/results/")
@click.option("--data-dir", type=click.Path(path_type=Path),
              help="the shared data folder (default $SSL_CENSUS_DATA, else ../shared/data)")
@click.option("--census-uri", help="an existing census to read instead of building the local one")
def reproduce(config: str, work: Path, page: Path, data_dir: Path | None,
              census_uri: str | None) -> None:
    """Build the data, run every pre-training, fine-tuning and evaluation of the config
    (skipping finished runs) and write the results page."""
    from ssl_census.reproduce.pipeline import reproduce as run

    click.echo(f"wrote {run(config, work, page, data_dir, census_uri)}")
