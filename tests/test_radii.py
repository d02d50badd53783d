"""Tests of stabkit.certify._radii: closed forms, the reference numbers of arXiv 2309.16883 and 2504.02412
(thesis arXiv:2510.25282, ch. 6 and 6b), and the worst-case (ramp) statements checked against random 1-D
Lipschitz functions smoothed by quadrature."""

import math

import numpy as np
import pytest
from scipy import integrate, special, stats

from stabkit.certify.stats import (
    local_lipschitz,
    radius_mono,
    radius_mono_lip,
    radius_multi,
    radius_multi_lip,
    ramp_offset,
    smoothed_lipschitz_bound,
)

# ------------------------------------------------------------------------------------------------------------
# Cohen


def test_cohen_radii_closed_forms():
    p = np.array([0.3, 0.5, 0.75, 0.999])
    np.testing.assert_allclose(radius_mono(p, sigma=0.5), 0.5 * stats.norm.ppf(p), rtol=1e-14)
    np.testing.assert_allclose(radius_multi(p, 1 - p, sigma=0.5), radius_mono(p, sigma=0.5), atol=1e-14)
    assert radius_multi(0.6, 0.3, sigma=1.0) == pytest.approx(0.5 * (stats.norm.ppf(0.6) - stats.norm.ppf(0.3)))
    assert radius_mono(0.5, sigma=1.0) == 0.0 and radius_mono(1.0, sigma=1.0) == math.inf


def test_cohen_radius_rejects_bad_input():
    with pytest.raises(ValueError, match="sigma"):
        radius_mono(0.9, sigma=0.0)
    with pytest.raises(ValueError, match="probability"):
        radius_mono(1.2, sigma=0.5)
    with pytest.raises(ValueError, match="probability"):
        radius_multi(0.7, float("nan"), sigma=0.5)


# ------------------------------------------------------------------------------------------------------------
# Lipschitz-aware radii


@pytest.mark.parametrize(
    "sigma,lip,p,expected,cohen",
    [
        (0.25, 1.0, 0.6, 0.10468, 0.06334),
        (0.25, 1.0, 0.9, 0.44909, 0.32039),
        (0.25, 1.0, 0.99, 0.71367, 0.58159),
        (0.5, 1.0, 0.9, 0.7327, None),
        (1.0, 1.0, 0.9, 1.3330, None),
    ],
)
def test_radius_mono_lip_thesis_values(sigma, lip, p, expected, cohen):
    # [C] arXiv 2504.02412
    assert radius_mono_lip(p, sigma=sigma, lipschitz=lip) == pytest.approx(expected, abs=5e-5)
    if cohen is not None:
        assert radius_mono(p, sigma=sigma) == pytest.approx(cohen, abs=5e-6)


def _ramp_probability_by_quadrature(s0, sigma, lip):
    """E clip(L (t - s0), 0, 1), t ~ N(0, sigma^2), by quadrature (independent of the closed form)."""

    def integrand(t):
        return min(max(lip * (t - s0), 0.0), 1.0) * stats.norm.pdf(t, scale=sigma)

    lo, hi = s0 - 12 * sigma, s0 + 1 / lip + 12 * sigma
    value, _ = integrate.quad(integrand, lo, hi, points=[s0, s0 + 1 / lip], limit=200, epsabs=1e-13)
    return value + stats.norm.sf(hi / sigma)


@pytest.mark.parametrize("p", [0.02, 0.3, 0.5, 0.8, 0.9999])
@pytest.mark.parametrize("sigma,lip", [(0.25, 1.0), (1.0, 0.3), (0.5, 8.0)])
def test_ramp_offset_solves_the_defining_equation(p, sigma, lip):
    s0 = ramp_offset(p, sigma=sigma, lipschitz=lip)
    assert _ramp_probability_by_quadrature(s0, sigma, lip) == pytest.approx(p, abs=1e-9)


