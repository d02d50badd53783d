"""Soundness audit of a deterministic certificate: attack every certified point inside its own certified ball.

A certificate is a claim: "no input within ``radius`` of ``x`` changes the prediction". It is only as good
as the Lipschitz constant it was computed with. The audit tries to refute the claim with PGD (budget = the
certified radius, slightly shrunk) on every certified point; any success is a *violation*, an explicit
counterexample proving that the claimed constant is not an upper bound. Zero violations is evidence, not
proof (an attack can miss), so the audit must also be shown to catch a model that lies — see
``tests/test_attacks.py``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from stabkit._checks import check_positive_float, check_positive_int, check_tensor, resolve_generator
from stabkit.attacks import pgd_l2
from stabkit.certify._margin import certify_model
from stabkit.certify._types import Certificate

__all__ = ["AuditResult", "soundness_audit"]


class AuditResult(NamedTuple):
    """Outcome of :func:`soundness_audit`.

    Attributes:
        n_points: number of inputs audited.
        n_certified: inputs with a positive certified radius (the ones attacked).
        n_violations: certified inputs whose prediction the attack changed inside the (shrunk) certified
            ball.
        violations: ``(n_violations,)`` int64 indices of those inputs.
        radius: ``(B,)`` certified radii.
        adversarial: ``(B, ...)`` the attack's point of lowest margin for each input (the counterexample, for
            a violation; ``x`` itself where not attacked).
        attack_margin: ``(B,)`` lowest margin (w.r.t. the clean prediction) the attack reached; negative
            marks a violation, and its value on the other points shows how close the attack came
            (``margin`` itself where not attacked).
    """

    n_points: int
    n_certified: int
    n_violations: int
    violations: torch.Tensor
    radius: torch.Tensor
    adversarial: torch.Tensor
    attack_margin: torch.Tensor


def soundness_audit(
    model: nn.Module,
    x: torch.Tensor,
    *,
    lipschitz: float | None = None,
    certificate: Certificate | None = None,
    rtol: float = 1e-3,
    n_iter: int = 50,
    n_restarts: int = 1,
    n_targets: int = 3,
    batch_size: int = 512,
    generator: torch.Generator | None = None,
) -> AuditResult:
    """Attack every certified input with a budget equal to its certified radius and count the violations.

    The attack moves away from the model's *own* prediction (a certificate claims the prediction is
    constant on the ball, whether or not it is correct), so no labels are needed. The budget is
    ``(1 − rtol)·radius``: a certificate that is exactly tight (e.g. an orthogonal linear map) has points
    of zero margin on the sphere of radius ``radius``, and floating-point rounding there must not count as a
    violation.

    Args:
        model: the network.
        x: ``(B, ...)`` inputs, on the model's device.
        lipschitz: the claimed Lipschitz constant (default: the model's own claim, see
            :func:`stabkit.certify.margin.network_lipschitz`). Ignored if ``certificate`` is given.
        certificate: precomputed certificate of ``x`` (e.g. from :func:`stabkit.certify.margin.certify_model`).
        rtol: relative shrinkage of the budget, in ``[0, 1)``.
        n_iter, n_restarts, n_targets: PGD effort per point (see :func:`stabkit.attacks.pgd_l2`); the
            targeted runs (capped at K − 1 classes) are what finds the worst direction of a network that is
            nearly linear around the point.
        batch_size: attack chunk size.
        generator: torch generator for the attack's random restarts.

    Returns:
        :class:`AuditResult`; ``n_violations == 0`` for a sound certificate.

    Raises:
        ValueError: on bad input or options.

    References:
        The attack-side bracket of certified radii is standard (e.g. Tsuzuku et al. 2018; Araujo et al. 2023
        report PGD and AutoAttack accuracy beside certified accuracy); making it a per-point audit is
        stabkit's. Thesis ch. 4.
    """
    check_tensor("x", x, min_ndim=2)
    rtol = check_positive_float("rtol", rtol, allow_zero=True)
    if rtol >= 1:
        raise ValueError(f"rtol must lie in [0, 1), got {rtol!r}")
    check_positive_int("batch_size", batch_size)
    if certificate is None:
        certificate = certify_model(model, x, lipschitz=lipschitz, batch_size=batch_size)
    prediction, radius = certificate
    if prediction.shape[0] != x.shape[0]:
        raise ValueError(f"certificate covers {prediction.shape[0]} inputs but x has {x.shape[0]}")

    attack_margin = torch.empty(x.shape[0], dtype=x.dtype, device=x.device)
    adversarial = torch.empty_like(x)
    gen = resolve_generator(generator, x.device)  # one stream across chunks
    # an infinite radius (LLN with identical rows) cannot be attacked with a finite budget: cap it, the
    # claim is then only tested up to a large finite ball
    certified = radius > 0  # (B,)
    finite_radius = torch.where(torch.isfinite(radius), radius, torch.zeros_like(radius))
    cap = float(finite_radius.max()) * 10 + 1.0 if bool(certified.any()) else 1.0
    budget = torch.where(torch.isfinite(radius), radius, torch.full_like(radius, cap)) * (1.0 - rtol)
    budget = torch.where(certified, budget, torch.zeros_like(budget)).to(x.dtype)
    n_targets = min(check_positive_int("n_targets", n_targets, minimum=0), _num_classes(model, x) - 1)
    for idx in torch.arange(x.shape[0], device=x.device).split(batch_size):
        res = pgd_l2(
            model,
            x[idx],
            prediction[idx],
            eps=budget[idx],
            n_iter=n_iter,
            n_restarts=n_restarts,
            n_targets=n_targets,
            generator=gen,
        )
        attack_margin[idx] = res.margin
        adversarial[idx] = res.adversarial
    violated = certified & (attack_margin < 0)
    violations = violated.nonzero().squeeze(1)
    return AuditResult(
        n_points=int(x.shape[0]),
        n_certified=int(certified.sum()),
        n_violations=int(violations.numel()),
        violations=violations,
        radius=radius,
        adversarial=adversarial,
        attack_margin=attack_margin,
    )


@torch.no_grad()
def _num_classes(model: nn.Module, x: torch.Tensor) -> int:
    was_training = model.training
    model.eval()
    try:
        return int(model(x[:1]).shape[1])
    finally:
        model.train(was_training)
