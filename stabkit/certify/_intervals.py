"""Confidence bounds for randomized-smoothing certificates: Clopper–Pearson, empirical Bernstein, Bonferroni,
CPM.

Everything here works on numpy arrays of counts (or means and standard deviations) and broadcasts over leading
axes, so one call bounds every test point of a sampling log. Certification is pure statistics on those counts:
sampling (the expensive part) happens once, elsewhere, and any method here can be applied to its log.

Which side of the truth each bound sits on: a ``low`` is a lower confidence bound (it is ``<=`` the true
probability with probability ``>= 1 - alpha``), a ``high`` an upper one. A one-sided bound spends all of
``alpha`` on its side; a two-sided interval spends ``alpha / 2`` on each side.

Note [selection on the same samples]
    A certificate uses the lower bound of the *top* class and upper bounds of the others. If the top class
    is chosen on the very samples that give the bounds, it is random and biased upwards (the winner's
    curse): the lower bound must hold for whichever class wins, a union over all ``C`` classes, and the
    runner-up that matters is one of two classes (the true top or the true runner-up). With the one-sided
    ``alpha / C`` bounds of :func:`bonferroni_bounds` the error is then ``<= alpha + 2 alpha / C``, not
    ``alpha``. With the top class chosen on separate selection samples (Cohen's ``n0``) it is a fixed class
    for the estimation samples and the union bound is over the bounds actually used. :func:`class_bounds`
    always selects on ``counts_selection``; pass the estimation counts twice only if you accept this.

Note [max of upper bounds]
    The multi-class radius needs ``p_a <= p_top`` and ``p_b >= max_{c != top} p_c``. With the top class
    fixed (by separate selection samples), ``max_{c != top} p_c = p_{B*}`` for one fixed class ``B*``. If
    every other class has an upper bound ``high_c`` with ``P(high_c < p_c) <= beta``, then ``p_b = max_c
    high_c >= high_{B*}``, so ``P(p_b < p_{B*}) <= beta``: the max of upper bounds bounds the max, with no
    union over classes. Two events can fail (``p_a`` and ``high_{B*}``), so ``beta = alpha / 2`` gives a
    certificate at level ``alpha`` (method ``"max_upper"``). Dividing by ``C`` (``"bonferroni"``) or by the
    number of buckets (``"cpm"``) is valid too, but more than this protocol needs. Without any division
    (``"uncorrected"``) the two failure events add up to as much as ``2 alpha``. Formally: conditionally on the
    selection samples, ``top`` and ``B*`` are fixed, the estimation counts are independent of them, and
    ``P(p_a > p_top or p_b < p_{B*}) <= P(low_top > p_top) + P(high_{B*} < p_{B*}) <= alpha/2 + alpha/2``;
    averaging over the selection keeps the bound. Cohen's radius is increasing in ``p_a`` and decreasing in
    ``p_b``, so on that event the certified radius is at most the true one. Caveat: with the top class chosen
    on the *same* samples, ``top`` is random and the bound on ``p_a`` must hold for whichever class wins (Note
    [selection on the same samples]); ``alpha / 2`` is then not enough in general. This argument is ours
    (stabkit), not the thesis's; the tests check it by exact enumeration over random and adversarial
    probability vectors, against an independent enumeration with scipy's multinomial and beta quantiles.
"""

from __future__ import annotations

import itertools
import math
from typing import Literal, NamedTuple, get_args

import numpy as np
from scipy import special, stats

from stabkit._checks import (
    check_choice,
    check_counts,
    check_int_valued,
    check_positive_int,
    check_probability,
    scalar_or_array,
)
from stabkit.certify._types import METHODS, Method

__all__ = [
    "Interval",
    "CPMBounds",
    "ClassBounds",
    "clopper_pearson",
    "bernstein_shift",
    "bernstein_interval",
    "bonferroni_bounds",
    "cpm_buckets",
    "cpm_bounds",
    "class_bounds",
    "multinomial_outcomes",
    "certificate_validity_probability",
]

Sided = Literal["two", "lower", "upper"]
Criterion = Literal["bounds", "radius", "class"]
_SIDES: tuple[str, ...] = get_args(Sided)
_CRITERIA: tuple[str, ...] = get_args(Criterion)


class Interval(NamedTuple):
    """A confidence interval; ``low`` bounds the truth from below, ``high`` from above."""

    low: np.ndarray | float
    high: np.ndarray | float


