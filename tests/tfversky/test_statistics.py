"""tfversky.statistics against hand-computed examples."""

import itertools
import math

import numpy as np
import pytest

from tfversky import statistics

SUBJECTS = ("s1", "s2", "s3", "s4", "s5")


def _by_subject(values):
    return dict(zip(SUBJECTS, values))


def test_subject_means_average_seeds_first():
    records = [("s1", 0.2), ("s2", 0.9), ("s1", 0.4), ("s2", float("nan")), ("s3", float("nan"))]
    assert statistics.subject_means(records) == pytest.approx({"s1": 0.3, "s2": 0.9})


@pytest.mark.parametrize("differences, p", [
    # All 5 differences positive: W- = 0; 2 of the 2^5 sign patterns are as extreme.
    ((1, 2, 3, 4, 5), 2 / 32),
    # One negative, rank 2: W- = 2; sign subsets with rank sum <= 2: {}, {1}, {2} -> 2*3/32.
    ((1, -2, 3, 4, 5), 6 / 32),
])
def test_wilcoxon_p_value_by_hand(differences, p):
    reference = _by_subject([10.0] * 5)
    setting = _by_subject([10.0 + d for d in differences])
    c = statistics.paired_comparison(setting, reference)
    assert c.p_value == pytest.approx(p)
    assert c.difference == pytest.approx(np.mean(differences))
    assert c.n_subjects == 5


def test_bootstrap_ci_by_hand():
    # Two subjects, differences 0 and 1: resampled means are 0, 0.5, 1 with probabilities
    # 1/4, 1/2, 1/4, so the 95 % percentile interval is [0, 1]; the 50 % one is [0.5, 0.5].
    setting, reference = {"a": 1.0, "b": 3.0}, {"a": 1.0, "b": 2.0}
    c = statistics.paired_comparison(setting, reference, resamples=20_000)
    assert (c.ci_low, c.ci_high) == (0.0, 1.0)
    narrow = statistics.paired_comparison(setting, reference, confidence=0.4, resamples=20_000)
    assert (narrow.ci_low, narrow.ci_high) == (0.5, 0.5)
    constant = statistics.paired_comparison(_by_subject([2, 3, 4, 5, 6]),
                                            _by_subject([1, 2, 3, 4, 5]))
    assert (constant.ci_low, constant.difference, constant.ci_high) == (1.0, 1.0, 1.0)


def test_no_difference_is_p_one():
    same = _by_subject([0.1, 0.2, 0.3, 0.4, 0.5])
    assert statistics.paired_comparison(same, dict(same)).p_value == 1.0


@pytest.mark.parametrize("p, expected", [
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> monotone 0.06
    ([0.01, 0.04, 0.03, 0.005], [0.03, 0.06, 0.06, 0.02]),
    ([0.5, 0.6], [1.0, 1.0]),  # capped at 1
    ([0.2], [0.2]),
])
def test_holm_by_hand(p, expected):
    np.testing.assert_allclose(statistics.holm(p), expected)


def _page_exact_p(table):
    """Page's L and its exact p by enumerating every within-block ranking (by hand)."""
    n, k = table.shape
    weights = np.arange(1, k + 1)
    ranks = np.argsort(np.argsort(table, 1), 1) + 1
    observed = int((ranks * weights).sum())
    per_block = [int(np.dot(weights, perm)) for perm in itertools.permutations(weights)]
    null = [sum(combo) for combo in itertools.product(per_block, repeat=n)]
    return observed, float(np.mean(np.array(null) >= observed))


def test_page_trend_by_hand():
    # Rankings per subject: 1,2,3 / 1,3,2 / 2,1,3 -> rank sums 4, 6, 8 -> L = 4 + 12 + 24 = 40.
    table = np.array([[0.1, 0.2, 0.3], [0.1, 0.5, 0.4], [0.3, 0.2, 0.6]])
    trend = statistics.trend_test([dict(zip(("a", "b", "c"), column)) for column in table.T])
    l_value, p = _page_exact_p(table)
    assert trend.page_l == l_value == 40
    assert trend.page_p == pytest.approx(p)
    assert trend.means == pytest.approx(tuple(table.mean(0)))
    falling = statistics.trend_test([dict(zip(("a", "b", "c"), column))
                                     for column in table.T[::-1]], "decreasing")
    assert falling.page_l == 40 and falling.page_p == pytest.approx(p)