def test_lipschitz_radii_tend_to_cohen():
    p = np.array([0.55, 0.8, 0.99])
    cohen = radius_mono(p, sigma=0.5)
    np.testing.assert_array_equal(radius_mono_lip(p, sigma=0.5, lipschitz=math.inf), cohen)
    for method in ("local", "integrated"):
        np.testing.assert_allclose(radius_mono_lip(p, sigma=0.5, lipschitz=1e4, method=method), cohen, rtol=1e-4)
    errors = [abs(radius_mono_lip(0.8, sigma=0.5, lipschitz=lip) - radius_mono(0.8, sigma=0.5)) for lip in (1, 4, 16)]
    assert errors[0] > errors[1] > errors[2]


def test_lipschitz_radii_order_and_monotonicity():
    p = np.linspace(0.51, 0.999, 60)
    for sigma, lip in [(0.25, 1.0), (0.5, 0.5), (1.0, 3.0)]:
        cohen = radius_mono(p, sigma=sigma)
        local = radius_mono_lip(p, sigma=sigma, lipschitz=lip)
        integrated = radius_mono_lip(p, sigma=sigma, lipschitz=lip, method="integrated")
        assert np.all(local >= cohen - 1e-12) and np.all(integrated >= local - 1e-12)
        assert np.all(np.diff(local) > 0) and np.all(np.diff(integrated) > 0)


def test_local_lipschitz_increases_away_from_one_half():
    """The "local" radius freezes L_loc at p_a; it is valid because L_loc only grows with |p - 1/2|, so the
    constant at p_a bounds every constant met on the way down to 1/2."""
    p = np.linspace(0.5, 0.99999, 500)
    for sigma in (0.12, 0.25, 0.5, 1.0):
        for lip in (0.3, 1.0, 4.0, 20.0):
            values = local_lipschitz(p, sigma=sigma, lipschitz=lip)
            assert np.all(np.diff(values) >= -1e-10)
            assert np.all(values <= 1 / sigma + 1e-12)
            np.testing.assert_allclose(local_lipschitz(1 - p[1:], sigma=sigma, lipschitz=lip), values[1:], rtol=1e-7)


def test_radius_multi_lip_reduces_to_mono_and_cohen():
    p_a = np.array([0.6, 0.85, 0.97])
    for method in ("local", "integrated"):
        np.testing.assert_allclose(
            radius_multi_lip(p_a, 1 - p_a, sigma=0.25, lipschitz=2.0, method=method),
            radius_mono_lip(p_a, sigma=0.25, lipschitz=2.0, method=method),
            rtol=1e-9,
        )
    np.testing.assert_allclose(
        radius_multi_lip(p_a, [0.2, 0.1, 0.01], sigma=0.25, lipschitz=math.inf),
        radius_multi(p_a, [0.2, 0.1, 0.01], sigma=0.25),
    )
    assert radius_multi_lip(0.6, 0.3, sigma=0.5, lipschitz=1.0) > radius_multi(0.6, 0.3, sigma=0.5)


def _random_lipschitz_function(rng, t, lip, output_range=1.0):
    """A random L-Lipschitz function on the grid t in [0, r]: random slopes in [-L, L], clipped."""
    knots = np.sort(rng.uniform(t[0] / 4, t[-1] / 4, size=8))
    slopes = rng.uniform(-lip, lip, size=9) * (rng.random(9) < 0.8)
    g = slopes[np.searchsorted(knots, t)]
    f = np.cumsum(g) * (t[1] - t[0]) + rng.uniform(-0.5, 1.5) * output_range
    return np.clip(f, 0.0, output_range)


def _smooth_on_grid(f, t, sigma):
    """Gaussian smoothing on a uniform grid: (f * N(0, sigma^2))(t), f constant beyond the grid."""
    dt = t[1] - t[0]
    half = int(math.ceil(8 * sigma / dt))
    kernel = stats.norm.pdf(np.arange(-half, half + 1) * dt, scale=sigma) * dt
    padded = np.concatenate([np.full(half, f[0]), f, np.full(half, f[-1])])
    return np.convolve(padded, kernel / kernel.sum(), mode="valid")


