"""The sparse input path trains as the dense one: for every pre-training method and every
fine-tuning task, a fixed-seed run over CSR batches ends with the losses and weights of the
same run over dense batches (up to float summation order); the layout is chosen by device and
density and recorded in the run."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from pretrain_support import (
    SMALL_HEADS,
    TINY,
    TensorLoader,
    gene_sets_for,
    options_for,
    pretrain_store,
    split_matrix,
)
from synth_support import with_proteins, write_split_by_tech_sample

from ssl_census.cli import main
from ssl_census.pretext import METHODS, build_method
from ssl_census.training.rundir import RunDir
from ssl_census.training.setup import SPARSE_BELOW, input_layout
from ssl_census.training.trainer import TrainConfig, Trainer, seed_everything

STEPS = 6
LR = 1e-3  # the [train] default both runs use


def assert_weights_close(sparse: dict, dense: dict) -> None:
    """Float summation order differs between the layouts. AdamW moves a weight by about the
    learning rate per step whatever the size of its gradient, so a gradient that cancels to
    nearly zero may step differently: a few weights may differ by a fraction of the learning
    rate, the rest agree to float precision. A wrong gradient would move many weights by
    about the learning rate."""
    assert sparse.keys() == dense.keys()
    for key, d in dense.items():
        diff = (sparse[key] - d).abs()
        off = diff > 1e-5 + 1e-4 * d.abs()
        assert diff.max() <= 0.2 * LR and off.float().mean() <= 1e-4, (key, diff.max(),
                                                                       int(off.sum()))


@pytest.fixture(scope="module")
def cells(synth_cells, tmp_path_factory):
    store = pretrain_store(synth_cells, tmp_path_factory.mktemp("layout") / "shards")
    return store, split_matrix(store, "train"), split_matrix(store, "val")


def train(cells, gene_sets, method, sparse, optimizer="adamw", **options):
    """A few steps of ``method`` from a fixed seed: (train losses, final val figures, weights)."""
    store, train_x, val_x = cells
    seed_everything(0)
    objective = build_method(method, store.var["feature_name"].tolist(), model=TINY,
                             options=options_for(method, **SMALL_HEADS, min_fraction=0.2,
                                                 **options),
                             gene_sets=gene_sets_for(method, gene_sets))
    config = TrainConfig(max_steps=STEPS, max_epochs=None, val_every=3, val_batches=2,
                         log_every=1, warmup_steps=2, lr=LR, optimizer=optimizer)
    losses: list[float] = []
    trainer = Trainer(objective, TensorLoader(train_x, 64, sparse=sparse),
                      TensorLoader(val_x, 128, shuffle=False, sparse=sparse), config, None, "cpu",
                      on_step=lambda step, figures: losses.append(figures["loss"]))
    trainer.fit()
    return losses, trainer.evaluate(), objective.state_dict()


def assert_same_run(dense, sparse):
    (d_losses, d_val, d_state), (s_losses, s_val, s_state) = dense, sparse
    assert s_losses == pytest.approx(d_losses, rel=1e-4)
    assert s_val == pytest.approx(d_val, rel=1e-4)
    assert_weights_close(s_state, d_state)


@pytest.mark.parametrize(("method", "options", "optimizer"), [
    *((m, {}, "adamw") for m in METHODS),
    # views by dropout alone stay sparse. Trained with LARS (Barlow twins' own optimiser): the
    # encoder's last bias feeds a batch-normalised projector, so its true gradient is zero and
    # AdamW would step it by the learning rate along float noise, differently in each layout
    ("barlow", {"noise": 0.0}, "lars"),
])
def test_each_method_trains_alike_on_sparse_and_dense_batches(method, options, optimizer, cells,
                                                                synth_gene_sets):
    dense = train(cells, synth_gene_sets, method, False, optimizer, **options)
    sparse = train(cells, synth_gene_sets, method, True, optimizer, **options)
    assert_same_run(dense, sparse)
    assert dense[0][-1] != dense[0][0]  # it did train


@pytest.fixture(scope="module")
def task_work(synth_cells, tmp_path_factory):
    root = tmp_path_factory.mktemp("layout-tasks")
    cite = root / "cite.h5ad"
    with_proteins(synth_cells[:2_000], n_proteins=6).write_h5ad(cite)
    return {"root": root, "shards": write_split_by_tech_sample(root / "shards", synth_cells),
            "cite": cite}


def finetune(work, task, layout):
    out = work["root"] / f"{task}-{layout}"
    args = ["finetune", "--task", task, "--init", "random", "--shards", work["shards"],
            "--out", out, "--max-steps", str(STEPS), "--val-every", "3", "--val-batches", "2",
            "--log-every", "1", "--hidden", "64,16", "--batch-size", "256", "--workers", "1",
            "--lr", str(LR),
            "--device", "cpu", "--input-layout", layout]
    if task == "cross_modality":
        args += ["--h5ad", work["cite"]]
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 0, (r.output, r.exception)
    run = RunDir(out)
    figures = [{k: v for k, v in rec.items() if k not in ("cells_per_s", "lr")}
               for rec in run.metrics()]
    return run, figures, run.load("last")["model"]


@pytest.mark.parametrize("task", ["celltype", "reconstruction", "integration", "cross_modality"])
def test_each_task_fine_tunes_alike_on_sparse_and_dense_batches(task, task_work):
    dense_run, dense_figures, dense_state = finetune(task_work, task, "dense")
    sparse_run, sparse_figures, sparse_state = finetune(task_work, task, "sparse")
    assert dense_run.card["input_layout"] == "dense"
    assert sparse_run.card["input_layout"] == "sparse"
    assert 0 < sparse_run.card["input_density"] < 1
    assert len(dense_figures) == len(sparse_figures) > STEPS
    for d, s in zip(dense_figures, sparse_figures, strict=True):
        assert s == pytest.approx(d, rel=1e-4), (d, s)
    assert_weights_close(sparse_state, dense_state)
    if task == "cross_modality":
        scores = [json.loads((r.path / "cross_modality_scores.json").read_text())["model"]
                  for r in (dense_run, sparse_run)]
        overall = [{k: v for k, v in sc.items() if isinstance(v, float)} for sc in scores]
        assert overall[0] and overall[1] == pytest.approx(overall[0], rel=1e-3)


def test_pretraining_records_the_layout_it_chose(cells, tmp_path):
    store = cells[0]
    args = ["pretrain", "--method", "random_mask", "--shards", store.path, "--max-steps", "2",
            "--hidden", "32,8", "--batch-size", "128", "--val-every", "2", "--val-batches", "1",
            "--workers", "1", "--device", "cpu"]
    r = CliRunner().invoke(main, [str(a) for a in [*args, "--out", tmp_path / "auto"]])
    assert r.exit_code == 0, r.output
    card = RunDir(tmp_path / "auto").card
    assert card["input_layout"] == input_layout("auto", torch.device("cpu"),
                                                card["input_density"])
    r = CliRunner().invoke(main, [str(a) for a in [*args, "--out", tmp_path / "bad",
                                                   "--input-layout", "csr"]])
    assert r.exit_code == 2 and "csr" in r.output


def test_auto_layout_is_sparse_on_cpus_for_sparse_enough_input():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert input_layout("auto", cpu, SPARSE_BELOW / 2) == "sparse"
    assert input_layout("auto", cpu, SPARSE_BELOW) == "dense"
    assert input_layout("auto", cuda, 0.01) == "dense"
    assert input_layout("sparse", cuda, 0.9) == "sparse"
    assert input_layout("dense", cpu, 0.01) == "dense"


def test_bad_layout_in_a_config_is_one_line():
    from ssl_census.core.errors import UserError

    with pytest.raises(UserError, match="input_layout"):
        TrainConfig.from_dict({"input_layout": "csr"})
