"""scVI as a baseline embedding: scvi-tools' ``SCVI`` with its defaults, trained out of core
from a shard store (:class:`ssl_census.data.scvi.ShardDataModule`), and its latent space of
the store's cells or of an h5ad in the store's gene space. The paper's integration benchmark
compares SSL with PCA and scVI; ``make reproduce`` scores this beside them.

Needs the optional ``scvi`` extra; :func:`scvi_available` says whether it is there (and how
to install it) without importing the rest.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ssl_census.core.errors import UserError

INSTALL_HINT = "pip install 'ssl-census[scvi]' (scvi-tools)"
# Lightning's and scvi-tools' start-up chatter (devices, seeds, parameter counts) goes to the
# log at WARNING only: the commands print their own summary.
_CHATTY = ("lightning.pytorch", "lightning.fabric", "scvi")


def scvi_available() -> tuple[bool, str]:
    """Whether scvi-tools imports here, and if not why, with the install line."""
    try:
        import scvi  # noqa: F401
    except Exception as e:  # an import can also fail inside one of its dependencies
        return False, f"scvi-tools is not importable ({type(e).__name__}: {e}); {INSTALL_HINT}"
    return True, ""


def require_scvi() -> None:
    ok, reason = scvi_available()
    if not ok:
        raise UserError(reason.split(";")[0], INSTALL_HINT)


def scvi_version() -> str | None:
    ok, _ = scvi_available()
    if not ok:
        return None
    import scvi

    return str(scvi.__version__)


def scvi_max_epochs(n_cells: int) -> int:
    """The epochs scvi-tools trains ``n_cells`` cells for by default (its own heuristic: 400
    up to 20,000 cells, fewer above)."""
    require_scvi()
    from scvi.model._utils import get_max_epochs_heuristic

    return int(get_max_epochs_heuristic(n_cells))


@dataclass
class TrainedScvi:
    """A trained SCVI model, the data module it trained from, and how long it trained."""

    model: Any  # scvi.model.SCVI
    datamodule: Any  # ssl_census.data.scvi.ShardDataModule
    epochs: int
    steps: int
    seconds: float

    def store_latent(self, split: str | None = None) -> np.ndarray:
        """Latent means of every cell of ``split`` (default: the training split), in store
        order."""
        loader = self.datamodule.inference_dataloader(split)
        return np.asarray(self.model.get_latent_representation(dataloader=loader))

    def h5ad_latent(self, h5ad: str | os.PathLike[str], batch_key: str | None = None,
                    layer: str | None = None) -> np.ndarray:
        """Latent means of an h5ad's cells (raw counts, moved into the store's gene space)."""
        loader = self.datamodule.h5ad_dataloader(h5ad, batch_key=batch_key, layer=layer)
        return np.asarray(self.model.get_latent_representation(dataloader=loader))


def quiet_lightning() -> None:
    for name in _CHATTY:
        logging.getLogger(name).setLevel(logging.WARNING)


def train_scvi(shards_dir: str | os.PathLike[str], batch_key: str | None, seed: int = 0,
               max_epochs: int | None = None, accelerator: str = "auto",
               batch_size: int = 128, workers: int | None = None,
               **trainer_kwargs: Any) -> TrainedScvi:
    """SCVI with scvi-tools' defaults trained on the store's training split, with
    ``batch_key`` (an obs column) as its batch covariate; ``max_epochs`` None is scvi-tools'
    own heuristic over the training cells. ``trainer_kwargs`` go to scvi-tools' Trainer
    (e.g. ``max_steps``)."""
    require_scvi()
    import scvi

    from ssl_census.data.scvi import ShardDataModule

    quiet_lightning()
    scvi.settings.seed = int(seed)  # torch, numpy and Lightning's seeds, as scvi-tools sets them
    dm = ShardDataModule(shards_dir, batch_key=batch_key, seed=seed, batch_size=batch_size,
                         workers=workers, accelerator=accelerator)
    model = scvi.model.SCVI(registry=dm.registry)
    t0 = time.perf_counter()
    model.train(datamodule=dm, max_epochs=max_epochs, accelerator=accelerator, devices=1,
                **{"enable_progress_bar": False, **trainer_kwargs})
    trainer = model.trainer
    return TrainedScvi(model, dm, int(trainer.current_epoch), int(trainer.global_step),
                       time.perf_counter() - t0)


def scvi_integration_run(shards_dir: Path, out: Path, views: dict[str, Path],
                         batch_key: str, seed: int, device: str,
                         max_epochs: int | None = None) -> dict[str, Any]:
    """``make reproduce``'s scVI run: trained on the integration store, then the latent space
    of each view's h5ad written to ``out/latent-<view>.npy`` (what the integration scores
    read). Returns the run's summary."""
    trained = train_scvi(shards_dir, batch_key, seed=seed, max_epochs=max_epochs,
                         accelerator="cpu" if device == "cpu" else "auto")
    out.mkdir(parents=True, exist_ok=True)
    for name, h5ad in views.items():
        np.save(out / latent_file(name), trained.h5ad_latent(h5ad).astype(np.float32))
    return {"step": trained.steps, "epochs": trained.epochs, "stopped_early": False,
            "n_train_cells": trained.datamodule.n_obs, "n_batch": trained.datamodule.n_batch,
            "train_seconds": round(trained.seconds, 2), "scvi_tools": scvi_version()}


def latent_file(view: str) -> str:
    return f"latent-{view}.npy"
