"""The multiple-testing counter-example of Delattre et al. (AISTATS 2025), under the event its official code defines.

The thesis (arXiv:2510.25282, ch. 6b) reports four exact probabilities for the class probabilities
``p = (0.5, 0.05, 0.45)``, ``n = 10`` samples and ``alpha = 0.05``: 0.99966 (Bonferroni) and 0.78902 (no
correction) for the probability margin, 1.0 and 0.92125 in ``Phi^{-1}`` space. They come from the event that the
file ``counter_example.py`` of the repository ``blaisedelattre/bridging_the_gap_rs`` defines (its function
``counterexample``). This module implements that event from its definition, so that the four numbers can be
regenerated and set beside stabkit's own validity criteria (:func:`stabkit.certify.certificate_validity_probability`).

Note [what the official event measures]
    Class 0 is the top class, known in advance (no selection step). From multinomial counts ``x`` of ``n`` draws,
    two-sided Clopper–Pearson intervals give a lower bound ``low_0`` and upper bounds ``up_c``. The event is that
    the *empirical* margin ``min_{c != 0} (x_0 - x_c) / n`` exceeds the *certified* margin ``low_0 - up_B``. It
    compares two random quantities with each other, not a bound with the true probabilities: "valid" here is not
    "the bounds hold" (``low_0 <= p_0`` and ``up_B >= max_{c != 0} p_c``), the statement a certified radius needs.
    With the Bonferroni correction every interval is at level ``2 alpha / C`` (``alpha / C`` per side) and
    ``up_B = max_{c != 0} up_c``; without it, the intervals are at level ``alpha`` and ``up_B`` is the bound of
    class 1 alone, whose probability is 0.05 in the thesis example, while the true runner-up is class 2 (0.45).
    The failure probability of the uncorrected arm is therefore mostly the effect of bounding the wrong class,
    not of skipping the correction. In ``Phi^{-1}`` space the same comparison is made after ``Phi^{-1}``; the
    empirical frequencies are clipped to ``[eps, 1 - eps]`` with ``eps = 1e-12`` first (the bounds are not), as in
    the official code.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy import stats

from stabkit.certify._intervals import clopper_pearson, multinomial_outcomes

_CORRECTIONS = ("bonferroni", "none")
_SPACES = ("probability", "phi_inverse")
_EMPIRICAL_CLIP = 1e-12  # the official code clips the empirical frequencies before Phi^{-1}


def empirical_margin_event_probability(
    probs: object,
    n: int,
    *,
    alpha: float,
    correction: Literal["bonferroni", "none"],
    runner_up: int | None = None,
    space: Literal["probability", "phi_inverse"] = "probability",
) -> float:
    """Exact probability that the empirical margin of class 0 exceeds its certified margin.

    Enumerates every multinomial outcome ``x`` of ``n`` draws from ``probs`` (class 0 is the top class, known in
    advance) and adds the probability of those where

        ``min_{c != 0} (x_0 - x_c) / n  >  low_0 - up_B``                          (``space="probability"``)
        ``min_{c != 0} (z(x_0) - z(x_c)) > Phi^{-1}(low_0) - Phi^{-1}(up_B)``      (``space="phi_inverse"``)

    with ``z(x) = Phi^{-1}(clip(x / n, 1e-12, 1 - 1e-12))``, ``low_0`` and ``up_c`` the ends of two-sided
    Clopper–Pearson intervals at level ``alpha' = 2 alpha / C`` (``correction="bonferroni"``) or ``alpha``
    (``"none"``), and ``up_B = max_{c != 0} up_c`` (``runner_up=None``) or ``up_{runner_up}`` (one fixed class).
    The official counter-example pairs Bonferroni with ``runner_up=None`` and no correction with ``runner_up=1``.
    This is the event of the official code, not the validity of the bounds: see Note [what the official event
    measures] in this module; :func:`stabkit.certify.certificate_validity_probability` gives the latter.

    Args:
        probs: true class probabilities, shape ``(C,)``, ``C >= 2``, summing to 1; class 0 is the certified one.
        n: number of samples (``>= 1``).
        alpha: error probability in (0, 1).
        correction: ``"bonferroni"`` (two-sided intervals at ``2 alpha / C``) or ``"none"`` (at ``alpha``).
        runner_up: the class whose upper bound is used, or None for the maximum over all classes ``c != 0``.
        space: ``"probability"`` or ``"phi_inverse"`` (the margins compared after ``Phi^{-1}``).

    Returns:
        The probability of the event, a float in [0, 1].

    Raises:
        ValueError: ``probs`` not a probability vector, ``n < 1``, ``alpha`` outside (0, 1), unknown
            ``correction`` or ``space``, ``runner_up`` not a class index other than 0, or too many outcomes.

    Example:
        >>> p = (0.5, 0.05, 0.45)
        >>> round(empirical_margin_event_probability(p, 10, alpha=0.05, correction="none", runner_up=1), 5)
        0.78902

    References:
        Delattre, Caillon, Allassonnière, Meunier, Araujo, "Bridging the theoretical gap in randomized
        smoothing", AISTATS 2025 (its code: repository ``blaisedelattre/bridging_the_gap_rs``, file
        ``counter_example.py``); thesis arXiv:2510.25282, ch. 6b.
    """
    a = float(alpha) if isinstance(alpha, (int, float, np.floating)) and not isinstance(alpha, bool) else np.nan
    if not 0.0 < a < 1.0:
        raise ValueError(f"alpha must be a real number in (0, 1) (e.g. 0.05), got {alpha!r}")
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 1 or p.shape[0] < 2 or np.any(p < 0) or abs(p.sum() - 1.0) > 1e-9:
        raise ValueError(f"probs must be a probability vector of shape (C,), C >= 2, summing to 1, got {probs!r}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    if correction not in _CORRECTIONS:
        raise ValueError(f"correction must be one of {_CORRECTIONS}, got {correction!r}")
    if space not in _SPACES:
        raise ValueError(f"space must be one of {_SPACES}, got {space!r}")
    n_classes = p.shape[0]
    if runner_up is not None and (
        isinstance(runner_up, bool) or not isinstance(runner_up, (int, np.integer)) or not 1 <= runner_up < n_classes
    ):
        raise ValueError(f"runner_up must be None or a class index in [1, {n_classes - 1}], got {runner_up!r}")
    level = 2.0 * a / n_classes if correction == "bonferroni" else a  # two-sided level of every interval

    x = multinomial_outcomes(int(n), n_classes)  # (M, C)
    weight = stats.multinomial.pmf(x, int(n), p)  # (M,)
    ci = clopper_pearson(x, int(n), alpha=level, sided="two")
    low_top = np.asarray(ci.low)[:, 0]  # (M,)
    up = np.asarray(ci.high)[:, 1:]  # (M, C - 1)
    up_b = up.max(axis=1) if runner_up is None else up[:, runner_up - 1]
    if space == "probability":
        freq = x / n
        empirical = (freq[:, :1] - freq[:, 1:]).min(axis=1)
        certified = low_top - up_b
    else:
        z = stats.norm.ppf(np.clip(x / n, _EMPIRICAL_CLIP, 1.0 - _EMPIRICAL_CLIP))  # (M, C), finite
        empirical = (z[:, :1] - z[:, 1:]).min(axis=1)
        with np.errstate(divide="ignore"):
            # low_0 = 0 when x_0 = 0 and up_c = 1 when x_c = n: the certified margin is -inf, never +inf - inf
            certified = stats.norm.ppf(low_top) - stats.norm.ppf(up_b)
    return min(float(weight[empirical > certified].sum()), 1.0)  # the pmf sums to 1 up to rounding
