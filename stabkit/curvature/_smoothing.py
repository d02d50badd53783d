"""Weierstrass smoothing of the loss in parameter space, and the last-layer bounds it gives.

References: thesis arXiv:2510.25282, chapter 5.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn

from stabkit._checks import (
    check_positive_float,
    check_positive_int,
    check_probability,
    check_tensor,
    resolve_generator,
)
from stabkit.curvature._functional import LossFn, ParameterSpace, check_functional_model, iterate_data
from stabkit.curvature._hessian import HessianOperator, hutchinson_trace


class SmoothedLoss(NamedTuple):
    """Monte-Carlo estimate of ``L_σ(θ) = E L(θ + ε)`` with a Student-t confidence interval."""

    mean: float
    stderr: float
    low: float
    high: float
    samples: torch.Tensor  # (n_samples,) float64, L(θ + ε_i)


def smoothed_loss(
    model: nn.Module,
    data: Any,
    *,
    sigma: float,
    n_samples: int = 100,
    params: Sequence[str] | None = None,
    loss_fn: LossFn = F.cross_entropy,
    confidence: float = 0.95,
    antithetic: bool = False,
    generator: torch.Generator | None = None,
) -> SmoothedLoss:
    """Weierstrass transform of the loss, ``L_σ(θ) = E_{ε~N(0,σ²I)} L(θ + ε)``, by Monte Carlo.

    Each sample draws one Gaussian perturbation of the chosen parameters and evaluates the mean loss over all
    of ``data`` there; the model itself is never modified.

    Args:
        model: the network (eval mode if it has BatchNorm).
        data: one ``(x, y)`` batch or an iterable of batches.
        sigma: standard deviation of the parameter noise.
        n_samples: number of perturbations, at least 2.
        params: parameter names to perturb; ``None`` means all.
        loss_fn: ``loss_fn(logits, y)``, mean-reduced.
        confidence: level of the two-sided Student-t interval ``[low, high]`` (asymptotic: it assumes the loss
            values are roughly normal, which holds well for moderate ``σ``; it is not a guaranteed bound).
        antithetic: make each sample the mean of ``L(θ + ε)`` and ``L(θ − ε)``. Still unbiased; the
            gradient term cancels, so at small ``σ`` the variance drops from ``O(σ²)`` to ``O(σ⁴)`` — what it
            takes to see the ``σ²/2 tr ∇²L`` excess at all. Costs two evaluations per sample.
        generator: source of the noise.

    Returns:
        :class:`SmoothedLoss`.

    Raises:
        ValueError: bad arguments, or a loss that is not finite at some perturbed parameters (``sigma`` too
            large for the model).

    References:
        Delattre et al., "Activation Decay by Loss Smoothing to Enhance Generalization", ICLR 2025 submission
        (OpenReview InRaT76E2S; no public code, method reconstructed). Thesis arXiv:2510.25282, ch. 5.
    """
    check_functional_model(model)
    check_positive_float("sigma", sigma)
    check_positive_int("n_samples", n_samples, minimum=2)
    check_probability("confidence", confidence)
    space = ParameterSpace(model, params)
    batches = iterate_data(data, space.device)
    theta = space.current()
    g = resolve_generator(generator, space.device)
    samples = torch.empty(n_samples, dtype=torch.float64)
    with torch.no_grad():
        for i in range(n_samples):
            eps = sigma * torch.randn(space.dim, generator=g, device=space.device, dtype=space.dtype)
            samples[i] = float(sum(w * space.loss(theta + eps, x, y, loss_fn) for x, y, w in batches))
            if antithetic:
                minus = float(sum(w * space.loss(theta - eps, x, y, loss_fn) for x, y, w in batches))
                samples[i] = (samples[i] + minus) / 2
    if not bool(torch.isfinite(samples).all()):
        raise ValueError(
            f"the loss is not finite at some perturbed parameters θ + ε with sigma={sigma!r}: the noise is too "
            "large for this model (the logits overflow); use a smaller sigma"
        )
    mean = float(samples.mean())
    stderr = float(samples.std() / math.sqrt(n_samples))
    half = float(stats.t.ppf(0.5 + confidence / 2, df=n_samples - 1)) * stderr
    return SmoothedLoss(mean, stderr, mean - half, mean + half, samples)


class SecondOrderSmoothedLoss(NamedTuple):
    """``L + σ²/2 · tr ∇²L``, the second-order Taylor approximation of the smoothed loss."""

    value: float
    loss: float
    trace: float  # Hutchinson estimate of tr ∇²L
    trace_stderr: float


def second_order_smoothed_loss(
    model: nn.Module,
    data: Any,
    *,
    sigma: float,
    n_probes: int = 100,
    params: Sequence[str] | None = None,
    loss_fn: LossFn = F.cross_entropy,
    generator: torch.Generator | None = None,
) -> SecondOrderSmoothedLoss:
    """Second-order approximation ``L_σ(θ) ≈ L(θ) + (σ²/2) tr ∇²L(θ)``, the trace by Hutchinson.

    Odd moments of a centred Gaussian vanish, so the error is ``O(σ⁴)`` (fourth derivatives); it is neither an
    upper nor a lower bound in general. Compare it with :func:`smoothed_loss` at small ``σ``.

    Args:
        model, data, params, loss_fn: as in :func:`smoothed_loss`.
        sigma: noise standard deviation.
        n_probes: Hutchinson probes (fixed count).
        generator: source of the probes.

    Returns:
        :class:`SecondOrderSmoothedLoss`; ``value`` has standard error ``σ²/2 · trace_stderr``.

    References:
        Delattre et al., ICLR 2025 submission (OpenReview InRaT76E2S). Thesis arXiv:2510.25282, ch. 5.
    """
    check_positive_float("sigma", sigma)
    H = HessianOperator(model, data, params=params, loss_fn=loss_fn)
    tr = hutchinson_trace(H, n_probes=n_probes, generator=generator)
    with torch.no_grad():
        loss = float(sum(w * H.space.loss(H.theta, x, y, loss_fn) for x, y, w in H.batches))
    return SecondOrderSmoothedLoss(loss + sigma**2 / 2 * tr.trace, loss, tr.trace, tr.stderr)


def last_layer_hessian_bound(features: torch.Tensor, *, bias: bool = False) -> float:
    """Upper bound ``½ · mean_i ‖h_i‖²`` on ``λ_max`` of the last-layer Hessian of the softmax cross-entropy.

    For ``z = W h`` and ``ℓ`` the softmax cross-entropy, ``∇²_z ℓ = diag(p) − ppᵀ ⪯ ½ I``, and
    ``∇²_W ℓ = (diag(p) − ppᵀ) ⊗ h hᵀ``, so ``λ_max(∇²_W ℓ) ≤ ½ ‖h‖²``; averaging over a batch averages the
    bound. With a bias, ``h`` is extended by a constant 1 (bound ``½ mean (‖h‖² + 1)``). Activation decay
    penalises exactly this quantity.

    Args:
        features: penultimate activations ``h``, shape ``(B, d)``.
        bias: whether the Hessian is taken w.r.t. the bias too.

    Returns:
        The bound (an upper bound on the true top eigenvalue, for every ``W`` and labels).

    References:
        Delattre et al., ICLR 2025 submission (OpenReview InRaT76E2S). Thesis arXiv:2510.25282, ch. 5.

    Raises:
        ValueError: ``features`` not a finite ``(B, d)`` tensor with ``B >= 1``.
    """
    check_tensor("features", features, ndim=2)
    if features.shape[0] == 0:
        raise ValueError("features is an empty batch; pass the activations of at least one example, shape (B, d)")
    sq = features.detach().to(torch.float64).pow(2).sum(1)  # (B,)
    return 0.5 * float((sq + (1.0 if bias else 0.0)).mean())


class LastLayerSmoothing(NamedTuple):
    """Per-example check of ``E_E ℓ((W+E)h) ≤ ℓ(Wh) + σ²C/4 ‖h‖²``."""

    smoothed: torch.Tensor  # (B,) Monte-Carlo estimate of E_E ℓ((W+E)h + b)
    stderr: torch.Tensor  # (B,) its standard error
    loss: torch.Tensor  # (B,) ℓ(Wh + b)
    bound: torch.Tensor  # (B,) ℓ(Wh + b) + σ²C/4 ‖h‖²


def last_layer_smoothing(
    weight: torch.Tensor,
    features: torch.Tensor,
    y: torch.Tensor,
    *,
    sigma: float,
    n_samples: int = 1000,
    bias: torch.Tensor | None = None,
    antithetic: bool = False,
    generator: torch.Generator | None = None,
) -> LastLayerSmoothing:
    """Smoothed last-layer cross-entropy and its quadratic upper bound, per example.

    With ``E`` of i.i.d. ``N(0, σ²)`` entries, ``E h ~ N(0, σ²‖h‖² I_C)``, and ``∇²_z ℓ ⪯ ½ I`` gives
    ``E_E ℓ((W+E)h) ≤ ℓ(Wh) + ¼ E‖Eh‖² = ℓ(Wh) + σ²C/4 ‖h‖²``. The smoothed side is estimated by Monte Carlo
    with the same ``n_samples`` matrices ``E`` for every example.

    Args:
        weight: last-layer weight ``W``, shape ``(C, d)``.
        features: penultimate activations ``h``, shape ``(B, d)``.
        y: labels, shape ``(B,)``.
        sigma: noise standard deviation on the weights.
        n_samples: number of noise matrices, at least 2.
        bias: optional bias ``(C,)`` (not perturbed).
        antithetic: average each sample with its mirror ``ℓ((W−E)h)`` (unbiased; much lower variance at small
            ``σ``, see :func:`smoothed_loss`).
        generator: source of the noise, on the device of ``weight``.

    Returns:
        :class:`LastLayerSmoothing`; ``bound`` is an upper bound on the exact smoothed loss.

    References:
        Delattre et al., ICLR 2025 submission (OpenReview InRaT76E2S). Thesis arXiv:2510.25282, ch. 5.
    """
    check_tensor("weight", weight, ndim=2)
    check_tensor("features", features, ndim=2)
    check_tensor("y", y, ndim=1)
    if features.shape[1] != weight.shape[1]:
        raise ValueError(f"features have {features.shape[1]} columns but weight has {weight.shape[1]}")
    check_positive_float("sigma", sigma)
    check_positive_int("n_samples", n_samples, minimum=2)
    W, h = weight.detach(), features.detach()
    C = W.shape[0]
    g = resolve_generator(generator, W.device)
    b = torch.zeros(C, dtype=W.dtype, device=W.device) if bias is None else bias.detach()
    with torch.no_grad():
        E = sigma * torch.randn(n_samples, *W.shape, generator=g, device=W.device, dtype=W.dtype)  # (S, C, d)
        logits = torch.einsum("scd,bd->sbc", W + E, h) + b  # (S, B, C)
        S, B = logits.shape[:2]
        losses = F.cross_entropy(logits.reshape(S * B, C), y.repeat(S), reduction="none").reshape(S, B)
        if antithetic:
            mirror = torch.einsum("scd,bd->sbc", W - E, h) + b  # (S, B, C)
            losses = (
                losses + F.cross_entropy(mirror.reshape(S * B, C), y.repeat(S), reduction="none").reshape(S, B)
            ) / 2
        loss = F.cross_entropy(h @ W.T + b, y, reduction="none")  # (B,)
    bound = loss + sigma**2 * C / 4 * h.pow(2).sum(1)
    return LastLayerSmoothing(losses.mean(0), losses.std(0) / math.sqrt(n_samples), loss, bound)


def weierstrass_hessian_bound(lipschitz: float, *, sigma: float) -> float:
    """``G·√(2/π)/σ``: bound on ``‖∇²L_σ‖₂`` for a ``G``-Lipschitz loss ``L`` smoothed at scale ``σ``.

    Tight in one dimension: ``L(θ) = G|θ|`` has ``L_σ''(0) = 2Gφ(0)/σ = G√(2/π)/σ``.

    References:
        Delattre et al., ICLR 2025 submission (OpenReview InRaT76E2S). Thesis arXiv:2510.25282, ch. 5.
    """
    check_positive_float("lipschitz", lipschitz, allow_zero=True)
    check_positive_float("sigma", sigma)
    return lipschitz * math.sqrt(2 / math.pi) / sigma
