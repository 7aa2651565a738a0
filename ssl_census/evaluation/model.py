"""A trained run as a Python object: embed and annotate AnnData objects in a notebook, or
stream an h5ad file into a new one in bounded memory (what ``ssl-census embed`` runs).

    model = ssl_census.load_model("runs/rm-celltype")
    model.embed(adata)      # adata.obsm["X_ssl_census"]
    model.annotate(adata)   # adata.obs["ssl_census_cell_type"], ..._probability
    model.embed_h5ad("big.h5ad", "big.embedded.h5ad")   # both, streamed

A cell's result does not depend on the other cells: the network runs in eval mode (no
dropout), has no batch-statistics layers (checked when the run is loaded), and always sees
blocks of the same size (:func:`ssl_census.evaluation.embed.forward_blocks`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from ssl_census.core.errors import UserError
from ssl_census.core.progress import progress
from ssl_census.data.h5ad import Resolved, check_chunk, model_values, resolve
from ssl_census.data.h5ad_inputs import (
    CHUNK_CELLS,
    CellSource,
    open_h5ad,
    sources_in_file,
    sources_in_memory,
)
from ssl_census.evaluation.embed import forward_blocks
from ssl_census.evaluation.h5ad_out import AddedElements, staged_copy
from ssl_census.shards.store import read_parquet
from ssl_census.tasks.runs import RUN_LABELS, load_task, run_gene_space
from ssl_census.training.rundir import load_encoder

log = logging.getLogger(__name__)

OBSM_KEY = "X_ssl_census"
UNS_KEY = "ssl_census"
OBS_PREFIX = "ssl_census_"
LABEL_COLUMNS = ("cell_type", "cell_type_ontology_term_id")  # from the run's labels.parquet
PROBABILITY_COLUMN = OBS_PREFIX + "cell_type_probability"
BATCH_SIZE = CHUNK_CELLS


@dataclass(frozen=True)
class ChunkResult:
    start: int
    embedding: np.ndarray
    code: np.ndarray | None = None  # predicted cell-type code (row of the labels table)
    probability: np.ndarray | None = None


def _predictions(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Arg-max class and its softmax probability (float64, row by row)."""
    logits = logits.astype(np.float64)
    top = logits.max(1, keepdims=True)
    probability = 1.0 / np.exp(logits - top).sum(1)
    return logits.argmax(1), probability.astype(np.float32)


def _check_no_batch_statistics(*modules: nn.Module | None) -> None:
    """Refuse a network that normalises with the statistics of the batch at hand (a
    batch-norm layer without running averages, as the pre-training heads use): a cell's
    output would depend on the cells beside it. Call after ``eval()``."""
    for module in modules:
        for layer in module.modules() if module is not None else ():
            if isinstance(layer, nn.modules.batchnorm._BatchNorm) and (
                    layer.training or layer.running_mean is None):
                raise RuntimeError(f"inference network has a {type(layer).__name__} layer "
                                   "using batch statistics: a cell's output would depend on "
                                   "its batch")


