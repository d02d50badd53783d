"""Per-map statistics of LVM-RS: what each simplex map of a sampling log would certify on its own.

:func:`lvm_certify` keeps, per point, the best of many maps. To *see* the Lipschitz–variance–margin trade-off one
needs every map's numbers before that choice: the Monte-Carlo spread and the margin of the smoothed map, its
empirical-Bernstein bounds and the radius it alone certifies. :func:`lvm_map_radii` returns them, with exactly the
bounds and radius formula of :func:`lvm_certify`'s soft-map candidates (same top-class rule, same ``alpha / C``
per class), so a figure of single maps and the certificates agree.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from stabkit._checks import check_probability
from stabkit.certify._intervals import bernstein_shift
from stabkit.certify._lvm import _bounds_top_two, _multi


class MapRadii(NamedTuple):
    """Per point, map kind and temperature: arrays of shape (B, K, T) (K map kinds, T temperatures of the log).

    Attributes:
        top: the class certified by the map (largest empirical-Bernstein lower bound), int64.
        mean_top: smoothed value of that class, the mean of ``s(τ f(x + δ))_top`` over the ``n`` samples.
        std_top: its sample standard deviation (the Monte-Carlo spread the bound pays for).
        margin: ``mean_top`` minus the largest mean among the other classes.
        p_a: lower bound on the top class's smoothed value (empirical Bernstein at ``alpha / C``).
        p_b: upper bound on the largest smoothed value of the other classes.
        radius: ``R_multi = σ/2 (Φ⁻¹(p_a) − Φ⁻¹(p_b))`` of the map alone, 0 where the bounds certify nothing.
    """

    top: np.ndarray
    mean_top: np.ndarray
    std_top: np.ndarray
    margin: np.ndarray
    p_a: np.ndarray
    p_b: np.ndarray
    radius: np.ndarray


def lvm_map_radii(log, *, alpha: float = 0.001) -> MapRadii:
    """Radius and statistics of every single simplex map of a log, without selecting among maps.

    For each point, map kind ``s`` (softmax, sparsemax) and temperature τ of the log, the bounds of the smoothed
    map ``E s(τ f(x + δ))`` that :func:`lvm_certify` uses for its soft-map ``R_multi`` candidates: empirical
    Bernstein at ``alpha / C`` per class on the ``n`` estimation samples, ``p_a`` the largest lower bound (its
    class is the prediction), ``p_b`` the largest upper bound of the other classes. Each map's radius holds at
    level ``alpha`` on its own; the maximum over maps is the published LVM-RS rule, which is not corrected for the
    choice (Note [map selection] in ``stabkit.certify._lvm``).

    Args:
        log: a ``SmoothingLog`` sampled with temperatures (``Smooth.sample(..., temperatures=...)``).
        alpha: failure probability of each map's certificate.

    Returns:
        :class:`MapRadii`, float64 (``top`` int64) NumPy arrays of shape (B, K, T).

    Raises:
        ValueError: a log without LVM statistics, or ``alpha`` outside (0, 1).

    References:
        Delattre, Araujo, Barthélemy, Allauzen, "The Lipschitz-Variance-Margin Tradeoff for Enhanced Randomized
        Smoothing", ICLR 2024 (arXiv 2309.16883); Maurer & Pontil, COLT 2009 (empirical Bernstein); thesis
        arXiv:2510.25282, ch. 6.
    """
    alpha = check_probability("alpha", alpha)
    if log.mean_estimation is None or log.var_estimation is None:
        raise ValueError("the log has no LVM statistics: sample it with Smooth.sample(..., temperatures=TEMPERATURES)")
    mean = np.asarray(log.mean_estimation, dtype=np.float64)  # (B, K, T, C)
    std = np.sqrt(np.clip(np.asarray(log.var_estimation, dtype=np.float64), 0.0, None))
    shift = np.asarray(bernstein_shift(std, log.n, alpha=alpha / log.num_classes), dtype=np.float64)
    top, p_a, p_b = _bounds_top_two(mean - shift, mean + shift)  # (B, K, T)
    mean_top = np.take_along_axis(mean, top[..., None], axis=-1)[..., 0]
    others = mean.copy()
    np.put_along_axis(others, top[..., None], -np.inf, axis=-1)
    radius = _multi(p_a, p_b, float(log.sigma))
    return MapRadii(
        top=top.astype(np.int64),
        mean_top=mean_top,
        std_top=np.take_along_axis(std, top[..., None], axis=-1)[..., 0],
        margin=mean_top - others.max(axis=-1),
        p_a=p_a,
        p_b=p_b,
        radius=np.where(np.isfinite(radius), np.maximum(radius, 0.0), 0.0),
    )
