"""``make reproduce`` from end to end: data, runs, results page."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch

from ssl_census.core.errors import UserError
from ssl_census.reproduce import data
from ssl_census.reproduce.config import load_reproduce_config
from ssl_census.reproduce.page import write_page
from ssl_census.reproduce.runs import PHASES, Experiment, Inputs

log = logging.getLogger(__name__)


def resolve_data_dir(data_dir: str | os.PathLike[str] | None) -> Path:
    folder = Path(data_dir or os.environ.get("SSL_CENSUS_DATA", "../shared/data"))
    if not (folder / "h5ad").is_dir():
        raise UserError(f"no h5ad/ folder in the data directory {folder}",
                        "pass --data-dir or set SSL_CENSUS_DATA to the shared data folder")
    return folder.resolve()


def reproduce(config: str | os.PathLike[str], work: str | os.PathLike[str],
              page: str | os.PathLike[str], data_dir: str | os.PathLike[str] | None = None,
              census_uri: str | None = None) -> Path:
    """Build the data, run (or skip) every run of the config, and write the results page."""
    t0 = time.perf_counter()
    conf = load_reproduce_config(config)
    if conf.threads:
        torch.set_num_threads(int(conf.threads))
    work, folder = Path(work).resolve(), resolve_data_dir(data_dir)
    work.mkdir(parents=True, exist_ok=True)
    census = data.ensure_census(conf, work, folder, census_uri)
    genes = data.ensure_gene_list(conf, work, folder, census)
    stores = data.ensure_stores(conf, work, census, genes)
    integration = {}
    for view in conf.integration_sets:
        path, label_key = data.ensure_view(conf, view, work, folder)
        integration[view.name] = (path, label_key, str(view.batch_key))
    inputs = Inputs(stores=stores, unseen=data.ensure_view(conf, conf.unseen, work, folder),
                    integration=integration, data_dir=folder)
    experiment = Experiment(conf, work, inputs)
    experiment.prune()  # steps of an earlier, different configuration go before the page is made
    # phase by phase over all seeds, the page rewritten after each step: a reproduce stopped
    # early leaves a true page whose tables have every seed finished so far
    for phase in PHASES:
        for seed in conf.seeds:
            log.info(f"== {phase}, seed {seed}: {(time.perf_counter() - t0) / 60:.1f} min so far")
            experiment.run_phase(phase, seed)
            out = write_page(conf, work, Path(page), inputs, census, genes,
                             seconds=time.perf_counter() - t0)
    log.info(f"finished in {(time.perf_counter() - t0) / 60:.1f} min")
    return out
