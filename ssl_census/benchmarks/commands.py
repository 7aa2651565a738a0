"""``ssl-census bench ...``: one subcommand per benchmark."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ssl_census.pretext import METHODS

# Options that several benchmarks take alike.
JSON_OPTION = click.option("--json", "json_path", default=None, type=click.Path(dir_okay=False),
                           help="Also write the figures here.")
SCTAB_GENES_OPTION = click.option("--genes", default=19_331, show_default=True,
                                  type=click.IntRange(10),
                                  help="Genes of the synthetic store and the model.")
SCTAB_NNZ_OPTION = click.option("--nnz-per-cell", default=1_750, show_default=True,
                                type=click.IntRange(1),
                                help="Non-zero genes per cell, about (scTab: 1,500-2,000 of "
                                     "19,331).")
THREADS_OPTION = click.option("--threads", default=None, type=click.IntRange(1),
                              help="torch intra-op threads [default: torch's].")


def _report(text: str, figures: dict[str, Any], json_path: str | None) -> None:
    """Print a benchmark's report; with ``--json`` also write its figures."""
    from ssl_census.core import atomic

    click.echo(text)
    if json_path:
        atomic.write_json(json_path, figures)


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
@JSON_OPTION
def shards_command(cells, work, workers, memory_budget, seed, json_path) -> None:
    """Shard build vs a plain census read of the same cells (cells/s, peak RSS)."""
    from ssl_census.shards.bench import format_report, run_shards_bench
    from ssl_census.shards.commands import parse_bytes

    result = run_shards_bench(Path(work), cells, workers, parse_bytes(memory_budget), seed)
    _report(format_report(result), result, json_path)


@bench.command("loader")
@click.option("--shards", "shards_dir", required=True, type=click.Path(file_okay=False),
              help="Shard store to read (its train split).")
@click.option("--synthetic", default=None, type=click.IntRange(1000),
              help="Write a synthetic store of this many cells at --shards first, if missing.")
@JSON_OPTION
@click.option("--cells-limit", default=None, type=click.IntRange(1),
              help="Time at most this many cells per loader (default: the whole split).")
@click.option("--skip", multiple=True, help="Loaders to leave out (repeatable): ssl-census, "
              "annbatch, scdataset, tiledbsoma-ml, raw, readers.")
@click.option("--work", default=None, type=click.Path(file_okay=False),
              help="For annbatch's venv and copy of the store [default: <shards>-loader-bench].")
@click.option("--batch-size", default=8192, show_default=True, type=click.IntRange(1))
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 256))
@click.option("--census-uri", default=None, help="Census-layout store for tiledbsoma-ml.")
@click.option("--reader-cells", default=200_000, show_default=True, type=click.IntRange(1),
              help="Cells timed per reader in the reader comparison.")
def loader_command(shards_dir, synthetic, json_path, cells_limit, skip, work, batch_size,
                   workers, census_uri, reader_cells) -> None:
    """This loader vs annbatch+zarrs, scDataset and a raw ceiling (cells/s, RSS, shuffle)."""
    from ssl_census.benchmarks.loader_bench import format_report, run_loader_bench
    from ssl_census.benchmarks.loader_synthetic import write_synthetic_store
    shards = Path(shards_dir)
    if synthetic:
        write_synthetic_store(shards, synthetic)
    work_dir = Path(work) if work else shards.with_name(shards.name + "-loader-bench")
    report = run_loader_bench(shards, work_dir, cells_limit, skip, batch_size, workers,
                              census_uri, reader_cells=reader_cells, log=click.echo)
    _report(format_report(report), report, json_path)


@bench.command("scale")
@click.option("--sizes", default="500000,2000000,8000000,22200000", show_default=True,
              help="Census sizes (cells), comma-separated; 2M and 22.2M style also work.")
@click.option("--nnz-per-cell", default=200, show_default=True, type=click.IntRange(20),
              help="Non-zeros per cell of the synthetic census (lower fits more cells on disk).")
@click.option("--work", default="work/scale", show_default=True,
              type=click.Path(file_okay=False), help="Censuses, stores and runs go here.")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 256),
              help="Shard-build worker processes.")
@click.option("--memory-budget", default="4GiB", show_default=True)
@click.option("--batch-size", default=8192, show_default=True, type=click.IntRange(1))
@click.option("--loader-workers", default=2, show_default=True, type=click.IntRange(1, 256))
@click.option("--seed", default=0, show_default=True)
@click.option("--kill-at", default=None, help="Also kill the build of this size once at a "
              "random point and resume it, comparing checksums (e.g. 8M).")
@click.option("--keep", is_flag=True, help="Keep each size's census and store.")
@click.option("--json", "json_path", default="work/scale/scale.json", show_default=True,
              type=click.Path(dir_okay=False))
@click.option("--png", "png_path", default="work/scale/scale.png", show_default=True,
              type=click.Path(dir_okay=False))
def scale_command(sizes, nnz_per_cell, work, workers, memory_budget, batch_size, loader_workers,
                  seed, kill_at, keep, json_path, png_path) -> None:
    """Census -> shards -> verify -> loader -> trainer at a ladder of census sizes."""
    from ssl_census.benchmarks.scale import format_table, plot, run_scale
    from ssl_census.shards.commands import parse_bytes

    ladder = [parse_cells(v) for v in sizes.split(",")]
    result = run_scale(Path(work), ladder, nnz_per_cell, workers, parse_bytes(memory_budget),
                       batch_size, loader_workers, seed, parse_cells(kill_at) if kill_at else None,
                       Path(json_path), keep, log=click.echo)
    plot(result, Path(png_path))
    click.echo(format_table(result))


