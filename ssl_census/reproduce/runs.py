"""The runs of the experiment, each through a stage's Python API, each skipped when done.

A training run is done when its directory holds ``reproduce-step.json`` (written last, with
the stage's summary and the seconds it took); a directory without it is the remains of an
interrupted run and is started again. An evaluation is done when its report JSON exists
(the evaluation stage writes it atomically).

Layout under the work directory (``<R>`` = ``runs/<config name>``)::

    <R>/seed<S>/pretrain/<method>                     ssl-census pretrain on the auxiliary store
    <R>/seed<S>/celltype/{supervised,<method>}        finetune --task celltype on kang
        evaluation/kang.json                           evaluate on kang's held-out donors
        evaluation/unseen.json                         evaluate on the stimulated cells (h5ad)
    <R>/seed<S>/cross_modality/{random,<method>}      finetune --task cross_modality
    <R>/seed<S>/integration/{unsupervised,<m>,<m>-shallow}   finetune --task integration
    <R>/seed<S>/integration/scores-<dataset>.json     scIB of those runs and PCA, in one
                                                       benchmark
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ssl_census.core import atomic
from ssl_census.core.config import load_toml, merge
from ssl_census.reproduce.config import ReproduceConfig
from ssl_census.reproduce.results import runs_root

DONE = "reproduce-step.json"


@dataclass
class Inputs:
    """What the runs read: shard stores and h5ad views (path, label key)."""

    stores: dict[str, Path]
    unseen: tuple[Path, str]
    integration: dict[str, tuple[Path, str, str]]  # name -> (h5ad, label key, batch key)
    data_dir: Path


def once(run_dir: Path, what: str, train: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``train`` into ``run_dir`` unless a finished run is there; return its record."""
    marker = run_dir / DONE
    if marker.is_file():
        print(f"[skip] {what}: done in {run_dir}")
        return json.loads(marker.read_text())
    if run_dir.exists():
        shutil.rmtree(run_dir)  # an interrupted run: start it again
    print(f"[run] {what} -> {run_dir}", flush=True)
    t0 = time.perf_counter()
    summary = train()
    record = {"what": what, "seconds": round(time.perf_counter() - t0, 2), "summary": summary}
    atomic.write_json(marker, record)
    print(f"[done] {what}: {record['seconds']:.0f} s", flush=True)
    return record


