"""Brute-force checks of the certificates labelled "ours" in chapter 6b (thesis arXiv:2510.25282): the integrated
Lipschitz-aware radius (Note [proof of the Lipschitz-aware radii] in ``stabkit/certify/_radii.py``) and the
``max_upper`` bounds (Note [max of upper bounds] in ``stabkit/certify/_intervals.py``).

Radii: random L-Lipschitz, [0, 1]-valued piecewise-linear base scores in 1-D (and products / ridges of them in 2-D)
whose Gaussian smoothing is computed in closed form with erf (no sampling, no quadrature), so the true robust
region of the smoothed classifier is known to float64 accuracy; a certified radius must never reach outside it.
Teeth: the worst-case ramp sits exactly on the integrated radius, and 1 % more is refuted.

max_upper: the probability that the bounds hold, by an independent enumeration of every selection and estimation
outcome (scipy's multinomial pmf and beta quantiles), is at least 1 - alpha for random and adversarial probability
vectors.
"""

import itertools
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import special, stats

from stabkit.certify.stats import class_bounds, radius_mono, radius_mono_lip, radius_multi, radius_multi_lip

PROPS = settings(
    max_examples=40, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)
SIGMAS = st.sampled_from([0.12, 0.25, 0.5, 1.0])
LIPS = st.sampled_from([0.3, 0.5, 1.0, 2.0, 4.0, 10.0])
TOL = 1e-9  # float64 error of the closed-form smoothing (sums of a few Phi, phi terms)


def _inside(r: float) -> float:
    """The certified radius less its float64 error: s0(p) is solved from 1 - p, which near p = 1 carries a relative
    error of ~1e-16 / (1 - p); 1e-7 relative covers it (the teeth test refutes 1 % more)."""
    return r * (1 - 1e-7) - 1e-9


# ------------------------------------------------------------------------------------------------------------
# closed-form Gaussian smoothing of piecewise-linear functions


def _smooth_pwl(knots: np.ndarray, values: np.ndarray, x: np.ndarray, sigma: float) -> np.ndarray:
    """E f(x + t), t ~ N(0, sigma^2), for f linear between ``knots`` (values ``values``), constant outside.

    On a segment [a, b] with f(y) = v_a + beta (y - a): ∫ f(y) phi_sigma(y - x) dy = (v_a + beta (x - a))
    (Phi(B) - Phi(A)) + beta sigma (phi(A) - phi(B)), A = (a - x)/sigma, B = (b - x)/sigma."""
    x = np.asarray(x, dtype=np.float64)[..., None]  # (..., 1)
    z = (knots - x) / sigma  # (..., K)
    cdf, pdf = special.ndtr(z), np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    beta = np.diff(values) / np.diff(knots)  # (K - 1,)
    seg = (values[:-1] + beta * (x - knots[:-1])) * (cdf[..., 1:] - cdf[..., :-1])
    seg = seg + beta * sigma * (pdf[..., :-1] - pdf[..., 1:])
    return values[0] * cdf[..., 0] + seg.sum(axis=-1) + values[-1] * (1.0 - cdf[..., -1])


@st.composite
def lipschitz_pwl(draw, lip: float, span: float = 3.0):
    """An L-Lipschitz [0, 1]-valued piecewise-linear function: knots and values. Adversarial members: the
    steepest ramp (slope exactly ±L, rising through the whole range), plateaus, and random walks clipped to
    [0, 1] (clipping the knot values keeps |slope| <= L and the range)."""
    kind = draw(st.sampled_from(["ramp", "walk", "walk", "bump"]))
    if kind == "ramp":
        start = draw(st.floats(-span, span))
        sign = draw(st.sampled_from([1.0, -1.0]))
        knots = np.array([start, start + 1.0 / lip])
        values = np.array([0.0, 1.0]) if sign > 0 else np.array([1.0, 0.0])
        return knots, values
    k = draw(st.integers(3, 9))
    gaps = np.array(draw(st.lists(st.floats(0.02, 1.5), min_size=k - 1, max_size=k - 1)))
    knots = draw(st.floats(-span, 0.0)) + np.concatenate([[0.0], np.cumsum(gaps)])
    if kind == "bump":  # up at full slope, plateau, down at full slope
        values = np.clip(np.minimum(lip * (knots - knots[0]), lip * (knots[-1] - knots)), 0.0, 1.0)
        return knots, values
    fractions = np.array(draw(st.lists(st.sampled_from([-1.0, -0.7, 0.0, 0.5, 1.0]), min_size=k - 1, max_size=k - 1)))
    values = np.concatenate([[draw(st.floats(0.0, 1.0))], np.zeros(k - 1)])
    for i in range(1, k):  # clip after each step: the function stays L-Lipschitz and in [0, 1]
        values[i] = min(max(values[i - 1] + fractions[i - 1] * lip * gaps[i - 1], 0.0), 1.0)
    return knots, values


