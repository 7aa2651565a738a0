"""``ssl-census rebuild``: the unattended, scheduled rebuild (see docs/rebuilds.md)."""

from __future__ import annotations

import logging

import click

from ssl_census.shards.commands import build_options


@click.command()
@click.option("--root", required=True, type=click.Path(file_okay=False),
              help="Storage folder of the builds: <root>/<release>/, <root>/current.")
@click.option("--release", default="latest", show_default=True,
              help="lts, latest, or a release tag or alias.")
@click.option("--directory", default=None,
              help="Release directory JSON, a path or URL (default: cellxgene_census's).")
@build_options
def rebuild(root, release, directory, config_path, gene_list, workers, memory_budget) -> None:
    """Build the chosen census release when it is newer than <root>/current, verify it, then
    publish it by switching <root>/current. Prints "up to date" when nothing is new."""
    from ssl_census.rebuild.run import run_rebuild
    from ssl_census.shards.commands import parse_bytes
    from ssl_census.shards.store import SPLITS

    # timestamps for a scheduled job's log, in place of the CLI's plain messages
    logging.basicConfig(level=logging.INFO, format="%(asctime)s rebuild: %(message)s",
                        force=True)
    result = run_rebuild(root, release=release, directory=directory, config=config_path,
                         gene_list=gene_list, workers=workers,
                         memory_budget=parse_bytes(memory_budget))
    if not result.published:
        click.echo(f"up to date: {root}/current is {result.current} "
                   f"(release {release!r} is {result.release.tag})")
        return
    log = result.changelog
    reuse, ds = log["reuse"], log["datasets"]
    cells = ", ".join(f"{s} {log['cells_per_split'][s]['now']:,}" for s in SPLITS)
    click.echo(f"published {result.release.tag}: {result.build_dir} ({cells}); previous build "
               f"{result.previous or 'none'} kept")
    click.echo(f"datasets reused {reuse['datasets_reused']}, read {reuse['datasets_read']} "
               f"({reuse['cells_read']:,} cells read); {len(ds['added'])} added, "
               f"{len(ds['removed'])} removed, {len(ds['changed'])} changed; "
               f"{len(log['donors_changed_split'])} donors changed split")
    click.echo(f"changelog: {result.build_dir}/CHANGELOG.md")
