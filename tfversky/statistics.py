"""Statistics for comparing loss settings over subjects (pure NumPy/SciPy).

The unit of analysis is the subject: a setting trained with several seeds gives several
values per subject, which are averaged first (seeds measure run-to-run noise, not new
patients), and settings are then compared paired over the same subjects. Pieces:

* ``subject_means``: per-subject values over seeds -> one value per subject.
* ``paired_comparison``: one setting against a reference (Dice): the mean difference, a
  percentile bootstrap CI over subjects and the Wilcoxon signed-rank test.
* ``holm``: Holm's step-down adjustment of a family of p-values.
* ``trend_test``: does a metric rise (or fall) along ordered settings? Page's L test with
  subjects as blocks, and Spearman's rho of the settings' means with its exact p-value.
* ``paper_claims``: one plain sentence per claim of Salehi et al. 2017 (alpha weighs false
  positives, beta false negatives, as in the paper): sensitivity rises with beta,
  specificity falls, and beta = 0.7 beats Dice on DSC, F2 and APR.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
from scipy import stats

DICE = (0.5, 0.5)
PAPER_BEST = (0.3, 0.7)
SIGNIFICANCE = 0.05


def subject_means(records) -> dict:
    """Averages each subject's values over its scans and seeds (NaNs, e.g. no lesion, are
    skipped): the subject is the statistical unit, so a subject scanned at several time
    points (ISBI 2015, BIDS sessions) counts once in every test, never once per scan.

    Args:
        records: Iterable of ``(subject, value)`` pairs, one per scan and seed.

    Returns:
        ``{subject: mean}`` in first-seen order; a subject whose values are all NaN is left
        out (it has nothing to compare).

    Raises:
        ValueError: if ``records`` is empty.

    Example:

    >>> subject_means([("a", 0.5), ("b", 0.2), ("a", 0.7), ("b", float("nan"))])
    {'a': 0.6, 'b': 0.2}
    """
    values = {}
    for subject, value in records:
        values.setdefault(subject, []).append(float(value))
    if not values:
        raise ValueError("Invalid value for argument `records`: expected (subject, value) "
                         "pairs, received none.")
    return {s: float(np.nanmean(v)) for s, v in values.items() if not np.all(np.isnan(v))}


def units(rows) -> str:
    """``"n subjects (m scans)"`` of evaluation rows (dicts with ``subject`` and ``scan_id``;
    repeats, e.g. seeds, count once): what every table states as its sample.

    Example:

    >>> units([{"subject": "a", "scan_id": "a_t1"}, {"subject": "a", "scan_id": "a_t2"},
    ...        {"subject": "b", "scan_id": "b_t1"}, {"subject": "b", "scan_id": "b_t1"}])
    '2 subjects (3 scans)'
    """
    rows = list(rows)
    subjects = {str(r["subject"]) for r in rows}
    scans = {(str(r["subject"]), str(r.get("scan_id") or r["subject"])) for r in rows}
    return (f"{len(subjects)} subject{'s' * (len(subjects) != 1)} ({len(scans)} "
            f"scan{'s' * (len(scans) != 1)})")


def _paired(setting: dict, reference: dict) -> tuple[list, np.ndarray, np.ndarray]:
    if set(setting) != set(reference):
        only = sorted(set(setting) ^ set(reference))
        raise ValueError(f"Invalid value for argument `setting`: a paired comparison needs the "
                         f"same subjects on both sides; these are on one side only: {only}. "
                         f"Test every setting on the same subjects.")
    subjects = sorted(setting)
    return (subjects, np.array([setting[s] for s in subjects], float),
            np.array([reference[s] for s in subjects], float))


@dataclasses.dataclass(frozen=True)
class Comparison:
    """A setting against a reference, paired over subjects.

    Attributes:
        difference: mean over subjects of (setting - reference).
        ci_low, ci_high: percentile bootstrap CI of ``difference`` (resampling subjects).
        p_value: two-sided Wilcoxon signed-rank p-value (exact for < 50 subjects without
            ties or zeros; 1.0 when every difference is 0).
        n_subjects: subjects paired.
        p_holm: the Holm-adjusted p-value once the family is known (``holm``), else None.
    """

    difference: float
    ci_low: float
    ci_high: float
    p_value: float
    n_subjects: int
    p_holm: float | None = None


def paired_comparison(setting: dict, reference: dict, confidence: float = 0.95,
                      resamples: int = 10_000, seed: int = 0) -> Comparison:
    """Compares ``setting`` with ``reference`` paired over subjects.

    Args:
        setting, reference: ``{subject: value}`` (``subject_means`` of each), same subjects.
        confidence: Level of the bootstrap CI, in (0, 1). Defaults to 0.95.
        resamples: Bootstrap resamples of the subjects, >= 100. Defaults to 10000.
        seed: Seed of the bootstrap. Defaults to 0.

    Returns:
        A ``Comparison``.

    Raises:
        ValueError: if the subjects differ, fewer than 2 are shared, or ``confidence`` /
            ``resamples`` are out of range.

    Example:

    >>> c = paired_comparison({"a": 3, "b": 5, "c": 4, "d": 9, "e": 6},
    ...                       {"a": 2, "b": 3, "c": 1, "d": 5, "e": 1})
    >>> c.difference, round(c.p_value, 4), c.ci_low <= 3.0 <= c.ci_high
    (3.0, 0.0625, True)
    """
    if not 0 < confidence < 1:
        raise ValueError(f"Invalid value for argument `confidence`: expected a level in (0, 1) "
                         f"such as 0.95. Received: confidence={confidence!r}")
    if not isinstance(resamples, int) or resamples < 100:
        raise ValueError(f"Invalid value for argument `resamples`: expected an integer >= 100. "
                         f"Received: resamples={resamples!r}")
    subjects, a, b = _paired(setting, reference)
    if len(subjects) < 2:
        raise ValueError(f"Invalid value for argument `setting`: a paired comparison needs at "
                         f"least 2 subjects. Received: {len(subjects)}")
    diff = a - b
    rng = np.random.default_rng(seed)
    boot = diff[rng.integers(0, len(diff), (resamples, len(diff)))].mean(1)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(boot, [tail, 100 - tail])
    # Wilcoxon is undefined when every difference is zero: nothing differs, p = 1.
    p = 1.0 if not np.any(diff) else float(stats.wilcoxon(diff).pvalue)
    return Comparison(float(diff.mean()), float(low), float(high), p, len(subjects))


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjustment: controls the family-wise error rate of many tests.

    The k-th smallest of m p-values is multiplied by (m - k + 1), kept monotone (never
    below the adjusted value before it) and capped at 1.

    Args:
        p_values: 1D sequence of p-values in [0, 1].

    Returns:
        The adjusted p-values, in the input's order.

    Raises:
        ValueError: if a p-value is outside [0, 1] or NaN.

    Example:

    >>> holm([0.01, 0.04, 0.03, 0.005]).tolist()
    [0.03, 0.06, 0.06, 0.02]
    """
    p = np.asarray(p_values, float)
    if p.ndim != 1 or np.any(~((p >= 0) & (p <= 1))):
        raise ValueError(f"Invalid value for argument `p_values`: expected a 1D sequence of "
                         f"p-values in [0, 1]. Received: p_values={p_values!r}")
    order = np.argsort(p, kind="stable")
    m = len(p)
    stepped = np.maximum.accumulate(p[order] * (m - np.arange(m)))
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(stepped, 1.0)
    return adjusted