def _min_on_interval(fun, lo: float, hi: float, n: int = 2001) -> float:
    """Minimum of a smooth 1-D function on [lo, hi]: dense grid, then golden-section refinement near the best."""
    grid = np.linspace(lo, hi, n)
    vals = fun(grid)
    i = int(np.argmin(vals))
    a, b = grid[max(i - 1, 0)], grid[min(i + 1, n - 1)]
    phi = (math.sqrt(5) - 1) / 2
    for _ in range(60):
        c, d = b - phi * (b - a), a + phi * (b - a)
        if fun(np.array([c]))[0] < fun(np.array([d]))[0]:
            b = d
        else:
            a = c
    return float(min(vals.min(), fun(np.array([0.5 * (a + b)]))[0]))


# ------------------------------------------------------------------------------------------------------------
# the Lipschitz-aware radii never exceed the true robust radius


@PROPS
@given(st.data(), SIGMAS, LIPS, st.floats(-1.0, 1.0))
def test_mono_radius_never_exceeds_the_true_radius_1d(data, sigma, lip, x0):
    knots, values = data.draw(lipschitz_pwl(lip))
    p0 = float(_smooth_pwl(knots, values, x0, sigma))
    if not 0.5 + 1e-6 < p0 < 1 - 1e-12:  # inside float64 resolution of p
        return
    for method in ("local", "integrated"):
        r = float(radius_mono_lip(p0, sigma=sigma, lipschitz=lip, method=method))
        assert r >= radius_mono(p0, sigma=sigma) - 1e-12  # never below Cohen's (the paper's claim)
        worst = _min_on_interval(lambda x: _smooth_pwl(knots, values, x, sigma), x0 - _inside(r), x0 + _inside(r))
        assert worst >= 0.5 - TOL, (method, sigma, lip, p0, r, worst)


@PROPS
@given(st.data(), SIGMAS, LIPS, st.floats(-1.0, 1.0), st.integers(3, 4))
def test_multi_radius_never_exceeds_the_true_radius_1d(data, sigma, lip, x0, n_classes):
    # C independent L-Lipschitz [0, 1]-valued class scores (the theorem needs no sum-to-one)
    scores = [data.draw(lipschitz_pwl(lip)) for _ in range(n_classes)]

    def smoothed(x):
        return np.stack([_smooth_pwl(k, v, x, sigma) for k, v in scores], axis=-1)  # (..., C)

    p = smoothed(np.array(x0))
    top = int(np.argmax(p))
    p_a, p_b = float(p[top]), float(np.max(np.delete(p, top)))
    if not (p_a > p_b + 1e-6 and p_b > 1e-12 and p_a < 1 - 1e-12):  # inside float64 resolution of p
        return
    for method in ("local", "integrated"):
        r = float(radius_multi_lip(p_a, p_b, sigma=sigma, lipschitz=lip, method=method))
        if method == "integrated" or p_a >= 0.5 >= p_b:
            # never below Cohen's; the paper's local formula only for p_a >= 1/2 >= p_b (always the case when the
            # scores sum to one): on the other side of 1/2 a term Phi^{-1}(p)/L_loc(p) moves the wrong way
            # (L_loc <= 1/sigma), a valid but smaller radius than Cohen's
            assert r >= radius_multi(p_a, p_b, sigma=sigma) - 1e-12

        def margin(x):
            q = smoothed(x)
            return q[..., top] - np.max(np.delete(q, top, axis=-1), axis=-1)

        assert _min_on_interval(margin, x0 - _inside(r), x0 + _inside(r)) >= -TOL, (method, sigma, lip, p_a, p_b, r)


