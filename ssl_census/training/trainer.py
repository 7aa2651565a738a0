"""One training loop for every objective: pre-training methods now, fine-tuning tasks later.

The loop, in order, per step: forward (bf16 autocast on CUDA), backward, gradient clipping,
optimiser and LR-schedule step, ``objective.after_step()`` (BYOL's target update), logging.
Every ``val_every`` steps: validation loss on the val split, early stopping on it, and the
checkpoints ``best`` and ``last``. A checkpoint holds everything that decides what happens next
(weights, optimiser, schedule, loader position, RNG states), so ``resume`` continues exactly
where ``last`` was written; validation runs under its own fixed seed and leaves the training
RNG untouched, so it does not change the training losses either.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ssl_census.core.config import section
from ssl_census.core.errors import UserError
from ssl_census.core.progress import progress
from ssl_census.pretext.base import Objective
from ssl_census.training.distributed import DistEnv, all_reduce_sum
from ssl_census.training.optim import make_optimizer, warmup_cosine
from ssl_census.training.rundir import RunDir

VAL_SEED_OFFSET = 104_729
INPUT_LAYOUTS = ("auto", "sparse", "dense")


class Loader(Protocol):
    """What the trainer needs of a loader (``ssl_census.data.BlockShuffleLoader`` has it)."""

    def __iter__(self) -> Any: ...
    def __len__(self) -> int: ...
    def set_epoch(self, epoch: int) -> None: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


@dataclass
class TrainConfig:
    """The ``[train]`` table: the schedule, with the paper's pre-training settings as defaults
    (AdamW, lr 1e-3, weight decay 0.01, 10 epochs, early stopping on the validation loss)."""

    max_steps: int | None = None
    max_epochs: int | None = 10
    lr: float = 1e-3
    weight_decay: float = 0.01
    optimizer: str = "adamw"
    warmup_steps: int = 100
    min_lr_ratio: float = 0.01
    grad_clip: float = 1.0
    val_every: int = 500
    val_batches: int | None = None
    patience: int = 5
    min_delta: float = 0.0
    log_every: int = 10
    seed: int = 0
    amp: bool = True
    input_layout: str = "auto"  # the batches the encoder reads: sparse, dense or auto

    def __post_init__(self) -> None:
        if self.input_layout not in INPUT_LAYOUTS:
            raise UserError(f"[train] input_layout = {self.input_layout!r} is not a layout",
                            f"use one of {', '.join(INPUT_LAYOUTS)}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        return section(cls, d, "[train]")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state(device: torch.device) -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


class Trainer:
    def __init__(
        self,
        objective: Objective,
        train_loader: Loader,
        val_loader: Iterable[Any] | None,
        config: TrainConfig,
        run: RunDir | None = None,
        device: torch.device | str = "cpu",
        dist_env: DistEnv | None = None,
        on_step: Callable[[int, dict[str, float]], None] | None = None,
    ) -> None:
        self.cfg, self.run, self.on_step = config, run, on_step
        self.device = torch.device(device)
        self.env = dist_env or DistEnv()
        self.objective = objective.to(self.device)
        self.model: nn.Module = self.objective
        if self.env.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.objective, device_ids=ids)
        self.train_loader, self.val_loader = train_loader, val_loader
        self.total_steps = self._total_steps()
        self.optimizer = make_optimizer(self.objective, config.optimizer, config.lr,
                                        config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            warmup_cosine(min(config.warmup_steps, self.total_steps // 10 + 1), self.total_steps,
                          config.min_lr_ratio),
        )
        self.step = 0
        self.epoch = 0
        self.best_val = float("inf")
        self.bad_evals = 0
        self.stopped_early = False
        self._loader_state: Mapping[str, Any] | None = None
        self._board = _tensorboard(run) if run is not None and self.env.is_main else _NoBoard()

    def _total_steps(self) -> int:
        if len(self.train_loader) == 0:
            raise UserError("the training split yields no batch at this batch size",
                            "lower --batch-size")
        limits = []
        if self.cfg.max_steps:
            limits.append(self.cfg.max_steps)
        if self.cfg.max_epochs:
            limits.append(self.cfg.max_epochs * len(self.train_loader))
        if not limits:
            raise UserError("no training length", "set --max-steps or --max-epochs")
        return max(1, min(limits))

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.cfg.amp and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # -- checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.objective.state_dict(),
            "encoder": self.objective.encoder.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "loader": self.train_loader.state_dict(),
            "step": self.step, "epoch": self.epoch, "best_val": self.best_val,
            "bad_evals": self.bad_evals, "rng": _rng_state(self.device),
            "config": asdict(self.cfg),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.objective.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.epoch = state["step"], state["epoch"]
        self.best_val, self.bad_evals = state["best_val"], state["bad_evals"]
        self._loader_state = state["loader"]
        if self.env.enabled:
            # Only rank 0's RNG was saved; every rank restarts from its own fresh stream.
            seed_everything(self.cfg.seed + 7919 * self.env.rank + self.step)
        else:
            _set_rng_state(state["rng"], self.device)

    def _save(self, name: str) -> None:
        if self.run is not None and self.env.is_main:
            self.run.save(name, self.state_dict())
            self.run.update_card(step=self.step, best_val_loss=self.best_val)

    # -- the loop --------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> dict[str, Any]:
        """Train until the step limit or early stopping; return the final figures."""
        seed_everything(self.cfg.seed + 7919 * self.env.rank)
        if resume:
            if self.run is None:
                raise ValueError("resume needs a run directory")
            self.load_state_dict(self.run.load("last", self.device))
            if self.env.is_main:
                self.run.truncate_metrics(self.step)
        elif self.val_loader is not None:
            self._validate()
        bar = progress(total=self.total_steps, initial=self.step, desc="train", unit="step",
                       disable=None if self.env.is_main else True)
        window = _Window()
        while self.step < self.total_steps and not self.stopped_early:
            self.train_loader.set_epoch(self.epoch)
            if self._loader_state is not None:
                self.train_loader.load_state_dict(self._loader_state)
                self._loader_state = None
            for batch in self.train_loader:
                window.add(self._train_step(batch), batch.x.shape[0] * self.env.world_size)
                self.step += 1
                if self.step % self.cfg.log_every == 0 or self.step == self.total_steps:
                    self._log_train(window.flush(), bar)
                bar.update(1)
                if self.step % self.cfg.val_every == 0 or self.step == self.total_steps:
                    self._validate()
                    window.restart_clock()  # cells/s counts training time only
                if self.step >= self.total_steps or self.stopped_early:
                    break
            else:
                self.epoch += 1
        bar.close()
        return {"step": self.step, "epoch": self.epoch, "best_val_loss": self.best_val,
                "stopped_early": self.stopped_early}

    def _train_step(self, batch: Any) -> dict[str, torch.Tensor]:
        self.model.train()
        with self._autocast():
            out = self.model(batch)
        loss = out["loss"]
        loss.backward()
        if self.cfg.grad_clip:
            nn.utils.clip_grad_norm_(self.objective.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.objective.after_step()
        return {k: v.detach() for k, v in out.items()}

    def _log_train(self, figures: dict[str, float], bar: Any) -> None:
        if not np.isfinite(figures["loss"]):
            raise FloatingPointError(f"training loss is {figures['loss']} at step {self.step}; "
                                     "lower --lr or check the input values")
        record = {"split": "train", "step": self.step, "epoch": self.epoch,
                  "lr": self.scheduler.get_last_lr()[0], **figures}
        bar.set_postfix(loss=f"{figures['loss']:.4f}", cells_s=f"{figures['cells_per_s']:.0f}")
        self._emit(record)
        if self.on_step is not None:
            self.on_step(self.step, figures)

    def _emit(self, record: dict[str, Any]) -> None:
        if self.run is not None and self.env.is_main:
            self.run.log(record)
            self._board.write(record)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean of every loss term over the val split (all ranks together), with a fixed seed
        for masks and augmentations, so successive validations are comparable."""
        self.model.eval()
        sums: dict[str, torch.Tensor] = {}
        n = torch.zeros((), dtype=torch.float64, device=self.device)
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.cfg.seed + VAL_SEED_OFFSET + self.env.rank)
            if hasattr(self.val_loader, "set_epoch"):
                self.val_loader.set_epoch(0)
            for i, batch in enumerate(self.val_loader):
                if self.cfg.val_batches and i >= self.cfg.val_batches:
                    break
                with self._autocast():
                    out = self.objective.loss(batch)
                b = batch.x.shape[0]
                for k, v in out.items():
                    sums[k] = sums.get(k, 0.0) + v.detach().double() * b
                n += b
        keys = sorted(sums)
        total = torch.stack([sums[k] for k in keys] + [n])
        total = all_reduce_sum(total, self.env)
        return {k: float(total[i] / total[-1]) for i, k in enumerate(keys)}

    def _validate(self) -> None:
        if self.val_loader is None:
            self._save("last")
            return
        figures = self.evaluate()
        val = figures["loss"]
        improved = val < self.best_val - self.cfg.min_delta
        if improved:
            self.best_val, self.bad_evals = val, 0
        else:
            self.bad_evals += 1
            self.stopped_early = self.bad_evals >= self.cfg.patience
        self._emit({"split": "val", "step": self.step, "epoch": self.epoch, **figures,
                    "best_loss": self.best_val})
        if improved and self.step > 0:
            self._save("best")
        self._save("last")


