"""scvi-tools' SCVI trained from a shard store of real cells (the optional ``scvi`` extra),
through ssl_census.data.scvi.ShardDataModule: the batch covariate reaches the model, the
latent space has one row per cell in store order, and an h5ad gets the same latent space."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from loader_support import stored_matrix

from ssl_census.core.errors import UserError

scvi = pytest.importorskip(
    "scvi", reason="scvi-tools is not installed: pip install 'ssl-census[scvi]' (the scvi "
                   "extra; `make install` and CI install it)")

from ssl_census.data.scvi import ShardDataModule  # noqa: E402 (needs the extra)

BATCH_KEY = "dataset_id"
STEPS = 4


def _decoder_first_layer(model) -> torch.Tensor:
    """scVI's decoder's first weight matrix: the latent columns, then the batch one-hot's."""
    return model.module.decoder.px_decoder.fc_layers[0][0].weight


def _seen_batches():
    """A Lightning callback keeping the batch codes of every training step."""
    from lightning.pytorch.callbacks import Callback

    class Seen(Callback):
        def __init__(self) -> None:
            self.codes: list[np.ndarray] = []

        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
            self.codes.append(batch["batch"].cpu().numpy().ravel())

    return Seen()


@pytest.fixture(scope="module")
def trained(real_shards_dir: Path):
    """SCVI trained a few steps on the real store's training split, batch = dataset_id; the
    decoder's first layer before and after (weight decay off, so a batch's one-hot column
    moves exactly when cells of that batch were trained on)."""
    dm = ShardDataModule(real_shards_dir, batch_key=BATCH_KEY, accelerator="cpu", seed=0)
    scvi.settings.seed = 0
    model = scvi.model.SCVI(registry=dm.registry)
    before = _decoder_first_layer(model).detach().clone()
    seen = _seen_batches()
    model.train(datamodule=dm, max_epochs=1, max_steps=STEPS, accelerator="cpu", devices=1,
                plan_kwargs={"weight_decay": 0.0}, enable_progress_bar=False,
                callbacks=[seen])
    return dm, model, before, np.concatenate(seen.codes)


def test_the_store_is_the_models_gene_space_and_batches(trained, real_shards_dir: Path) -> None:
    dm, model, _, _ = trained
    var = pd.read_parquet(real_shards_dir / "var.parquet")
    assert model.module.n_input == len(var) == dm.n_vars
    assert model.get_var_names() == var["feature_id"].astype(str).tolist()
    # batches are coded over every split, so val and test cells read with the training codes
    datasets = set()
    for split in ("train", "val", "test"):
        datasets |= set(pd.read_parquet(real_shards_dir / split / "obs.parquet")[BATCH_KEY]
                        .astype(str))
    assert dm.batch_labels == sorted(datasets) and len(datasets) > 2
    assert model.summary_stats.n_batch == model.module.n_batch == len(datasets)


def test_the_batch_covariate_reached_the_model(trained) -> None:
    dm, model, before, seen = trained
    assert model.trainer.global_step == STEPS and len(seen) == STEPS * dm.batch_size
    n_latent = model.module.n_latent
    after = _decoder_first_layer(model).detach()
    assert after.shape[1] == n_latent + dm.n_batch
    moved = np.flatnonzero((after - before)[:, n_latent:].abs().sum(0).numpy() > 0)
    # exactly the batches of the trained cells moved their columns: every code fed to the
    # model was used as that batch's covariate, and no other
    assert set(moved) == set(np.unique(seen)) and len(moved) > 1


def test_inference_reads_every_cell_in_store_order(trained, real_shards_dir: Path) -> None:
    dm, _, _, _ = trained
    obs = pd.read_parquet(real_shards_dir / "val" / "obs.parquet")
    counts = stored_matrix(real_shards_dir, "val", "counts")
    batches = list(dm.inference_dataloader("val", batch_size=500))
    assert len(batches) == -(-len(obs) // 500)
    x = torch.cat([b["X"] for b in batches])
    np.testing.assert_array_equal(x.numpy(), counts.toarray())  # raw counts, row by row
    codes = torch.cat([b["batch"] for b in batches])[:, 0].numpy()
    np.testing.assert_array_equal(
        codes, [dm.batch_labels.index(v) for v in obs[BATCH_KEY].astype(str)])


def _as_anndata(counts: sp.csr_matrix, var: pd.DataFrame) -> ad.AnnData:
    a = ad.AnnData(counts.astype(np.float32))
    a.var_names = var["feature_id"].astype(str).to_numpy()
    return a


def test_latent_space_has_one_row_per_cell_in_store_order(trained, real_shards_dir: Path
                                                           ) -> None:
    dm, model, _, _ = trained
    z = model.get_latent_representation(dataloader=dm.inference_dataloader("val"))
    counts = stored_matrix(real_shards_dir, "val", "counts")
    assert z.shape == (counts.shape[0], model.module.n_latent) and np.isfinite(z).all()
    # the same cells from memory, in store order and shuffled: the rows follow the cells
    order = np.random.default_rng(0).permutation(counts.shape[0])
    for rows in (np.arange(counts.shape[0]), order):
        cells = _as_anndata(counts[rows], dm.var)
        z_mem = model.get_latent_representation(dataloader=dm.h5ad_dataloader(cells))
        np.testing.assert_allclose(z_mem, z[rows], rtol=1e-4, atol=1e-5)


def test_an_h5ad_in_the_store_gene_space_gets_a_latent_space(trained, shared_data: Path
                                                              ) -> None:
    dm, model, _, _ = trained
    path = shared_data / "h5ad" / "pbmc_3tech_savercat.h5ad"  # symbols, raw counts in X
    z = model.get_latent_representation(dataloader=dm.h5ad_dataloader(path))
    assert z.shape == (ad.read_h5ad(path, backed="r").n_obs, model.module.n_latent)
    assert np.isfinite(z).all() and z.std(axis=0).min() > 0


def test_bad_h5ad_inputs_are_refused_in_one_line(trained, real_shards_dir: Path) -> None:
    dm, _, _, _ = trained
    cells = _as_anndata(stored_matrix(real_shards_dir, "val", "counts")[:50], dm.var)
    cells.obs["dataset_id"] = "a dataset the store never had"
    with pytest.raises(UserError, match="not batches of the store"):
        dm.h5ad_dataloader(cells, batch_key="dataset_id")
    logged = cells.copy()
    logged.X = np.log1p(logged.X)
    with pytest.raises(UserError, match="scVI models raw counts"):
        dm.h5ad_dataloader(logged)