def test_lipschitz_radius_is_valid_for_random_lipschitz_functions():
    """For random 1-D L-Lipschitz scores in [0, 1]: wherever the smoothed score p(x) exceeds 1/2, the distance
    to the nearest point where it drops to 1/2 is at least the Lipschitz-aware radius of p(x)."""
    rng = np.random.default_rng(0)
    t = np.linspace(-8.0, 8.0, 8001)
    checked = 0
    for _ in range(60):
        sigma, lip = float(rng.choice([0.25, 0.5, 1.0])), float(rng.choice([0.5, 1.0, 3.0]))
        p = _smooth_on_grid(_random_lipschitz_function(rng, t, lip), t, sigma)
        interior = np.abs(t) < 4.0
        below = t[(p <= 0.5) & interior]
        if below.size == 0:
            continue
        idx = np.flatnonzero((p > 0.52) & (p < 0.999) & interior)[::40]
        for i in idx:
            distance = np.min(np.abs(below - t[i]))
            radius = radius_mono_lip(p[i], sigma=sigma, lipschitz=lip, method="integrated")
            assert radius <= distance + 2 * (t[1] - t[0]), (sigma, lip, p[i], radius, distance)
            checked += 1
    assert checked > 100


def test_lipschitz_aware_gradient_bound_over_random_functions():
    """The ramp is the worst case at fixed smoothed value p: |d/dx E f(x + t)| <= L (Phi((s0 + 1/L)/sigma) -
    Phi(s0/sigma)) with s0 = ramp_offset(p), and the ramp attains it."""
    rng = np.random.default_rng(1)
    t = np.linspace(-12.0, 12.0, 24001)
    dt = t[1] - t[0]
    for _ in range(150):
        sigma, lip = float(rng.choice([0.25, 0.5, 1.0])), float(rng.choice([0.5, 1.0, 3.0]))
        f = _random_lipschitz_function(rng, t, lip)
        weight = stats.norm.pdf(t, scale=sigma)
        p = float(np.sum(f * weight) * dt)
        if not 1e-6 < p < 1 - 1e-6:
            continue
        derivative = float(np.sum(np.gradient(f, dt) * weight) * dt)
        s0 = ramp_offset(p, sigma=sigma, lipschitz=lip)
        bound = lip * (special.ndtr((s0 + 1 / lip) / sigma) - special.ndtr(s0 / sigma))
        assert abs(derivative) <= bound + 1e-6
    # the ramp itself attains it
    s0 = ramp_offset(0.8, sigma=0.5, lipschitz=2.0)
    ramp = np.clip(2.0 * (t - s0), 0.0, 1.0)
    derivative = float(np.sum(np.gradient(ramp, dt) * stats.norm.pdf(t, scale=0.5)) * dt)
    bound = 2.0 * (special.ndtr((s0 + 0.5) / 0.5) - special.ndtr(s0 / 0.5))
    assert derivative == pytest.approx(bound, rel=1e-4)


def test_lipschitz_radii_broadcast_over_points_and_constants():
    # one Lipschitz constant per test point (e.g. per simplex map and temperature), inf mixed in
    p_a = np.array([[0.55, 0.8, 0.999], [0.6, 0.9, 0.2]])
    p_b = np.array([[0.3, 0.1, 0.0005], [0.35, 0.05, 0.7]])
    lip = np.array([[0.5, 2.0, math.inf], [1.0, 30.0, 4.0]])
    for method in ("local", "integrated"):
        mono = radius_mono_lip(p_a, sigma=0.5, lipschitz=lip, method=method)
        multi = radius_multi_lip(p_a, p_b, sigma=0.5, lipschitz=lip, method=method)
        for i, j in np.ndindex(p_a.shape):
            one = radius_mono_lip(float(p_a[i, j]), sigma=0.5, lipschitz=float(lip[i, j]), method=method)
            two = radius_multi_lip(
                float(p_a[i, j]), float(p_b[i, j]), sigma=0.5, lipschitz=float(lip[i, j]), method=method
            )
            assert isinstance(one, float) and mono[i, j] == one and multi[i, j] == two
    assert radius_mono_lip(0.999, sigma=0.5, lipschitz=math.inf) == radius_mono(0.999, sigma=0.5)
    assert radius_mono_lip(0.2, sigma=0.5, lipschitz=1.0) < 0  # below 1/2: abstain


