"""scvi-tools models trained from a shard store (the optional ``scvi`` extra).

:class:`ShardDataModule` is a Lightning data module in the shape of scvi-tools' own external
data modules (``TileDBDataModule``, ``MappedCollectionDataModule``, ``AnnbatchDataModule``):
it exposes a ``registry`` for ``scvi.model.SCVI(registry=...)``, the dataloaders that
``model.train(datamodule=...)`` iterates, and ``inference_dataloader()`` for the methods that
take ``dataloader=`` (``get_latent_representation`` and the rest). Batches come from
:class:`~ssl_census.data.loader.BlockShuffleLoader` reading the store's raw ``counts`` (the
likelihoods of scVI model counts, not the log1p values in ``data``): sparse in host memory,
made dense on the model's device, block-shuffled for training and in store order for
inference. The store's gene space (``var.parquet``) is the model's var.

:meth:`ShardDataModule.h5ad_dataloader` feeds an h5ad's raw counts, moved into the store's
gene space, to the same model, so a model trained on a store embeds any file.

scvi-tools and Lightning are imported here only, and the rest of the package imports this
module only inside the functions that need it; without the extra, importing it is a one-line
UserError saying how to install it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from ssl_census.core.errors import UserError
from ssl_census.core.sparse import csr_tensor
from ssl_census.data.h5ad import read_h5ad, resolve, to_model_space
from ssl_census.data.h5ad_inputs import COUNTS, sources_in_memory
from ssl_census.data.loader import BlockShuffleLoader
from ssl_census.data.source import open_split
from ssl_census.shards.store import open_shards

INSTALL_HINT = "pip install 'ssl-census[scvi]'"
UNLABELLED = "unknown"  # what the census (and so a store's cell_type) calls an unlabelled cell
# scvi-tools' tensor keys (scvi.REGISTRY_KEYS): the module is defined before scvi is imported
X_KEY, BATCH_KEY, LABELS_KEY = "X", "batch", "labels"

try:  # Lightning comes with scvi-tools: its absence means the extra is not installed
    from lightning.pytorch import LightningDataModule
except ImportError as e:
    raise UserError(f"ssl_census.data.scvi needs scvi-tools ({e})", INSTALL_HINT) from e


def resolve_device(accelerator: str = "auto", device: int | str = "auto") -> torch.device:
    """The torch device scvi-tools' trainer picks for ``accelerator`` / ``devices``: a GPU
    when there is one and ``auto`` is asked for, else the CPU."""
    if accelerator not in ("auto", "cpu", "gpu", "cuda"):
        raise UserError(f"accelerator {accelerator!r} is not supported here",
                        "use 'auto', 'cpu' or 'gpu'")
    if accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError(f"accelerator {accelerator!r} asked for but torch sees no CUDA device",
                        "use accelerator='cpu' or 'auto'")
    return torch.device("cuda", 0 if device == "auto" else int(device))


class _Epochs:
    """A loader as scvi-tools iterates it: each pass is the next epoch (the loader's order
    depends on (seed, epoch) only), each batch a dict of the tensors scVI's module reads."""

    def __init__(self, loader: BlockShuffleLoader, batch: torch.Tensor, labels: torch.Tensor
                 ) -> None:
        self.loader, self._batch, self._labels = loader, batch, labels
        self._epoch = 0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        self.loader.set_epoch(self._epoch)
        self._epoch += 1
        for b in self.loader:  # codes and batches are on the loader's device both
            yield {X_KEY: b.counts, BATCH_KEY: self._batch[b.index, None],
                   LABELS_KEY: self._labels[b.index, None]}


