"""The Trainer on synthetic census values: every method learns, resume is exact, early stopping,
checkpoints and the run directory, and DDP over two gloo processes."""

from __future__ import annotations

import json

import pytest
import torch
import torch.multiprocessing as mp
from pretrain_support import (
    SMALL_HEADS,
    TINY,
    TensorLoader,
    ddp_worker,
    gene_sets_for,
    options_for,
    pretrain_store,
    split_matrix,
)

from ssl_census.pretext import METHODS, build_method
from ssl_census.training.rundir import RunDir, load_encoder
from ssl_census.training.trainer import TrainConfig, Trainer, seed_everything


@pytest.fixture(scope="module")
def cells(synth_cells, tmp_path_factory):
    store = pretrain_store(synth_cells, tmp_path_factory.mktemp("pretrain") / "shards")
    return store, split_matrix(store, "train"), split_matrix(store, "val")


def make_trainer(cells, gene_sets, run_path, method="random_mask", on_step=None, **cfg):
    store, train, val = cells
    seed_everything(0)
    options = options_for(method, **SMALL_HEADS, min_fraction=0.2)
    objective = build_method(method, store.var["feature_name"].tolist(), model=TINY,
                             options=options, gene_sets=gene_sets_for(method, gene_sets))
    config = TrainConfig(**{"max_steps": 30, "max_epochs": None, "val_every": 10,
                            "val_batches": 3, "log_every": 1, "warmup_steps": 5, **cfg})
    run = None
    if run_path is not None:
        card = {"method": method, "encoder": {"n_genes": store.n_genes, **TINY}}
        resume = (run_path / "checkpoints" / "last.pt").exists()
        run = RunDir.create(run_path, {"method": method, "train": cfg}, card, resume=resume)
    return Trainer(objective, TensorLoader(train, 64), TensorLoader(val, 128, shuffle=False),
                   config, run, "cpu", on_step=on_step)


def val_losses(run):
    return [r["loss"] for r in run.metrics() if r["split"] == "val"]


@pytest.mark.parametrize("method", METHODS)
def test_each_method_lowers_its_validation_loss(method, cells, synth_gene_sets, tmp_path):
    trainer = make_trainer(cells, synth_gene_sets, tmp_path / "run", method, max_steps=30,
                           val_every=15, lr=2e-3)
    trainer.fit()
    losses = val_losses(trainer.run)
    assert len(losses) == 3  # at start, step 15, step 30
    assert losses[-1] < losses[0], losses


def test_resume_after_a_crash_reproduces_the_loss_sequence(cells, synth_gene_sets, tmp_path):
    straight = make_trainer(cells, synth_gene_sets, tmp_path / "a", "gp_to_tf", max_steps=25,
                            val_every=10)
    straight.fit()

    def crash(step, figures):
        if step == 14:
            raise KeyboardInterrupt

    crashed = make_trainer(cells, synth_gene_sets, tmp_path / "b", "gp_to_tf", crash, max_steps=25,
                           val_every=10)
    with pytest.raises(KeyboardInterrupt):
        crashed.fit()
    resumed = make_trainer(cells, synth_gene_sets, tmp_path / "b", "gp_to_tf", max_steps=25,
                           val_every=10)
    resumed.fit(resume=True)
    assert resumed.step == 25
    def losses(trainer):
        return [(r["split"], r["step"], r["loss"]) for r in trainer.run.metrics()]

    assert losses(resumed) == losses(straight)
    assert [s for split, s, _ in losses(resumed) if split == "train"] == list(range(1, 26))
    for a, b in zip(straight.objective.state_dict().values(),
                    resumed.objective.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_resume_continues_across_an_epoch_boundary(cells, synth_gene_sets, tmp_path):
    # about 2,400 training cells / 64 = 37 batches an epoch: resuming at step 25 crosses into
    # epoch 1
    straight = make_trainer(cells, synth_gene_sets, tmp_path / "a", max_steps=40, val_every=20)
    straight.fit()
    first = make_trainer(cells, synth_gene_sets, tmp_path / "b", max_steps=40, val_every=20,
                         on_step=lambda s, f: (_ for _ in ()).throw(KeyboardInterrupt)
                         if s == 25 else None)
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    second = make_trainer(cells, synth_gene_sets, tmp_path / "b", max_steps=40, val_every=20)
    second.fit(resume=True)
    assert second.epoch == 1
    losses = [[r["loss"] for r in t.run.metrics() if r["split"] == "train"]
              for t in (straight, second)]
    assert losses[0] == losses[1]


def test_early_stopping_after_patience_validations_without_improvement(cells, synth_gene_sets,
                                                                        tmp_path):
    trainer = make_trainer(cells, synth_gene_sets, tmp_path / "run", max_steps=100, val_every=5,
                           lr=0.0, patience=2)
    summary = trainer.fit()
    assert summary["stopped_early"] and summary["step"] == 10
    assert not (tmp_path / "run" / "checkpoints" / "best.pt").exists()  # never improved


def test_run_directory_checkpoints_and_encoder_loading(cells, synth_gene_sets, tmp_path):
    trainer = make_trainer(cells, synth_gene_sets, tmp_path / "run", "gp_mask", max_steps=20,
                           val_every=10)
    summary = trainer.fit()
    run = tmp_path / "run"
    card = json.loads((run / "model_card.json").read_text())
    assert card["step"] == 20 and card["best_val_loss"] == pytest.approx(summary["best_val_loss"])
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    assert {"model", "encoder", "optimizer", "scheduler", "loader", "rng", "step"} <= set(state)
    assert state["loader"] == {"epoch": 0, "position": 20}
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=False)
    val = [r for r in RunDir(run).metrics() if r["split"] == "val"]
    assert best["step"] == min(val[1:], key=lambda r: r["loss"])["step"]
    encoder, loaded_card = load_encoder(run, "last")
    assert loaded_card["method"] == "gp_mask" and not encoder.training
    x = cells[2][:16]
    assert torch.equal(encoder(x), trainer.objective.encoder.eval()(x))
    assert (run / "config.toml").read_text().startswith('method = "gp_mask"')


@pytest.mark.parametrize("optimizer", ["adamw", "lars"])
def test_optimiser_is_made_once_and_keeps_its_state(optimizer, cells, synth_gene_sets):
    trainer = make_trainer(cells, synth_gene_sets, None, "barlow", max_steps=6, val_every=100,
                           optimizer=optimizer, lr=0.05 if optimizer == "lars" else 1e-3)
    optimiser = trainer.optimizer
    snapshots = []
    trainer.on_step = lambda step, figures: snapshots.append(
        {k: v.clone() for k, v in optimiser.state[next(iter(optimiser.state))].items()})
    trainer.fit()
    assert trainer.optimizer is optimiser
    if optimizer == "adamw":
        assert {int(s["step"]) for s in optimiser.state.values()} == {6}
    else:  # momentum accumulates from step to step instead of restarting
        norms = [float(s["mu"].norm()) for s in snapshots]
        assert len(norms) == 6 and norms[-1] > norms[0] > 0


def test_two_gloo_processes_train_equal_weights(cells, tmp_path):
    store = cells[0]
    mp.spawn(ddp_worker, args=(2, str(tmp_path / "init"), str(store.path), str(tmp_path)),
             nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for k, v in r0["state"].items():
        assert torch.equal(v, r1["state"][k]), k
    assert not torch.equal(r0["first_batch"], r1["first_batch"])  # ranks read different cells
