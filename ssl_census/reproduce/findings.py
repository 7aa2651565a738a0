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

from ssl_census.reproduce.results import Row, mean_sd

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


def compare(a: Row | None, b: Row | None, metric: str) -> Comparison:
    """Paired differences of ``a`` and ``b`` over their common seeds."""
    name_a, name_b = (a.name if a else "?"), (b.name if b else "?")
    if a is None or b is None:
        return Comparison(name_a, name_b, metric, 0, math.nan, math.nan, MISSING)
    va, vb = a.by_seed(metric), b.by_seed(metric)
    diffs = [va[s] - vb[s] for s in sorted(set(va) & set(vb))]
    if not diffs:
        return Comparison(name_a, name_b, metric, 0, math.nan, math.nan, MISSING)
    mean, sd = mean_sd(diffs)
    return Comparison(name_a, name_b, metric, len(diffs), mean, sd, verdict(mean, sd, len(diffs)))


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


MASKING = ("random_mask", "gp_mask", "gp_to_gp", "gp_to_tf")
CONTRASTIVE = ("byol", "barlow")


def _get(rows: dict[str, Row], name: str) -> Row:
    """The named row, or an empty one (its comparisons then read "not measured")."""
    return rows.get(name) or Row(name)


def _rows(table, names: list[str]) -> list[Row]:
    return [table.rows[n] for n in names if n in table.rows]


def paper_findings(methods: tuple[str, ...], transfer, unseen, cross, integration: dict,
                   integration_methods: tuple[str, ...]) -> list[Finding]:
    """The paper's main findings, each as comparisons on this run's tables."""
    t, u = transfer.rows, unseen.rows
    out = [
        Finding("Fine-tuning an SSL model pre-trained on auxiliary data beats supervised "
                "training from scratch on held-out donors",
                "PBMC macro F1 0.7013 (supervised) to 0.7466 (SSL, scTab pre-training)",
                [compare(_get(t, f"fine-tuned {m}, classifier"), _get(t, "supervised, classifier"),
                         "macro F1") for m in methods]),
        Finding("Zero-shot SSL embeddings carry cell-type information beyond a random "
                "encoder (kNN)",
                "zero-shot SSL kNN macro F1 0.6725 on the scTab test set",
                [compare(_get(t, f"zero-shot {m}, kNN"), _get(t, "random-init encoder, kNN"),
                         "macro F1") for m in methods]),
        Finding("Zero-shot SSL embeddings beat the PCA baseline (kNN)",
                "PCA is a baseline the SSL embeddings are compared with",
                [compare(_get(t, f"zero-shot {m}, kNN"), _get(t, "PCA-64, kNN"), "macro F1")
                 for m in methods]),
    ]
    masking = [m for m in methods if m in MASKING]
    contrastive = [m for m in methods if m in CONTRASTIVE]
    if masking and contrastive:
        out.append(Finding(
            "Masked autoencoders outperform contrastive methods (BYOL, Barlow twins)",
            "masking beat contrastive learning in the paper's comparisons",
            [compare(averaged(_rows(transfer, [f"{kind} {m}, {how}" for m in masking]),
                              f"masking ({kind}, {how})"),
                     averaged(_rows(transfer, [f"{kind} {m}, {how}" for m in contrastive]),
                              f"contrastive ({kind}, {how})"), "macro F1")
             for kind, how in (("zero-shot", "kNN"), ("fine-tuned", "classifier"))]))
    gp = [m for m in methods if m in MASKING and m != "random_mask"]
    if "random_mask" in methods and gp:
        out.append(Finding(
            "Random masking is at least as good as gene-programme masking",
            "random masking was the strongest or on par among the masking strategies",
            [compare(_get(t, f"{kind} random_mask, {how}"),
                     averaged(_rows(transfer, [f"{kind} {m}, {how}" for m in gp]),
                              f"gene-programme masking ({kind}, {how})"), "macro F1")
             for kind, how in (("zero-shot", "kNN"), ("fine-tuned", "classifier"))]))
    out.append(Finding(
        "SSL pre-training helps on unseen data under distribution shift (IFN-beta "
        "stimulated cells)",
        "the largest SSL gains were on unseen datasets",
        [compare(_get(u, f"fine-tuned {m}, classifier"), _get(u, "supervised, classifier"),
                 "macro F1") for m in methods]))
    c = cross.rows
    out.append(Finding(
        "SSL pre-training improves RNA-to-protein prediction",
        "Pearson 0.8809 (no pre-training) to 0.8943 (SSL)",
        [compare(r, _get(c, "no pre-training (random init)"), "Pearson")
         for n, r in c.items() if n.startswith("SSL ")]))
    out.append(Finding(
        "Every RNA-to-protein model beats predicting the mean",
        "implicit in the paper's cross-modality comparison",
        [compare(r, _get(c, "predict the mean"), "Pearson")
         for n, r in c.items() if n != "predict the mean"]))
    for name, table in integration.items():
        r = table.rows
        comps = []
        for m in integration_methods:
            comps += [compare(_get(r, f"SSL {m}"), _get(r, "unsupervised"), "Total"),
                      compare(_get(r, f"SSL-shallow {m}"), _get(r, "unsupervised"), "Total")]
        comps.append(compare(_get(r, "unsupervised"), _get(r, "PCA-64"), "Total"))
        out.append(Finding(f"SSL pre-training improves data integration ({name}, scIB total)",
                           "scIB total 0.5354 (unsupervised) to 0.5638 (SSL)", comps))
    return out