def test_lipschitz_radii_reject_bad_input():
    with pytest.raises(ValueError, match="lipschitz"):
        radius_mono_lip(0.9, sigma=0.5, lipschitz=-1.0)
    with pytest.raises(ValueError, match="method"):
        radius_mono_lip(0.9, sigma=0.5, lipschitz=1.0, method="exact")
    with pytest.raises(ValueError, match="strictly inside"):
        ramp_offset(1.0, sigma=0.5, lipschitz=1.0)


# ------------------------------------------------------------------------------------------------------------
# smoothed Lipschitz constant


def test_smoothed_lipschitz_thesis_values():
    # arXiv 2309.16883: L = 1, r = 1, sigma = 0.5
    assert smoothed_lipschitz_bound(1.0, output_range=1.0, sigma=0.5) == pytest.approx(0.68269, abs=5e-6)
    assert smoothed_lipschitz_bound(1.0, output_range=1.0, sigma=0.5, constant="official") == pytest.approx(
        0.95450, abs=5e-6
    )


@pytest.mark.parametrize("lip,r,sigma", [(1.0, 1.0, 0.5), (3.0, 1.0, 0.25), (0.5, 2.0, 1.0), (10.0, 1.0, 0.1)])
def test_smoothed_lipschitz_tight_constant_is_attained_by_the_centred_ramp(lip, r, sigma):
    # derivative at 0 of the smoothing of clip(r/2 + L x, 0, r) = L * P(|t| <= r / (2L)), by quadrature
    half = r / (2 * lip)
    value, _ = integrate.quad(lambda t: lip * stats.norm.pdf(t, scale=sigma), -half, half, epsabs=1e-13)
    assert smoothed_lipschitz_bound(lip, output_range=r, sigma=sigma) == pytest.approx(value, rel=1e-10)


def test_smoothed_lipschitz_bound_holds_for_random_functions():
    rng = np.random.default_rng(2)
    t = np.linspace(-10.0, 10.0, 20001)
    dt = t[1] - t[0]
    largest_ratio = 0.0
    for _ in range(200):
        sigma, lip, r = (float(rng.choice(v)) for v in ([0.25, 0.5, 1.0], [0.5, 1.0, 3.0], [1.0, 2.0]))
        f = _random_lipschitz_function(rng, t, lip, output_range=r)
        derivative = abs(float(np.sum(np.gradient(f, dt) * stats.norm.pdf(t, scale=sigma)) * dt))
        tight = smoothed_lipschitz_bound(lip, output_range=r, sigma=sigma)
        assert derivative <= tight + 1e-6
        largest_ratio = max(largest_ratio, derivative / tight)
    assert largest_ratio > 0.5  # the random functions come reasonably close: the check has teeth


def test_smoothed_lipschitz_limits_and_order():
    lip = np.array([0.1, 1.0, 10.0, 1e6, np.inf])
    tight = smoothed_lipschitz_bound(lip, output_range=1.0, sigma=0.5)
    official = smoothed_lipschitz_bound(lip, output_range=1.0, sigma=0.5, constant="official")
    assert np.all(tight <= official) and np.all(tight <= lip)
    assert tight[-1] == pytest.approx(1 / (0.5 * math.sqrt(2 * math.pi)))  # Cohen: phi(0) / sigma
    assert official[-1] == pytest.approx(math.sqrt(2 / math.pi) / 0.5)  # Salman et al.'s constant
    assert tight[-2] == pytest.approx(tight[-1], rel=1e-9)
    # official = tight for twice the range
    np.testing.assert_allclose(official, smoothed_lipschitz_bound(lip, output_range=2.0, sigma=0.5), rtol=1e-12)


def test_smoothed_lipschitz_rejects_bad_input():
    with pytest.raises(ValueError, match="constant"):
        smoothed_lipschitz_bound(1.0, sigma=0.5, constant="loose")
    with pytest.raises(ValueError, match="lipschitz"):
        smoothed_lipschitz_bound(0.0, sigma=0.5)
    with pytest.raises(ValueError, match="output_range"):
        smoothed_lipschitz_bound(1.0, sigma=0.5, output_range=-1.0)
