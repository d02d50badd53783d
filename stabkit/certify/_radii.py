"""Certified radii of a Gaussian-smoothed classifier, and the smoothed-Lipschitz bound.

Cohen's radii hold for any base classifier; the Lipschitz-aware radii are larger when the base classifier's
soft scores (values in [0, 1]) are known to be ``L``-Lipschitz. All functions take probabilities as numpy
arrays (or floats) and broadcast; a radius ``<= 0`` (or ``-inf``) means "abstain": no certificate.

Note [the ramp is the worst case]
    Smooth ``f: R^d -> [0, r]``, ``L``-Lipschitz, with ``N(0, sigma^2 I)``: ``f_s(x) = E f(x + delta)``. For a
    unit direction ``u``, write ``delta = t u + delta_perp`` with ``t ~ N(0, sigma^2)`` independent of
    ``delta_perp``; for each ``delta_perp`` the section ``m(t) = f(x + delta_perp + t u)`` is again
    ``L``-Lipschitz with values in ``[0, r]``, and ``<grad f_s(x), u> = E_perp E_t[m'(t)]``. So every question
    about the gradient of ``f_s`` is a 1-D question about ``E[m'(t)]`` over such ``m``, and the answers below
    are attained by a 1-D ramp ``m(t) = clip(L (t - s0), 0, r)`` lifted to ``f(x) = m(<x, u>)``, so they are
    exact.

Note [proof of the Lipschitz-aware radii]
    Setting: every class score ``f_c: R^d -> [0, 1]`` is ``L``-Lipschitz (l2), ``p_c(x) = E f_c(x + delta)``,
    ``delta ~ N(0, sigma^2 I)``; ``p_a <= p_A(x)`` and ``p_b >= p_c(x)`` for every ``c != A``. Write
    ``psi(s) = E clip(L (t - s), 0, 1)``, ``t ~ N(0, sigma^2)`` (the smoothed ramp of offset ``s``; strictly
    decreasing from 1 to 0, smooth), ``s0 = psi^{-1}`` (:func:`ramp_offset`) and ``G(p) = -psi'(s0(p)) = L
    (Phi((s0 + 1/L)/sigma) - Phi(s0/sigma))``, the slope of the ramp at value ``p``.

    Lemma 1 (1-D). If ``m: R -> [0, 1]`` is ``L``-Lipschitz and ``E m(t) = p``, then ``|E m'(t)| <= G(p)``.
    Proof: ``E m'(t) = E[m(t) t] / sigma^2`` (Gaussian integration by parts). Let ``h(t) = clip(L (t - s0(p)),
    0, 1)``, so ``E h = p``, and ``D = h - m``. On ``t <= s0`` ``D = -m <= 0``; on ``t >= s0 + 1/L`` ``D = 1 -
    m >= 0``; in between ``D' = L - m' >= 0``. So ``D`` changes sign once, at some ``c``, from ``<= 0`` to
    ``>= 0``, hence ``D(t) (t - c) >= 0`` everywhere and ``E[D t] = E[D (t - c)] + c E[D] >= 0``: ``E m' <=
    E h' = G(p)``. The mirror image ``t -> -t`` (which preserves the Gaussian) gives ``E m' >= -G(p)``.

    Lemma 2 (``R^d``). ``|grad p_c(x)| <= G(p_c(x))``. Proof: ``G`` is concave on ``[0, 1]`` (``G(0) = G(1) =
    0``): ``dG/dp = -psi''/psi' = E[Z | a <= Z <= a + 1/(L sigma)] / sigma`` with ``a = s0(p)/sigma``, the mean
    of a standard normal truncated to a window of fixed length, which decreases as the window moves left, i.e.
    as ``p`` grows. For a unit ``u`` split ``delta = t u + delta_perp`` (Note [the ramp is the worst case]):
    ``<grad p_c(x), u> = E_perp E_t m'(t)`` over sections ``m`` of values ``q = E_t m``, with ``E_perp q =
    p_c(x)``; by Lemma 1 and Jensen, ``|.| <= E_perp G(q) <= G(p_c(x))``.

    Theorem (integrated radius). Along ``x + t u``, ``q(t) = p_A(x + t u)`` satisfies ``q' >= -G(q)`` (Lemma
    2), so ``d/dt s0(q(t)) = q' / psi'(s0(q)) = q' / (-G(q)) <= 1`` and ``s0(q(t)) <= s0(p_a) + t``: ``q(t)``
    stays above ``psi(s0(p_a) + t)``, the worst-case ramp's trajectory. (If ``q`` reaches 1 anywhere, ``f_A = 1``
    everywhere and there is nothing to prove.) Likewise every other class satisfies ``s0(p_c(x + t u)) >=
    s0(p_b) - t``. So ``p_A > p_c`` on the whole ball ``|t| < (s0(p_b) - s0(p_a)) / 2`` (``radius_multi_lip``,
    ``"integrated"``), and ``p_A > 1/2`` on ``|t| < s0(1/2) - s0(p_a)`` (``radius_mono_lip``); the lifted ramp
    attains the latter, so the mono radius is the exact worst case.

    Corollaries. (i) The paper's ``"local"`` radii are below the integrated ones: in ``z = Phi^{-1}(p)``, the
    integrated distance from ``p_a`` to 1/2 is ``∫_0^{z_a} dz / L_loc(Phi(z))``, and ``L_loc`` increases with
    ``|p - 1/2|`` (checked numerically in the tests), so it is ``>= z_a / L_loc(p_a)``; the same comparison on
    the ``p_b`` side gives the multi-class case. So the paper's radii are valid as well. (ii) Both are ``>=``
    Cohen's: ``G(p) <= phi(Phi^{-1}(p)) / sigma`` (the Lipschitz class is a subset of all ``[0, 1]``-valued
    functions, whose worst case is the half-space), so ``∫ dp / G >= ∫ sigma dp / phi(Phi^{-1}(p)) = sigma
    Phi^{-1}(p_a)``. The radii certify the *smoothed soft* classifier ``argmax_c p_c``; the radius is monotone in
    ``p_a`` (up) and ``p_b`` (down), so confidence bounds give a certificate at their confidence level.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import numpy as np
from scipy import special, stats

from stabkit._checks import check_choice, check_positive_float, check_probabilities, scalar_or_array

__all__ = [
    "radius_mono",
    "radius_multi",
    "radius_mono_lip",
    "radius_multi_lip",
    "ramp_offset",
    "local_lipschitz",
    "smoothed_lipschitz_bound",
]

LipMethod = Literal["local", "integrated"]
SmoothedConstant = Literal["tight", "official"]
_CONSTANTS: tuple[str, ...] = get_args(SmoothedConstant)
_LIP_METHODS: tuple[str, ...] = get_args(LipMethod)


# ----------------------------------------------------------------------------------------------------
# Cohen


def radius_mono(p_a: object, *, sigma: float) -> np.ndarray | float:
    """Cohen's certified radius from a lower bound on the top-class probability: ``sigma·Phi^{-1}(p_a)``.

    If ``p_a`` lower-bounds the smoothed probability of the top class, the smoothed classifier is constant on
    the ``l2`` ball of this radius. Abstain when the result is ``<= 0`` (``p_a <= 1/2``).

    Args:
        p_a: lower confidence bound on the top class's smoothed probability, in ``[0, 1]``; any shape.
        sigma: standard deviation of the Gaussian noise, ``> 0``.

    Returns:
        Radius (same shape as ``p_a``; ``-inf`` at 0, ``inf`` at 1).

    Example:
        >>> round(radius_mono(0.9889893, sigma=0.25), 4)
        0.5725

    References:
        Cohen, Rosenfeld & Kolter, ICML 2019 (arXiv 1902.02918), Thm. 1. Thesis arXiv:2510.25282, ch. 6.
    """
    s = check_positive_float("sigma", sigma)
    return scalar_or_array(s * special.ndtri(check_probabilities("p_a", p_a)))


def radius_multi(p_a: object, p_b: object, *, sigma: float) -> np.ndarray | float:
    """Cohen's two-class radius ``sigma/2·(Phi^{-1}(p_a) - Phi^{-1}(p_b))``.

    ``p_a`` must lower-bound the top class and ``p_b`` upper-bound every other class. With ``p_b = 1 - p_a``
    it is :func:`radius_mono`. Abstain when ``<= 0``.

    Args:
        p_a: lower bound on the top class, in ``[0, 1]``.
        p_b: upper bound on the runner-up, in ``[0, 1]``; broadcast against ``p_a``.
        sigma: noise standard deviation ``> 0``.

    Returns:
        Radius of the broadcast shape.

    References:
        Cohen, Rosenfeld & Kolter, ICML 2019 (arXiv 1902.02918), Thm. 1. Thesis arXiv:2510.25282, ch. 6.
    """
    s = check_positive_float("sigma", sigma)
    pa, pb = check_probabilities("p_a", p_a), check_probabilities("p_b", p_b)
    with np.errstate(invalid="ignore"):  # inf - inf only for p_a = 1 and p_b = 1, a contradiction: nan
        return scalar_or_array(0.5 * s * (special.ndtri(pa) - special.ndtri(pb)))


# ----------------------------------------------------------------------------------------------------
# Lipschitz-aware radii


def _lipschitz(value: object, *, allow_inf: bool) -> np.ndarray:
    """Lipschitz constants as a float64 array (scalar or one per test point), all ``> 0``."""
    lip = np.asarray(value, dtype=np.float64)
    if np.any(np.isnan(lip)) or np.any(lip <= 0) or (not allow_inf and np.any(np.isinf(lip))):
        extra = " (math.inf allowed: Cohen's radius)" if allow_inf else ""
        raise ValueError(f"lipschitz must be finite and > 0{extra}, got {value!r}")
    return lip


def _ramp_upper_tail(s0: np.ndarray, sigma: float, lip: np.ndarray) -> np.ndarray:
    """``1 - p(s0)`` for the ramp ``clip(L (t - s0), 0, 1)``: ``L ∫_{s0}^{s0+1/L} Phi(s/sigma) ds``."""

    def j(u: np.ndarray) -> np.ndarray:
        # antiderivative of Phi: J(u) = u Phi(u) + phi(u)
        return u * special.ndtr(u) + np.exp(-0.5 * u * u) / math.sqrt(2.0 * math.pi)

    return lip * sigma * (j((s0 + 1.0 / lip) / sigma) - j(s0 / sigma))


def _solve_ramp_offset(p: np.ndarray, sigma: float, lip: np.ndarray) -> np.ndarray:
    """``s0(p)`` for ``0 < p < 1`` and finite ``lip`` (same shape), by vectorised bisection."""
    # symmetry p(-s0 - 1/L) = 1 - p(s0): solve for q = min(p, 1 - p) <= 1/2 on the side where 1 - p(s0) is
    # computed without cancellation, then map back
    upper = p >= 0.5
    q = np.where(upper, 1.0 - p, p)
    hi = -0.5 / lip  # 1 - p(hi) = 1/2 >= q
    lo = hi - 40.0 * sigma - 1.0 / lip  # 1 - p(lo) <= Phi(-40) = 0 <= q
    for _ in range(64):  # 2^-64 of the bracket (<= 40 sigma + 1/L): below float64 resolution of s0
        mid = 0.5 * (lo + hi)
        right_of_root = _ramp_upper_tail(mid, sigma, lip) > q  # 1 - p(s0) increases with s0
        hi = np.where(right_of_root, mid, hi)
        lo = np.where(right_of_root, lo, mid)
    s0 = 0.5 * (lo + hi)
    return np.where(upper, s0, -1.0 / lip - s0)


def ramp_offset(p: object, *, sigma: float, lipschitz: object) -> np.ndarray | float:
    """Offset ``s0`` of the worst-case ramp whose Gaussian smoothing at 0 equals ``p``.

    Solves ``p = 1 - L ∫_{s0}^{s0 + 1/L} Phi(s / sigma) ds`` (closed-form integral, vectorised bisection to
    float64 resolution), i.e. ``p = E clip(L (t - s0), 0, 1)`` at ``t ~ N(0, sigma^2)``. Decreasing in ``p``;
    ``s0(1/2) = -1/(2L)``; ``s0 -> -sigma·Phi^{-1}(p)`` as ``L -> inf``.

    Args:
        p: smoothed probability in (0, 1); any shape.
        sigma: noise standard deviation ``> 0``.
        lipschitz: Lipschitz constant ``L > 0`` of the base classifier's scores; a scalar or an array
            broadcast against ``p``.

    Returns:
        ``s0`` of the broadcast shape.

    References:
        Delattre et al., AISTATS 2025 (arXiv 2504.02412). Thesis arXiv:2510.25282, ch. 6b.
    """
    s, lip = check_positive_float("sigma", sigma), _lipschitz(lipschitz, allow_inf=False)
    pa = check_probabilities("p", p)
    if np.any((pa <= 0) | (pa >= 1)):
        raise ValueError("p must lie strictly inside (0, 1) for a finite ramp offset")
    pa, lip = np.broadcast_arrays(pa, lip)
    return scalar_or_array(_solve_ramp_offset(pa, s, lip))


def _local_lipschitz(p: np.ndarray, s0: np.ndarray, sigma: float, lip: np.ndarray) -> np.ndarray:
    # steepest slope of the smoothed ramp (probability per unit of input), over the slope of Phi^{-1}.
    # Phi(b) - Phi(a) = Phi(-a) - Phi(-b): take the side where both terms are small (for p < 1/2 the window lies
    # right of 0, where Phi(b) - Phi(a) cancels to 0 in float64 and would make the radius infinite)
    a, b = s0 / sigma, (s0 + 1.0 / lip) / sigma
    right = a + b > 0
    mass = np.where(right, special.ndtr(-a) - special.ndtr(-b), special.ndtr(b) - special.ndtr(a))
    return lip * mass / stats.norm.pdf(special.ndtri(p))


def local_lipschitz(p: object, *, sigma: float, lipschitz: object) -> np.ndarray | float:
    """Local Lipschitz constant of ``Phi^{-1} ∘ f_s`` at smoothed probability ``p`` (worst case: the ramp).

    ``L_loc(p) = L (Phi((s0 + 1/L)/sigma) - Phi(s0/sigma)) / phi(Phi^{-1}(p))`` with ``s0 = ramp_offset(p)``.
    It is ``<= 1/sigma`` (Cohen's global constant), tends to it as ``L -> inf``, is symmetric in ``p <-> 1 -
    p`` and increases with ``|p - 1/2|`` (checked numerically in the tests), which is what makes the
    ``"local"`` radii valid.

    Args:
        p: smoothed probability in (0, 1).
        sigma: noise standard deviation ``> 0``.
        lipschitz: ``L > 0`` of the base scores, scalar or array broadcast against ``p`` (``math.inf``:
            Cohen, ``1/sigma``).

    Returns:
        ``L_loc`` of the broadcast shape.

    References:
        Delattre et al., AISTATS 2025 (arXiv 2504.02412). Thesis arXiv:2510.25282, ch. 6b.
    """
    s, lip = check_positive_float("sigma", sigma), _lipschitz(lipschitz, allow_inf=True)
    pa = check_probabilities("p", p)
    if np.any((pa <= 0) | (pa >= 1)):
        raise ValueError("p must lie strictly inside (0, 1)")
    pa, lip = np.broadcast_arrays(pa, lip)
    out = np.full(pa.shape, 1.0 / s)
    finite = np.isfinite(lip)
    if finite.any():
        s0 = _solve_ramp_offset(pa[finite], s, lip[finite])
        out[finite] = _local_lipschitz(pa[finite], s0, s, lip[finite])
    return scalar_or_array(out)


def _lip_radius_one(p: np.ndarray, sigma: float, lip: np.ndarray, method: str) -> np.ndarray:
    """Signed 'distance to p = 1/2' in input space for each p (the mono radius; negative below 1/2).

    ``p`` and ``lip`` have the same shape; infinite ``lip`` gives Cohen's ``sigma Phi^{-1}(p)``."""
    out = np.where(p >= 1, np.inf, -np.inf)
    inside = (p > 0) & (p < 1)
    cohen = inside & np.isinf(lip)
    out[cohen] = sigma * special.ndtri(p[cohen])
    lip_aware = inside & np.isfinite(lip)
    if lip_aware.any():
        # below 1e-300 the Gaussian tails underflow; raising p there lowers the multi-class radius (conservative)
        pin, lin = np.maximum(p[lip_aware], 1e-300), lip[lip_aware]
        s0 = _solve_ramp_offset(pin, sigma, lin)
        if method == "local":
            out[lip_aware] = special.ndtri(pin) / _local_lipschitz(pin, s0, sigma, lin)
        else:
            # exact worst case: moving x by t moves the ramp by t, so the distance to p = 1/2 is s0(1/2) - s0(p)
            out[lip_aware] = -0.5 / lin - s0
    return out


def radius_mono_lip(p_a: object, *, sigma: float, lipschitz: object, method: LipMethod = "local") -> np.ndarray | float:
    """Lipschitz-aware one-class radius for a base classifier with ``L``-Lipschitz scores in ``[0, 1]``.

    ``"local"`` (the paper's formula, default): ``Phi^{-1}(p_a) / L_loc(p_a)`` with :func:`local_lipschitz`.
    ``"integrated"``: ``s0(1/2) - s0(p_a)`` (:func:`ramp_offset`), the distance over which the worst-case
    ramp's smoothed probability falls from ``p_a`` to ``1/2``; it integrates the local constant along the path
    instead of freezing it at ``p_a``, so it is ``>=`` the local radius (and exact for the ramp; proof: Note [proof
    of the Lipschitz-aware radii]). Both are ``>=``
    Cohen's :func:`radius_mono` and tend to it as ``L -> inf`` (``math.inf`` returns Cohen's radius). Abstain
    when ``<= 0``.

    Args:
        p_a: lower bound on the top class's smoothed probability, in ``[0, 1]``; any shape.
        sigma: noise standard deviation ``> 0``.
        lipschitz: Lipschitz constant ``L`` of the base classifier's scores (values in ``[0, 1]``), or
            ``math.inf``; a scalar or an array broadcast against ``p_a`` (one constant per test point or map).
        method: ``"local"`` or ``"integrated"``.

    Returns:
        Radius of the broadcast shape.

    Example:
        >>> round(radius_mono_lip(0.9, sigma=0.25, lipschitz=1.0), 5)
        0.44909

    References:
        Delattre, Caillon, Barthélemy, Fagnou & Allauzen, "Bridging the theoretical gap in randomized
        smoothing", AISTATS 2025 (arXiv 2504.02412). Thesis arXiv:2510.25282, ch. 6b.
    """
    s, lip = check_positive_float("sigma", sigma), _lipschitz(lipschitz, allow_inf=True)
    check_choice("method", method, _LIP_METHODS)
    pa, lip = np.broadcast_arrays(check_probabilities("p_a", p_a), lip)
    return scalar_or_array(_lip_radius_one(pa, s, lip, method))


def radius_multi_lip(
    p_a: object, p_b: object, *, sigma: float, lipschitz: object, method: LipMethod = "local"
) -> np.ndarray | float:
    """Lipschitz-aware two-class radius: ``1/2 (Phi^{-1}(p_a)/L_loc(p_a) - Phi^{-1}(p_b)/L_loc(p_b))``.

    ``"integrated"`` gives ``(s0(p_b) - s0(p_a)) / 2``: the top class's score falls and the runner-up's rises at
    their worst-case rates until they meet (Note [proof of the Lipschitz-aware radii]). With ``p_b = 1 - p_a`` both
    reduce to :func:`radius_mono_lip`;
    ``math.inf`` gives Cohen's :func:`radius_multi`.

    Args:
        p_a: lower bound on the top class, in ``[0, 1]``.
        p_b: upper bound on every other class, in ``[0, 1]``; broadcast against ``p_a``.
        sigma: noise standard deviation ``> 0``.
        lipschitz: Lipschitz constant of the base scores, or ``math.inf``; scalar or array (broadcast).
        method: ``"local"`` or ``"integrated"``.

    Returns:
        Radius of the broadcast shape; abstain when ``<= 0``.

    References:
        Delattre et al., AISTATS 2025 (arXiv 2504.02412). Thesis arXiv:2510.25282, ch. 6b.
    """
    s, lip = check_positive_float("sigma", sigma), _lipschitz(lipschitz, allow_inf=True)
    check_choice("method", method, _LIP_METHODS)
    pa, pb, lip = np.broadcast_arrays(check_probabilities("p_a", p_a), check_probabilities("p_b", p_b), lip)
    with np.errstate(invalid="ignore"):  # inf - inf only for p_a = 1 and p_b = 1, a contradiction: nan
        return scalar_or_array(0.5 * (_lip_radius_one(pa, s, lip, method) - _lip_radius_one(pb, s, lip, method)))


# ----------------------------------------------------------------------------------------------------
# smoothed Lipschitz constant


def smoothed_lipschitz_bound(
    lipschitz: object, *, output_range: float = 1.0, sigma: float, constant: SmoothedConstant = "tight"
) -> np.ndarray | float:
    """Lipschitz constant of the Gaussian smoothing of an ``L``-Lipschitz function with values in ``[0, r]``.

    ``"tight"``: ``L·erf(r / (2 sqrt(2) L sigma))`` — exact: no such function has a steeper smoothing, and the
    ramp ``f(x) = clip(r/2 + L x_1, 0, r)`` attains it at 0. ``"official"`` (LVM-RS code):
    ``L·erf(r / (sqrt(2) L sigma))``, a valid but looser upper bound (erf is increasing); it is the exact
    value for range ``2r``. As ``L -> inf``: ``r / (sigma sqrt(2 pi))`` (tight) and Salman et al.'s
    ``r sqrt(2/pi) / sigma`` (official); both are ``<= L``.

    Proof of the tight constant (see Note [the ramp is the worst case] for the reduction to 1-D). Let ``m`` be
    ``L``-Lipschitz with values in ``[0, r]`` and ``t ~ N(0, sigma^2)``. By Gaussian integration by parts,
    ``E[m'(t)] = E[m(t) t] / sigma^2``; the weight ``t`` is negative for ``t < 0`` and positive for ``t > 0``.
    Let ``c = m(0)`` and ``m_c(t) = clip(c + L t, 0, r)``. Lipschitz continuity and the range give ``m(t) <=
    m_c(t)`` for ``t > 0`` and ``m(t) >= m_c(t)`` for ``t < 0``, so ``E[m(t) t] <= E[m_c(t) t]``: some ramp is
    at least as steep. For a ramp whose rising part is ``[a, a + r/L]``, ``E[m_c'(t)] = L·P(a <= t <= a +
    r/L)``, largest when the interval is centred at 0 (the Gaussian density is symmetric and unimodal): ``L (2
    Phi(r/(2 L sigma)) - 1) = L erf(r / (2 sqrt(2) L sigma))``. Gradient norm = max over directions ``u`` of
    ``<grad f_s, u>``, each of which is an average of such 1-D terms, so the bound holds in ``R^d``; the
    lifted centred ramp attains it.

    Args:
        lipschitz: ``L > 0`` (array-friendly; ``inf`` gives the limits above).
        output_range: ``r > 0``, the length of the range of ``f`` (1 for probabilities).
        sigma: noise standard deviation ``> 0``.
        constant: ``"tight"`` (exact, default) or ``"official"`` (the published code's constant).

    Returns:
        Upper bound on ``Lip(f_s)``, shape of ``lipschitz``.

    Raises:
        ValueError: non-positive arguments or unknown ``constant``.

    Example:
        >>> round(smoothed_lipschitz_bound(1.0, output_range=1.0, sigma=0.5), 5)
        0.68269

    References:
        Delattre, Araujo, Barthélemy & Allauzen, ICLR 2024 (LVM-RS, arXiv 2309.16883), and its official code
        (the ``"official"`` constant). Salman et al., NeurIPS 2019 (arXiv 1906.04584), Lemma 1. Thesis
        arXiv:2510.25282, ch. 6: the published constant is the looser one; the proof above gives the tight one.
    """
    check_choice("constant", constant, _CONSTANTS)
    r, s = check_positive_float("output_range", output_range), check_positive_float("sigma", sigma)
    lip = np.asarray(lipschitz, dtype=np.float64)
    if np.any(np.isnan(lip)) or np.any(lip <= 0):
        raise ValueError(f"lipschitz must be > 0 (math.inf allowed), got {lipschitz!r}")
    half_width = r / 2.0 if constant == "tight" else r  # half the length of the ramp's rising part, times L
    with np.errstate(divide="ignore", invalid="ignore"):
        finite = lip * special.erf(half_width / (math.sqrt(2.0) * lip * s))
    limit = half_width * math.sqrt(2.0 / math.pi) / s  # L -> inf: erf(z) ~ 2 z / sqrt(pi)
    return scalar_or_array(np.where(np.isinf(lip), limit, finite))
