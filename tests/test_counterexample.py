"""The official multiple-testing counter-example event (stabkit/certify/_counterexample.py).

Reference: a brute-force evaluation written independently of the module — a Python loop over the outcomes with
``math.comb`` for the multinomial weights and ``scipy.stats.binomtest(...).proportion_ci(method="exact")`` for the
Clopper–Pearson intervals.
"""

import functools
import math

import numpy as np
import pytest
from scipy import stats

from stabkit.certify.stats import empirical_margin_event_probability

THESIS_P = (0.5, 0.05, 0.45)


def _outcomes(n, c):
    if c == 1:
        yield (n,)
        return
    for first in range(n + 1):
        for rest in _outcomes(n - first, c - 1):
            yield (first, *rest)


@functools.cache
def _cp(k, n, level):
    return stats.binomtest(k, n).proportion_ci(confidence_level=1 - level, method="exact")


def _brute_force(probs, n, alpha, correction, runner_up, space):
    c = len(probs)
    level = 2 * alpha / c if correction == "bonferroni" else alpha
    total = 0.0
    for x in _outcomes(n, c):
        ci = [_cp(k, n, level) for k in x]
        low0 = ci[0].low
        ups = [ci[j].high for j in range(1, c)]
        up_b = max(ups) if runner_up is None else ups[runner_up - 1]
        if space == "probability":
            empirical = min((x[0] - x[j]) / n for j in range(1, c))
            certified = low0 - up_b
        else:
            z = [stats.norm.ppf(min(max(k / n, 1e-12), 1 - 1e-12)) for k in x]
            empirical = min(z[0] - z[j] for j in range(1, c))
            lz = -math.inf if low0 <= 0 else stats.norm.ppf(low0)
            uz = math.inf if up_b >= 1 else stats.norm.ppf(up_b)
            certified = lz - uz
        if empirical > certified:
            weight = math.factorial(n)
            for k, p in zip(x, probs, strict=True):
                weight = weight / math.factorial(k) * p**k
            total += weight
    return total


@pytest.mark.parametrize(
    ("correction", "runner_up", "space", "thesis"),
    [
        ("bonferroni", None, "probability", 0.99966),
        ("none", 1, "probability", 0.78902),
        ("bonferroni", None, "phi_inverse", 1.0),
        ("none", 1, "phi_inverse", 0.92125),
    ],
)
def test_reproduces_the_four_thesis_numbers(correction, runner_up, space, thesis):
    v = empirical_margin_event_probability(
        THESIS_P, 10, alpha=0.05, correction=correction, runner_up=runner_up, space=space
    )
    assert round(v, 5) == thesis
    assert v == pytest.approx(_brute_force(THESIS_P, 10, 0.05, correction, runner_up, space), abs=1e-12)


def test_the_uncorrected_gap_comes_from_the_wrong_runner_up():
    # the true runner-up (class 2, p = 0.45) without correction is as good as Bonferroni; class 1 with it is not
    def f(correction, runner_up):
        return empirical_margin_event_probability(THESIS_P, 10, alpha=0.05, correction=correction, runner_up=runner_up)

    assert f("none", 2) > 0.999 and f("none", None) > 0.999
    assert f("bonferroni", 1) < 0.95 and f("none", 1) < f("bonferroni", 1)


@pytest.mark.parametrize("draw", range(12))
def test_matches_brute_force_on_random_problems(draw):
    rng = np.random.default_rng(draw)
    c = int(rng.integers(2, 5))
    n = int(rng.integers(1, 9))
    probs = rng.dirichlet(np.ones(c))
    alpha = float(rng.choice([0.001, 0.05, 0.2]))
    correction = ("bonferroni", "none")[draw % 2]
    runner_up = None if draw % 3 == 0 else int(rng.integers(1, c))
    for space in ("probability", "phi_inverse"):
        v = empirical_margin_event_probability(
            probs, n, alpha=alpha, correction=correction, runner_up=runner_up, space=space
        )
        assert 0.0 <= v <= 1.0
        assert v == pytest.approx(_brute_force(tuple(probs), n, alpha, correction, runner_up, space), abs=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(probs=(0.5, 0.6), n=10, alpha=0.05, correction="none"), "probability vector"),
        (dict(probs=(1.0,), n=10, alpha=0.05, correction="none"), "probability vector"),
        (dict(probs=THESIS_P, n=0, alpha=0.05, correction="none"), "n must be"),
        (dict(probs=THESIS_P, n=2.5, alpha=0.05, correction="none"), "n must be"),
        (dict(probs=THESIS_P, n=10, alpha=1.5, correction="none"), "alpha"),
        (dict(probs=THESIS_P, n=10, alpha=0.05, correction="holm"), "correction"),
        (dict(probs=THESIS_P, n=10, alpha=0.05, correction="none", space="logit"), "space"),
        (dict(probs=THESIS_P, n=10, alpha=0.05, correction="none", runner_up=0), "runner_up"),
        (dict(probs=THESIS_P, n=10, alpha=0.05, correction="none", runner_up=3), "runner_up"),
    ],
)
def test_bad_input_is_refused(kwargs, match):
    probs = kwargs.pop("probs")
    n = kwargs.pop("n")
    with pytest.raises(ValueError, match=match):
        empirical_margin_event_probability(probs, n, **kwargs)


@pytest.mark.parametrize("space", ["probability", "phi_inverse"])
def test_with_the_max_over_classes_the_event_ignores_alpha(space):
    # Clopper–Pearson intervals contain their point estimate, so the certified margin is below the empirical
    # one on every outcome but the tie "all draws on class 2" (probability 0.45^10) in probability space
    expected = 1 - 0.45**10 if space == "probability" else 1.0
    for alpha in (0.001, 0.05, 0.5):
        for correction in ("bonferroni", "none"):
            v = empirical_margin_event_probability(THESIS_P, 10, alpha=alpha, correction=correction, space=space)
            assert v == pytest.approx(expected, abs=1e-12)
