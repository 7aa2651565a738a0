"""``ssl-census evaluate`` and ``ssl-census embed``."""

from __future__ import annotations

from pathlib import Path

import click

from ssl_census.core.errors import UserError

LAYER_HELP = ("where the values are: a layer name, or 'raw' for adata.raw.X [default: X, "
              "or .raw / layers['counts'] when X holds no counts or log1p-normalised values]")


@click.command()
@click.option("--run", "run_dir", type=click.Path(path_type=Path), required=True,
              help="a pre-training or fine-tuning run directory")
@click.option("--shards", type=click.Path(path_type=Path),
              help="shard store (val/test cells); with --h5ad its val cells are the kNN "
              "reference the h5ad's cells are classified against")
@click.option("--h5ad", type=click.Path(path_type=Path), help="unseen data: an h5ad file")
@click.option("--label-key", help="obs column with the cell types (with --h5ad)")
@click.option("--batch-key", help="obs column of batches: integration scores (scib-metrics); "
              "with --h5ad also the groups of leave-one-group-out kNN")
@click.option("--layer", help=LAYER_HELP)
@click.option("--json", "json_path", type=click.Path(path_type=Path),
              help="report path (default <run>/evaluation/<name>.json); .md and .png beside it")
@click.option("--batch-size", type=int, default=8192, show_default=True)
@click.option("--pca-max-cells", type=int, default=1_000_000, show_default=True,
              help="training cells the out-of-core PCA baseline is fitted on")
@click.option("--integration-max-cells", type=int, default=20_000, show_default=True)
@click.option("--no-plots", is_flag=True)
@click.option("--embedding-2d", type=click.Choice(["umap", "pca"]), default="umap",
              show_default=True, help="layout of the embedding plot")
@click.option("--device", default="cpu", show_default=True)
@click.option("--workers", type=int)
def evaluate(run_dir: Path, shards: Path | None, h5ad: Path | None, label_key: str | None,
             batch_key: str | None, layer: str | None, json_path: Path | None, batch_size: int,
             pca_max_cells: int, integration_max_cells: int, no_plots: bool,
             embedding_2d: str, device: str,
             workers: int | None) -> None:
    """Score a run's embeddings (kNN k=5, F1 plain and hierarchy-aware) beside baselines."""
    from ssl_census.evaluation import render
    from ssl_census.evaluation import report as rep

    if shards is None and h5ad is None:
        raise UserError("give --shards, --h5ad, or both", "see ssl-census evaluate -h")
    opts = rep.EvalOptions(batch_size=batch_size, device=device, workers=workers,
                           pca_max_cells=pca_max_cells, batch_key=batch_key,
                           integration_max_cells=integration_max_cells, plots=not no_plots,
                           layer=layer)
    if h5ad is not None:
        if not label_key:
            raise UserError("--h5ad needs --label-key", "name the obs column with cell types")
        evaluation = rep.evaluate_h5ad(run_dir, h5ad, label_key, opts, reference=shards)
    else:
        evaluation = rep.evaluate_shards(run_dir, shards, opts)
    path = json_path or render.default_report_path(run_dir, h5ad or shards)
    written = render.write_reports(evaluation, path, opts.plots, embedding_2d)
    click.echo(render.markdown(evaluation.report))
    click.echo("wrote " + ", ".join(str(p) for p in written))


@click.command()
@click.option("--run", "run_dir", type=click.Path(path_type=Path), required=True)
@click.option("--h5ad", type=click.Path(path_type=Path), required=True, help="input h5ad")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="output h5ad")
@click.option("--layer", help=LAYER_HELP)
@click.option("--batch-size", type=click.IntRange(1), default=1024, show_default=True,
              help="cells read, embedded and written at a time (memory does not grow with "
              "the file)")
@click.option("--device", default="cpu", show_default=True)
def embed(run_dir: Path, h5ad: Path, out: Path, layer: str | None, batch_size: int,
          device: str) -> None:
    """Embed an h5ad's cells: obsm['X_ssl_census'], and predicted cell types in obs when the
    run has a classifier head; streamed to a copy of the input, which keeps everything else."""
    from ssl_census.evaluation.model import load_model

    model = load_model(run_dir, device=device)
    card = model.embed_h5ad(h5ad, out, layer=layer, batch_size=batch_size,
                            on_note=lambda line: click.echo(f"note: {line}", err=True))
    labelled = " and labelled" if model.has_classifier else ""
    click.echo(f"{card['genes_matched']} of {card['n_model_genes']} model genes matched "
               f"(by {card['gene_column']}); {card['n_cells']} cells embedded{labelled} from "
               f"{card['values_from']} ({card['values_found']}) -> {out}")
