"""docs/results.md and its figures, generated from the runs' reports (never typed by hand).

The tables come from :mod:`.results`, everything else the page states from :mod:`.facts`;
the functions here only render them."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from ssl_census.core import atomic
from ssl_census.pretext.options import method_options
from ssl_census.reproduce import findings as fnd
from ssl_census.reproduce import results as res
from ssl_census.reproduce.config import ReproduceConfig
from ssl_census.reproduce.facts import PageFacts, StoreFacts, gather_facts
from ssl_census.shards.curation import SctabComparison

FIGURES = "results"  # docs/results/ beside docs/results.md
VALUES = "values.csv"  # docs/results/values.csv: every value of the tables, per seed


def _path(path: Path | str) -> str:
    """A path of the work directory, shown (not linked: the work directory is not in the
    repository, so a link would be dead for a reader of it)."""
    return f"`{_shown(str(path))}`"


def _cell(values: list[float]) -> str:
    mean, sd = res.mean_sd(values)
    return "undefined" if math.isnan(mean) else f"{mean:.3f} ± {sd:.3f}"


def table_markdown(table: res.Table, page: Path) -> str:
    head = ["model", *table.metrics, "seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table.rows.values():
        cells = [_cell(row.values[m]) for m in table.metrics]
        lines.append(f"| {row.name} | " + " | ".join(cells) + f" | {len(row.seeds)} |")
    return "\n".join(lines)


def bar_figure(table: res.Table, metric: str, path: Path, title: str) -> None:
    """Horizontal bars of ``metric`` (mean, sd as error bars), one per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(table.rows.values())
    if not rows:
        return
    stats = [res.mean_sd(r.values[metric]) for r in rows]
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(rows) + 1.2))
    y = range(len(rows))
    ax.barh(list(y), [m for m, _ in stats], xerr=[s for _, s in stats], capsize=3,
            color=[_colour(r.name) for r in rows])
    ax.set_yticks(list(y), [r.name for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"{metric} (mean ± sd over seeds)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def _colour(name: str) -> str:
    for key, colour in (("random-init", "#bbbbbb"), ("PCA", "#8c8c8c"), ("mean", "#8c8c8c"),
                        ("random init", "#bbbbbb"), ("supervised", "#d62728"),
                        ("unsupervised", "#d62728"), ("zero-shot", "#9ecae1"),
                        ("shallow", "#6baed6"), (res.SCVI, "#31a354")):
        if key in name:
            return colour
    return "#2171b5"


def _store_lines(stores: list[StoreFacts], page: Path) -> list[str]:
    lines = ["| store | datasets selected | train | val | test | donors (train / val / test) |",
             "|---|---|---|---|---|---|"]
    for st in stores:
        lines.append(f"| {st.name} ({_path(st.path)}) | {st.selection} | "
                     + " | ".join(map(str, st.cells))
                     + f" | {' / '.join(map(str, st.donors))} |")
    return lines


def _training_lines(lengths: dict[str, res.Training]) -> list[str]:
    """One line per stage: its limits and how long its runs actually trained."""
    lines = []
    for stage, label in res.STAGES.items():
        t = lengths.get(stage)
        if t is None:
            continue
        lim = t.limits
        bounds = [f"{lim[k]} {k.removeprefix('max_')}" for k in ("max_epochs", "max_steps")
                  if lim.get(k)]
        steps = sorted(t.steps)
        # scVI trains without validation or early stopping, scvi-tools' defaults
        checks = (f"validation every {lim.get('val_every')} steps, patience "
                  f"{lim.get('patience')}" if lim.get("val_every") else "no validation")
        lines.append(
            f"{label}: batch {lim.get('batch_size')}, at most {' or '.join(bounds)}, "
            f"{checks}; {len(steps)} run(s) trained {steps[0]}-{steps[-1]} steps (median "
            f"{steps[len(steps) // 2]}), {t.stopped_early} of them stopped early")
    return lines


def write_page(conf: ReproduceConfig, work: Path, page: Path, inputs: Any, census: str,
               genes: Path, seconds: float) -> Path:
    seeds = list(conf.seeds)  # a table row shows how many of them have finished
    transfer = res.classification_table(conf, work, seeds, "kang", "Held-out kang donors")
    unseen = res.classification_table(conf, work, seeds, "unseen", "Stimulated kang cells")
    cross = res.cross_modality_table(conf, work, seeds)
    integration = res.integration_tables(conf, work, seeds)
    figures = page.parent / FIGURES
    fig = {
        "transfer": figures / "transfer-macro-f1.png",
        "unseen": figures / "unseen-macro-f1.png",
        "cross": figures / "cross-modality-pearson.png",
    }
    bar_figure(transfer, res.MACRO_F1, fig["transfer"], "Cell types on held-out kang donors")
    bar_figure(unseen, res.MACRO_F1, fig["unseen"], "Cell types on IFN-beta stimulated cells")
    bar_figure(cross, "Pearson", fig["cross"], "RNA to protein, pbmc10k CITE-seq")
    for name, table in integration.items():
        fig[f"integration-{name}"] = figures / f"integration-{name}-total.png"
        bar_figure(table, "Total", fig[f"integration-{name}"], f"scIB total score, {name}")
    found = fnd.paper_findings(conf.methods, transfer, unseen, cross, integration,
                               conf.integration_methods, conf.cross_modality_methods,
                               conf.variants)
    values = figures / VALUES
    values.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(values, res.values_csv([transfer, unseen, cross, *integration.values()],
                                             work))
    facts = gather_facts(conf, work, inputs, genes, seconds, cross, integration)
    parts = _header(conf, work, page, seeds, census, inputs, facts, values)
    parts += _findings(found)
    parts += _section_transfer(conf, transfer, fig["transfer"], page)
    parts += _section_unseen(inputs, unseen, fig["unseen"], page)
    parts += _section_cross(conf, cross, fig["cross"], page, facts)
    parts += _section_integration(conf, integration, fig, page, facts)
    parts += _section_limits(conf, facts)
    parts += _method_notes(conf)
    atomic.write_text(page, "\n".join(parts) + "\n")
    return page


def _header(conf: ReproduceConfig, work: Path, page: Path, seeds: list[int], census: str,
            inputs: Any, facts: PageFacts, values: Path) -> list[str]:
    return [
        "# Results: the paper's comparisons on real cells",
        "",
        "<!-- GENERATED by `make reproduce` (ssl_census/reproduce); edits are overwritten. -->",
        "",
        f"Generated {facts.generated} from config "
        f"`{conf.source}` (`{conf.name}`) at commit `{facts.commit}`.",
        "",
        f"- **Run time**: {facts.recorded_seconds / 60:.1f} min of training and evaluation, the "
        f"sum of what each run recorded; {facts.cpu_count} CPU cores, device `{conf.device}`. "
        "The invocation of `make reproduce` that wrote this page took "
        f"{facts.invocation_seconds / 60:.1f} min "
        "(steps finished earlier with the same settings are reused, not rerun).",
        f"- **Seeds**: {', '.join(map(str, seeds))} configured; the `seeds` column of each "
        "row says how many of them the row's mean and sd are over. Each seed re-runs "
        "pre-training, fine-tuning and the random train/val/test split of the CITE-seq cells.",
        f"- **Methods**: {', '.join(conf.methods)}."
        + "".join(f" Variant `{v.name}`: {v.method} with `{_options(v.options)}`, pre-trained, "
                  "fine-tuned and evaluated like the methods; the method's own rows use its "
                  "defaults (the paper's code), the variant's rows measure the alternative."
                  for v in conf.variants.values()),
        "- **Census**: " + (f"`{census}`" if "://" in census else _path(census)) + ", "
        + (f"built from `{conf.census_config}` (configs/census) over the shared data folder "
           f"`{inputs.data_dir}`." if Path(census) == work / "census"
           else "given with --census-uri."),
        f"- **Gene space**: {facts.n_genes} genes "
        f"({_path(work / 'genes.txt')}): "
        f"{conf.gene_list}"
        + (f" restricted to the genes measured by {', '.join(conf.genes_measured_by)}"
           if conf.genes_measured_by else "")
        + (f", plus the members of {', '.join(conf.genes_add_set_members)}"
           if conf.genes_add_set_members else "")
        + (f", plus the regulators named by {', '.join(conf.genes_add_set_regulators)}"
           if conf.genes_add_set_regulators else "") + " (the paper: 19,331 genes).",
        "- **Training** (read from the finished runs; early stopping on the validation loss; "
        "the paper trained for days on 15.2M cells, this is a CPU-sized run):",
        *(f"  - {line}" for line in _training_lines(facts.training)),
        f"- **Versions**: {facts.versions}.",
        "- **Traceability**: every number below is the mean ± sd over seeds of the values in "
        f"[{FIGURES}/{VALUES}]({_rel(values, page)}) (one line per table, row, metric and seed, "
        "written by `make reproduce` with the page), each with the run report it was read "
        f"from, under {_path(res.runs_root(conf, work))} (the work directory of `make "
        "reproduce`, not in the repository).",
        "",
        "Shard stores (one census, disjoint datasets; splits by tech_sample = dataset/donor):",
        "",
        *_store_lines(facts.stores, page),
        "",
    ]


def _findings(found: list[fnd.Finding]) -> list[str]:
    lines = ["## Which of the paper's findings hold on this data", "",
             "Computed from the tables below. Each comparison is a paired t-test over the "
             "seeds both models have (n - 1 degrees of freedom), shown with the 95 % "
             "confidence interval of the mean difference and its p-value. All comparisons on "
             "this page are one family: their p-values are adjusted with Holm's method, so "
             "the chance of any false verdict on the page stays at 5 %. A comparison *holds* "
             "when its adjusted p-value is below 0.05 and the difference is positive, is "
             "*reversed* when it is below 0.05 and negative, and is otherwise not resolved by "
             f"this many seeds. Cell types are scored by the {res.MACRO_F1} (the paper's "
             "figures: a prediction of a finer type than the annotation counts as right), "
             "averaged over the classes that are true or predicted, as scikit-learn's "
             "classification report does; the tables show the plain macro F1 beside it.", ""]
    lines += [*fnd.in_short(found), ""]
    for f in found:
        lines += [f"- **{f.claim}** (paper: {f.paper}): {f.summary()}."]
        lines += [f"  - {c.text()}" for c in f.comparisons]
    return lines + [""]


def _section_transfer(conf: ReproduceConfig, table: res.Table, figure: Path,
                      page: Path) -> list[str]:
    return [
        "## 1. Transfer: pre-train on auxiliary data, fine-tune on kang, test on held-out donors",
        "",
        "Pre-training on the auxiliary store (its datasets: the store table above); fine-tuning "
        "the classifier on kang's training donors; kNN (k = 5) rows classify each test cell by "
        "its nearest validation-donor cells in the embedding; classifier rows are the head's "
        "own predictions. The random-init encoder (drawn with seed 0 by the evaluation stage) does "
        "not depend on the training seed, and PCA (a randomized fit, seeded) hardly does.",
        "",
        table_markdown(table, page),
        "",
        f"![macro F1 on held-out kang donors]({_rel(figure, page)})",
        "",
    ]


def _section_unseen(inputs: Any, table: res.Table, figure: Path, page: Path) -> list[str]:
    h5ad, label_key = inputs.unseen
    return [
        "## 2. Unseen data: IFN-beta stimulated kang cells",
        "",
        f"The same models on {_path(h5ad)} (stimulated cells only; in no store, labels "
        f"`{label_key}`), as the paper treats unseen data: kNN rows classify each stimulated "
        "cell by its 5 nearest kang control cells of the validation donors (the training "
        "distribution; the PCA baseline is fitted on kang's training cells), so a cell's "
        "neighbours are never other stimulated cells; classifier rows are the head "
        "fine-tuned on control cells, applied to every stimulated cell. Cells whose label "
        "names no kang type are left out.",
        "",
        table_markdown(table, page),
        "",
        f"![macro F1 on stimulated cells]({_rel(figure, page)})",
        "",
    ]


def _genes_matched(n: int | None) -> str:
    return f"{n} of the model's genes matched (the rest zero-padded); " if n is not None else ""


def _section_cross(conf: ReproduceConfig, table: res.Table, figure: Path, page: Path,
                   facts: PageFacts) -> list[str]:
    return [
        "## 3. Cross-modality: RNA to protein on pbmc10k CITE-seq",
        "",
        f"{_genes_matched(facts.genes_matched['cross'])}`{conf.cross_modality_file}`, target "
        f"`obsm['{conf.cross_modality_target}']` "
        "(log1p-normalised), cells split 80/10/10 at random per seed; Pearson on the test "
        "cells over all entries, per protein (across cells, averaged over proteins) and per "
        "cell (across proteins). `predict the mean` predicts the training cells' mean of "
        "each protein; it already scores well on the flat Pearson, which is dominated by the "
        "differences between protein means, so the per-protein Pearson is the figure that "
        "shows whether a model learnt anything beyond the means (undefined for the mean, "
        "which is constant per protein).",
        "",
        table_markdown(table, page),
        "",
        f"![Pearson, RNA to protein]({_rel(figure, page)})",
        "",
    ]


def _section_integration(conf: ReproduceConfig, tables: dict[str, res.Table],
                         fig: dict[str, Path], page: Path, facts: PageFacts) -> list[str]:
    ok, reason = facts.scib
    lines = [
        "## 4. Integration: scIB scores across chemistries and platforms",
        "",
        "Integration runs (reconstruction with the batch covariate "
        f"`{conf.integration_batch_key}`) train on the integration store's training split; "
        "`unsupervised` starts from a random encoder, `SSL` from the pre-trained one, "
        "`SSL-shallow` fine-tunes only its last layer. Every embedding of a dataset's whole "
        "h5ad is scored in one scib-metrics Benchmarker (bio conservation, batch correction, "
        "total = 0.6 bio + 0.4 batch)."
        + ("" if ok else f" **scib-metrics is not available here: {reason}**"),
        "",
        _scvi_line(conf, facts),
        "",
    ]
    for view in conf.integration_sets:
        table = tables[view.name]
        lines += [f"### {view.name}: `{view.file}`, batches `{view.batch_key}`, labels "
                  f"`{view.label_key}`"
                  + (f", cells with {view.select['column']} in {view.select['values']}"
                     if view.select else ""), "",
                  _genes_matched(facts.genes_matched[f"integration-{view.name}"]).rstrip("; "),
                  "",
                  table_markdown(table, page), "",
                  f"![scIB total, {view.name}]({_rel(fig[f'integration-{view.name}'], page)})",
                  ""]
    return lines


def _scvi_line(conf: ReproduceConfig, facts: PageFacts) -> str:
    """What the scVI row is, or why there is none."""
    if not conf.integration_scvi:
        return "scVI: left out by the config (`[integration] scvi = false`)."
    ok, reason = facts.scvi
    if not ok:
        return (f"scVI: **skipped, the scvi extra is not installed** ({reason}); "
                "install it and run `make reproduce` again for the scVI rows.")
    epochs = (f"{conf.integration_scvi_max_epochs} epochs" if conf.integration_scvi_max_epochs
              else "scvi-tools' default number of epochs for the training cells")
    return ("`scVI`: scvi-tools' `SCVI` with its defaults (10 latent dimensions, one hidden "
            "layer of 128, ZINB likelihood, batch 128, " + epochs + ") and the same batch "
            f"covariate `{conf.integration_batch_key}`, trained with the same seeds on the "
            "integration store's training split, streamed from the store "
            "(`ssl_census.data.scvi.ShardDataModule`, raw counts); its latent means of each "
            "dataset's h5ad are scored beside the other rows.")


def _section_limits(conf: ReproduceConfig, facts: PageFacts) -> list[str]:
    """How this experiment differs from the paper's, with this run's own numbers."""
    lines = [
        "## How this differs from the paper",
        "",
        f"- **Scale**: pre-training on {facts.aux_cells:,} auxiliary training cells from "
        f"{facts.aux_datasets} datasets (the paper: 15.2M cells, 249 datasets) over "
        f"{facts.n_genes:,} genes (19,331), fine-tuning on {facts.kang_types or '?'} kang cell "
        "types (164 in scTab). "
        "Gains that need millions of cells may not show here, and seed-to-seed noise is larger.",
    ]
    lines.append(
        f"- **Cell types**: curated with Cell Ontology release `{facts.cell_ontology}` (pinned: "
        "docs/ingestion.md says why this release), kang keeps "
        f"{len(facts.kang_type_names)}: {', '.join(facts.kang_type_names)}. scTab's rule kept "
        "164 types of census 2023-05-15 with the CL release of its day; this local census "
        "holds PBMC types only, so the rule here decides among far fewer candidates.")
    lines += sctab_lines(facts.sctab, facts.stores)
    if any(m in conf.gene_sets for m in conf.methods):
        sets = ", ".join(f"{m}: `{conf.gene_sets[m]}`" for m in conf.methods
                         if m in conf.gene_sets)
        lines.append(f"- **Gene programmes** ({sets}): offline stand-ins for MSigDB C8 and C3 "
                     "TFT, which need a network; programmes lose the members outside the gene "
                     "space." + _masking_note(conf, facts))
    if facts.cross_targets is not None:
        lines.append(f"- **Cross-modality**: `{conf.cross_modality_file}` has "
                     f"{facts.cross_targets} "
                     "proteins (the paper: 134 in the NeurIPS 2021 bone-marrow CITE-seq).")
    shared = facts.unseen_shared_donors
    if shared is not None:
        lines.append(
            "- **Unseen data**: the stimulated cells are an unseen *condition*; "
            + (f"their donors ({', '.join(shared)}) are among kang's fine-tuning donors, "
               "unlike the paper's unseen datasets (new studies)." if shared
               else "none of their donors is among kang's fine-tuning donors."))
    return lines + [""]


def sctab_lines(sctab: SctabComparison, stores: list[StoreFacts]) -> list[str]:
    """scTab's 164 types under the ontology part of its rule in the stores' release, and the
    types each store kept, each marked by whether scTab had it."""
    lines = [f"  - **scTab's {len(sctab.table)} types in CL `{sctab.release}`**: {sctab.summary()}"
             + (": " + "; ".join(sctab.failure_lines()) if len(sctab.failing) else "") + "."]
    if len(sctab.changed):
        lines.append(f"  - **Changed since scTab named them** ({len(sctab.changed)}): "
                     + "; ".join(sctab.change_lines()) + ".")
    for st in stores:
        ours = sctab.in_sctab(t for t, _ in st.cell_types)
        marked = [f"{label} ({term}{'' if mine else ', not in scTab'})"
                  for (term, label), mine in zip(st.cell_types, ours, strict=True)]
        rule = "" if st.min_ancestors is None else f" (more than {st.min_ancestors} ancestors)"
        lines.append(f"  - **{st.name}** keeps {len(st.cell_types)} types{rule}, {sum(ours)} "
                     f"of them among scTab's: {', '.join(marked) or 'none'}.")
    return lines


def _masking_note(conf: ReproduceConfig, facts: PageFacts) -> str:
    """How much the masking methods hid: the configured rate and the realised share."""
    parts = []
    for method in ("random_mask", "gp_mask"):
        if method in facts.masked_fractions:
            rate = method_options(method, conf.method_options.get(method)).mask_rate
            hidden = facts.masked_fractions[method]
            parts.append(f"{method} asked for {rate:.0%} and hid {hidden:.1%} of the genes on "
                         "average")
    if not parts:
        return ""
    return (" In pre-training " + "; ".join(parts) + " (GP masking fills the rate with whole "
            "programmes drawn at random per cell; its rate is lowered where the programmes "
            "cover less of the gene space than the paper's 50 %). Masked inputs are rescaled "
            "by 1 / (1 - masked share), as the paper's code does.")


def _method_notes(conf: ReproduceConfig) -> list[str]:
    return [
        "## How this page is made",
        "",
        "`make reproduce` runs `ssl-census reproduce --config "
        f"{conf.name}` (ssl_census/reproduce): it builds the local census (census build-local), "
        "the shard stores (shards build, with `[query] include_datasets / exclude_datasets`), "
        "then per seed the pre-training runs (pretrain), fine-tuning runs (finetune), their "
        "evaluations (evaluate) and the integration benchmark, each through the stage's own "
        "Python API. Every step records a key of its settings and inputs (the stage config, "
        "the content of the data it reads, the step it starts from): a rerun skips the steps "
        "whose key is unchanged and removes and redoes the others, so the page never mixes "
        "two configurations. The keys do not cover the code: after changing it, delete the "
        "work directory (or the runs of the config) to redo everything. The page and figures "
        "are rewritten from the reports after every phase of every seed, and with them "
        f"`{FIGURES}/{VALUES}`, the values they are made of. `[variants.<name>]` in the config "
        "runs a method again with other `options` beside the methods (cell types), with a "
        "finding of its own (`claim`, `paper`).",
        "",
    ]


def _options(options: dict[str, Any]) -> str:
    return ", ".join(f"{k} = {str(v).lower() if isinstance(v, bool) else v}"
                     for k, v in options.items())


def _shown(path: str) -> str:
    """A local path as the reader would type it from where make reproduce ran."""
    try:
        return Path(path).resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return path


def _rel(path: Path, page: Path) -> str:
    return Path(os.path.relpath(path.resolve(), page.parent.resolve())).as_posix()