def test_spearman_exact_by_hand():
    # Strictly rising means over 5 settings: rho = 1; 2 of the 5! orders are as extreme.
    settings = [_by_subject(np.arange(5) + 10 * k) for k in range(5)]
    trend = statistics.trend_test(settings)
    assert trend.rho == pytest.approx(1.0) and trend.rho_p == pytest.approx(2 / 120)
    assert statistics.trend_test(settings[::-1]).rho == pytest.approx(-1.0)


def _table(sens_slope, dsc_gain, noise_seed=0):
    """Five settings on 8 subjects: sensitivity = base + slope*beta, DSC gains at beta 0.7."""
    rng = np.random.default_rng(noise_seed)
    subjects = [f"s{i}" for i in range(8)]
    base = rng.uniform(0.4, 0.6, 8)
    out = {}
    for alpha, beta in ((0.5, 0.5), (0.4, 0.6), (0.3, 0.7), (0.2, 0.8), (0.1, 0.9)):
        jitter = rng.normal(0, 0.002, 8)
        gain = dsc_gain * (1 + rng.uniform(0, 0.2, 8)) if beta == 0.7 else 0
        out[(alpha, beta)] = {
            "sensitivity": dict(zip(subjects, base + sens_slope * beta + jitter)),
            "specificity": dict(zip(subjects, 0.999 - 0.001 * sens_slope * beta + jitter / 100)),
            **{m: dict(zip(subjects, base + gain + jitter)) for m in ("dsc", "f2", "apr")}}
    return out


def test_paper_claims_hold_when_the_data_say_so():
    claims = statistics.paper_claims(_table(sens_slope=0.3, dsc_gain=0.05), resamples=500)
    assert len(claims) == 5
    assert all(": holds here" in c for c in claims), claims
    assert claims[0].startswith("Sensitivity rises with beta") and "Page's L" in claims[0]
    assert "on DSC" in claims[2] and "Holm-adjusted p" in claims[2] and "8 subjects" in claims[2]


def test_paper_claims_fail_when_the_data_say_so():
    claims = statistics.paper_claims(_table(sens_slope=-0.3, dsc_gain=-0.05), resamples=500)
    assert all(": does not hold here" in c for c in claims), claims


def test_a_gain_the_subjects_cannot_show_is_not_shown_rather_than_refuted():
    claims = statistics.paper_claims(_table(sens_slope=0.3, dsc_gain=0.0), resamples=500)
    assert all(": not shown here" in c for c in claims[2:]), claims[2:]


def test_paper_claims_name_missing_settings():
    table = _table(0.3, 0.05)
    del table[(0.3, 0.7)]
    claims = statistics.paper_claims(table, resamples=500)
    assert ": holds here" in claims[0]
    assert all("not tested" in c and "(0.3, 0.7)" in c for c in claims[2:])


def test_compare_settings_holm_family():
    result = statistics.compare_settings(_table(0.3, 0.05), resamples=500)
    assert len(result) == 4 * 3  # 4 settings against Dice, 3 metrics
    raw = [c.p_value for c in result.values()]
    np.testing.assert_allclose([c.p_holm for c in result.values()], statistics.holm(raw))


def test_format_mean_sd():
    assert statistics.format_mean_sd([0.1, 0.2, 0.3]) == "20.00 +- 10.00"
    assert statistics.format_mean_sd([0.25]) == "25.00 +- n/a"


@pytest.mark.parametrize("call, message", [
    (lambda: statistics.paired_comparison({"a": 1, "b": 2}, {"a": 1, "c": 2}), "['b', 'c']"),
    (lambda: statistics.paired_comparison({"a": 1}, {"a": 2}), "at least 2 subjects"),
    (lambda: statistics.paired_comparison({"a": 1, "b": 2}, {"a": 1, "b": 2}, confidence=95),
     "confidence=95"),
    (lambda: statistics.paired_comparison({"a": 1, "b": 2}, {"a": 1, "b": 2}, resamples=10),
     "resamples=10"),
    (lambda: statistics.holm([0.2, 1.5]), "p_values"),
    (lambda: statistics.holm([math.nan]), "p_values"),
    (lambda: statistics.trend_test([{"a": 1, "b": 2}] * 2), "3 to 8"),
    (lambda: statistics.trend_test([{"a": 1, "b": 2}] * 3, "up"), "direction='up'"),
    (lambda: statistics.subject_means([]), "records"),
    (lambda: statistics.compare_settings({(0.3, 0.7): {}}), "(0.5, 0.5)"),
])
def test_errors_name_the_argument(call, message):
    with pytest.raises(ValueError, match=None) as info:
        call()
    assert message in str(info.value)
