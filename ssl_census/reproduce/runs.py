"""The steps of the experiment, each through a stage's Python API, each kept while still valid.

Every step (a training run, an evaluation, an integration benchmark) has a *key*: a digest of
everything its result depends on, namely the stage config (the stage's preset with the reproduce
overrides laid over it), the content identity of the data it reads (data.identity) and the keys
of the steps it starts from. A finished step records its key; one whose recorded key differs
from the planned one (the config changed, a store was rebuilt, its pre-training was redone) is
deleted before anything runs (:meth:`Experiment.prune`), so a page never mixes steps of two
configurations and a rerun only redoes what changed.

A training run is finished when its directory holds ``reproduce-step.json`` (written last, with
its key, its inputs, the stage's summary and the seconds it took); a directory without it is
the remains of an interrupted run and is started again. An evaluation is finished when its
report JSON (written atomically) holds its key.

Layout under the work directory (``<R>`` = ``runs/<config name>``)::

    <R>/seed<S>/pretrain/<method>                     ssl-census pretrain on the auxiliary store
    <R>/seed<S>/celltype/{supervised,<method>}        finetune --task celltype on kang
        evaluation/kang.json                           evaluate on kang's held-out donors
        evaluation/unseen.json                         evaluate on the stimulated cells (h5ad)
                                                       against kang's validation cells
    <R>/seed<S>/cross_modality/{random,<method>}      finetune --task cross_modality
    <R>/seed<S>/integration/{unsupervised,<m>,<m>-shallow}   finetune --task integration
    <R>/seed<S>/integration/scvi                      scvi-tools' SCVI on the integration store
                                                       (the scvi extra), latent-<dataset>.npy
    <R>/seed<S>/integration/scores-<dataset>.json     scIB of those runs and PCA, in one
                                                       benchmark
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ssl_census.core import atomic
from ssl_census.core.config import load_toml, merge
from ssl_census.core.errors import UserError
from ssl_census.data.h5ad import load_unseen
from ssl_census.evaluation.embed import apply_to_matrix
from ssl_census.evaluation.integration import integration_scores
from ssl_census.evaluation.pca import pca_of_cells
from ssl_census.evaluation.render import write_reports
from ssl_census.evaluation.report import PCA_NAME, EvalOptions, evaluate_h5ad, evaluate_shards
from ssl_census.evaluation.scvi_baseline import (
    latent_file,
    scvi_available,
    scvi_integration_run,
    scvi_max_epochs,
    scvi_version,
)
from ssl_census.reproduce.config import ReproduceConfig
from ssl_census.reproduce.data import digest, identity
from ssl_census.reproduce.results import DONE, SCVI, UNSUPERVISED, runs_root, ssl
from ssl_census.shards.store import read_manifest
from ssl_census.tasks.config import FinetuneConfig
from ssl_census.tasks.finetune import run_finetune
from ssl_census.tasks.runs import run_gene_space
from ssl_census.training.config import PretrainConfig
from ssl_census.training.pretrain import run_pretraining
from ssl_census.training.rundir import load_encoder

log = logging.getLogger(__name__)

KEY = "reproduce_key"  # where an evaluation report records its key


@dataclass
class Inputs:
    """What the runs read: shard stores and h5ad views (path, label key)."""

    stores: dict[str, Path]
    unseen: tuple[Path, str]
    integration: dict[str, tuple[Path, str, str]]  # name -> (h5ad, label key, batch key)
    data_dir: Path


@dataclass
class Step:
    """One step of the experiment: a training run (``kind`` "train", ``path`` its directory),
    an evaluation report ("evaluation", its JSON with a markdown twin beside it) or a JSON of
    scores ("scores"). ``inputs`` is what ``key`` digests; the result keeps both."""

    kind: str
    what: str
    path: Path
    inputs: dict[str, Any]
    compute: Callable[[], Any]  # a summary or scores (dict), or an Evaluation

    @property
    def key(self) -> str:
        return digest(self.inputs)

    def recorded_key(self) -> str | None:
        """The key the finished step on disk was made with (None when there is none)."""
        record = self.path / DONE if self.kind == "train" else self.path
        if not record.is_file():
            return None
        return json.loads(record.read_text()).get("key" if self.kind == "train" else KEY)

    def done(self) -> bool:
        return self.recorded_key() == self.key

    def remove(self) -> None:
        if self.kind == "train":
            shutil.rmtree(self.path, ignore_errors=True)
        else:  # the report and what was written beside it (evaluation: <stem>.md)
            for p in self.path.parent.glob(f"{self.path.stem}.*"):
                p.unlink()


def once(step: Step) -> None:
    """Compute ``step`` unless it is finished with its current key."""
    if step.done():
        log.info(f"[skip] {step.what}: done in {step.path}")
        return
    if step.path.exists():
        step.remove()  # an interrupted run, or one of another configuration
    log.info(f"[{'run' if step.kind == 'train' else 'eval'}] {step.what} -> {step.path}")
    t0 = time.perf_counter()
    result = step.compute()
    seconds = round(time.perf_counter() - t0, 2)
    if step.kind == "train":
        atomic.write_json(step.path / DONE, {"what": step.what, "key": step.key,
                                             "inputs": step.inputs, "seconds": seconds,
                                             "summary": result})
        log.info(f"[done] {step.what}: {seconds:.0f} s")
        return
    record = {"seconds": seconds, KEY: step.key, "reproduce_inputs": step.inputs}
    if step.kind == "evaluation":
        result.report.update(record)
        write_reports(result, step.path, plots_on=False)
    else:
        result.update(record)
        step.path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_json(step.path, result)


def _stage_config(preset: str, kind: str, *overrides: dict[str, Any]) -> dict[str, Any]:
    """The stage's preset with the overrides laid over it, resolved: every setting the run
    will use, defaults included (what the step's key digests)."""
    cfg = load_toml(preset, kind=kind)
    for o in overrides:
        cfg = merge(cfg, o)
    typed = PretrainConfig if kind == "pretrain" else FinetuneConfig
    return typed.from_dict(cfg).to_dict()


class Experiment:
    """The steps of every seed, planned from the config (nothing runs until :meth:`run_phase`)."""

    def __init__(self, conf: ReproduceConfig, work: Path, inputs: Inputs) -> None:
        self.conf, self.work, self.inputs = conf, work, inputs
        self._ids: dict[Path, str] = {}

    def _id(self, path: Path) -> str:
        """data.identity of an input, computed once: planning asks for it step after step and
        the inputs are fixed while the experiment runs."""
        if path not in self._ids:
            self._ids[path] = identity(path)
        return self._ids[path]

    def _dir(self, seed: int, *parts: str) -> Path:
        return runs_root(self.conf, self.work) / f"seed{seed}" / Path(*parts)

    def _eval_options(self, seed: int, batch_key: str | None = None) -> Any:
        return EvalOptions(batch_size=2048, device=self.conf.device, workers=1, plots=False,
                           batch_key=batch_key, seed=seed, embedding_2d="pca")

    # -- training runs -------------------------------------------------------------------

    def pretrain(self, seed: int, name: str) -> Step:
        """The pre-training run of a method, or of a variant (its method with the variant's
        options laid over the method's)."""
        out = self._dir(seed, "pretrain", name)
        store = self.inputs.stores["auxiliary"]
        variant = self.conf.variants.get(name)
        method = variant.method if variant else name
        options = {**self.conf.method_options.get(method, {}),
                   **(variant.options if variant else {})}
        gene_sets = self.conf.gene_sets.get(method)
        cfg = _stage_config(method, "pretrain", self.conf.pretrain, {
            "method": method, "device": self.conf.device, "train": {"seed": seed},
            "options": options,
            "gene_sets": str(self.inputs.data_dir / gene_sets) if gene_sets else None})
        inputs = {"stage": "pretrain", "config": cfg, "shards": self._id(store),
                  "gene_sets": self._id(self.inputs.data_dir / gene_sets) if gene_sets else None}
        return Step("train", f"pretrain {name} seed {seed}", out, inputs,
                    lambda: run_pretraining(cfg, store, out))

    def finetune(self, seed: int, task: str, name: str, init: Step | None,
                 extra: dict[str, Any] | None = None, **data: Path) -> Step:
        """A fine-tuning run from the pre-training run ``init`` (None: a random encoder)."""
        out = self._dir(seed, task, name)
        cfg = _stage_config(task, "finetune", self.conf.finetune[task], {
            "device": self.conf.device, "train": {"seed": seed}, **(extra or {})})
        inputs = {"stage": task, "config": cfg, "init": init.key if init else "random",
                  **{k: self._id(v) for k, v in data.items()}}
        start = str(init.path) if init else "random"
        return Step("train", f"finetune {task} {name} seed {seed}", out, inputs,
                    lambda: _jsonable(run_finetune(cfg, out, start, **data)))

    def pretrained(self, seed: int) -> dict[str, Step]:
        """Every method's pre-training run of ``seed``."""
        methods = dict.fromkeys((*self.conf.methods, *self.conf.variants,
                                 *self.conf.cross_modality_methods,
                                 *self.conf.integration_methods))
        return {m: self.pretrain(seed, m) for m in methods}

    # -- the experiment, per seed and phase ------------------------------------------------

    def transfer(self, seed: int, pretrained: dict[str, Step]) -> list[Step]:
        """Cell types on kang: supervised and fine-tuned SSL, evaluated on held-out donors and
        on the stimulated cells."""
        kang = self.inputs.stores["kang"]
        h5ad, label_key = self.inputs.unseen
        runs = {"supervised": self.finetune(seed, "celltype", "supervised", None, shards=kang)}
        for method in (*self.conf.methods, *self.conf.variants):
            runs[method] = self.finetune(seed, "celltype", method, pretrained[method],
                                         shards=kang)
        options = self._eval_options(seed)
        evals = []
        for name, run in runs.items():
            common = {"run": run.key, "options": asdict(options)}
            evals += [
                Step("evaluation", f"evaluate {name} seed {seed} (kang)",
                     run.path / "evaluation" / "kang.json", {**common, "shards": self._id(kang)},
                     lambda run=run: evaluate_shards(run.path, kang, options)),
                # the paper's unseen-data protocol: the stimulated cells against kang's
                # validation (control) cells, not against one another
                Step("evaluation", f"evaluate {name} seed {seed} (unseen)",
                     run.path / "evaluation" / "unseen.json",
                     {**common, "h5ad": self._id(h5ad), "label_key": label_key,
                      "reference": self._id(kang)},
                     lambda run=run: evaluate_h5ad(run.path, h5ad, label_key, options,
                                                   reference=kang)),
            ]
        return [*runs.values(), *evals]

    def cross_modality(self, seed: int, pretrained: dict[str, Step]) -> list[Step]:
        h5ad = self.inputs.data_dir / self.conf.cross_modality_file
        extra = {"target_obsm": self.conf.cross_modality_target}
        steps = [self.finetune(seed, "cross_modality", "random", None, extra, h5ad=h5ad,
                               shards=self.inputs.stores["kang"])]
        for method in self.conf.cross_modality_methods:
            steps.append(self.finetune(seed, "cross_modality", method, pretrained[method],
                                       extra, h5ad=h5ad))
        return steps

    def scvi(self, seed: int) -> Step | None:
        """scvi-tools' SCVI (its defaults; batch covariate the integration runs' own) trained
        on the integration store, writing its latent space of each dataset's h5ad; None when
        the config leaves it out or the scvi extra is not installed (the page says which)."""
        if not self.conf.integration_scvi or not scvi_available()[0]:
            return None
        out = self._dir(seed, "integration", "scvi")
        store = self.inputs.stores["integration"]
        views = {ds: h5ad for ds, (h5ad, _, _) in self.inputs.integration.items()}
        n_train = read_manifest(store)["splits"]["train"]["n_cells"]
        epochs = self.conf.integration_scvi_max_epochs or scvi_max_epochs(n_train)
        batch_key = self.conf.integration_batch_key
        # the resolved settings, in the [train] / [data] shape the page's training lines read
        cfg = {"train": {"max_epochs": epochs, "seed": seed}, "data": {"batch_size": 128},
               "batch_key": batch_key, "device": self.conf.device}
        inputs = {"stage": "scvi", "config": cfg, "shards": self._id(store),
                  "views": {ds: self._id(h5ad) for ds, h5ad in views.items()},
                  "scvi_tools": scvi_version()}
        return Step("train", f"scVI seed {seed}", out, inputs,
                    lambda: scvi_integration_run(store, out, views, batch_key, seed,
                                                 self.conf.device, epochs))

    def integration(self, seed: int, pretrained: dict[str, Step]) -> list[Step]:
        """Unsupervised, SSL and SSL-shallow integration runs on the integration store, and
        scVI beside them, scored together on each dataset's h5ad (one scIB benchmark per
        dataset and seed)."""
        if not self.inputs.integration:
            return []
        store = self.inputs.stores["integration"]
        extra = {"batch_key": self.conf.integration_batch_key}
        runs = {UNSUPERVISED: self.finetune(seed, "integration", "unsupervised", None, extra,
                                            shards=store)}
        for method in self.conf.integration_methods:
            runs[ssl(method)] = self.finetune(seed, "integration", method, pretrained[method],
                                              extra, shards=store)
            runs[ssl(method, shallow=True)] = self.finetune(
                seed, "integration", f"{method}-shallow", pretrained[method],
                {**extra, "shallow": True}, shards=store)
        scvi = self.scvi(seed)
        latents = {SCVI: scvi} if scvi else {}
        scores = []
        max_cells = self.conf.integration_max_cells
        for ds, (h5ad, label_key, batch_key) in self.inputs.integration.items():
            inputs = {"runs": {n: r.key for n, r in {**runs, **latents}.items()},
                      "h5ad": self._id(h5ad), "label_key": label_key, "batch_key": batch_key,
                      "seed": seed, "max_cells": max_cells}
            scores.append(Step(
                "scores", f"integration scores seed {seed} ({ds})",
                self._dir(seed, "integration", f"scores-{ds}.json"), inputs,
                lambda ds=ds, h5ad=h5ad, label_key=label_key, batch_key=batch_key:
                integration_benchmark(
                    {n: r.path for n, r in runs.items()}, h5ad, label_key, batch_key, seed,
                    self.conf.device, max_cells,
                    latents={n: r.path / latent_file(ds) for n, r in latents.items()})))
        return [*runs.values(), *latents.values(), *scores]

    def steps(self, phase: str, seed: int) -> list[Step]:
        """The steps of one part of the experiment for one seed, in the order they run:
        the pre-training runs first, then ``transfer``, ``cross_modality`` or
        ``integration``."""
        pretrained = self.pretrained(seed)
        parts = {"transfer": self.transfer, "cross_modality": self.cross_modality,
                 "integration": self.integration}
        if phase not in parts:
            raise ValueError(f"unknown phase {phase!r}")
        return [*pretrained.values(), *parts[phase](seed, pretrained)]

    def prune(self) -> int:
        """Delete every finished step whose key is not the planned one; returns how many."""
        stale = 0
        for phase in PHASES:
            for seed in self.conf.seeds:
                for step in self.steps(phase, seed):
                    recorded = step.recorded_key()
                    if recorded is not None and recorded != step.key:
                        log.info(f"[stale] {step.what}: made with other settings or inputs, "
                                 "removed")
                        step.remove()
                        stale += 1
        return stale

    def run_phase(self, phase: str, seed: int) -> None:
        for step in self.steps(phase, seed):
            once(step)


PHASES = ("transfer", "cross_modality", "integration")


def integration_benchmark(runs: dict[str, Path], h5ad: Path, label_key: str, batch_key: str,
                          seed: int, device: str, max_cells: int = 20_000,
                          latents: dict[str, Path] | None = None) -> dict[str, Any]:
    """scIB scores (evaluation.integration) of each run's embedding of ``h5ad``, of the
    ``latents`` (a row name -> an .npy of one row per cell of ``h5ad``, e.g. scVI's) and of
    the PCA baseline, in one benchmark; ``runs`` maps a row name to its run directory."""
    first = next(iter(runs.values()))
    cells = load_unseen(h5ad, run_gene_space(first), required_obs=(label_key, batch_key))
    embeddings = {}
    for name, run in runs.items():
        encoder, _ = load_encoder(run, map_location=device)
        embeddings[name] = apply_to_matrix(encoder.to(device).eval(), cells.x, 4096, device)
    for name, path in (latents or {}).items():
        embeddings[name] = np.load(path)
        if len(embeddings[name]) != cells.adata.n_obs:
            raise UserError(f"{path} has {len(embeddings[name])} rows, {h5ad} has "
                            f"{cells.adata.n_obs} cells", f"delete {path.parent} and run again")
    embeddings[PCA_NAME] = pca_of_cells(cells.x, seed)
    obs = cells.adata.obs
    result = integration_scores(embeddings, obs[label_key].astype(str).to_numpy(),
                                obs[batch_key].astype(str).to_numpy(), baseline=PCA_NAME,
                                max_cells=max_cells, seed=seed)
    return {"h5ad": str(h5ad), "label_key": label_key, "batch_key": batch_key,
            "genes_matched": int(cells.match.n_matched),
            "runs": {name: str(run) for name, run in {**runs, **(latents or {})}.items()},
            **result}


def _jsonable(summary: dict[str, Any]) -> dict[str, Any]:
    """The trainer's summary without per-feature lists (the run keeps its own copy)."""
    return json.loads(json.dumps(summary, default=float))
