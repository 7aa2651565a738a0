"""The paper's findings, each checked against this run's numbers.

A finding is a set of comparisons "A beats B" on one metric. A comparison is judged on the
paired differences A - B over the seeds both have: a paired t-test (n - 1 degrees of
freedom) gives its two-sided p-value and the 95 % confidence interval of the mean difference
(t quantile, not "two standard errors", which with five seeds is an 88 % interval). All
comparisons on the page are one family: their p-values are adjusted with Holm's step-down
method (:func:`holm`), so the chance of any false verdict stays at 5 % however many
comparisons the page makes. A comparison *holds* when its adjusted p-value is below 0.05 and
the difference is positive, is *contradicted* when it is below 0.05 and negative, and is
otherwise not resolved (the difference is within the seed-to-seed noise). With one seed
there is no uncertainty estimate and the verdict says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats

from ssl_census.evaluation.report import PCA_NAME
from ssl_census.reproduce.config import Variant
from ssl_census.reproduce.results import (
    CLASSIFIER,
    KNN,
    MACRO_F1,
    MEAN_BASELINE,
    NO_PRETRAINING,
    PER_PROTEIN,
    RANDOM_INIT,
    SCVI,
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
ALPHA = 0.05  # family-wise error rate of the page's verdicts
CONFIDENCE = 0.95  # of the intervals shown


def t_test(mean: float, sd: float, n: int) -> tuple[float, float]:
    """Two-sided p-value of a paired t-test of mean difference 0, and the half-width of the
    CONFIDENCE interval of the mean (t quantile with n - 1 degrees of freedom)."""
    se = sd / math.sqrt(n)
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * se
    if se == 0:  # every seed gave the same difference
        return (1.0 if mean == 0 else 0.0), 0.0
    return float(2 * stats.t.sf(abs(mean) / se, n - 1)), half


@dataclass
class Comparison:
    better: str
    worse: str
    metric: str
    n: int
    mean: float
    sd: float
    verdict: str
    p: float = math.nan  # the t-test's two-sided p-value
    p_adjusted: float = math.nan  # Holm-adjusted over the page's family of comparisons
    half_width: float = math.nan  # of the 95 % confidence interval of the mean difference

    def text(self) -> str:
        if self.n == 0:
            return f"{self.better} vs {self.worse}: {MISSING}"
        if self.n == 1:
            return (f"{self.better} − {self.worse}, {self.metric}: {self.mean:+.3f} (one "
                    f"seed) → **{self.verdict}**")
        lo, hi = self.mean - self.half_width, self.mean + self.half_width
        return (f"{self.better} − {self.worse}, {self.metric}: {self.mean:+.3f}, 95 % CI "
                f"[{lo:+.3f}, {hi:+.3f}] over {self.n} paired seeds, p = {_p(self.p)} "
                f"(Holm-adjusted {_p(self.p_adjusted)}) → **{self.verdict}**")


def _p(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def compare(a: Row | None, b: Row | None, metric: str = MACRO_F1,
            label: str | None = None) -> Comparison:
    """Paired differences of ``a`` and ``b`` over their common seeds (``label``: how the
    metric is named on the page, default ``metric``). The verdict is that of a family of
    one comparison until :func:`holm` adjusts it among the others."""
    name_a, name_b = (a.name if a else "?"), (b.name if b else "?")
    label = label or metric
    if a is None or b is None:
        return Comparison(name_a, name_b, label, 0, math.nan, math.nan, MISSING)
    va, vb = a.by_seed(metric), b.by_seed(metric)
    diffs = [va[s] - vb[s] for s in sorted(set(va) & set(vb))]
    if not diffs:
        return Comparison(name_a, name_b, label, 0, math.nan, math.nan, MISSING)
    mean, sd = mean_sd(diffs)
    n = len(diffs)
    if n < 2:
        return Comparison(name_a, name_b, label, n, mean, sd, ONE_SEED)
    p, half = t_test(mean, sd, n)
    return Comparison(name_a, name_b, label, n, mean, sd, verdict(mean, p), p, p, half)


def verdict(mean: float, p_adjusted: float) -> str:
    """The verdict of a difference whose (adjusted) p-value is ``p_adjusted``."""
    if p_adjusted < ALPHA:
        return HOLDS if mean > 0 else CONTRADICTED
    return UNCLEAR


def holm(comparisons: list[Comparison]) -> None:
    """Holm's step-down adjustment of the p-values of ``comparisons`` (those with two or more
    seeds), in place, and their verdicts from the adjusted values: the k-th smallest p of m
    is multiplied by m - k + 1, kept monotone, capped at 1."""
    tested = sorted((c for c in comparisons if c.n > 1), key=lambda c: c.p)
    m, running = len(tested), 0.0
    for k, c in enumerate(tested):
        running = max(running, min(1.0, (m - k) * c.p))
        c.p_adjusted = running
        c.verdict = verdict(c.mean, running)


@dataclass
class Finding:
    """A claim and its comparisons. A claim of ``equal`` standing (two models are comparable)
    holds where neither model is better beyond the seed noise, i.e. where its comparisons are
    not resolved, and fails where one is; with too few seeds to resolve anything that says
    little, which is why the comparisons are shown with their intervals."""

    claim: str
    paper: str
    comparisons: list[Comparison]
    equal: bool = False

    def summary(self) -> str:
        """How many comparisons hold, are reversed or unresolved."""
        if self.equal:
            return self._equal_summary()
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

    def _equal_summary(self) -> str:
        total = len(self.comparisons)
        tested = [c for c in self.comparisons if c.n > 1]
        apart = [c for c in tested if c.verdict != UNCLEAR]
        if len(tested) < total:
            return (f"{total - len(tested)} of {total} comparison(s) not measured or with one "
                    f"seed; {len(apart)} of the others differ beyond the seed noise")
        if not apart:
            return f"holds: no difference beyond the seed noise in all {total} comparison(s)"
        return (f"does not hold: {len(apart)} of {total} comparison(s) differ beyond the seed "
                "noise")

    def holds(self) -> bool:
        if self.equal:
            return bool(self.comparisons) and all(c.n > 1 and c.verdict == UNCLEAR
                                                  for c in self.comparisons)
        return _all(self, HOLDS)

    def reversed(self) -> bool:
        return not self.equal and _all(self, CONTRADICTED)


def in_short(found: list[Finding]) -> list[str]:
    """The plain statement: which findings hold, which do not, and how large the uncertainty
    of a comparison is (the half-width of its 95 % confidence interval)."""
    comps = [c for f in found for c in f.comparisons if c.n > 0]
    if not comps:
        return ["No comparison has results yet."]
    if all(c.n < 2 for c in comps):
        return [f"With one seed there is no uncertainty estimate, so none of the {len(comps)} "
                "comparisons gets a verdict; configure at least two seeds (the paper: five)."]
    counts = {v: sum(c.verdict == v for c in comps) for v in (HOLDS, CONTRADICTED, UNCLEAR)}
    groups = {
        "Hold in every comparison": [f for f in found if f.holds()],
        "Reversed in every comparison": [f for f in found if f.reversed()],
        "Mixed or not resolved": [f for f in found if not f.holds() and not f.reversed()],
    }
    out = [f"In short, of {len(comps)} comparisons {counts[HOLDS]} hold, "
           f"{counts[CONTRADICTED]} are reversed and {counts[UNCLEAR]} are within the "
           "seed-to-seed noise" + (f" ({len(comps) - sum(counts.values())} have one seed)"
                                   if len(comps) > sum(counts.values()) else "") + "."]
    widths = sorted(c.half_width for c in comps if c.n > 1)
    if widths:
        out[0] += (f" The uncertainty of a comparison (half the width of the 95 % confidence "
                   f"interval of its paired difference) has a median of "
                   f"{widths[len(widths) // 2]:.3f}, from {widths[0]:.3f} to "
                   f"{widths[-1]:.3f}, on 0-1 scores.")
    out.append("")
    for title, fs in groups.items():
        out.append(f"- *{title}*: " + ("; ".join(f.claim for f in fs) if fs else "none") + ".")
    return out


def _all(f: Finding, verdict_: str) -> bool:
    return bool(f.comparisons) and all(c.verdict == verdict_ for c in f.comparisons)


# The method groups the paper compares: masked autoencoders (random and gene-programme
# masking), the isolated masked autoencoders (their own group: they hide all genes but one
# programme) and contrastive methods. Groups are compared method against method, never as
# averages, so one strong method cannot carry a weak one.
MASKED = ("random_mask", "gp_mask")
ISOLATED = ("gp_to_gp", "gp_to_tf")
CONTRASTIVE = ("byol", "barlow")
# how the method comparisons look at a model: zero-shot by kNN, fine-tuned by its head
MODEL_KINDS = ((zero_shot, KNN), (fine_tuned, CLASSIFIER))


def _get(rows: dict[str, Row], name: str) -> Row:
    """The named row. A table with no rows yet (its part of the experiment has not run) gives
    an empty one, whose comparisons read "not measured"; a table that has rows but not this
    one is an error (a row the results never write), not a gap in the measurements."""
    if not rows:
        return Row(name)
    if name not in rows:
        raise ValueError(f"no row {name!r} in a table of {', '.join(sorted(rows))}")
    return rows[name]


def _scvi_row(rows: dict[str, Row]) -> Row | None:
    """scVI's row; None (its comparisons read "not measured") when the run left scVI out
    (the scvi extra not installed: the page says so)."""
    return rows.get(SCVI)


def _rows(table, names: list[str]) -> list[Row]:
    return [_get(table.rows, n) for n in names]


def paper_findings(methods: tuple[str, ...], transfer, unseen, cross, integration: dict,
                   integration_methods: tuple[str, ...],
                   cross_methods: tuple[str, ...],
                   variants: dict[str, Variant] | None = None) -> list[Finding]:
    """The paper's main findings, each as comparisons on this run's tables; ``variants``
    (config [variants]) add one finding each: the method against its variant."""
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
                         MACRO_F1) for m in methods]),
        Finding("Zero-shot SSL embeddings beat the PCA baseline (kNN)",
                "SSL embeddings proposed beside PCA; Fig. 2a compares both",
                [compare(_get(t, row_name(zero_shot(m), KNN)), _get(t, row_name(PCA_NAME, KNN)),
                         MACRO_F1) for m in methods]),
    ]
    out += _method_findings(methods, t)
    out += [Finding(v.claim, v.paper, _method_against_method(t, [(v.method, v.name)]))
            for v in (variants or {}).values() if v.method in methods]
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
        "SSL pre-training improves RNA-to-protein prediction of each protein (Pearson per "
        "protein, averaged over proteins)",
        "the flat Pearson is dominated by the differences between protein means",
        [compare(_get(c, ssl(m)), _get(c, NO_PRETRAINING), PER_PROTEIN)
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
        out.append(Finding(
            "scVI is comparable to SSL-shallow: neither integrates better beyond the seed "
            "noise (scIB total)",
            "scVI comparable to SSL-shallow",
            [compare(_get(table.rows, ssl(m, shallow=True)), _scvi_row(table.rows), "Total",
                     f"Total on {name}")
             for name, table in integration.items() for m in integration_methods],
            equal=True))
    holm([c for f in out for c in f.comparisons])  # the page's comparisons are one family
    return out


def _method_against_method(t: dict[str, Row], pairs: list[tuple[str, str]]
                            ) -> list[Comparison]:
    """Each pair (a, b) of methods compared zero-shot (kNN) and fine-tuned (classifier)."""
    return [compare(_get(t, row_name(model(a), how)), _get(t, row_name(model(b), how)))
            for model, how in MODEL_KINDS for a, b in pairs]


def _method_findings(methods: tuple[str, ...], t: dict[str, Row]) -> list[Finding]:
    """The paper's ranking of the pretext tasks, method against method."""
    masked = [m for m in methods if m in MASKED]
    isolated = [m for m in methods if m in ISOLATED]
    contrastive = [m for m in methods if m in CONTRASTIVE]
    out = []
    if masked and contrastive:
        out.append(Finding(
            "Masked autoencoders (random, gene-programme masking) outperform contrastive "
            "methods (BYOL, Barlow twins)",
            "masked autoencoders performed better than contrastive learning",
            _method_against_method(t, [(a, b) for a in masked for b in contrastive])))
    if "random_mask" in methods and "gp_mask" in methods:
        out.append(Finding(
            "Random masking is at least as good as gene-programme masking",
            "random masking consistently ranked among the top performers",
            _method_against_method(t, [("random_mask", "gp_mask")])))
    if "random_mask" in methods and isolated:
        out.append(Finding(
            "Random masking is at least as good as the isolated masked autoencoders (GP to "
            "GP, GP to TF) for cell types",
            "random masking among the top performers; GP to TF best only at reconstruction",
            _method_against_method(t, [("random_mask", m) for m in isolated])))
    return out


def _fine_tuned_vs_supervised(rows: dict[str, Row], methods: tuple[str, ...]) -> list[Comparison]:
    """Each fine-tuned SSL model against the supervised one: by its classifier head and by kNN
    on its embedding (the paper's protocol)."""
    return [compare(_get(rows, row_name(fine_tuned(m), how)), _get(rows, row_name(SUPERVISED, how)),
                    MACRO_F1) for how in (CLASSIFIER, KNN) for m in methods]