def parse_cells(value: str) -> int:
    """``500000``, ``500k``, ``2M`` or ``22.2M`` as a cell count."""
    from ssl_census.core.errors import UserError

    text = value.strip().lower().replace("_", "")
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    try:
        return int(round(float(text.rstrip("km")) * scale))
    except ValueError:
        raise UserError(f"{value!r} is not a cell count",
                        "write it like 500000, 2M or 22.2M") from None


@bench.command("embed")
@click.option("--cells", default=2_000_000, show_default=True, type=click.IntRange(1000),
              help="Cells in the synthetic h5ad (a second one has a tenth of them).")
@click.option("--genes", default=2_000, show_default=True, type=click.IntRange(10),
              help="Genes of the file and of the model's gene space.")
@click.option("--nnz", default=200, show_default=True, type=click.IntRange(1),
              help="Non-zero genes per cell (about).")
@click.option("--batch-size", default=1024, show_default=True, type=click.IntRange(1))
@click.option("--work", default="work/bench", show_default=True, type=click.Path(file_okay=False))
@click.option("--keep", is_flag=True, help="Keep the synthetic h5ad files and the outputs.")
@JSON_OPTION
def embed_command(cells, genes, nnz, batch_size, work, keep, json_path) -> None:
    """`ssl-census embed` on a large synthetic h5ad, streamed (cells/s, peak RSS)."""
    from ssl_census.evaluation.bench import format_report, run_embed_bench

    result = run_embed_bench(Path(work), cells, genes, nnz, batch_size, keep=keep)
    _report(format_report(result), result, json_path)


@bench.command("train")
@click.option("--methods", default=",".join((*METHODS, "celltype")), show_default=True,
              help="Pre-training methods and fine-tuning tasks (celltype), comma-separated.")
@click.option("--batch-sizes", default="256,8192", show_default=True,
              help="Batch sizes, comma-separated.")
@click.option("--layouts", default="dense,sparse", show_default=True,
              help="Input layouts to compare: dense, sparse or both.")
@click.option("--timed-cells", default=16_384, show_default=True, type=click.IntRange(1),
              help="Cells timed per measurement (at least two steps).")
@click.option("--warmup-steps", default=1, show_default=True, type=click.IntRange(1),
              help="Steps run before the clock starts.")
@SCTAB_GENES_OPTION
@SCTAB_NNZ_OPTION
@click.option("--hidden", default="512,512,256,256,64", show_default=True,
              help="Encoder sizes (the decoder mirrors them).")
@THREADS_OPTION
@click.option("--workers", default=None, type=click.IntRange(1),
              help="Loader worker threads [default: the loader's].")
@click.option("--work", default="work/bench-train", show_default=True,
              type=click.Path(file_okay=False), help="The synthetic store goes here (reused).")
@JSON_OPTION
def train_command(methods, batch_sizes, layouts, timed_cells, warmup_steps, genes, nnz_per_cell,
                  hidden, threads, workers, work, json_path) -> None:
    """Trainer cells/s per method, dense against sparse input, beside the FLOP ceiling."""
    from ssl_census.benchmarks.train import LAYOUTS, format_report, run_train_bench
    from ssl_census.core.errors import UserError
    from ssl_census.training.commands import parse_hidden

    chosen_layouts = _names(layouts, "--layouts")
    if not set(chosen_layouts) <= set(LAYOUTS):
        raise UserError(f"--layouts {layouts!r} is not a list of layouts",
                        "write dense, sparse or dense,sparse")
    sizes = [parse_cells(v) for v in _names(batch_sizes, "--batch-sizes")]
    report = run_train_bench(Path(work), _names(methods, "--methods"), sizes, chosen_layouts,
                             timed_cells, warmup_steps, genes, nnz_per_cell,
                             parse_hidden(hidden), threads, workers, log=click.echo)
    _report(format_report(report), report, json_path)


def _names(value: str, option: str) -> list[str]:
    """A comma-separated option's items."""
    from ssl_census.core.errors import UserError

    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise UserError(f"{option} is empty", f"give {option} a comma-separated list")
    return names



@bench.command("scvi")
@click.option("--cells", default="500k", show_default=True,
              help="Cells of the synthetic store (500000, 500k, 2M).")
@SCTAB_GENES_OPTION
@SCTAB_NNZ_OPTION
@click.option("--epochs", default=1, show_default=True, type=click.IntRange(1),
              help="Epochs each side trains (each one timed).")
@click.option("--batch-size", default=128, show_default=True, type=click.IntRange(3),
              help="scvi-tools' default is 128.")
@click.option("--workers", default=None, type=click.IntRange(1),
              help="Loader worker threads of the shard store side [default: the loader's].")
@THREADS_OPTION
@click.option("--work", default="work/bench-scvi", show_default=True,
              type=click.Path(file_okay=False), help="The synthetic store goes here (reused).")
@JSON_OPTION
def scvi_command(cells, genes, nnz_per_cell, epochs, batch_size, workers, threads, work,
                 json_path) -> None:
    """scVI epoch time and peak RSS: shard store vs scvi-tools' in-memory AnnData loader."""
    from ssl_census.benchmarks.scvi_bench import format_report, run_scvi_bench

    report = run_scvi_bench(Path(work), parse_cells(cells), genes, nnz_per_cell, epochs,
                            batch_size, workers, threads, log=click.echo)
    _report(format_report(report), report, json_path)