@PROPS
@given(st.data(), SIGMAS, LIPS, LIPS, st.floats(0, 2 * math.pi))
def test_mono_radius_never_exceeds_the_true_radius_2d(data, sigma, lip1, lip2, angle):
    """2-D scores f(x) = g(x1) h(x2) (|grad f| <= sqrt(L1² + L2²), smoothed in closed form as a product) and a
    ridge m(<x, u>) at a random angle; the disk of the certified radius is swept on a polar grid."""
    g, h, m = data.draw(lipschitz_pwl(lip1)), data.draw(lipschitz_pwl(lip2)), data.draw(lipschitz_pwl(lip1))
    u = np.array([math.cos(angle), math.sin(angle)])
    x0 = np.array(data.draw(st.tuples(st.floats(-1, 1), st.floats(-1, 1))))
    cases = [
        (math.hypot(lip1, lip2), lambda x: _smooth_pwl(*g, x[..., 0], sigma) * _smooth_pwl(*h, x[..., 1], sigma)),
        (lip1, lambda x: _smooth_pwl(*m, x @ u, sigma)),  # smoothing a ridge is smoothing its 1-D profile
    ]
    rho, theta = np.linspace(0, 1, 201), np.linspace(0, 2 * math.pi, 721)
    disk = np.stack([np.outer(rho, np.cos(theta)), np.outer(rho, np.sin(theta))], axis=-1)  # (201, 721, 2)
    for lip, p_fun in cases:
        p0 = float(p_fun(x0))
        if not 0.5 + 1e-6 < p0 < 1 - 1e-12:
            continue
        r = float(radius_mono_lip(p0, sigma=sigma, lipschitz=lip, method="integrated"))
        assert p_fun(x0 + _inside(r) * disk).min() >= 0.5 - TOL, (lip, sigma, p0, r)


@pytest.mark.parametrize("sigma,lip,p", [(0.25, 1.0, 0.9), (0.5, 0.5, 0.999), (1.0, 3.0, 0.7), (0.12, 10.0, 0.99)])
def test_integrated_radius_is_attained_by_the_ramp(sigma, lip, p):
    """Teeth: the worst-case ramp reaches 1/2 exactly at the integrated radius, and 1 % further goes below."""
    s0 = -0.5 / lip
    # the ramp whose smoothing at 0 is p: solve on the closed form (bisection in its offset)
    lo, hi = -20.0, 20.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        above = _smooth_pwl(np.array([mid, mid + 1 / lip]), np.array([0.0, 1.0]), 0.0, sigma) > p
        lo, hi = (mid, hi) if above else (lo, mid)
    knots, values = np.array([lo, lo + 1 / lip]), np.array([0.0, 1.0])
    r = float(radius_mono_lip(p, sigma=sigma, lipschitz=lip, method="integrated"))
    assert float(_smooth_pwl(knots, values, -r, sigma)) == pytest.approx(0.5, abs=1e-9)
    assert float(_smooth_pwl(knots, values, -1.01 * r, sigma)) < 0.5
    assert lo == pytest.approx(s0 - r, abs=1e-9)  # the ramp's offset moves by the radius
    # the paper's local radius is strictly inside, Cohen's inside that
    assert radius_mono(p, sigma=sigma) < radius_mono_lip(p, sigma=sigma, lipschitz=lip) < r


@PROPS
@given(st.floats(0.5001, 0.99999), st.floats(0.0, 1.0), SIGMAS, st.floats(0.05, 50.0))
def test_radius_order_cohen_local_integrated(p_a, frac, sigma, lip):
    """Cohen <= local (the paper's) <= integrated (ours), mono and multi, for any p_b <= 1 - p_a."""
    p_b = max(frac * (1 - p_a), 1e-300)  # below, the library raises p_b to 1e-300 (float64 tails underflow)
    for one, two, cohen in (
        (
            radius_mono_lip(p_a, sigma=sigma, lipschitz=lip),
            radius_mono_lip(p_a, sigma=sigma, lipschitz=lip, method="integrated"),
            radius_mono(p_a, sigma=sigma),
        ),
        (
            radius_multi_lip(p_a, p_b, sigma=sigma, lipschitz=lip),
            radius_multi_lip(p_a, p_b, sigma=sigma, lipschitz=lip, method="integrated"),
            radius_multi(p_a, p_b, sigma=sigma),
        ),
    ):
        assert cohen - 1e-9 <= one <= two + 1e-9 * max(1.0, abs(two))


# ------------------------------------------------------------------------------------------------------------
# max_upper: exact validity by an independent enumeration


def _cp(k: np.ndarray, n: int, side_alpha: float, side: str) -> np.ndarray:
    """One-sided Clopper–Pearson from scipy's beta quantiles."""
    k = np.asarray(k, dtype=np.float64)
    if side == "lower":
        return np.where(k > 0, stats.beta.ppf(side_alpha, np.maximum(k, 1e-300), n - k + 1), 0.0)
    return np.where(k < n, stats.beta.ppf(1 - side_alpha, k + 1, np.maximum(n - k, 1e-300)), 1.0)


