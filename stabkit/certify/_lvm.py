"""LVM-RS: randomized smoothing of a simplex map of the logits, chosen per point (Lipschitz–variance–margin).

Smoothing ``s(τ z)`` instead of the argmax of the logits ``z`` (``s`` = softmax or sparsemax, τ a temperature)
trades variance against margin: a small τ gives a low-variance Monte-Carlo estimate (Gaussian Poincaré:
``Var f(x+δ) ≤ σ² L²``) with a small margin, a large τ recovers the argmax counts. The certifier estimates the
smoothed map's class means with empirical-Bernstein bounds for every map on a temperature grid and keeps the
largest radius.

Note [map selection]: keeping the best of many maps on the samples that also give the bounds is a
multiple-testing question the paper leaves open (Delattre et al., arXiv 2309.16883; thesis arXiv:2510.25282
ch. 6): each map's bounds hold with probability ``1 - alpha``, the maximum over 205 maps does not in general.
``lvm_certify`` offers the published rule and two honest ones; every figure says which one it shows:

* ``"published"``: the rule of the official code, every map and the maximum on the ``n``
  estimation samples, ``alpha`` not corrected for the choice of map.
* ``"separate-samples"``: the map (and radius formula) is chosen on the ``n0`` selection samples, then only
  that map is certified on the ``n`` estimation samples: valid at level ``alpha``.
* ``"bonferroni-maps"``: as published, with ``alpha`` divided by the number of maps: valid at level ``alpha``.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple, get_args

import numpy as np
import torch

from stabkit._checks import check_choice, check_positive_float, check_probability
from stabkit.certify._intervals import bernstein_shift, bonferroni_bounds
from stabkit.certify._maps import MAP_LIPSCHITZ
from stabkit.certify._radii import radius_multi, radius_multi_lip
from stabkit.certify._types import ABSTAIN

Selection = Literal["published", "separate-samples", "bonferroni-maps"]
SELECTIONS: tuple[str, ...] = get_args(Selection)


class LVMCertificate(NamedTuple):
    """LVM-RS certificates of a batch of points; the first two fields are those of :class:`Certificate`.

    Attributes:
        prediction: (B,) int64 class or ``ABSTAIN`` (-1).
        radius: (B,) float64 certified radius, 0 where abstained.
        map_kind: the map of each certificate (``"argmax"``, ``"softmax"`` or ``"sparsemax"``).
        temperature: (B,) float64, the map's temperature (NaN for argmax).
        radius_kind: the radius formula used (``"multi"``, ``"margin"`` or ``"multi-lip"``).
        p_a, p_b: (B,) float64 lower bound on the top class's smoothed value and upper bound on the
            runner-up's.
    """

    prediction: torch.Tensor
    radius: torch.Tensor
    map_kind: tuple[str, ...]
    temperature: torch.Tensor
    radius_kind: tuple[str, ...]
    p_a: torch.Tensor
    p_b: torch.Tensor


class _Candidates(NamedTuple):
    radius: np.ndarray  # (M,) -inf where invalid
    top: np.ndarray  # (M,)
    p_a: np.ndarray
    p_b: np.ndarray


def _bounds_top_two(lower: np.ndarray, upper: np.ndarray):
    """Top class = largest lower bound; runner-up bound = largest upper bound among the other classes."""
    top = lower.argmax(axis=-1)  # (...,)
    p_a = np.take_along_axis(lower, top[..., None], axis=-1)[..., 0]
    others = upper.copy()
    np.put_along_axis(others, top[..., None], -np.inf, axis=-1)
    return top, p_a, others.max(axis=-1)


def _multi(p_a: np.ndarray, p_b: np.ndarray, sigma: float) -> np.ndarray:
    """R_multi with the conventions of an invalid bound: p_a ≤ 0 or p_b ≥ 1 certify nothing (-inf)."""
    ok = (p_a > 0) & (p_b < 1) & (p_b > 0)
    out = np.full(np.shape(p_a), -np.inf)
    if ok.any():
        out[ok] = np.asarray(radius_multi(p_a[ok], p_b[ok], sigma=sigma), dtype=np.float64)
    return out


def _multi_lip(p_a: np.ndarray, p_b: np.ndarray, sigma: float, lipschitz: np.ndarray) -> np.ndarray:
    """R_multiLip per map (``lipschitz`` of the same shape), -inf where the bounds certify nothing."""
    ok = (p_a > 0) & (p_b < 1) & (p_b > 0) & (p_a > p_b)
    out = np.full(np.shape(p_a), -np.inf)
    if ok.any():
        out[ok] = np.asarray(radius_multi_lip(p_a[ok], p_b[ok], sigma=sigma, lipschitz=lipschitz[ok]), dtype=float)
    return out


def _candidates(counts, mean, var, *, n, alpha_map, sigma, temperatures, kinds, lipschitz):
    """Radii of every (map, radius formula) candidate of one point, each at level ``alpha_map``.

    Candidate order: [argmax/multi] + [(k, t)/multi for all k, t] + [(k, t)/margin] (+ [(k, t)/multi-lip]).
    """
    num_classes = counts.shape[-1]
    # argmax map: one-sided Clopper–Pearson at α/C per class (the published two-sided 2α/C)
    low, high = bonferroni_bounds(counts, alpha=alpha_map)
    top_am, pa_am, pb_am = _bounds_top_two(np.asarray(low, float), np.asarray(high, float))
    # soft maps: empirical Bernstein at α/C per class
    shift = np.asarray(bernstein_shift(np.sqrt(var), n, alpha=alpha_map / num_classes), dtype=np.float64)
    top, p_a, p_b = _bounds_top_two(mean - shift, mean + shift)  # (K, T)
    multi = _multi(p_a, p_b, sigma)
    # margin radius: the smoothed map is 1/(σ√π)-Lipschitz into the simplex (range of width √2 in ℓ2);
    # Tsuzuku's margin certificate margin / (√2 L) gives (p_a − p_b) σ √(π/2)
    margin = np.where(p_a > 0, (p_a - p_b) * sigma * math.sqrt(math.pi / 2), -np.inf)
    radii = [_multi(np.array([pa_am]), np.array([pb_am]), sigma), multi.ravel(), margin.ravel()]
    tops = [np.array([top_am]), top.ravel(), top.ravel()]
    pas = [np.array([pa_am]), p_a.ravel(), p_a.ravel()]
    pbs = [np.array([pb_am]), p_b.ravel(), p_b.ravel()]
    if lipschitz is not None:
        lip = np.array([MAP_LIPSCHITZ[k] for k in kinds])[:, None] * temperatures[None, :] * lipschitz  # (K, T)
        radii.append(_multi_lip(p_a, p_b, sigma, lip).ravel())
        tops.append(top.ravel())
        pas.append(p_a.ravel())
        pbs.append(p_b.ravel())
    return _Candidates(*(np.concatenate(a) for a in (radii, tops, pas, pbs)))


def _describe(index: int, kinds, temperatures):
    """(map kind, temperature, radius kind) of a candidate index (see ``_candidates`` for the order)."""
    if index == 0:
        return "argmax", math.nan, "multi"
    n_maps = len(kinds) * len(temperatures)
    block, j = divmod(index - 1, n_maps)
    k, t = divmod(j, len(temperatures))
    return kinds[k], float(temperatures[t]), ("multi", "margin", "multi-lip")[block]


def lvm_certify(
    log,
    *,
    alpha: float = 0.001,
    selection: Selection = "published",
    lipschitz: float | None = None,
) -> LVMCertificate:
    """LVM-RS certificates from a log sampled with temperatures (``Smooth.sample(..., temperatures=...)``).

    Candidates per point: the argmax map with Clopper–Pearson bounds (Bonferroni over classes), and every
    softmax/sparsemax map ``s(τ z)`` of the log with empirical-Bernstein bounds (Maurer–Pontil, ``alpha / C``
    per class): ``p_a`` = largest lower bound, ``p_b`` = largest upper bound of the other classes. Radii:
    ``R_multi = σ/2 (Φ⁻¹(p_a) − Φ⁻¹(p_b))`` and the margin radius ``(p_a − p_b) σ √(π/2)``; with ``lipschitz``
    (an upper bound on the ℓ2 Lipschitz constant of the logits network) also the Lipschitz-aware
    ``R_multiLip`` with the map's constant ``MAP_LIPSCHITZ[kind] · τ · lipschitz``. The certificate is the
    candidate of largest radius, chosen as ``selection`` says (Note [map selection]); abstain when it is not
    positive.

    Two details differ from the official code, both on the safe side: the variance is the unbiased variance
    over all ``n`` samples (the official code averages per-batch variances, which misses the between-batch
    part), and ``p_b`` is the largest upper bound among the classes other than the top one (the official code
    takes the second largest upper bound overall, which is smaller when the top class's upper bound is not the
    largest). The margin radius holds because the smoothed map, with values in the simplex (ℓ2 diameter √2),
    is ``1/(σ√π)``-Lipschitz; the margin certificate ``margin / (√2 L)`` then gives ``(p_a − p_b) σ √(π/2)``.

    Args:
        log: a ``SmoothingLog`` with LVM statistics (``"separate-samples"`` also needs them for the selection
            samples, i.e. ``n0 > 1``).
        alpha: failure probability.
        selection: ``"published"`` (every map on the same samples, not corrected for the choice among maps),
            ``"separate-samples"`` or ``"bonferroni-maps"`` (both valid at level ``alpha``).
        lipschitz: Lipschitz constant of the base network's logits (e.g. 1 for a 1-Lipschitz network), or
            None.

    Returns:
        :class:`LVMCertificate` (CPU tensors and tuples of names).

    Raises:
        ValueError: log without LVM statistics, unknown selection.

    References:
        Delattre, Araujo, Barthélemy, Allauzen, "The Lipschitz-Variance-Margin Tradeoff for Enhanced
        Randomized Smoothing", ICLR 2024 (arXiv 2309.16883); Maurer & Pontil, COLT 2009 (empirical Bernstein);
        thesis arXiv:2510.25282 ch. 6.
    """
    alpha = check_probability("alpha", alpha)
    check_choice("selection", selection, SELECTIONS)
    if log.mean_estimation is None:
        raise ValueError("the log has no LVM statistics: sample it with Smooth.sample(..., temperatures=TEMPERATURES)")
    if selection == "separate-samples" and (log.mean_selection is None or log.n0 < 2):
        raise ValueError("selection='separate-samples' needs LVM statistics of n0 >= 2 selection samples")
    if lipschitz is not None:
        lipschitz = check_positive_float("lipschitz", lipschitz)
    temps, kinds, sigma = np.asarray(log.temperatures, float), tuple(log.map_kinds), float(log.sigma)
    n_maps = 1 + len(kinds) * len(temps)
    alpha_map = alpha / n_maps if selection == "bonferroni-maps" else alpha
    fields = {k: [] for k in LVMCertificate._fields}
    for i in range(log.n_points):
        est = _candidates(
            log.counts_estimation[i], log.mean_estimation[i], log.var_estimation[i], n=log.n,
            alpha_map=alpha_map, sigma=sigma, temperatures=temps, kinds=kinds, lipschitz=lipschitz,
        )  # fmt: skip
        if selection == "separate-samples":
            # predict each candidate's radius at the estimation size n from the selection samples' statistics
            scaled = np.rint(log.counts_selection[i] * (log.n / log.n0)).astype(np.int64)
            sel = _candidates(
                scaled, log.mean_selection[i], log.var_selection[i], n=log.n,
                alpha_map=alpha, sigma=sigma, temperatures=temps, kinds=kinds, lipschitz=lipschitz,
            )  # fmt: skip
            best = int(np.argmax(sel.radius))
            # the class is fixed by the selection samples too: a different top class on the estimation samples
            # means the chosen map does not certify
            if est.top[best] != sel.top[best]:
                best = -1
        else:
            best = int(np.argmax(est.radius))
        r = float(est.radius[best]) if best >= 0 else -math.inf
        kind, temp, rkind = _describe(best, kinds, temps) if best >= 0 else ("argmax", math.nan, "multi")
        certified = r > 0 and math.isfinite(r)
        fields["prediction"].append(int(est.top[best]) if certified else ABSTAIN)
        fields["radius"].append(r if certified else 0.0)
        fields["map_kind"].append(kind)
        fields["temperature"].append(temp)
        fields["radius_kind"].append(rkind)
        fields["p_a"].append(float(est.p_a[best]) if best >= 0 else 0.0)
        fields["p_b"].append(float(est.p_b[best]) if best >= 0 else 1.0)
    return LVMCertificate(
        prediction=torch.tensor(fields["prediction"], dtype=torch.int64),
        radius=torch.tensor(fields["radius"], dtype=torch.float64),
        map_kind=tuple(fields["map_kind"]),
        temperature=torch.tensor(fields["temperature"], dtype=torch.float64),
        radius_kind=tuple(fields["radius_kind"]),
        p_a=torch.tensor(fields["p_a"], dtype=torch.float64),
        p_b=torch.tensor(fields["p_b"], dtype=torch.float64),
    )