class CPMBounds(NamedTuple):
    """Bounds of the class-partitioning method (CPM).

    ``p_a`` is a lower bound on the top class's probability, ``p_b`` an upper bound on every other class's
    probability, ``n_buckets`` the number of buckets of the partition (``alpha`` was divided by it, except for
    the two-bucket partition {top} ∪ {rest}, where one test suffices and ``p_b = 1 - p_a``), ``top_class`` the
    class chosen on the selection counts.
    """

    p_a: np.ndarray | float
    p_b: np.ndarray | float
    n_buckets: np.ndarray | int
    top_class: np.ndarray | int


class ClassBounds(NamedTuple):
    """Lower bound ``p_a`` on the top class, upper bound ``p_b`` on every other class, the ``top_class``
    chosen on the selection counts, and ``n_tests``, the number of one-sided tests ``alpha`` was split over."""

    p_a: np.ndarray | float
    p_b: np.ndarray | float
    top_class: np.ndarray | int
    n_tests: np.ndarray | int


# ----------------------------------------------------------------------------------------------------
# Clopper–Pearson


def _beta_quantile(q: float, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``Beta(a, b)`` quantile at level ``q``, evaluated once per distinct ``(a, b)`` pair.

    Count arrays of a sampling log (or of an exact enumeration) repeat the same few values many times; the
    Beta inverse is by far the dominant cost, so deduplicate first."""
    a, b = np.broadcast_arrays(a, b)
    if a.size == 0:
        return np.zeros(a.shape)
    # a, b are integer-valued counts (+1): one exact float64 key per pair, then a 1-D unique
    ai, bi = a.ravel().astype(np.int64), b.ravel().astype(np.int64)
    stride = int(bi.max()) + 1
    keys, inverse = np.unique(ai * stride + bi, return_inverse=True)
    values = special.betaincinv((keys // stride).astype(np.float64), (keys % stride).astype(np.float64), q)
    return values[inverse.ravel()].reshape(a.shape)


def _cp_lower(k: np.ndarray, n: np.ndarray, a: float) -> np.ndarray:
    # exact binomial lower bound: the a-quantile of Beta(k, n - k + 1); 0 when k = 0
    k, n = np.broadcast_arrays(np.asarray(k, np.float64), np.asarray(n, np.float64))
    safe_k = np.maximum(k, 1.0)
    return np.where(k > 0, _beta_quantile(a, safe_k, n - safe_k + 1.0), 0.0)


def _cp_upper(k: np.ndarray, n: np.ndarray, a: float) -> np.ndarray:
    # exact binomial upper bound: the (1 - a)-quantile of Beta(k + 1, n - k); 1 when k = n
    k, n = np.broadcast_arrays(np.asarray(k, np.float64), np.asarray(n, np.float64))
    safe_k = np.minimum(k, n - 1.0)
    return np.where(k < n, _beta_quantile(1.0 - a, safe_k + 1.0, n - safe_k), 1.0)


def clopper_pearson(k: object, n: object, *, alpha: float, sided: Sided = "two") -> Interval:
    """Clopper–Pearson (exact binomial) confidence interval for a success probability.

    ``low`` is a lower and ``high`` an upper confidence bound on the true probability ``p`` of ``k`` successes
    in ``n`` trials. Two-sided: ``P(low <= p <= high) >= 1 - alpha`` with ``alpha / 2`` on each side.
    ``"lower"``: ``P(low <= p) >= 1 - alpha`` and ``high = 1``. ``"upper"``: ``P(p <= high) >= 1 - alpha`` and
    ``low = 0``. Computed from Beta quantiles with ``scipy.special.betaincinv`` (identical to
    ``scipy.stats.beta.ppf``, once per distinct count); the tests check it against
    ``scipy.stats.binomtest(k, n).proportion_ci(method="exact")``.

    Args:
        k: number of successes, integer-valued, ``0 <= k <= n``; any shape.
        n: number of trials, ``>= 1``; broadcast against ``k``.
        alpha: error probability in (0, 1).
        sided: ``"two"``, ``"lower"`` or ``"upper"``.

    Returns:
        ``Interval(low, high)``: floats for scalar input, otherwise float64 arrays of the broadcast shape.

    Raises:
        ValueError: non-integer or negative counts, ``k > n``, ``n < 1``, ``alpha`` outside (0, 1), bad
            ``sided``.

    Example:
        >>> round(clopper_pearson(99_000, 100_000, alpha=0.001, sided="lower").low, 6)
        0.988989

    References:
        Clopper & Pearson, Biometrika 1934. Cohen, Rosenfeld & Kolter, ICML 2019 (arXiv 1902.02918, CERTIFY).
        Thesis arXiv:2510.25282, ch. 6.
    """
    a = check_probability("alpha", alpha)
    sided = check_choice("sided", sided, _SIDES)
    k_arr, n_arr = np.broadcast_arrays(check_counts("k", k), check_counts("n", n))
    if np.any(n_arr < 1):
        raise ValueError(f"n must be >= 1, got {n!r}")
    if np.any(k_arr > n_arr):
        raise ValueError("k must not exceed n (a count of successes cannot exceed the number of trials)")
    side_alpha = a / 2.0 if sided == "two" else a
    low = _cp_lower(k_arr, n_arr, side_alpha) if sided != "upper" else np.zeros_like(k_arr)
    high = _cp_upper(k_arr, n_arr, side_alpha) if sided != "lower" else np.ones_like(k_arr)
    return Interval(scalar_or_array(low), scalar_or_array(high))


# ----------------------------------------------------------------------------------------------------
# empirical Bernstein


def bernstein_shift(std: object, n: object, *, alpha: float) -> np.ndarray | float:
    """One-sided empirical-Bernstein deviation of a sample mean of ``[0, 1]``-valued i.i.d. variables.

    ``std·sqrt(2 ln(2/alpha) / n) + 7 ln(2/alpha) / (3 (n - 1))``. With probability ``>= 1 - alpha``,
    ``E[X] <= mean + shift`` (and, applied to ``1 - X``, ``E[X] >= mean - shift`` with the same probability);
    the ``2`` inside the log pays for estimating the variance. A two-sided statement needs ``alpha / 2`` per
    side (see :func:`bernstein_interval`).

    Args:
        std: sample standard deviation with Bessel's correction (``ddof=1``), in ``[0, 1/2]``; any shape.
        n: sample size, an integer ``>= 2``; broadcast against ``std``.
        alpha: error probability in (0, 1) for this one side (LVM-RS passes ``alpha / C`` per class).

    Returns:
        The shift (``>= 0``): float for scalar input, else an array of the broadcast shape.

    Raises:
        ValueError: negative or non-finite ``std``, ``n`` not an integer ``>= 2``, ``alpha`` outside (0, 1).

    Example:
        >>> round(bernstein_shift(0.05, 100_000, alpha=1e-4), 6)
        0.000935

    References:
        Maurer & Pontil, "Empirical Bernstein bounds and sample variance penalization", COLT 2009, Thm. 4.
        Delattre et al., ICLR 2024 (LVM-RS, arXiv 2309.16883). Thesis arXiv:2510.25282, ch. 6.
    """
    a = check_probability("alpha", alpha)
    s = np.asarray(std, dtype=np.float64)
    if not np.all(np.isfinite(s)) or np.any(s < 0):
        raise ValueError("std must be finite and >= 0 (a standard deviation of values in [0, 1])")
    n_arr = check_int_valued("n", n)
    if np.any(n_arr < 2):
        raise ValueError(f"n must be >= 2 (the bound needs a sample variance), got {n!r}")
    log_term = math.log(2.0 / a)
    return scalar_or_array(s * np.sqrt(2.0 * log_term / n_arr) + 7.0 * log_term / (3.0 * (n_arr - 1.0)))


def bernstein_interval(mean: object, std: object, n: object, *, alpha: float, sided: Sided = "two") -> Interval:
    """Empirical-Bernstein confidence interval for the expectation of a ``[0, 1]``-valued variable.

    Two-sided: ``alpha / 2`` per side, so ``P(low <= E X <= high) >= 1 - alpha``; one-sided: all of ``alpha``
    on the requested side and the other end is the trivial 0 or 1. Bounds are clipped to ``[0, 1]``.

    Args:
        mean: sample mean in ``[0, 1]``; any shape.
        std: sample standard deviation (``ddof=1``); broadcast against ``mean``.
        n: sample size ``>= 2``.
        alpha: error probability in (0, 1).
        sided: ``"two"``, ``"lower"`` or ``"upper"``.

    Returns:
        ``Interval(low, high)``.

    Raises:
        ValueError: ``mean`` outside ``[0, 1]`` or non-finite, and the errors of :func:`bernstein_shift`.

    References:
        Maurer & Pontil, COLT 2009. Thesis arXiv:2510.25282, ch. 6.
    """
    a = check_probability("alpha", alpha)
    sided = check_choice("sided", sided, _SIDES)
    m = np.asarray(mean, dtype=np.float64)
    if not np.all(np.isfinite(m)) or np.any(m < 0) or np.any(m > 1):
        raise ValueError("mean must lie in [0, 1] (Bernstein bounds here assume values in [0, 1])")
    shift = np.asarray(bernstein_shift(std, n, alpha=a / 2.0 if sided == "two" else a))
    m, shift = np.broadcast_arrays(m, shift)
    low = np.clip(m - shift, 0.0, 1.0) if sided != "upper" else np.zeros_like(m)
    high = np.clip(m + shift, 0.0, 1.0) if sided != "lower" else np.ones_like(m)
    return Interval(scalar_or_array(low), scalar_or_array(high))


# ----------------------------------------------------------------------------------------------------
# multiple classes: Bonferroni and CPM


def bonferroni_bounds(counts: object, *, alpha: float) -> Interval:
    """One-sided Clopper–Pearson bounds for every class at level ``alpha / C`` (Bonferroni over classes).

    ``low[..., c]`` is a lower and ``high[..., c]`` an upper bound on class ``c``'s probability, each failing
    with probability ``<= alpha / C``. A certificate built from the lower bound of a class fixed in advance
    (chosen on separate samples) and the upper bounds of the ``C - 1`` others fails with probability ``<=
    alpha``; see Note [selection on the same samples] in this module for the same-sample case.

    Args:
        counts: class counts, shape ``(..., C)``, all rows summing to the same ``n`` per row.
        alpha: family-wise error probability in (0, 1).

    Returns:
        ``Interval(low, high)`` of shape ``(..., C)``.

    Raises:
        ValueError: counts not integer, negative, zero total, or fewer than 2 classes.

    References:
        Delattre, Caillon, Barthélemy, Fagnou & Allauzen, AISTATS 2025 (arXiv 2504.02412, multiple testing in
        RS). Thesis arXiv:2510.25282, ch. 6b.
    """
    a = check_probability("alpha", alpha)
    c = check_counts("counts", counts)
    if c.ndim < 1 or c.shape[-1] < 2:
        raise ValueError(f"counts must have shape (..., C) with C >= 2 classes, got shape {c.shape}")
    n = c.sum(axis=-1, keepdims=True)
    if np.any(n < 1):
        raise ValueError("every row of counts must have a positive total (no samples were drawn?)")
    n = np.broadcast_to(n, c.shape)
    side_alpha = a / c.shape[-1]
    return Interval(_cp_lower(c, n, side_alpha), _cp_upper(c, n, side_alpha))


def cpm_buckets(counts_selection: object) -> list[list[int]]:
    """Class partition of CPM from one vector of selection counts (top class first).

    Sort classes by decreasing selection count (ties: lower index first); buckets ``{I1}``, ``{I2}``; while
    the remaining selection mass exceeds ``count(I2)``, the largest remaining class becomes its own bucket;
    what is left is one last bucket. When the runner-up has no selection count the partition is ``{I1}``,
    ``{rest}``.

    Args:
        counts_selection: selection counts, shape ``(C,)``.

    Returns:
        List of buckets, each a list of class indices; ``buckets[0] == [top class]``.

    References:
        Delattre et al., AISTATS 2025 (class partitioning). Thesis arXiv:2510.25282, ch. 6b.
    """
    s = check_counts("counts_selection", counts_selection)
    if s.ndim != 1 or s.shape[0] < 2:
        raise ValueError(f"counts_selection must have shape (C,) with C >= 2, got shape {s.shape}")
    return [list(b) for b in _partition(s)]


def _partition(s: np.ndarray) -> tuple[tuple[int, ...], ...]:
    """The CPM partition of one (validated) selection-count vector, hashable."""
    order = [int(i) for i in np.argsort(-s, kind="stable")]
    if s[order[1]] == 0 or len(order) == 2:
        # all selection mass on one class (or only two classes): one test against the complement
        return (tuple(order[:1]), tuple(order[1:]))
    buckets = [tuple(order[:1]), tuple(order[1:2])]
    rest = order[2:]
    tail = np.cumsum(s[rest][::-1])[::-1]  # tail[i]: selection mass of rest[i:]
    runner_up = s[order[1]]
    n_single = int(np.sum(tail > runner_up))  # tail is non-increasing: a prefix of rest splits off
    buckets += [(c,) for c in rest[:n_single]]
    if rest[n_single:]:
        buckets.append(tuple(rest[n_single:]))
    return tuple(buckets)


def _cpm_given_buckets(buckets: list[list[int]], est: np.ndarray, a: float) -> tuple[np.ndarray, np.ndarray, int]:
    """CPM bounds for a fixed partition, vectorised over the rows of ``est`` (shape ``(M, C)``)."""
    n = est.sum(axis=-1)  # (M,)
    top = buckets[0][0]
    if len(buckets) == 2:
        # {top} ∪ {complement}: the complement's upper bound is 1 - p_a, so one test at level alpha suffices
        # (and R_multi = R_mono)
        p_a = _cp_lower(est[:, top], n, a)
        return p_a, 1.0 - p_a, 2
    side_alpha = a / len(buckets)
    p_a = _cp_lower(est[:, top], n, side_alpha)
    bucket_counts = np.stack([est[:, b].sum(axis=-1) for b in buckets[1:]], axis=-1)  # (M, B - 1)
    p_b = _cp_upper(bucket_counts, np.broadcast_to(n[:, None], bucket_counts.shape), side_alpha).max(axis=-1)
    return p_a, p_b, len(buckets)


def _cpm_vectorised(
    sel: np.ndarray, est: np.ndarray, a: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """CPM for every row of ``sel``/``est`` (shape ``(M, C)``) at once; same partition rule as
    :func:`cpm_buckets`, expressed on the classes sorted by selection count."""
    n_rows, n_classes = sel.shape
    order = np.argsort(-sel, axis=1, kind="stable")  # (M, C), top class first, ties by index
    s_sorted = np.take_along_axis(sel, order, axis=1)
    e_sorted = np.take_along_axis(est, order, axis=1)
    n = est.sum(axis=1)  # (M,)
    runner_up = s_sorted[:, 1]
    if n_classes > 2:
        tail = np.cumsum(s_sorted[:, :1:-1], axis=1)[:, ::-1]  # (M, C - 2): mass of sorted positions >= 2 + i
        n_single = (tail > runner_up[:, None]).sum(axis=1)  # tail is non-increasing: a prefix splits off
    else:
        n_single = np.zeros(n_rows, dtype=int)
    has_rest = 2 + n_single < n_classes
    complement = (runner_up == 0) | (n_classes == 2)  # {top} ∪ {rest}: one test at alpha, p_b = 1 - p_a
    n_buckets = np.where(complement, 2, 2 + n_single + has_rest)
    # bucket counts, one column per possible bucket after the top: sorted positions 1 .. C-1, then the rest
    position = np.arange(1, n_classes)[None, :]  # (1, C - 1)
    is_single = position <= (1 + n_single)[:, None]  # (M, C - 1): runner-up and split-off classes
    rest_count = np.where(~is_single, e_sorted[:, 1:], 0.0).sum(axis=1)  # (M,)
    counts = np.concatenate([e_sorted[:, 1:], rest_count[:, None]], axis=1)  # (M, C)
    exists = np.concatenate([is_single, has_rest[:, None]], axis=1)  # (M, C)
    p_a, p_b = np.empty(n_rows), np.empty(n_rows)
    k_top = e_sorted[:, 0]
    for b in np.unique(n_buckets):
        rows = np.flatnonzero(n_buckets == b)
        multi = rows[~complement[rows]]
        single = rows[complement[rows]]
        if single.size:
            p_a[single] = _cp_lower(k_top[single], n[single], a)
            p_b[single] = 1.0 - p_a[single]
        if multi.size:
            side_alpha = a / b
            p_a[multi] = _cp_lower(k_top[multi], n[multi], side_alpha)
            upper = _cp_upper(counts[multi], np.broadcast_to(n[multi, None], counts[multi].shape), side_alpha)
            p_b[multi] = np.where(exists[multi], upper, -np.inf).max(axis=1)
    return p_a, p_b, n_buckets, order[:, 0]


def cpm_bounds(counts_selection: object, counts_estimation: object, *, alpha: float) -> CPMBounds:
    """Certificate bounds of the class-partitioning method (CPM).

    The partition (:func:`cpm_buckets`) is built from the selection counts; the estimation counts then give
    ``p_a`` = one-sided Clopper–Pearson lower bound of the top class and ``p_b`` = the largest one-sided upper
    bound of a bucket's summed count, all at level ``alpha / n_buckets``. Since a bucket's probability is
    ``>=`` that of any class in it, ``p_b`` bounds every non-top class from above; with the partition fixed by
    independent selection samples, ``P(p_a <= p_top and p_b >= max_{c != top} p_c) >= 1 - alpha``. Fewer
    buckets than classes means a smaller correction than Bonferroni's ``alpha / C``.

    Args:
        counts_selection: selection counts (Cohen's ``n0`` samples), shape ``(..., C)``.
        counts_estimation: estimation counts (``n`` samples), same shape.
        alpha: family-wise error probability in (0, 1).

    Returns:
        ``CPMBounds(p_a, p_b, n_buckets, top_class)``; scalars for one test point, arrays of shape ``(...)``
        otherwise. Feed ``p_a, p_b`` to :func:`stabkit.certify.radius_multi`.

    Raises:
        ValueError: shapes differ, bad counts, fewer than 2 classes.

    Example:
        >>> counts = [59_000, 26_000, 8_000, 4_000, 2_000, 1_000, 0, 0, 0, 0]
        >>> b = cpm_bounds(counts, counts, alpha=0.001)
        >>> b.n_buckets, round(b.p_a, 5), round(b.p_b, 5)
        (3, 0.5847, 0.26474)

    References:
        Delattre, Caillon, Barthélemy, Fagnou & Allauzen, "Bridging the theoretical gap in randomized
        smoothing", AISTATS 2025 (arXiv 2504.02412). Thesis arXiv:2510.25282, ch. 6b.
    """
    a = check_probability("alpha", alpha)
    sel = check_counts("counts_selection", counts_selection)
    est = check_counts("counts_estimation", counts_estimation)
    if sel.shape != est.shape:
        raise ValueError(f"counts_selection {sel.shape} and counts_estimation {est.shape} must have the same shape")
    if sel.ndim < 1 or sel.shape[-1] < 2:
        raise ValueError(f"counts must have shape (..., C) with C >= 2 classes, got shape {sel.shape}")
    if np.any(est.sum(axis=-1) < 1):
        raise ValueError("every row of counts_estimation must have a positive total")
    lead = sel.shape[:-1]
    flat_sel, flat_est = sel.reshape(-1, sel.shape[-1]), est.reshape(-1, est.shape[-1])  # (B, C)
    p_a, p_b, nb, top = _cpm_vectorised(flat_sel, flat_est, a)
    if not lead:
        return CPMBounds(float(p_a[0]), float(p_b[0]), int(nb[0]), int(top[0]))
    return CPMBounds(p_a.reshape(lead), p_b.reshape(lead), nb.reshape(lead), top.reshape(lead))


def class_bounds(
    counts_selection: object, counts_estimation: object, *, alpha: float, method: Method = "cpm"
) -> ClassBounds:
    """Lower bound on the top class and upper bound on every other class, for a multiple-testing method.

    The top class is the argmax of the selection counts (ties: lower index); the bounds come from the
    estimation counts. All bounds are one-sided Clopper–Pearson. Methods:

    * ``"cohen"`` — ``p_a`` at ``alpha`` and ``p_b = 1 - p_a`` (Cohen's CERTIFY; the radius is R_mono).
    * ``"bonferroni"`` — :func:`bonferroni_bounds`: every class at ``alpha / C``; ``p_b`` = largest other
      upper bound.
    * ``"max_upper"`` — ``p_a`` at ``alpha / 2`` and ``p_b`` = largest other upper bound at ``alpha / 2``.
      Valid without dividing by ``C``: only the true runner-up's bound can break the certificate (see Note
      [max of upper bounds]); two tests, hence ``alpha / 2``.
    * ``"uncorrected"`` — ``p_a`` and every upper bound at ``alpha``: two tests at ``alpha`` each, so the
      certificate can fail with probability up to ``2 alpha``. Not valid; kept to show what a correction buys.
    * ``"cpm"`` — :func:`cpm_bounds`.

    Args:
        counts_selection: selection counts, shape ``(..., C)``.
        counts_estimation: estimation counts, same shape (passing the same array twice selects on the
            estimation samples; see Note [selection on the same samples]).
        alpha: error probability in (0, 1) of the certificate.
        method: one of ``"cohen"``, ``"bonferroni"``, ``"max_upper"``, ``"uncorrected"``, ``"cpm"``.

    Returns:
        ``ClassBounds(p_a, p_b, top_class, n_tests)``; ``n_tests`` is what ``alpha`` was divided by.

    Raises:
        ValueError: unknown method, shapes differ, bad counts.
    """
    a = check_probability("alpha", alpha)
    check_choice("method", method, METHODS)
    if method == "cpm":
        b = cpm_bounds(counts_selection, counts_estimation, alpha=a)
        return ClassBounds(b.p_a, b.p_b, b.top_class, b.n_buckets)
    sel = check_counts("counts_selection", counts_selection)
    est = check_counts("counts_estimation", counts_estimation)
    if sel.shape != est.shape or sel.ndim < 1 or sel.shape[-1] < 2:
        raise ValueError(
            f"counts_selection {sel.shape} and counts_estimation {est.shape} must both have shape (..., C), C >= 2"
        )
    if np.any(est.sum(axis=-1) < 1):
        raise ValueError("every row of counts_estimation must have a positive total")
    top = np.argmax(sel, axis=-1)  # (...) first maximal index
    p_a, p_b, n_tests = _fixed_top_bounds(top, est, a, method)
    if top.ndim == 0:
        return ClassBounds(float(p_a), float(p_b), int(top), n_tests)
    return ClassBounds(np.asarray(p_a, np.float64), np.asarray(p_b, np.float64), top.astype(int), n_tests)


def _fixed_top_bounds(top: np.ndarray, est: np.ndarray, a: float, method: str) -> tuple[np.ndarray, np.ndarray, int]:
    """(p_a, p_b, n_tests) for given top classes ``top`` ``(...)`` and counts ``est`` ``(..., C)``."""
    n_classes = est.shape[-1]
    n = est.sum(axis=-1)
    k_top = np.take_along_axis(est, top[..., None], axis=-1)[..., 0]
    if method == "cohen":
        p_a = _cp_lower(k_top, n, a)
        return p_a, 1.0 - p_a, 1
    n_tests = {"bonferroni": n_classes, "max_upper": 2, "uncorrected": 1}[method]
    side_alpha = a / n_tests
    p_a = _cp_lower(k_top, n, side_alpha)
    upper = _cp_upper(est, np.broadcast_to(n[..., None], est.shape), side_alpha)  # (..., C)
    np.put_along_axis(upper, top[..., None], -np.inf, axis=-1)
    return p_a, upper.max(axis=-1), n_tests


# ----------------------------------------------------------------------------------------------------
# exact validity probabilities


def multinomial_outcomes(n: int, num_classes: int) -> np.ndarray:
    """Every count vector of ``n`` draws over ``num_classes`` classes, shape ``(binom(n + C - 1, C - 1), C)``.

    Args:
        n: number of draws, an integer ``>= 0``.
        num_classes: number of classes C, an integer ``>= 1``.

    Returns:
        int64 array, one outcome per row, in lexicographic order of the bar positions.

    Raises:
        ValueError: ``n`` or ``num_classes`` not an integer in range, or more than 5e6 outcomes.

    Example:
        >>> multinomial_outcomes(2, 2).tolist()
        [[0, 2], [1, 1], [2, 0]]
    """
    n = check_positive_int("n", int(n) if isinstance(n, np.integer) else n, minimum=0)
    num_classes = check_positive_int(
        "num_classes", int(num_classes) if isinstance(num_classes, np.integer) else num_classes
    )
    if math.comb(n + num_classes - 1, num_classes - 1) > 5_000_000:
        raise ValueError("too many outcomes to enumerate (> 5e6); use fewer samples or classes, or simulate")
    if num_classes == 1:
        return np.array([[n]], dtype=np.int64)
    # stars and bars: choose the C - 1 bar positions among n + C - 1 slots
    bars = np.array(list(itertools.combinations(range(n + num_classes - 1), num_classes - 1)), dtype=np.int64)
    edges = np.concatenate([np.full((len(bars), 1), -1), bars, np.full((len(bars), 1), n + num_classes - 1)], axis=1)
    return np.diff(edges, axis=1) - 1  # (M, C) gaps between bars


def _validity(probs: np.ndarray, top: np.ndarray, p_a: np.ndarray, p_b: np.ndarray, criterion: str) -> np.ndarray:
    """Is each certificate valid? ``top``, ``p_a``, ``p_b`` of shape ``(M,)``; returns bool ``(M,)``."""
    others = np.where(np.arange(len(probs))[None, :] == top[:, None], -np.inf, probs[None, :])  # (M, C)
    true_a, true_b = probs[top], others.max(axis=1)
    if criterion == "bounds":
        return (p_a <= true_a) & (p_b >= true_b)
    # radius: the claimed Phi^{-1}-space radius (sigma/2 omitted) must not exceed the true one for that class;
    # a claim <= 0 is an abstention, always valid
    with np.errstate(divide="ignore", invalid="ignore"):
        claimed = stats.norm.ppf(p_a) - stats.norm.ppf(p_b)
        true = stats.norm.ppf(true_a) - stats.norm.ppf(true_b)
    if criterion == "class":
        # only the certified class matters: a positive radius for a class that is not the true top is invalid
        return ~(claimed > 0) | (true_a >= probs.max())
    return ~(claimed > 0) | (claimed <= true + 1e-12)


def certificate_validity_probability(
    probs: object,
    n: int,
    *,
    alpha: float,
    method: Method,
    n0: int | None = None,
    criterion: Criterion = "bounds",
) -> float:
    """Exact probability that a certificate is valid, by enumerating every multinomial outcome.

    The base classifier's smoothed class probabilities ``probs`` are known; ``n`` estimation samples (and
    ``n0`` independent selection samples, or the same ``n`` when ``n0`` is None) are multinomial. For each
    outcome the bounds of :func:`class_bounds` are computed, and the outcome's probability is added when

    * ``criterion="bounds"``: ``p_a <= probs[top]`` and ``p_b >= max_{c != top} probs[c]`` (the statement the
      radius needs),
    * ``criterion="radius"``: the claimed radius ``Phi^{-1}(p_a) - Phi^{-1}(p_b)`` (times ``sigma / 2``) is
      ``<= 0`` (abstain) or ``<=`` the true radius of the smoothed classifier for the class ``top``
      (``Phi^{-1}(probs[top]) - Phi^{-1}(max_{c != top} probs[c])``, negative if ``top`` is not the true top),
    * ``criterion="class"``: the certificate abstains or certifies the true top class (any radius); the weakest.

    A valid method gives ``>= 1 - alpha`` for every ``probs``; "bounds" validity implies "radius" validity,
    which implies "class" validity.

    Args:
        probs: true class probabilities, shape ``(C,)``, summing to 1.
        n: number of estimation samples.
        alpha: error probability in (0, 1).
        method: as in :func:`class_bounds`.
        n0: number of selection samples, or None to select the top class on the estimation samples.
        criterion: ``"bounds"``, ``"radius"`` or ``"class"``.

    Returns:
        The probability (a float in [0, 1]).

    Raises:
        ValueError: bad ``probs``, unknown method or criterion, too many outcomes to enumerate.

    References:
        Delattre et al., AISTATS 2025 (multiple testing in RS); thesis arXiv:2510.25282, ch. 6b.
    """
    a = check_probability("alpha", alpha)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 1 or p.shape[0] < 2 or np.any(p < 0) or abs(p.sum() - 1.0) > 1e-9:
        raise ValueError(f"probs must be a probability vector of shape (C,), C >= 2, summing to 1, got {probs!r}")
    check_choice("method", method, METHODS)
    check_choice("criterion", criterion, _CRITERIA)
    n_classes = p.shape[0]
    est = multinomial_outcomes(n, n_classes).astype(np.float64)  # (M, C)
    w_est = stats.multinomial.pmf(est, n, p)  # (M,)
    if n0 is None:
        b = class_bounds(est, est, alpha=a, method=method)
        valid = _validity(p, np.asarray(b.top_class), np.asarray(b.p_a), np.asarray(b.p_b), criterion)
        return float(np.sum(w_est[valid]))
    sel = multinomial_outcomes(n0, n_classes)  # (M0, C)
    w_sel = stats.multinomial.pmf(sel, n0, p)
    # the estimation step depends on the selection outcome only through the top class (or the CPM partition):
    # group selection outcomes by that state
    states: dict[tuple, float] = {}
    for row, w in zip(sel, w_sel, strict=True):
        key = _partition(row.astype(np.float64)) if method == "cpm" else (int(np.argmax(row)),)
        states[key] = states.get(key, 0.0) + float(w)
    total = 0.0
    for key, w in states.items():
        if method == "cpm":
            buckets = [list(b) for b in key]
            p_a, p_b, _ = _cpm_given_buckets(buckets, est, a)
            top = np.full(len(est), buckets[0][0])
        else:
            top = np.full(len(est), key[0])
            p_a, p_b, _ = _fixed_top_bounds(top, est, a, method)
        total += w * float(np.sum(w_est[_validity(p, top, p_a, p_b, criterion)]))
    return total
