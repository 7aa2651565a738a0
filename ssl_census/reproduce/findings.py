"""The paper's findings, each checked against this run's numbers.

A finding is a comparison "A beats B" on one metric. Its verdict comes from the paired
differences A - B over the seeds both have: it *holds* when the mean difference minus two
standard errors is above zero, it is *contradicted* when the mean plus two standard errors is
below zero, and otherwise the data cannot tell (the difference is within the seed-to-seed
noise). With one seed there is no uncertainty estimate and the verdict says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ssl_census.evaluation.report import PCA_NAME
from ssl_census.reproduce.results import (
    CLASSIFIER,
    KNN,
    MEAN_BASELINE,
    NO_PRETRAINING,
    RANDOM_INIT,
    SUPERVISED,
    UNSUPERVISED,
    Row,
    fine_tuned,
    mean_sd,
    row_name,
    ssl,
    zero_shot,
)

HOLDS, CONTRADICTED, UNCLEAR, ONE_SEED, MISSING = (
    "holds", "does not hold (reversed)", "not resolved (within seed noise)",
    "one seed only (no uncertainty estimate)", "not measured")


@dataclass
class Comparison:
    better: str
    worse: str
    metric: str
    n: int
    mean: float
    sd: float
    verdict: str

    def text(self) -> str:
        if self.n == 0:
            return f"{self.better} vs {self.worse}: {MISSING}"
        spread = f" ± {self.sd:.3f} (sd of {self.n} paired seeds)" if self.n > 1 else ""
        return (f"{self.better} − {self.worse}, {self.metric}: {self.mean:+.3f}{spread} → "
                f"**{self.verdict}**")


def compare(a: Row | None, b: Row | None, metric: str, label: str | None = None) -> Comparison:
    """Paired differences of ``a`` and ``b`` over their common seeds (``label``: how the
    metric is named on the page, default ``metric``)."""
    name_a, name_b = (a.name if a else "?"), (b.name if b else "?")
    label = label or metric
    if a is None or b is None:
        return Comparison(name_a, name_b, label, 0, math.nan, math.nan, MISSING)
    va, vb = a.by_seed(metric), b.by_seed(metric)
    diffs = [va[s] - vb[s] for s in sorted(set(va) & set(vb))]
    if not diffs:
        return Comparison(name_a, name_b, label, 0, math.nan, math.nan, MISSING)
    mean, sd = mean_sd(diffs)
    return Comparison(name_a, name_b, label, len(diffs), mean, sd, verdict(mean, sd, len(diffs)))


def verdict(mean: float, sd: float, n: int) -> str:
    if n < 2:
        return ONE_SEED
    se = sd / math.sqrt(n)
    if mean - 2 * se > 0:
        return HOLDS
    if mean + 2 * se < 0:
        return CONTRADICTED
    return UNCLEAR


def averaged(rows: list[Row], name: str) -> Row | None:
    """A row whose value per seed is the mean of ``rows`` (e.g. all masking methods)."""
    rows = [r for r in rows if r is not None]
    if not rows:
        return None
    out = Row(name)
    seeds = sorted(set.intersection(*(set(r.seeds) for r in rows)))
    for metric in rows[0].values:
        per = [r.by_seed(metric) for r in rows]
        out.values[metric] = [sum(p[s] for p in per) / len(per) for s in seeds]
    out.seeds = seeds
    return out


@dataclass
class Finding:
    claim: str
    paper: str
    comparisons: list[Comparison]

    def summary(self) -> str:
        """How many comparisons hold, are reversed or unresolved."""
        counts: dict[str, int] = {}
        for c in self.comparisons:
            counts[c.verdict] = counts.get(c.verdict, 0) + 1
        total = len(self.comparisons)
        if counts.get(HOLDS, 0) == total:
            return f"holds in all {total} comparison(s)"
        if counts.get(CONTRADICTED, 0) == total:
            return f"does not hold: reversed in all {total} comparison(s)"
        if len(counts) == 1:
            return f"{next(iter(counts))} in all {total} comparison(s)"
        parts = [f"{n} {v}" for v, n in counts.items()]
        return "mixed: " + ", ".join(parts) + f" (of {total})"


def in_short(found: list[Finding]) -> list[str]:
    """The plain statement: which findings hold, which do not, and how large the uncertainty
    of a comparison is (two standard errors of its paired difference)."""
    comps = [c for f in found for c in f.comparisons if c.n > 0]
    if not comps:
        return ["No comparison has results yet."]
    if all(c.n < 2 for c in comps):
        return [f"With one seed there is no uncertainty estimate, so none of the {len(comps)} "
                "comparisons gets a verdict; configure at least two seeds (the paper: five)."]
    counts = {v: sum(c.verdict == v for c in comps) for v in (HOLDS, CONTRADICTED, UNCLEAR)}
    groups = {
        "Hold in every comparison": [f for f in found if _all(f, HOLDS)],
        "Reversed in every comparison": [f for f in found if _all(f, CONTRADICTED)],
        "Mixed or not resolved": [f for f in found
                                  if not _all(f, HOLDS) and not _all(f, CONTRADICTED)],
    }
    out = [f"In short, of {len(comps)} comparisons {counts[HOLDS]} hold, "
           f"{counts[CONTRADICTED]} are reversed and {counts[UNCLEAR]} are within the "
           "seed-to-seed noise" + (f" ({len(comps) - sum(counts.values())} have one seed)"
                                   if len(comps) > sum(counts.values()) else "") + "."]
    widths = sorted(2 * c.sd / math.sqrt(c.n) for c in comps if c.n > 1)
    if widths:
        out[0] += (f" The uncertainty of a comparison (two standard errors of the paired "
                   f"difference) has a median of {widths[len(widths) // 2]:.3f}, from "
                   f"{widths[0]:.3f} to {widths[-1]:.3f}, on 0-1 scores.")
    out.append("")
    for title, fs in groups.items():
        out.append(f"- *{title}*: " + ("; ".join(f.claim for f in fs) if fs else "none") + ".")
    return out


def _all(f: Finding, verdict_: str) -> bool:
    return bool(f.comparisons) and all(c.verdict == verdict_ for c in f.comparisons)


MASKING = ("random_mask", "gp_mask", "gp_to_gp", "gp_to_tf")
# how the method comparisons look at a model: zero-shot by kNN, fine-tuned by its head
MODEL_KINDS = ((zero_shot, "zero-shot", KNN), (fine_tuned, "fine-tuned", CLASSIFIER))
CONTRASTIVE = ("byol", "barlow")


def _get(rows: dict[str, Row], name: str) -> Row:
    """The named row. A table with no rows yet (its part of the experiment has not run) gives
    an empty one, whose comparisons read "not measured"; a table that has rows but not this
    one is an error (a row the results never write), not a gap in the measurements."""
    if not rows:
        return Row(name)
    if name not in rows:
        raise ValueError(f"no row {name!r} in a table of {', '.join(sorted(rows))}")
    return rows[name]


def _rows(table, names: list[str]) -> list[Row]:
    return [_get(table.rows, n) for n in names]


def paper_findings(methods: tuple[str, ...], transfer, unseen, cross, integration: dict,
                   integration_methods: tuple[str, ...],
                   cross_methods: tuple[str, ...]) -> list[Finding]:
    """The paper's main findings, each as comparisons on this run's tables."""
    t, u = transfer.rows, unseen.rows
    out = [
        Finding("Fine-tuning an SSL model pre-trained on auxiliary data beats supervised "
                "training from scratch on held-out donors",
                "PBMC macro F1 0.7013 (supervised) to 0.7466 (SSL, scTab pre-training)",
                _fine_tuned_vs_supervised(t, methods)),
        Finding("Zero-shot SSL embeddings carry cell-type information beyond a random "
                "encoder (kNN)",
                "zero-shot SSL kNN macro F1 0.6725 on the scTab test set",
                [compare(_get(t, row_name(zero_shot(m), KNN)), _get(t, row_name(RANDOM_INIT, KNN)),
                         "macro F1") for m in methods]),
        Finding("Zero-shot SSL embeddings beat the PCA baseline (kNN)",
                "SSL embeddings proposed beside PCA; Fig. 2a compares both",
                [compare(_get(t, row_name(zero_shot(m), KNN)), _get(t, row_name(PCA_NAME, KNN)),
                         "macro F1") for m in methods]),
    ]
    masking = [m for m in methods if m in MASKING]
    contrastive = [m for m in methods if m in CONTRASTIVE]
    if masking and contrastive:
        out.append(Finding(
            "Masked autoencoders outperform contrastive methods (BYOL, Barlow twins)",
            "masking beat contrastive learning in the paper's comparisons",
            [compare(averaged(_rows(transfer, [row_name(model(m), how) for m in masking]),
                              f"masking ({kind}, {how})"),
                     averaged(_rows(transfer, [row_name(model(m), how) for m in contrastive]),
                              f"contrastive ({kind}, {how})"), "macro F1")
             for model, kind, how in MODEL_KINDS]))
    gp = [m for m in methods if m in MASKING and m != "random_mask"]
    if "random_mask" in methods and gp:
        out.append(Finding(
            "Random masking is at least as good as gene-programme masking",
            "random masking was the strongest or on par among the masking strategies",
            [compare(_get(t, row_name(model("random_mask"), how)),
                     averaged(_rows(transfer, [row_name(model(m), how) for m in gp]),
                              f"gene-programme masking ({kind}, {how})"),
                     "macro F1")
             for model, kind, how in MODEL_KINDS]))
    out.append(Finding(
        "SSL pre-training helps on unseen data under distribution shift (IFN-beta "
        "stimulated cells)",
        "the largest SSL gains were on unseen datasets",
        _fine_tuned_vs_supervised(u, methods)))
    c = cross.rows
    out.append(Finding(
        "SSL pre-training improves RNA-to-protein prediction",
        "Pearson 0.8809 (no pre-training) to 0.8943 (SSL)",
        [compare(_get(c, ssl(m)), _get(c, NO_PRETRAINING), "Pearson")
         for m in cross_methods]))
    out.append(Finding(
        "Every RNA-to-protein model beats predicting the mean",
        "implicit in the paper's cross-modality comparison",
        [compare(r, _get(c, MEAN_BASELINE), "Pearson")
         for n, r in c.items() if n != MEAN_BASELINE]))
    for name, table in integration.items():
        r = table.rows
        comps = []
        for m in integration_methods:
            comps += [compare(_get(r, ssl(m, shallow)), _get(r, UNSUPERVISED), "Total")
                      for shallow in (False, True)]
        out.append(Finding(f"SSL pre-training improves data integration ({name}, scIB total)",
                           "scIB total 0.5354 (unsupervised) to 0.5571 (SSL) and 0.5638 "
                           "(SSL-shallow)", comps))
    if integration:
        out.append(Finding(
            "A model fine-tuned with batch covariates integrates better than PCA (scIB total)",
            "PCA is the integration baseline, scVI comparable to SSL-shallow",
            [compare(_get(table.rows, UNSUPERVISED), _get(table.rows, PCA_NAME), "Total",
                     f"Total on {name}") for name, table in integration.items()]))
    return out


def _fine_tuned_vs_supervised(rows: dict[str, Row], methods: tuple[str, ...]) -> list[Comparison]:
    """Each fine-tuned SSL model against the supervised one: by its classifier head and by kNN
    on its embedding (the paper's protocol)."""
    return [compare(_get(rows, row_name(fine_tuned(m), how)), _get(rows, row_name(SUPERVISED, how)),
                    "macro F1") for how in (CLASSIFIER, KNN) for m in methods]