class _Cells:
    """Raw counts in memory (an h5ad's, in the store's gene space) as scVI's tensor dicts, in
    row order, each batch made dense on ``device``."""

    def __init__(self, counts: sp.csr_matrix, batch: np.ndarray, batch_size: int,
                 device: torch.device) -> None:
        self.counts, self.batch = counts, torch.from_numpy(batch.astype(np.int64))
        self.batch_size, self.device = batch_size, device

    def __len__(self) -> int:
        return -(-self.counts.shape[0] // self.batch_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for start in range(0, self.counts.shape[0], self.batch_size):
            part = self.counts[start : start + self.batch_size]
            csr = csr_tensor(torch.from_numpy(part.indptr.astype(np.int64)),
                             torch.from_numpy(part.indices.astype(np.int64)),
                             torch.from_numpy(part.data.astype(np.float32)), part.shape)
            n = part.shape[0]
            yield {X_KEY: csr.to(self.device).to_dense(),
                   BATCH_KEY: self.batch[start : start + n, None].to(self.device),
                   LABELS_KEY: torch.zeros((n, 1), dtype=torch.int64, device=self.device)}


def _categories(values: Sequence[pd.Series]) -> list[str]:
    """The sorted union of the values of an obs column over splits (as strings)."""
    return sorted(set().union(*(set(v.astype(str).unique()) for v in values)))


def _codes(values: pd.Series, categories: list[str]) -> np.ndarray:
    return pd.Categorical(values.astype(str), categories=categories).codes.astype(np.int64)


class ShardDataModule(LightningDataModule):
    """A Lightning data module over a shard store, for scvi-tools models.

    ``shards_dir``: a shard store. ``batch_key``: the obs column whose values are scVI's batch
    (e.g. ``dataset_id``, ``tech_sample``, ``assay``; None: one batch). ``labels_key``: an obs
    column of labels (e.g. ``cell_type``; ``"unknown"`` marks unlabelled cells), for models
    that read labels. Batches and labels are coded over all the store's splits, so a model
    trained on ``train`` reads ``val`` and ``test`` with the same codes. ``train_split`` is
    trained on (shuffled, a new order every epoch from ``seed``), ``validation_split``
    (optional) validated on. ``batch_size`` defaults to scvi-tools' 128. ``workers``: the
    loader's threads. ``accelerator`` / ``device``: where batches are made dense (pass the
    same to ``model.train``).
    """

    def __init__(
        self,
        shards_dir: str | os.PathLike[str],
        batch_key: str | None = None,
        labels_key: str | None = None,
        train_split: str = "train",
        validation_split: str | None = None,
        batch_size: int = 128,
        seed: int = 0,
        workers: int | None = None,
        accelerator: str = "auto",
        device: int | str = "auto",
        model_name: str = "SCVI",
    ) -> None:
        super().__init__()
        self.shards_dir = Path(shards_dir)
        self.store = open_shards(shards_dir)
        self.batch_key, self.labels_key = batch_key, labels_key
        self.train_split, self.validation_split = train_split, validation_split
        self.batch_size, self.seed, self.workers = int(batch_size), int(seed), workers
        self.model_name = model_name
        self.device = resolve_device(accelerator, device)
        for split in (train_split, validation_split):
            if split is not None and split not in self.store.splits:
                raise UserError(f"split {split!r} not in shard store {self.shards_dir}",
                                f"choose one of {', '.join(self.store.splits)}")
        if batch_size < 3:  # scVI's encoder normalises over the batch (BatchNorm)
            raise UserError(f"batch_size {batch_size} is too small for scVI", "use at least 3")
        obs = {s: self._obs(s) for s in self.store.splits}
        self.batch_labels = (_categories([o[batch_key] for o in obs.values()])
                             if batch_key else ["0"])
        found = _categories([o[labels_key] for o in obs.values()]) if labels_key else []
        # the unlabelled category goes last, as scvi-tools' labels mappings put it
        self.labels_mapping = [c for c in found if c != UNLABELLED] + [UNLABELLED]
        self._codes = {s: self._split_codes(o) for s, o in obs.items()}
        self.n_obs = int(len(obs[train_split]))
        self.n_train, self.n_val = self.n_obs, len(obs[validation_split]) if validation_split else 0
        # scvi-tools and Lightning read these attributes of a data module
        self.n_obs_per_sample = torch.tensor([])
        # the training cells' labels by name (scvi-tools' semi-supervised models split
        # labelled from unlabelled cells with it)
        self.labels_ = (obs[train_split][labels_key].astype(str).to_numpy() if labels_key
                        else np.full(self.n_obs, UNLABELLED, dtype=object))
        self.allow_zero_length_dataloader_with_multiple_devices = False

    # -- what scvi-tools reads ---------------------------------------------------------------

    @property
    def var(self) -> pd.DataFrame:
        """The store's gene space (feature_id, feature_name), the model's genes in order."""
        return self.store.var

    @property
    def var_names(self) -> list[str]:
        return self.store.var["feature_id"].astype(str).tolist()

    @property
    def n_vars(self) -> int:
        return self.store.n_genes

    @property
    def n_batch(self) -> int:
        return len(self.batch_labels)

    @property
    def n_labels(self) -> int:
        return len(self.labels_mapping)

    @property
    def n_samples(self) -> int:
        return 0

    @property
    def label_keys(self) -> list[str] | None:
        return [self.labels_key] if self.labels_key else None

    @property
    def registry(self) -> dict[str, Any]:
        """What ``scvi.model.SCVI(registry=...)`` reads, as scvi-tools' data modules write it."""
        import scvi

        empty: dict[str, Any] = {"data_registry": {}, "state_registry": {}, "summary_stats": {}}
        return {
            "scvi_version": scvi.__version__,
            "model_name": self.model_name,
            "setup_args": {"layer": None, "batch_key": self.batch_key,
                           "labels_key": self.labels_key, "size_factor_key": None,
                           "categorical_covariate_keys": None,
                           "continuous_covariate_keys": None},
            "field_registries": {
                "X": {"data_registry": {"attr_name": "X", "attr_key": None},
                      "state_registry": {"n_obs": self.n_obs, "n_vars": self.n_vars,
                                         "column_names": self.var_names},
                      "summary_stats": {"n_vars": self.n_vars, "n_cells": self.n_obs}},
                "batch": {"data_registry": {"attr_name": "obs", "attr_key": "_scvi_batch"},
                          "state_registry": {
                              "categorical_mapping": np.array(self.batch_labels, dtype=object),
                              "original_key": self.batch_key or "batch"},
                          "summary_stats": {"n_batch": self.n_batch}},
                "labels": {"data_registry": {"attr_name": "obs", "attr_key": "_scvi_labels"},
                           "state_registry": {
                               "categorical_mapping": np.array(self.labels_mapping, dtype=object),
                               "original_key": self.labels_key or "labels",
                               "unlabeled_category": UNLABELLED},
                           "summary_stats": {"n_labels": self.n_labels}},
                "size_factor": empty,
                "extra_categorical_covs": {**empty,
                                           "summary_stats": {"n_extra_categorical_covs": 0}},
                "extra_continuous_covs": {**empty,
                                          "summary_stats": {"n_extra_continuous_covs": 0}},
            },
            "setup_method_name": "setup_datamodule",
        }

    # -- dataloaders -------------------------------------------------------------------------

    def train_dataloader(self) -> _Epochs:
        return self._epochs(self.train_split, shuffle=True)

    def val_dataloader(self) -> _Epochs | None:
        if self.validation_split is None:
            return None  # as scvi-tools' DataSplitter without a validation set
        return self._epochs(self.validation_split, shuffle=False)

    def inference_dataloader(self, split: str | None = None, batch_size: int | None = None
                             ) -> _Epochs:
        """Every cell of ``split`` (default: the training split) once, in store order: the
        rows of ``model.get_latent_representation(dataloader=...)`` are the split's rows."""
        return self._epochs(split or self.train_split, shuffle=False, batch_size=batch_size)

    def h5ad_dataloader(self, h5ad: str | os.PathLike[str] | Any, batch_key: str | None = None,
                        layer: str | None = None, batch_size: int = 1024) -> _Cells:
        """An h5ad's (or an AnnData's) cells, in file order, for the model trained here.

        Raw counts are read from X, ``.raw`` or ``layers['counts']`` (or ``layer``) and moved
        into the store's gene space (genes matched by Ensembl ID or symbol; genes the file
        lacks are zero). ``batch_key``: the file's obs column of batches, whose values must be
        batches of the store; without it every cell is read as the first batch, which leaves
        the latent space of SCVI's default encoder (it does not read the batch) unchanged.
        """
        adata = read_h5ad(h5ad) if isinstance(h5ad, str | os.PathLike) else h5ad
        what = str(h5ad) if isinstance(h5ad, str | os.PathLike) else "the AnnData"
        resolved = resolve(sources_in_memory(adata), layer, self.var, what)
        if resolved.kind != COUNTS:
            raise UserError(f"{resolved.source.where} of {what} holds {resolved.kind}, and scVI "
                            "models raw counts",
                            "give raw integer counts in X, .raw or layers['counts'] (layer=NAME)")
        counts = to_model_space(resolved.source.rows(0, adata.n_obs), resolved.match)
        return _Cells(counts, self._file_batches(adata, batch_key, what), batch_size,
                      self.device)

    # -- internals ---------------------------------------------------------------------------

    def _obs(self, split: str) -> pd.DataFrame:
        columns = list(dict.fromkeys(c for c in (self.batch_key, self.labels_key) if c))
        return open_split(self.shards_dir, split, columns).obs.reset_index(drop=True)

    def _labels_of(self, obs: pd.DataFrame) -> np.ndarray:
        if not self.labels_key:
            return np.zeros(len(obs), dtype=np.int64)
        return _codes(obs[self.labels_key], self.labels_mapping)

    def _split_codes(self, obs: pd.DataFrame) -> tuple[torch.Tensor, torch.Tensor]:
        batch = (_codes(obs[self.batch_key], self.batch_labels) if self.batch_key
                 else np.zeros(len(obs), dtype=np.int64))
        labels = self._labels_of(obs)
        return torch.from_numpy(batch).to(self.device), torch.from_numpy(labels).to(self.device)

    def _epochs(self, split: str, shuffle: bool, batch_size: int | None = None) -> _Epochs:
        size = int(batch_size or self.batch_size)
        n = len(self._codes[split][0])
        loader = BlockShuffleLoader(
            self.shards_dir, split, batch_size=size, layers=("counts",), obs_columns=(),
            dense=True, device=self.device, shuffle=shuffle, seed=self.seed,
            # a last training batch of one or two cells breaks BatchNorm; scvi-tools' own
            # splitter avoids them the same way
            drop_last=shuffle and 0 < n % size < 3, workers=self.workers)
        return _Epochs(loader, *self._codes[split])

    def _file_batches(self, adata: Any, batch_key: str | None, what: str) -> np.ndarray:
        if batch_key is None:
            return np.zeros(adata.n_obs, dtype=np.int64)
        if batch_key not in adata.obs.columns:
            raise UserError(f"{what} has no obs column {batch_key!r}",
                            f"use one of: {', '.join(map(str, adata.obs.columns)) or '(none)'}")
        codes = _codes(adata.obs[batch_key], self.batch_labels)
        unknown = sorted(set(adata.obs[batch_key].astype(str)[codes < 0]))
        if unknown:
            raise UserError(f"batches {', '.join(unknown[:5])} of {what} are not batches of the "
                            f"store ({', '.join(self.batch_labels[:5])}, ...)",
                            "map them to the store's batches, or leave batch_key out")
        return codes
