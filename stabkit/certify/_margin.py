"""Deterministic ℓ2 certificates from a Lipschitz bound: the margin certificate and its LLN refinement.

Both certificates turn one forward pass into a radius: no input inside the ℓ2 ball of that radius around
``x`` changes the prediction. They are *sound* only if the Lipschitz constant passed in is a true upper
bound of the network's ℓ2 Lipschitz constant; :func:`stabkit.certify.margin.soundness_audit` checks that
empirically. Both return the core :class:`stabkit.certify.Certificate`.

Note [strict certificates]
    Tsuzuku et al. certify radius ε iff ``z_y − max_{j≠y} z_j > √2·L·ε``: a strict inequality. The radius
    returned here is the supremum ``margin / (√2 L)``; a point counts as certified at ε iff ``radius > ε``
    (strict), and at ε = 0 iff it is correctly classified (so that the ε = 0 column is the clean accuracy,
    ties aside).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from stabkit._checks import check_positive_float, check_positive_int, check_tensor
from stabkit.certify._types import Certificate, as_certificate

__all__ = [
    "margin_certificate",
    "lln_certificate",
    "certified_accuracy",
    "certify_model",
    "network_lipschitz",
]


def _check_logits(logits: torch.Tensor) -> torch.Tensor:
    check_tensor("logits", logits, ndim=2)
    if logits.shape[1] < 2:
        raise ValueError(f"logits must have at least 2 classes (shape (B, K), K >= 2), got shape {tuple(logits.shape)}")
    return logits


def margin_certificate(logits: torch.Tensor, *, lipschitz: float) -> Certificate:
    """Margin certificate of a network whose logit map is ``lipschitz``-Lipschitz in ℓ2.

    Each difference ``z_y − z_j`` is ``√2·L``-Lipschitz (its gradient is ``(e_y − e_j)ᵀ J`` and
    ``‖e_y − e_j‖ = √2``), so the prediction cannot change before the margin ``z_y − max_{j≠y} z_j`` is
    used up: ``radius = margin / (√2 L)``. The radius is a *lower* bound on the true distance to the
    decision boundary.

    Args:
        logits: ``(B, K)`` outputs of the network.
        lipschitz: an upper bound ``L`` on the ℓ2 Lipschitz constant of ``x ↦ logits``.

    Returns:
        :class:`Certificate` with the top class and the radius ``(z_top − z_second) / (√2 L)``.

    Shape:
        logits ``(B, K)`` → prediction ``(B,)``, radius ``(B,)`` (dtype of ``logits``).

    Raises:
        ValueError: if ``logits`` is not a finite ``(B, K ≥ 2)`` tensor or ``lipschitz`` is not positive.

    Example:
        >>> cert = margin_certificate(torch.tensor([[3.0, 1.0, 0.0]]), lipschitz=1.0)
        >>> round(cert.radius.item(), 4)  # 2 / √2
        1.4142

    References:
        Tsuzuku, Sato, Sugiyama, "Lipschitz-Margin Training", NeurIPS 2018 (arXiv 1802.04034). Thesis
        (arXiv:2510.25282) ch. 2 and 4.
    """
    _check_logits(logits)
    lipschitz = check_positive_float("lipschitz", lipschitz)
    top2 = logits.topk(2, dim=1)  # values (B, 2), sorted
    margin = top2.values[:, 0] - top2.values[:, 1]  # (B,) >= 0
    return Certificate(top2.indices[:, 0], _divide(margin, math.sqrt(2.0) * lipschitz))


def _divide(gap: torch.Tensor, denominator: float) -> torch.Tensor:
    """``gap / denominator`` (a radius) without overflowing to ``inf``, which means "no class can ever win".

    A tiny Lipschitz constant (``1e-300``) is not representable in float32: the quotient is formed in float64
    and saturates at the largest finite value of ``gap``'s dtype, a radius too large to matter but still finite.
    Rounding the float64 quotient to float32 may round up by half an ulp; the radius is a supremum compared
    strictly (Note [strict certificates]), as the float32 quotient was before.
    """
    radius = gap.double() / denominator
    finite_max = torch.finfo(gap.dtype).max
    return torch.where(torch.isinf(gap), gap.double(), radius.clamp_max(finite_max)).to(gap.dtype)


def lln_certificate(logits: torch.Tensor, weight: torch.Tensor, *, lipschitz: float = 1.0) -> Certificate:
    """Certificate of a network ``z = W h(x) + b`` whose body ``h`` is ``lipschitz``-Lipschitz.

    The difference ``z_y − z_j = (w_y − w_j)ᵀ h(x) + b_y − b_j`` is ``‖w_y − w_j‖·L``-Lipschitz, so the
    radius is ``min_{j≠y} (z_y − z_j) / (‖w_y − w_j‖ L)`` with y the top class. It is never smaller than
    the margin certificate of the whole network with constant ``L·‖W‖₂``, since
    ``‖w_y − w_j‖ = ‖(e_y − e_j)ᵀW‖ ≤ √2‖W‖₂``. With the last-layer normalisation (LLN) the rows ``w_j``
    have unit norm, and ``weight`` must be that *normalised* matrix, the one the forward pass multiplies by.

    Args:
        logits: ``(B, K)`` outputs ``W h(x) + b``.
        weight: ``(K, d)`` the last layer's effective weight matrix (rows normalised for LLN).
        lipschitz: an upper bound on the ℓ2 Lipschitz constant of the body ``x ↦ h(x)``.

    Returns:
        :class:`Certificate`; radius ``inf`` if the top row equals every other row it is compared
        with.

    Shape:
        logits ``(B, K)``, weight ``(K, d)`` → prediction ``(B,)``, radius ``(B,)``.

    Raises:
        ValueError: on non-finite input, a ``weight`` whose row count differs from the number of classes,
            or a non-positive ``lipschitz``.

    References:
        Singla, Singla, Feizi, "Improved deterministic l2 robustness on CIFAR-10 and CIFAR-100", ICLR 2022
        (LLN); used by Meunier et al. ICML 2022 (CPL) and Araujo et al. ICLR 2023 (SLL). Thesis
        (arXiv:2510.25282) ch. 4.
    """
    _check_logits(logits)
    check_tensor("weight", weight, ndim=2)
    if weight.shape[0] != logits.shape[1]:
        raise ValueError(
            f"weight must have one row per class: logits has {logits.shape[1]} classes, "
            f"weight has shape {tuple(weight.shape)}"
        )
    lipschitz = check_positive_float("lipschitz", lipschitz)
    weight = weight.to(dtype=logits.dtype)
    prediction = logits.argmax(dim=1)  # (B,)
    # pairwise row distances ‖w_i − w_j‖ for all class pairs: (K, K), tiny next to the batch
    row_dist = torch.cdist(weight.unsqueeze(0), weight.unsqueeze(0)).squeeze(0)  # (K, K)
    dist = row_dist[prediction]  # (B, K)
    gap = logits.gather(1, prediction[:, None]) - logits  # (B, K), >= 0
    # a pair with identical rows can never swap order (its logit gap is a constant): infinite radius for it
    per_class = torch.where(dist > 0, gap / dist.clamp_min(torch.finfo(dist.dtype).tiny), torch.inf)
    per_class.scatter_(1, prediction[:, None], torch.inf)  # the top class is not a competitor
    return Certificate(prediction, _divide(per_class.min(dim=1).values, lipschitz))


def certified_accuracy(
    certificate: Certificate | tuple, labels: torch.Tensor, epsilons: Sequence[float] | torch.Tensor
) -> torch.Tensor:
    """Fraction of inputs both correctly classified and certified at each radius of a grid.

    Works for every certificate of :mod:`stabkit.certify` (margin, LLN, randomized smoothing, LVM-RS): it reads
    their common fields ``prediction`` and ``radius``. An abstention (``ABSTAIN``) is never correct.

    Args:
        certificate: a :class:`Certificate` or any certificate that starts with its fields (e.g.
            :func:`stabkit.certify.smoothing.Smooth.certify`'s).
        labels: ``(B,)`` true classes.
        epsilons: radii ``ε ≥ 0`` (e.g. ``[0, 36/255, 72/255, 108/255, 1]``).

    Returns:
        ``(E,)`` float64 tensor on the certificate's device; entry e is
        ``mean(prediction == label and radius > ε_e)``, and the clean accuracy where ``ε_e = 0`` (see
        Note [strict certificates]). Non-increasing in ε.

    Raises:
        ValueError: if shapes disagree, the batch is empty, a radius is negative or NaN, or ``epsilons`` is
            empty or has a negative entry.
    """
    prediction, radius = as_certificate(certificate)
    check_tensor("labels", labels, ndim=1)
    if labels.shape != prediction.shape:
        raise ValueError(f"labels has shape {tuple(labels.shape)} but the certificate has {tuple(prediction.shape)}")
    if prediction.numel() == 0:
        raise ValueError("the certificate is empty: certified accuracy needs at least one input")
    if radius.shape != prediction.shape:
        raise ValueError(f"radius has shape {tuple(radius.shape)} but prediction has {tuple(prediction.shape)}")
    if radius.is_floating_point() and bool(torch.isnan(radius).any()):
        raise ValueError("the certificate has NaN radii; recompute it from finite logits")
    if bool((radius < 0).any()):
        raise ValueError("the certificate has negative radii; a certified radius is >= 0 (0 where not certified)")
    eps = torch.as_tensor(epsilons, dtype=torch.float64, device=radius.device).reshape(-1)  # (E,)
    if eps.numel() == 0 or bool((eps < 0).any()) or not bool(torch.isfinite(eps).all()):
        raise ValueError(f"epsilons must be a non-empty list of finite radii >= 0, got {epsilons!r}")
    correct = prediction == labels.to(prediction.device)  # (B,)
    # compare in the radius' precision, so that ε = 0.1 and a float32 radius 0.1 are equal (not certified)
    eps_r = eps.to(radius.dtype) if radius.is_floating_point() else eps
    certified = (radius[None, :] > eps_r[:, None]) | (eps_r[:, None] == 0)  # (E, B)
    return (certified & correct[None, :]).double().mean(dim=1)


def network_lipschitz(model: nn.Module, *, head: bool = True) -> float:
    """The ℓ2 Lipschitz constant that a network *guarantees* by construction.

    A model declares its guarantee through a ``lipschitz_constant(head=...)`` method (as
    :class:`stabkit.models.LipschitzNet` does; ``head=False`` excludes the LLN last layer) or a ``lipschitz``
    attribute (a number, or a method returning one; the stabkit layers' class attribute). This is the
    constant the certificate uses; it is a claim, checked by :func:`stabkit.certify.margin.soundness_audit` and
    cross-checked by the Gram-iteration product bound of :mod:`stabkit.lipschitz`.

    Args:
        model: the network.
        head: include the last layer; False gives the constant of the body, for the LLN certificate (only
            meaningful with ``lipschitz_constant``; a plain ``lipschitz`` claim is returned as is).

    Raises:
        ValueError: if the model declares nothing (pass ``lipschitz=`` explicitly then), or declares an
            infinite constant (an unconstrained network: bound it, e.g. with :mod:`stabkit.lipschitz`).
    """
    method = getattr(model, "lipschitz_constant", None)
    if callable(method):
        claim = method(head=head)
    else:
        claim = getattr(model, "lipschitz", None)
        if callable(claim):
            claim = claim()
    if claim is None:
        raise ValueError(
            f"{type(model).__name__} declares no Lipschitz guarantee (no `lipschitz_constant()` or "
            "`lipschitz`); pass lipschitz=<an upper bound of its l2 Lipschitz constant> explicitly"
        )
    if float(claim) == float("inf"):
        raise ValueError(
            f"{type(model).__name__} guarantees no finite Lipschitz constant (an unconstrained network); "
            "pass lipschitz=<an upper bound>, e.g. the product of its layers' Gram-iteration bounds"
        )
    return check_positive_float("model Lipschitz constant", float(claim))


def _lln_weight(model: nn.Module) -> torch.Tensor | None:
    """The normalised last-layer weight if the model ends with an LLN layer, else None (duck-typed)."""
    last = model
    while True:
        children = list(last.children())
        if not children:
            break
        last = children[-1]
    getter = getattr(last, "normalized_weight", None)
    return getter() if callable(getter) else None


@torch.no_grad()
def certify_model(
    model: nn.Module,
    x: torch.Tensor,
    *,
    lipschitz: float | None = None,
    batch_size: int = 1024,
    lln: bool | None = None,
) -> Certificate:
    """Certify a batch with a Lipschitz network: LLN certificate if it ends in an LLN layer, else margin.

    The model is evaluated in eval mode (its mode is restored afterwards), by chunks of ``batch_size``.

    Args:
        model: the network; its guarantee is read by :func:`network_lipschitz` (``head=False`` for the LLN
            certificate) unless ``lipschitz`` is given.
        x: ``(B, ...)`` inputs, on the model's device.
        lipschitz: upper bound of the network's Lipschitz constant (of the body, for LLN); overrides the
            claim.
        batch_size: evaluation chunk size.
        lln: force (True) or forbid (False) the LLN certificate; None detects a last layer with a
            ``normalized_weight()`` method.

    Returns:
        :class:`Certificate` for the ``B`` inputs.
    """
    check_tensor("x", x, min_ndim=1)
    check_positive_int("batch_size", batch_size)
    was_training = model.training
    model.eval()
    try:
        logits = torch.cat([model(chunk) for chunk in x.split(batch_size)])  # (B, K)
        weight = _lln_weight(model) if lln is not False else None
    finally:
        model.train(was_training)
    if lln and weight is None:
        raise ValueError("lln=True but the model's last layer has no normalized_weight() method")
    if lipschitz is None:  # the body's constant for LLN, the whole network's otherwise
        lip = network_lipschitz(model, head=weight is None)
    else:
        lip = check_positive_float("lipschitz", lipschitz)
    if weight is not None:
        return lln_certificate(logits, weight, lipschitz=lip)
    return margin_certificate(logits, lipschitz=lip)
