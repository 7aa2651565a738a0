"""Config traps: a [data] table without batch_size, BYOL's two dropouts, unknown keys."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from ssl_census.cli import main
from ssl_census.core.errors import UserError
from ssl_census.pretext import build_method
from ssl_census.tasks.finetune import run_finetune

GENES = [f"G{i}" for i in range(40)]
HEADS = {"projector_hidden": 32, "predictor_hidden": 32, "projection_dim": 8}


def test_data_table_without_batch_size_takes_the_default(synth_shards_dir, tmp_path):
    config = {"task": "celltype", "device": "cpu", "model": {"hidden": [16, 8]},
              "data": {"workers": 1},  # no batch_size: the default, not a KeyError
              "train": {"max_steps": 2, "val_every": 2, "val_batches": 1, "warmup_steps": 1}}
    summary = run_finetune(config, tmp_path / "run", "random", shards=synth_shards_dir)
    assert summary["step"] == 2


def test_byol_keeps_the_encoder_dropout_apart_from_the_view_dropout():
    byol = build_method("byol", GENES, model={"hidden": [16, 8], "dropout": 0.3},
                        options={**HEADS, "view_dropout": 0.25})
    assert byol.encoder.dropout == 0.3 and byol.augment.dropout == 0.25
    with pytest.raises(UserError, match="view_dropout"):
        build_method("barlow", GENES, model={"hidden": [16, 8]}, options={"dropout": 0.25})


@pytest.mark.parametrize("model, options", [
    ({"hiden": [16, 8]}, {}),
    ({"hidden": [16, 8]}, {"mask_rat": 0.3}),
    ({"hidden": [16, 8]}, {"lambd": 0.01}),  # a barlow option is no random_mask option
])
def test_unknown_model_and_option_keys_are_refused(model, options):
    with pytest.raises(UserError, match="unknown keys"):
        build_method("random_mask", GENES, model=model, options=options)


@pytest.mark.parametrize("toml, where", [
    ("[data]\nbatch_sise = 64\n", "[data]"),
    ("[model]\ndropuot = 0.2\n", "[model]"),
    ("[options]\nmask_rat = 0.2\n", "[options]"),
    ("methdo = 'barlow'\n", "the pretrain config"),
])
def test_unknown_config_keys_stop_pretrain_with_one_line(synth_shards_dir, tmp_path, toml,
                                                          where):
    config = tmp_path / "typo.toml"
    config.write_text(toml)
    r = CliRunner().invoke(main, ["pretrain", "--method", "random_mask", "--config", str(config),
                                  "--shards", str(synth_shards_dir), "--out",
                                  str(tmp_path / "run"), "--max-steps", "2", "--batch-size",
                                  "64", "--hidden", "16,8", "--workers", "1", "--device", "cpu"])
    assert r.exit_code == 2, r.output
    assert r.output.startswith(f"error: unknown keys in {where}") and r.output.count("\n") == 1
    assert not (tmp_path / "run").exists()