class Model:
    """A run's encoder (and cell-type head, for a ``finetune --task celltype`` run)."""

    def __init__(self, run_dir: Path, card: dict[str, Any], var: pd.DataFrame,
                 encoder: nn.Module, head: nn.Module | None = None,
                 cell_types: pd.DataFrame | None = None, device: str = "cpu") -> None:
        if len(var) != encoder.n_genes:
            raise UserError(f"run {run_dir} lists {len(var)} genes but its encoder reads "
                            f"{encoder.n_genes}", "the run directory is damaged; retrain it")
        self.run_dir, self.card, self.var = run_dir, card, var
        self.encoder, self.head, self.cell_types = encoder.eval(), head, cell_types
        self.device = device
        if head is not None:
            head.eval()
        _check_no_batch_statistics(self.encoder, self.head)

    def __repr__(self) -> str:
        head = f", {len(self.cell_types)} cell types" if self.cell_types is not None else ""
        return (f"Model({str(self.run_dir)!r}: {self.card.get('method')}, {len(self.var)} genes "
                f"-> {self.latent_dim}{head})")

    @property
    def latent_dim(self) -> int:
        return int(self.encoder.latent_dim)

    @property
    def has_classifier(self) -> bool:
        return self.head is not None

    # -- notebooks: AnnData in memory (or backed), changed in place ---------------------------

    def embed(self, adata: Any, layer: str | None = None, batch_size: int = BATCH_SIZE,
              on_note: Callable[[str], None] | None = None) -> Any:
        """Add ``obsm['X_ssl_census']`` (cells x latent, float32) and the model card in
        ``uns['ssl_census']``. ``layer``: a layer name, 'raw' for ``adata.raw.X``, or None for
        X with a fallback to .raw / layers['counts']. Returns ``adata``."""
        resolved = self._resolve(sources_in_memory(adata), layer, "the AnnData", on_note)
        z = np.empty((adata.n_obs, self.latent_dim), dtype=np.float32)
        for r in self._run(resolved, batch_size, classify=False):
            z[r.start : r.start + len(r.embedding)] = r.embedding
        adata.obsm[OBSM_KEY] = z
        adata.uns[UNS_KEY] = {**adata.uns.get(UNS_KEY, {}),
                              **self.model_card(resolved, adata.n_obs), "embedding": OBSM_KEY}
        return adata

    def annotate(self, adata: Any, layer: str | None = None, batch_size: int = BATCH_SIZE,
                 on_note: Callable[[str], None] | None = None) -> Any:
        """Add the predicted cell type (``obs['ssl_census_cell_type']`` and its ontology term
        id, categorical over the run's cell types) and its probability
        (``obs['ssl_census_cell_type_probability']``); needs a cell-type run."""
        self._require_classifier()
        resolved = self._resolve(sources_in_memory(adata), layer, "the AnnData", on_note)
        codes = np.empty(adata.n_obs, dtype=np.int64)
        probability = np.empty(adata.n_obs, dtype=np.float32)
        for r in self._run(resolved, batch_size, classify=True):
            assert r.code is not None and r.probability is not None
            codes[r.start : r.start + len(r.code)] = r.code
            probability[r.start : r.start + len(r.code)] = r.probability
        for name, categories in self._label_categories().items():
            adata.obs[name] = pd.Categorical.from_codes(codes, categories=categories)
        adata.obs[PROBABILITY_COLUMN] = probability
        adata.uns[UNS_KEY] = {**adata.uns.get(UNS_KEY, {}),
                              **self.model_card(resolved, adata.n_obs),
                              "cell_type_columns": [*self._label_categories(), PROBABILITY_COLUMN]}
        return adata

    # -- files: streamed, bounded memory ------------------------------------------------------

    def embed_h5ad(self, h5ad: str | os.PathLike[str], out: str | os.PathLike[str],
                   layer: str | None = None, batch_size: int = BATCH_SIZE,
                   on_note: Callable[[str], None] | None = None) -> dict[str, Any]:
        """Write ``out``: a copy of ``h5ad`` with what :meth:`embed` adds and, for a cell-type
        run, what :meth:`annotate` adds, read and written ``batch_size`` cells at a time (the
        input is never loaded whole). Returns the model card written to ``uns``."""
        h5ad, out = Path(h5ad), Path(out)
        with open_h5ad(h5ad) as f:
            resolved = self._resolve(sources_in_file(f, h5ad), layer, str(h5ad), on_note)
            n = resolved.source.n_cells
            card = {**self.model_card(resolved, n), "embedding": OBSM_KEY}
            with staged_copy(h5ad, out) as target:
                added = AddedElements(target, n, h5ad)
                z = added.obsm_array(OBSM_KEY, self.latent_dim)
                labels: list[Any] = []
                if self.has_classifier:
                    labels = [added.obs_categorical(name, list(categories))
                              for name, categories in self._label_categories().items()]
                    labels.append(added.obs_column(PROBABILITY_COLUMN, np.float32))
                    card["cell_type_columns"] = [*self._label_categories(), PROBABILITY_COLUMN]
                for r in self._run(resolved, batch_size, classify=self.has_classifier):
                    rows = slice(r.start, r.start + len(r.embedding))
                    z[rows] = r.embedding
                    for ds in labels[:-1]:
                        ds[rows] = r.code
                    if labels:
                        labels[-1][rows] = r.probability
                added.finish(UNS_KEY, card)
        return card

    # -- shared -------------------------------------------------------------------------------

    def model_card(self, resolved: Resolved, n_cells: int) -> dict[str, Any]:
        """What ``uns['ssl_census']`` records: the run, its gene space, the genes matched and
        which matrix of the input was read."""
        from ssl_census import __version__

        match = resolved.match
        return {
            "run": str(self.run_dir), "method": str(self.card.get("method", "")),
            "gene_space_sha256": str(self.card.get("gene_list_sha256", "")),
            "n_model_genes": int(match.n_model_genes), "genes_matched": int(match.n_matched),
            "gene_coverage": float(match.coverage), "gene_column": match.column,
            "values_from": resolved.source.where, "values_found": resolved.kind,
            "n_cells": int(n_cells), "tool_version": __version__,
            "matched_genes": np.array(match.matched_genes, dtype=object),
        }

    def _resolve(self, sources: list[CellSource], layer: str | None, what: str,
                 on_note: Callable[[str], None] | None) -> Resolved:
        resolved = resolve(sources, layer, self.var, what)
        for note in resolved.notes:
            (on_note or log.warning)(note)
        return resolved

    def _require_classifier(self) -> None:
        if not self.has_classifier:
            raise UserError(f"run {self.run_dir} ({self.card.get('method')}) has no cell-type "
                            "head", "annotate with a `ssl-census finetune --task celltype` run, "
                            "or call embed()")

    def _label_categories(self) -> dict[str, list[str]]:
        assert self.cell_types is not None
        return {OBS_PREFIX + col: self.cell_types[col].astype(str).tolist()
                for col in LABEL_COLUMNS}

    def _run(self, resolved: Resolved, batch_size: int,
             classify: bool) -> Iterator[ChunkResult]:
        """The source's cells, chunk by chunk: checked, normalised, embedded (and labelled)."""
        if batch_size < 1:
            raise UserError(f"batch size {batch_size} is not positive", "give at least 1")
        source = resolved.source
        bar = progress(source.n_cells, desc="embedding")
        for start, chunk in source.chunks(batch_size):
            check_chunk(resolved, start, chunk)
            n_rows = chunk.shape[0]
            x = model_values(chunk, resolved.kind, resolved.match)
            del chunk  # memory: one chunk's copies at a time
            z, logits = forward_blocks(self.encoder, self.head if classify else None, x,
                                       self.device)
            if logits is None:
                yield ChunkResult(start, z)
            else:
                yield ChunkResult(start, z, *_predictions(logits))
            bar.update(n_rows)
        bar.close()


def load_model(run_dir: str | os.PathLike[str], device: str = "cpu",
               checkpoint: str = "best") -> Model:
    """The model of a pre-training or fine-tuning run directory, ready for inference.

    A ``finetune --task celltype`` run brings its classifier head and cell-type table, so
    :meth:`Model.annotate` works; any run can :meth:`Model.embed`.
    """
    run_dir = Path(run_dir).resolve()
    encoder, card = load_encoder(run_dir, checkpoint, map_location=device)
    var = run_gene_space(run_dir)
    head, cell_types = None, None
    if card.get("task") == "celltype":
        objective, card = load_task(run_dir, checkpoint, device)
        encoder, head = objective.encoder, objective.head
        cell_types = read_parquet(run_dir / RUN_LABELS).sort_values("cell_type_code")
    return Model(run_dir, card, var, encoder.to(torch.device(device)), head, cell_types, device)
