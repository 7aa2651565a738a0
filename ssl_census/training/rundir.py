"""A training run on disk, and reading its encoder back.

    <run>/config.toml          the merged configuration the run was started with
    <run>/model_card.json      what the weights are: method, shard store, gene list, encoder shape
    <run>/metrics.jsonl        one JSON record per log line (train) and per validation (val)
    <run>/checkpoints/last.pt  model, optimiser, scheduler, loader and RNG state (for --resume)
    <run>/checkpoints/best.pt  the same at the lowest validation loss so far

Files are written atomically, so a kill leaves the previous checkpoint intact.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ssl_census.core import atomic
from ssl_census.core.config import toml_dumps
from ssl_census.core.errors import UserError
from ssl_census.models.mlp import Encoder

CARD = "model_card.json"
CONFIG = "config.toml"
METRICS = "metrics.jsonl"
RUN_FORMAT = "ssl-census-run/1"


class RunDir:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"

    @classmethod
    def create(
        cls, path: str | os.PathLike[str], config: Mapping[str, Any], card: Mapping[str, Any],
        resume: bool = False,
    ) -> RunDir:
        run = cls(path)
        if resume:
            if not (run.checkpoints / "last.pt").is_file():
                raise UserError(f"no checkpoint to resume in {run.path}",
                                "start without --resume, or point --out at an earlier run")
            return run
        if (run.checkpoints / "last.pt").exists():
            raise UserError(f"{run.path} already holds a run",
                            "pass --resume to continue it, or choose a new --out")
        run.checkpoints.mkdir(parents=True, exist_ok=True)
        atomic.write_text(run.path / CONFIG, toml_dumps(config))
        atomic.write_json(run.path / CARD, {"format": RUN_FORMAT, **card})
        (run.path / METRICS).unlink(missing_ok=True)
        return run

    @property
    def card(self) -> dict[str, Any]:
        return json.loads((self.path / CARD).read_text())

    def update_card(self, **fields: Any) -> None:
        atomic.write_json(self.path / CARD, {**self.card, **fields})

    def log(self, record: Mapping[str, Any]) -> None:
        with open(self.path / METRICS, "a") as f:
            f.write(json.dumps(record, default=float) + "\n")

    def metrics(self) -> list[dict[str, Any]]:
        p = self.path / METRICS
        return [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []

    def truncate_metrics(self, after_step: int) -> None:
        """Drop records past ``after_step``: a resumed run writes them again."""
        kept = [r for r in self.metrics() if r.get("step", 0) <= after_step]
        atomic.write_text(self.path / METRICS, "".join(json.dumps(r) + "\n" for r in kept))

    def save(self, name: str, state: Mapping[str, Any]) -> None:
        buf = io.BytesIO()
        torch.save(dict(state), buf)
        atomic.write_bytes(self.checkpoints / f"{name}.pt", buf.getvalue())

    def load(self, name: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
        p = self.checkpoints / f"{name}.pt"
        if not p.is_file():
            raise UserError(f"checkpoint not found: {p}", "train the run first")
        return torch.load(p, map_location=map_location, weights_only=False)


def load_encoder(
    run_dir: str | os.PathLike[str], checkpoint: str = "best", map_location: str = "cpu"
) -> tuple[Encoder, dict[str, Any]]:
    """The pre-trained encoder of a run (eval mode) and its model card.

    ``checkpoint`` ``best`` falls back to ``last`` when the run never validated.
    """
    run = RunDir(run_dir)
    if not (run.path / CARD).is_file():
        raise UserError(f"{run.path} is not an ssl-census run (no {CARD})",
                        "point at the --out directory of `ssl-census pretrain`")
    card = run.card
    if checkpoint == "best" and not (run.checkpoints / "best.pt").is_file():
        checkpoint = "last"
    state = run.load(checkpoint, map_location)
    enc = card["encoder"]
    encoder = Encoder(enc["n_genes"], enc["hidden"], enc["dropout"])
    encoder.load_state_dict(state["encoder"])
    return encoder.eval(), card