@dataclasses.dataclass(frozen=True)
class Trend:
    """A monotone trend of a metric along ordered settings.

    Attributes:
        direction: ``"increasing"`` or ``"decreasing"``: the alternative tested.
        page_l, page_p: Page's L statistic (subjects as blocks, settings in order) and its
            one-sided p-value for a trend in ``direction``.
        rho, rho_p: Spearman's rho between the setting order and the settings' means over
            subjects, with its exact two-sided permutation p-value.
        means: the settings' means over subjects, in order.
        n_subjects: subjects (blocks) used.
    """

    direction: str
    page_l: float
    page_p: float
    rho: float
    rho_p: float
    means: tuple
    n_subjects: int


def _exact_spearman(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Spearman's rho with an exact two-sided p-value over all orderings (small n)."""
    rho = float(stats.spearmanr(x, y).statistic)
    ranks_y = stats.rankdata(y)
    ranks_x = stats.rankdata(x)
    null = [stats.pearsonr(ranks_x, np.array(perm)).statistic
            for perm in itertools.permutations(ranks_y)]
    p = float(np.mean(np.abs(null) >= abs(rho) - 1e-12))
    return rho, p


def trend_test(values_by_setting, direction: str = "increasing") -> Trend:
    """Tests for a monotone trend of a metric along settings given in order.

    Page's L test treats each subject as a block and ranks the settings within it, so it
    uses every subject and no assumption of normality; Spearman's rho of the settings'
    means says how monotone the average is (exact p-value over the k! orderings).

    Args:
        values_by_setting: Sequence (in the order of the trend, e.g. rising beta) of
            ``{subject: value}`` dicts, all on the same subjects; at least 3 settings,
            at most 8 (the exact permutation p-value enumerates k! orders).
        direction: ``"increasing"`` or ``"decreasing"``. Defaults to ``"increasing"``.

    Returns:
        A ``Trend``.

    Raises:
        ValueError: on fewer than 3 or more than 8 settings, differing subjects, fewer than
            2 subjects, or an unknown ``direction``.

    Example:

    >>> settings = [{"a": 1, "b": 2}, {"a": 2, "b": 3}, {"a": 3, "b": 5}]
    >>> t = trend_test(settings)
    >>> t.page_l, t.rho, round(t.rho_p, 3)
    (28.0, 1.0, 0.333)
    """
    if direction not in ("increasing", "decreasing"):
        raise ValueError(f"Invalid value for argument `direction`: expected 'increasing' or "
                         f"'decreasing'. Received: direction={direction!r}")
    settings = list(values_by_setting)
    if not 3 <= len(settings) <= 8:
        raise ValueError(f"Invalid value for argument `values_by_setting`: a trend needs 3 to "
                         f"8 ordered settings. Received: {len(settings)}")
    subjects = sorted(settings[0])
    for values in settings[1:]:
        _paired(values, settings[0])
    if len(subjects) < 2:
        raise ValueError(f"Invalid value for argument `values_by_setting`: a trend over "
                         f"subjects needs at least 2 subjects. Received: {len(subjects)}")
    table = np.array([[values[s] for values in settings] for s in subjects], float)
    ordered = table if direction == "increasing" else table[:, ::-1]
    page = stats.page_trend_test(ordered, method="exact" if len(subjects) <= 13 else "auto")
    means = table.mean(0)
    rho, rho_p = _exact_spearman(np.arange(len(settings)), means)
    return Trend(direction, float(page.statistic), float(page.pvalue), rho, rho_p,
                 tuple(float(m) for m in means), len(subjects))


def _trend_sentence(claim: str, trend: Trend, expected_sign: int) -> str:
    holds = trend.page_p < SIGNIFICANCE and np.sign(trend.rho) == expected_sign
    means = " -> ".join(f"{100 * m:.2f}" for m in trend.means)
    return (f"{claim}: {'holds' if holds else 'does not hold'} here (Page's L = "
            f"{trend.page_l:.0f}, one-sided p = {trend.page_p:.3g}, {trend.n_subjects} "
            f"subjects; Spearman's rho of the setting means = {trend.rho:+.2f}, exact p = "
            f"{trend.rho_p:.3g}; means {means} %).")


def _comparison_sentence(claim: str, c: Comparison) -> str:
    p = c.p_holm if c.p_holm is not None else c.p_value
    # Significant either way, or neither: a gain that the subjects cannot tell from zero is
    # not shown, which is not the same as a significant loss.
    verdict = ("not shown" if p >= SIGNIFICANCE else "holds" if c.difference > 0
               else "does not hold")
    return (f"{claim}: {verdict} here (difference "
            f"{100 * c.difference:+.2f} points, 95 % CI [{100 * c.ci_low:+.2f}, "
            f"{100 * c.ci_high:+.2f}], Wilcoxon p = {c.p_value:.3g}, Holm-adjusted p = "
            f"{p:.3g}, {c.n_subjects} subjects).")


def compare_settings(per_setting: dict, reference=DICE, metrics=("dsc", "f2", "apr"),
                     resamples: int = 10_000, seed: int = 0,
                     common_subjects: bool = False) -> dict:
    """Every setting against ``reference`` on every metric, Holm-adjusted as one family.

    Args:
        per_setting: ``{(alpha, beta): {metric: {subject: value}}}`` (subject means).
        reference: The reference setting's key. Defaults to Dice, (0.5, 0.5).
        metrics: Metrics to compare. Defaults to DSC, F2, APR (the paper's claims).
        resamples, seed: Of the bootstrap (``paired_comparison``).
        common_subjects: Pair each comparison over the subjects both sides have (a metric
            that is undefined for some subjects, e.g. HD95 where a mask is empty, leaves them
            out; ``n_subjects`` says how many remain). False: the same subjects are required.
            Defaults to False.

    Returns:
        ``{(setting, metric): Comparison}`` with ``p_holm`` set over all of them.

    Raises:
        ValueError: if ``reference`` is not among the settings, or as ``paired_comparison``.

    Example:

    >>> data = {(0.5, 0.5): {"dsc": {"a": 0.5, "b": 0.6, "c": 0.4}},
    ...         (0.3, 0.7): {"dsc": {"a": 0.6, "b": 0.7, "c": 0.45}}}
    >>> result = compare_settings(data, metrics=("dsc",))
    >>> c = result[((0.3, 0.7), "dsc")]
    >>> round(c.difference, 3), c.p_value, c.p_holm
    (0.083, 0.25, 0.25)
    """
    if reference not in per_setting:
        raise ValueError(f"Invalid value for argument `reference`: {reference!r} is not among "
                         f"the settings {sorted(per_setting)}; train it too.")
    def paired(values: dict, reference_values: dict) -> Comparison:
        if common_subjects:
            shared = set(values) & set(reference_values)
            values = {s: v for s, v in values.items() if s in shared}
            reference_values = {s: v for s, v in reference_values.items() if s in shared}
        return paired_comparison(values, reference_values, resamples=resamples, seed=seed)

    raw = {(setting, metric): paired(values[metric], per_setting[reference][metric])
           for setting, values in per_setting.items() if setting != reference
           for metric in metrics}
    adjusted = holm([c.p_value for c in raw.values()]) if raw else []
    return {key: dataclasses.replace(c, p_holm=float(p))
            for (key, c), p in zip(raw.items(), adjusted)}


def paper_claims(per_setting: dict, resamples: int = 10_000, seed: int = 0) -> list[str]:
    """One plain sentence per claim of the paper, saying whether it holds on these results.

    Claims (Salehi et al. 2017, Table 1; alpha weighs false positives, beta false
    negatives): sensitivity rises with beta; specificity falls with beta; beta = 0.7
    (alpha = 0.3) beats Dice (0.5, 0.5) on DSC, on F2 and on APR. A trend holds when Page's
    one-sided p < 0.05 and the means move the claimed way; "beats" holds when the
    Holm-adjusted Wilcoxon p < 0.05 (family: the three claims, 0.7 against Dice on DSC,
    F2 and APR) and the mean difference is positive. A claim whose settings are missing
    says so. With n subjects the smallest exact Wilcoxon p is 2 / 2^n: 8 subjects can
    reach 0.0078 (0.023 after Holm over 3), 15 subjects far less.

    Args:
        per_setting: ``{(alpha, beta): {metric: {subject: value}}}`` with at least the
            metrics sensitivity, specificity, dsc, f2 and apr (subject means over seeds).
        resamples, seed: Of the bootstrap CIs.

    Returns:
        Five sentences, in the order above.

    Example:

    >>> subjects = ("s1", "s2", "s3", "s4", "s5", "s6")
    >>> def setting(beta):
    ...     return {m: {s: beta * (1 + i / 10) if m != "specificity" else 1 - beta / 10
    ...                 for i, s in enumerate(subjects)} for m in
    ...             ("dsc", "sensitivity", "specificity", "f2", "apr")}
    >>> claims = paper_claims({(1 - b, b): setting(b) for b in (0.5, 0.6, 0.7, 0.8, 0.9)},
    ...                       resamples=200)
    >>> claims[0][:44]
    'Sensitivity rises with beta: holds here (Pag'
    """
    sentences = []
    by_beta = sorted(per_setting, key=lambda key: key[1])
    for metric, claim, direction, sign in (
            ("sensitivity", "Sensitivity rises with beta", "increasing", 1),
            ("specificity", "Specificity falls as beta rises", "decreasing", -1)):
        if len(by_beta) < 3:
            sentences.append(f"{claim}: not tested (needs >= 3 settings, got {len(by_beta)}).")
            continue
        trend = trend_test([per_setting[k][metric] for k in by_beta], direction)
        sentences.append(_trend_sentence(claim, trend, sign))
    missing = [k for k in (DICE, PAPER_BEST) if k not in per_setting]
    comparisons = {} if missing else compare_settings(
        {k: per_setting[k] for k in (DICE, PAPER_BEST)}, resamples=resamples, seed=seed)
    for metric, label in (("dsc", "DSC"), ("f2", "F2"), ("apr", "APR")):
        claim = f"beta = 0.7 (alpha = 0.3) beats Dice (0.5, 0.5) on {label}"
        if missing:
            sentences.append(f"{claim}: not tested (settings {missing} were not trained).")
        else:
            sentences.append(_comparison_sentence(claim, comparisons[(PAPER_BEST, metric)]))
    return sentences


def format_mean_sd(values, scale: float = 100) -> str:
    """``"mean +- sd"`` over seeds, times ``scale`` (100: fractions shown in percent; 1: mm,
    mL), sample sd (ddof=1; "n/a" for one seed).

    Example:

    >>> format_mean_sd([0.5, 0.6, 0.7]), format_mean_sd([0.5]), format_mean_sd([2, 4], scale=1)
    ('60.00 +- 10.00', '50.00 +- n/a', '3.00 +- 1.41')
    """
    values = scale * np.asarray(values, float)
    mean = float(np.mean(values))
    if len(values) < 2:
        return f"{mean:.2f} +- n/a"
    sd = float(np.std(values, ddof=1))
    return f"{mean:.2f} +- {sd:.2f}" if math.isfinite(sd) else f"{mean:.2f} +- n/a"
