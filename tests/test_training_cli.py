"""`ssl-census pretrain` end to end on a synthetic shard store, with the real loader."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib

import pytest
from click.testing import CliRunner
from pretrain_support import pretrain_store
from synth_support import N_GENES

from ssl_census.cli import main
from ssl_census.training.rundir import RunDir, load_encoder

SMALL = ["--hidden", "64,16", "--batch-size", "64", "--val-every", "6", "--device", "cpu",
         "--workers", "1"]


@pytest.fixture(scope="module")
def shards(synth_cells, tmp_path_factory):
    return pretrain_store(synth_cells, tmp_path_factory.mktemp("pretrain") / "shards").path


def pretrain(*args):
    return CliRunner().invoke(main, ["pretrain", *map(str, args)])


def test_pretrain_writes_a_run_that_finetuning_can_load(shards, tmp_path):
    out = tmp_path / "run"
    r = pretrain("--method", "random_mask", "--shards", shards, "--out", out,
                 "--max-steps", 12, *SMALL)
    assert r.exit_code == 0, r.output
    card = json.loads((out / "model_card.json").read_text())
    manifest = json.loads((shards / "manifest.json").read_text())
    assert card["method"] == "random_mask" and card["step"] == 12
    assert card["n_genes"] == N_GENES and card["encoder"]["hidden"] == [64, 16]
    assert card["gene_list_sha256"] == manifest["gene_list"]["sha256"]
    assert len(card["shards"]["manifest_sha256"]) == 64
    config = tomllib.loads((out / "config.toml").read_text())
    assert config["data"]["batch_size"] == 64  # the option overrode the preset
    assert config["train"]["lr"] == 1e-3 and config["options"]["mask_rate"] == 0.5  # preset
    val = [m for m in RunDir(out).metrics() if m["split"] == "val"]
    assert [m["step"] for m in val] == [0, 6, 12]
    encoder, _ = load_encoder(out)
    assert encoder.hidden == (64, 16)

    again = pretrain("--method", "random_mask", "--shards", shards, "--out", out,
                     "--max-steps", 18, "--resume", *SMALL)
    assert again.exit_code == 0, again.output
    assert json.loads((out / "model_card.json").read_text())["step"] == 18


def test_gene_sets_option_feeds_the_gp_methods(shards, tmp_path, synth_gene_sets):
    r = pretrain("--method", "gp_to_tf", "--shards", shards, "--out", tmp_path / "run",
                 "--gene-sets", synth_gene_sets["tf_targets"],
                 "--max-steps", 6, *SMALL)
    assert r.exit_code == 0, r.output
    bad = pretrain("--method", "gp_mask", "--shards", shards, "--out", tmp_path / "bad",
                   "--gene-sets", tmp_path / "missing.gmt", "--max-steps", 6, *SMALL)
    assert bad.exit_code == 2 and "gene-set file not found" in bad.output


def test_bad_input_is_one_line_and_exit_2(shards, tmp_path):
    cases = [
        ("--method", "barlow", "--shards", tmp_path / "none", "--out", tmp_path / "a"),
        ("--method", "barlow", "--shards", shards, "--out", tmp_path / "b", "--resume"),
        ("--config", tmp_path / "nope.toml", "--shards", shards, "--out", tmp_path / "c"),
    ]
    for args in cases:
        r = pretrain(*args, "--max-steps", 2, *SMALL)
        assert r.exit_code == 2, r.output
        assert r.output.startswith("error: ") and r.output.count("\n") == 1


def test_torchrun_two_gloo_ranks_end_with_equal_weights(shards, tmp_path):
    out = tmp_path / "run"
    config = tmp_path / "barlow.toml"
    # about 600 val cells: blocks of 256 give both ranks val cells
    config.write_text('method = "barlow"\n[data]\nblock_size = 256\n')
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SSL_CENSUS_NO_PROGRESS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "-m", "ssl_census.cli", "pretrain", "--config", str(config),
           "--shards", str(shards), "--out", str(out), "--max-steps", "6", *SMALL]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    card = json.loads((out / "model_card.json").read_text())
    assert card["world_size"] == 2 and card["ranks_in_sync"] is True and card["step"] == 6
    assert done.stdout.count("barlow: 6 steps") == 1  # only rank 0 reports


def test_pretrain_on_the_real_local_shards_lowers_validation_loss(real_shards_dir, tmp_path,
                                                                   shared_data):
    out = tmp_path / "run"
    r = pretrain("--method", "gp_to_tf", "--shards", real_shards_dir, "--out", out,
                 "--gene-sets", shared_data / "genesets/dorothea_ABC_tf_targets.gmt",
                 "--max-steps", 30, "--val-every", 15, "--val-batches", 4, "--hidden", "64,16",
                 "--batch-size", 128,
                 "--lr", "3e-3", "--device", "cpu", "--workers", "1")
    assert r.exit_code == 0, r.output
    val = [m["loss"] for m in RunDir(out).metrics() if m["split"] == "val"]
    assert len(val) == 3 and val[-1] < val[0], val
    card = json.loads((out / "model_card.json").read_text())
    assert card["n_genes"] == 19350