def _outcomes(n: int, c: int) -> np.ndarray:
    return np.array([o for o in itertools.product(range(n + 1), repeat=c) if sum(o) == n])


def _max_upper_validity(probs: np.ndarray, n0: int, n: int, alpha: float) -> float:
    """P(p_a <= p_top and p_b >= max_{c != top} p_c), top chosen on n0 separate samples (argmax, ties to the
    lower index), bounds at alpha / 2 from n estimation samples; every outcome of both draws enumerated."""
    c = len(probs)
    sel, est = _outcomes(n0, c), _outcomes(n, c)
    w_sel, w_est = stats.multinomial.pmf(sel, n0, probs), stats.multinomial.pmf(est, n, probs)
    low, high = _cp(est, n, alpha / 2, "lower"), _cp(est, n, alpha / 2, "upper")  # (M, C)
    total = 0.0
    for top in range(c):
        weight = w_sel[np.argmax(sel, axis=1) == top].sum()
        if weight == 0:
            continue
        others = [j for j in range(c) if j != top]
        ok = (low[:, top] <= probs[top]) & (high[:, others].max(axis=1) >= probs[others].max())
        total += weight * float(w_est[ok].sum())
    return total


@st.composite
def probability_vectors(draw):
    """Random and adversarial class probabilities: ties, near ties, zeros, one dominant class."""
    c = draw(st.integers(3, 4))
    kind = draw(st.sampled_from(["dirichlet", "tie", "zeros", "dominant"]))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    if kind == "dirichlet":
        p = rng.dirichlet(np.full(c, draw(st.sampled_from([0.3, 1.0, 5.0]))))
    elif kind == "tie":
        p = np.concatenate([[0.4, 0.4], np.full(c - 2, 0.2 / (c - 2))])
    elif kind == "zeros":
        p = np.concatenate([rng.dirichlet(np.ones(2)), np.zeros(c - 2)])
    else:
        p = np.concatenate([[0.9], np.full(c - 1, 0.1 / (c - 1))])
    return np.clip(p, 0, None) / np.clip(p, 0, None).sum()


@settings(max_examples=30, deadline=None, derandomize=True, database=None)
@given(probability_vectors(), st.integers(1, 6), st.integers(4, 12), st.sampled_from([0.05, 0.1, 0.3]))
def test_max_upper_bounds_hold_with_probability_one_minus_alpha(probs, n0, n, alpha):
    exact = _max_upper_validity(probs, n0, n, alpha)
    assert exact >= 1 - alpha - 1e-12, (probs, n0, n, alpha, exact)


def test_max_upper_reference_agrees_with_the_library_and_has_teeth():
    """The enumeration above agrees with class_bounds on every outcome; at alpha (instead of alpha / 2) each, the
    same two tests fall below 1 - alpha on a close runner-up: the halving is needed."""
    probs, n0, n, alpha = np.array([0.5, 0.44, 0.06]), 4, 40, 0.1
    est = _outcomes(n, 3)
    for top in range(3):
        sel = np.zeros_like(est)
        sel[:, top] = 1
        b = class_bounds(sel, est, alpha=alpha, method="max_upper")
        others = [j for j in range(3) if j != top]
        np.testing.assert_allclose(b.p_a, _cp(est[:, top], n, alpha / 2, "lower"), atol=1e-10)
        np.testing.assert_allclose(b.p_b, _cp(est[:, others], n, alpha / 2, "upper").max(axis=1), atol=1e-10)
    assert _max_upper_validity(probs, n0, n, 2 * alpha) < 1 - alpha  # 'uncorrected': alpha per test


def test_lipschitz_radii_stay_finite_for_tiny_runner_up_bounds():
    """Regression: for p_b below ~1e-16 the ramp's slope Phi(b) - Phi(a) cancelled to 0 in float64, so the local
    constant was 0 and the radius infinite; the worst-case distance is finite (about sigma sqrt(2 log(1/p_b)))."""
    for p_b in (1e-10, 1e-20, 1e-60, 1e-200):
        local = radius_multi_lip(0.75, p_b, sigma=0.12, lipschitz=1.0)
        integrated = radius_multi_lip(0.75, p_b, sigma=0.12, lipschitz=1.0, method="integrated")
        cohen = radius_multi(0.75, p_b, sigma=0.12)
        assert math.isfinite(local) and cohen <= local <= integrated < cohen + 1.0
