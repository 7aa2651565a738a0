"""The reports of an evaluation (:mod:`ssl_census.evaluation.report` computes them): a
markdown summary, and the JSON, markdown and PNG files written beside each other."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ssl_census.core import atomic
from ssl_census.evaluation import plots
from ssl_census.evaluation.report import Evaluation, K


def _rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    sources = [(f"kNN k={K}: {s['name']}", s) for s in report["knn"].values()]
    head = report.get("classifier") or {}
    head = head if "plain" in head else head.get("scored_on_known_labels")  # h5ad: known labels
    if head:
        sources.insert(0, ("classifier head", head))
    for name, s in sources:  # the hierarchy-aware macro F1 first: the paper's headline
        rows.append({"method": name, "macro F1 (hierarchy)": s["hierarchy_aware"]["macro_f1"],
                     "macro F1": s["plain"]["macro_f1"], "micro F1": s["plain"]["micro_f1"],
                     "micro F1 (hierarchy)": s["hierarchy_aware"]["micro_f1"],
                     "cells": s["plain"]["n_cells"]})
    return rows


def _markdown_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v)
                                       for v in r.values()) + " |")
    return "\n".join(lines)


def markdown(report: dict[str, Any]) -> str:
    src = report.get("shards") or report.get("h5ad")
    parts = [f"# Evaluation of {report['run']}", "", f"Data: {src}", ""]
    if "protocol" in report:
        parts += [f"Protocol: {report['protocol']}; genes matched: {report['genes_matched']}", ""]
    parts += ["## Cell-type classification", "", _markdown_table(_rows(report)), ""]
    by_ds = {s["name"]: s["by_dataset"] for s in report["knn"].values() if s.get("by_dataset")}
    if by_ds:
        datasets = sorted(next(iter(by_ds.values())))
        rows = [{"method": m, **{d: v[d]["plain"]["macro_f1"] for d in datasets}}
                for m, v in by_ds.items()]
        parts += ["## kNN macro F1 per test dataset", "", _markdown_table(rows), ""]
    if report.get("reconstruction"):
        parts += ["## Reconstruction (test)", "",
                  _markdown_table([{k: v for k, v in report["reconstruction"].items()
                                    if k != "scale"}]), ""]
    integ = report.get("integration")
    if integ:
        parts += ["## Integration (scib-metrics)", ""]
        if "skipped" in integ:
            parts += [f"Skipped: {integ['skipped']}", ""]
        else:
            cols = ["Bio conservation", "Batch correction", "Total"]
            rows = [{"embedding": n, **{c: s.get(c, float("nan")) for c in cols}}
                    for n, s in integ["scores"].items()]
            parts += [_markdown_table(rows), "", f"{integ['n_cells']} cells, "
                      f"{integ['n_batches']} batches, {integ['n_labels']} cell types", ""]
    return "\n".join(parts)


def write_reports(evaluation: Evaluation, json_path: Path, plots_on: bool = True,
                  embedding_2d: str = "umap") -> list[Path]:
    """JSON + markdown (+ PNGs) named after ``json_path``; returns the files written."""
    report = evaluation.report
    json_path.parent.mkdir(parents=True, exist_ok=True)
    stem = json_path.with_suffix("")
    written = [json_path, stem.with_suffix(".md")]
    atomic.write_json(json_path, report)
    atomic.write_text(stem.with_suffix(".md"), markdown(report))
    if plots_on:
        embedded, colourings = evaluation.plotted, evaluation.colour_by
        keep = plots.subsample(len(embedded.test))
        xy, how = plots.two_d(embedded.test[keep], embedding_2d)
        path = Path(f"{stem}-embedding.png")
        plots.embedding_plot(xy, how, {k: v[keep] for k, v in colourings.items()},
                             embedded.name, path)
        written.append(path)
        per_class = {f"kNN: {s['name']}": s["per_class"] for s in report["knn"].values()}
        if report.get("classifier") and "per_class" in report["classifier"]:
            per_class["classifier head"] = report["classifier"]["per_class"]
        path = Path(f"{stem}-f1-vs-abundance.png")
        plots.f1_abundance_plot(per_class, path)
        written.append(path)
    return written


def default_report_path(run_dir: Path, source: str | os.PathLike[str]) -> Path:
    return Path(run_dir) / "evaluation" / f"{Path(source).stem or 'shards'}.json"