def evaluate_once(report_path: Path, what: str,
                  evaluate: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    from ssl_census.evaluation.report import write_reports

    if report_path.is_file():
        print(f"[skip] {what}: {report_path} exists")
        return json.loads(report_path.read_text())
    print(f"[eval] {what} -> {report_path}", flush=True)
    t0 = time.perf_counter()
    report = evaluate()
    report["seconds"] = round(time.perf_counter() - t0, 2)
    write_reports(report, report_path, plots_on=False)
    return json.loads(report_path.read_text())


def _stage_config(preset: str, kind: str, *overrides: dict[str, Any]) -> dict[str, Any]:
    cfg = load_toml(preset, kind=kind)
    for o in overrides:
        cfg = merge(cfg, o)
    return cfg


class Experiment:
    """The runs of one seed, in the order the page needs them."""

    def __init__(self, conf: ReproduceConfig, work: Path, inputs: Inputs) -> None:
        self.conf, self.work, self.inputs = conf, work, inputs

    def _dir(self, seed: int, *parts: str) -> Path:
        return runs_root(self.conf, self.work) / f"seed{seed}" / Path(*parts)

    def _eval_options(self, seed: int, batch_key: str | None = None) -> Any:
        from ssl_census.evaluation.report import EvalOptions

        return EvalOptions(batch_size=2048, device=self.conf.device, workers=1, plots=False,
                           batch_key=batch_key, seed=seed, embedding_2d="pca")

    # -- training runs -------------------------------------------------------------------

    def pretrain(self, seed: int, method: str) -> Path:
        from ssl_census.training.pretrain import run_pretraining

        out = self._dir(seed, "pretrain", method)
        gene_sets = self.conf.gene_sets.get(method)
        cfg = _stage_config(method, "pretrain", self.conf.pretrain, {
            "method": method, "device": self.conf.device, "train": {"seed": seed},
            "options": self.conf.method_options.get(method, {}),
            "gene_sets": str(self.inputs.data_dir / gene_sets) if gene_sets else None})
        once(out, f"pretrain {method} seed {seed}",
             lambda: run_pretraining(cfg, self.inputs.stores["auxiliary"], out))
        return out

    def finetune(self, seed: int, task: str, name: str, init: str | Path,
                 extra: dict[str, Any] | None = None, **data: Path) -> Path:
        from ssl_census.tasks.finetune import run_finetune

        out = self._dir(seed, task, name)
        cfg = _stage_config(task, "finetune", self.conf.finetune[task], {
            "device": self.conf.device, "train": {"seed": seed}, **(extra or {})})
        once(out, f"finetune {task} {name} seed {seed}",
             lambda: _jsonable(run_finetune(task, cfg, out, str(init), **data)))
        return out

    # -- the experiment, per seed ----------------------------------------------------------

    def transfer(self, seed: int, pretrained: dict[str, Path]) -> None:
        """Cell types on kang: supervised and fine-tuned SSL, evaluated on held-out donors and
        on the stimulated cells."""
        kang = self.inputs.stores["kang"]
        runs = {"supervised": self.finetune(seed, "celltype", "supervised", "random", shards=kang)}
        for method, p in pretrained.items():
            runs[method] = self.finetune(seed, "celltype", method, p, shards=kang)
        from ssl_census.evaluation.report import evaluate_h5ad, evaluate_shards

        h5ad, label_key = self.inputs.unseen
        for name, run in runs.items():
            evaluate_once(run / "evaluation" / "kang.json", f"evaluate {name} seed {seed} (kang)",
                          lambda run=run: evaluate_shards(run, kang, self._eval_options(seed)))
            evaluate_once(run / "evaluation" / "unseen.json",
                          f"evaluate {name} seed {seed} (unseen)",
                          lambda run=run: evaluate_h5ad(run, h5ad, label_key,
                                                        self._eval_options(seed)))

    def cross_modality(self, seed: int, pretrained: dict[str, Path]) -> None:
        h5ad = self.inputs.data_dir / self.conf.cross_modality_file
        extra = {"target_obsm": self.conf.cross_modality_target}
        self.finetune(seed, "cross_modality", "random", "random", extra, h5ad=h5ad,
                      shards=self.inputs.stores["kang"])
        for method in self.conf.cross_modality_methods:
            self.finetune(seed, "cross_modality", method, pretrained[method], extra, h5ad=h5ad)

    def integration(self, seed: int, pretrained: dict[str, Path]) -> None:
        """Unsupervised, SSL and SSL-shallow integration runs on the integration store, scored
        together on each dataset's h5ad (one scIB benchmark per dataset and seed)."""
        if not self.inputs.integration:
            return
        store = self.inputs.stores["integration"]
        extra = {"batch_key": self.conf.integration_batch_key}
        runs = {"unsupervised": self.finetune(seed, "integration", "unsupervised", "random",
                                              extra, shards=store)}
        for method in self.conf.integration_methods:
            runs[f"SSL {method}"] = self.finetune(seed, "integration", method,
                                                  pretrained[method], extra, shards=store)
            runs[f"SSL-shallow {method}"] = self.finetune(
                seed, "integration", f"{method}-shallow", pretrained[method],
                {**extra, "shallow": True}, shards=store)
        for ds, (h5ad, label_key, batch_key) in self.inputs.integration.items():
            out = self._dir(seed, "integration", f"scores-{ds}.json")
            if out.is_file():
                print(f"[skip] integration scores seed {seed} ({ds}): {out} exists")
                continue
            print(f"[eval] integration scores seed {seed} ({ds}) -> {out}", flush=True)
            t0 = time.perf_counter()
            scores = integration_benchmark(runs, h5ad, label_key, batch_key, seed,
                                           self.conf.device, self.conf.integration_max_cells)
            atomic.write_json(out, {**scores, "seconds": round(time.perf_counter() - t0, 2)})

    def pretrained(self, seed: int) -> dict[str, Path]:
        """Every method's pre-training run of ``seed`` (trained here unless done)."""
        methods = dict.fromkeys((*self.conf.methods, *self.conf.cross_modality_methods,
                                 *self.conf.integration_methods))
        return {m: self.pretrain(seed, m) for m in methods}

    def run_phase(self, phase: str, seed: int) -> None:
        """One part of the experiment for one seed: ``transfer`` (with the pre-training),
        ``cross_modality`` or ``integration``."""
        pretrained = self.pretrained(seed)
        if phase == "transfer":
            self.transfer(seed, {m: pretrained[m] for m in self.conf.methods})
        elif phase == "cross_modality":
            self.cross_modality(seed, pretrained)
        elif phase == "integration":
            self.integration(seed, pretrained)
        else:
            raise ValueError(f"unknown phase {phase!r}")


PHASES = ("transfer", "cross_modality", "integration")


def integration_benchmark(runs: dict[str, Path], h5ad: Path, label_key: str, batch_key: str,
                          seed: int, device: str, max_cells: int = 20_000) -> dict[str, Any]:
    """scIB scores (evaluation.integration) of each run's embedding of ``h5ad`` and of the PCA
    baseline, in one benchmark; ``runs`` maps a row name to its run directory."""
    from ssl_census.evaluation.embed import apply_to_matrix
    from ssl_census.evaluation.integration import integration_scores
    from ssl_census.evaluation.pca import StreamingPCA
    from ssl_census.evaluation.report import PCA_COMPONENTS
    from ssl_census.evaluation.unseen import load_unseen
    from ssl_census.tasks.finetune import run_gene_space
    from ssl_census.training.rundir import load_encoder

    first = next(iter(runs.values()))
    cells = load_unseen(h5ad, run_gene_space(first), required_obs=(label_key, batch_key))
    embeddings = {}
    for name, run in runs.items():
        encoder, _ = load_encoder(run, map_location=device)
        embeddings[name] = apply_to_matrix(encoder.to(device).eval(), cells.x, 4096, device)
    pca = StreamingPCA(min(PCA_COMPONENTS, cells.x.shape[0] - 1), seed=seed).fit(
        lambda: (cells.x[i : i + 8192] for i in range(0, cells.x.shape[0], 8192)),
        cells.x.shape[1])
    baseline = f"PCA-{PCA_COMPONENTS}"
    embeddings[baseline] = pca.transform(cells.x)
    obs = cells.adata.obs
    result = integration_scores(embeddings, obs[label_key].astype(str).to_numpy(),
                                obs[batch_key].astype(str).to_numpy(), baseline=baseline,
                                max_cells=max_cells, seed=seed)
    return {"h5ad": str(h5ad), "label_key": label_key, "batch_key": batch_key,
            "genes_matched": int(cells.match.n_matched),
            "runs": {name: str(run) for name, run in runs.items()}, **result}


def _jsonable(summary: dict[str, Any]) -> dict[str, Any]:
    """The trainer's summary without per-feature lists (the run keeps its own copy)."""
    return json.loads(json.dumps(summary, default=float))