class _Window:
    """Loss terms summed on the device between log lines (no host sync per step)."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.steps = 0
        self.cells = 0
        self.t0 = time.perf_counter()

    def add(self, out: Mapping[str, torch.Tensor], cells: int) -> None:
        for k, v in out.items():
            self.sums[k] = self.sums.get(k, 0.0) + v.float()
        self.steps += 1
        self.cells += cells

    def restart_clock(self) -> None:
        self.t0 = time.perf_counter()

    def flush(self) -> dict[str, float]:
        dt = time.perf_counter() - self.t0
        figures = {k: float(v) / self.steps for k, v in self.sums.items()}
        figures["cells_per_s"] = self.cells / dt if dt > 0 else float("nan")
        self.__init__()
        return figures


class _NoBoard:
    def write(self, record: Mapping[str, Any]) -> None:
        pass


class _Board:
    def __init__(self, writer: Any) -> None:
        self.writer = writer

    def write(self, record: Mapping[str, Any]) -> None:
        for k, v in record.items():
            if k not in ("split", "step", "epoch") and isinstance(v, int | float):
                self.writer.add_scalar(f"{record['split']}/{k}", v, record["step"])
        self.writer.flush()


def _tensorboard(run: RunDir) -> _Board | _NoBoard:
    """A TensorBoard writer under ``<run>/tensorboard`` when tensorboard is installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return _NoBoard()
    return _Board(SummaryWriter(str(run.path / "tensorboard")))
