"""Tests of stabkit.certify._lvm_maps: the per-map statistics and radii of LVM-RS, before any selection."""

import numpy as np
import pytest
import torch
from scipy.stats import norm

from stabkit.certify.smoothing import Smooth, lvm_certify, lvm_map_radii


def _log(seed, *, classes=3, points=6, n=400, sigma=0.5):
    g = torch.Generator().manual_seed(seed)
    lin = torch.nn.Linear(4, classes).double()
    with torch.no_grad():
        lin.weight.copy_(torch.randn(classes, 4, generator=g, dtype=torch.float64))
        lin.bias.copy_(torch.randn(classes, generator=g, dtype=torch.float64))
    x = torch.randn(points, 4, generator=g, dtype=torch.float64)
    temps = np.array([0.3, 1.0, 5.0, 1e7])
    return Smooth(lin, classes, sigma).sample(x, n0=50, n=n, temperatures=temps, generator=g)


def _reference(log, alpha):
    """Direct formulas, point by point and map by map: Maurer–Pontil shift, top = largest lower bound, R_multi."""
    c = log.num_classes
    log_term = np.log(2 / (alpha / c))
    b, k, t, _ = log.mean_estimation.shape
    radius = np.zeros((b, k, t))
    for i, j, m in np.ndindex(b, k, t):
        mean, std = log.mean_estimation[i, j, m], np.sqrt(np.maximum(log.var_estimation[i, j, m], 0))
        shift = std * np.sqrt(2 * log_term / log.n) + 7 * log_term / (3 * (log.n - 1))
        top = int(np.argmax(mean - shift))
        p_a = mean[top] - shift[top]
        p_b = max(mean[q] + shift[q] for q in range(c) if q != top)
        if 0 < p_a and 0 < p_b < 1:
            radius[i, j, m] = max(0.0, log.sigma / 2 * (norm.ppf(p_a) - norm.ppf(p_b)))
    return radius


@pytest.mark.parametrize("seed", range(4))
def test_map_radii_match_the_direct_formulas(seed):
    log = _log(seed)
    res = lvm_map_radii(log, alpha=0.01)
    assert res.radius.shape == log.mean_estimation.shape[:3]
    np.testing.assert_allclose(res.radius, _reference(log, 0.01), atol=1e-12)
    assert (res.p_a <= res.mean_top + 1e-15).all() and (res.radius >= 0).all()


@pytest.mark.parametrize("seed", range(4))
def test_published_lvm_certificate_is_at_least_every_single_map(seed):
    # the published rule maximises over candidates that include every soft map's R_multi
    log = _log(seed, n=1000)
    best = lvm_map_radii(log, alpha=0.001).radius.reshape(log.n_points, -1).max(axis=1)
    cert = lvm_certify(log, alpha=0.001)
    assert (cert.radius.numpy() >= best - 1e-12).all()


def test_rejects_a_log_without_lvm_statistics():
    g = torch.Generator().manual_seed(0)
    log = Smooth(torch.nn.Linear(2, 3).double(), 3, 0.5).sample(
        torch.zeros(2, 2, dtype=torch.float64), n0=10, n=100, generator=g
    )
    with pytest.raises(ValueError, match="no LVM statistics"):
        lvm_map_radii(log)
    with pytest.raises(ValueError):
        lvm_map_radii(_log(0), alpha=1.5)
