"""Fine-tuning under torchrun: one DDP run, as pre-training is, not one run per rank."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from ssl_census.training.rundir import RunDir


def test_finetune_under_torchrun_is_one_ddp_run(synth_shards_dir, tmp_path):
    out = tmp_path / "celltype"
    config = tmp_path / "small.toml"
    config.write_text("[data]\nblock_size = 16\n")  # a few blocks: both ranks get val cells
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SSL_CENSUS_NO_PROGRESS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "-m", "ssl_census.cli", "finetune", "--task", "celltype", "--init", "random",
           "--config", str(config), "--shards", str(synth_shards_dir), "--out", str(out),
           "--hidden", "32,16", "--batch-size", "64", "--max-steps", "4", "--val-every", "2",
           "--log-every", "1", "--device", "cpu", "--workers", "1"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    card = json.loads((out / "model_card.json").read_text())
    assert card["world_size"] == 2 and card["ranks_in_sync"] is True and card["step"] == 4
    train_steps = [m["step"] for m in RunDir(out).metrics() if m["split"] == "train"]
    assert train_steps == [1, 2, 3, 4]  # written once, by rank 0
    assert done.stdout.count("celltype: 4 steps") == 1
