"""ℓ2 adversarial attacks: projected gradient descent and a minimal-perturbation search.

Own implementation: the usual attack packages (advertorch, torchattacks, autoattack) depend on torchvision.
An attack finds *some* adversarial example; the distance it reports is an **upper** bound on the true
distance to the decision boundary, whereas a certificate (:mod:`stabkit.certify`) is a **lower** bound.
Together they bracket the truth (``certified radius ≤ true distance ≤ attack distance``), which is what the
soundness audit tests.

Note [margin objective]
    The attacks minimise the margin ``z_y − max_{j≠y} z_j`` (the Carlini–Wagner objective) rather than the
    cross-entropy: the margin is exactly the quantity the Lipschitz certificate bounds, its gradient does
    not vanish on confidently classified points, and it is scale-free in the softmax temperature.
    ``objective="ce"`` gives the usual Madry et al. PGD.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from stabkit._checks import check_positive_float, check_positive_int, check_tensor, resolve_generator

__all__ = ["AttackResult", "MinimalPerturbation", "pgd_l2", "minimal_perturbation", "classification_margin"]


class AttackResult(NamedTuple):
    """Outcome of an attack, per input.

    Attributes:
        adversarial: ``(B, ...)`` the point of lowest margin found, within the budget (``x`` itself if none
            better).
        success: ``(B,)`` bool, the prediction at ``adversarial`` differs from the label.
        margin: ``(B,)`` ``z_y − max_{j≠y} z_j`` at ``adversarial`` (negative on success).
    """

    adversarial: torch.Tensor
    success: torch.Tensor
    margin: torch.Tensor


class MinimalPerturbation(NamedTuple):
    """Smallest adversarial perturbation found, per input.

    Attributes:
        radius: ``(B,)`` ``‖adversarial − x‖₂`` of the closest adversarial example found: an **upper**
            bound on the distance to the decision boundary. 0 for inputs already misclassified, ``inf``
            where none was found within ``eps_max``.
        adversarial: ``(B, ...)`` that example (``x`` where none was found).
    """

    radius: torch.Tensor
    adversarial: torch.Tensor


def classification_margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``z_y − max_{j≠y} z_j`` per row: positive iff the row is classified as ``y`` (ties aside).

    Shape:
        logits ``(B, K)``, labels ``(B,)`` → ``(B,)``.
    """
    true = logits.gather(1, labels[:, None]).squeeze(1)  # (B,)
    others = logits.scatter(1, labels[:, None], -torch.inf)  # (B, K), true class masked out
    return true - others.max(dim=1).values


def _norms(v: torch.Tensor) -> torch.Tensor:
    """Per-sample ℓ2 norms of a ``(B, ...)`` tensor, shaped ``(B, 1, ..., 1)`` for broadcasting."""
    return v.flatten(1).norm(dim=1).reshape(-1, *([1] * (v.ndim - 1)))


def _uniform_ball(shape: torch.Size, eps: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Uniform samples in ℓ2 balls of radii ``eps`` (B,): Gaussian direction, radius ``eps·U^(1/d)``."""
    d = math.prod(shape[1:])
    direction = torch.randn(shape, generator=generator, device=eps.device, dtype=eps.dtype)
    direction = direction / _norms(direction).clamp_min(1e-30)
    u = torch.rand(shape[0], generator=generator, device=eps.device, dtype=eps.dtype)
    return direction * (eps * u ** (1.0 / d)).reshape(-1, *([1] * (len(shape) - 1)))


def _check_attack_inputs(model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_tensor("x", x, min_ndim=2)
    check_tensor("labels", labels, ndim=1)
    if labels.shape[0] != x.shape[0] or labels.dtype != torch.int64:
        raise ValueError(
            f"labels must be an int64 tensor of shape ({x.shape[0]},), "
            f"got {labels.dtype} of shape {tuple(labels.shape)}"
        )


def _budget(eps: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-sample ℓ2 budget as a ``(B,)`` tensor on x's device and dtype."""
    if isinstance(eps, torch.Tensor):
        check_tensor("eps", eps)
        budget = eps.to(device=x.device, dtype=x.dtype).reshape(-1)
        if budget.numel() == 1:
            budget = budget.expand(x.shape[0])
        if budget.shape[0] != x.shape[0] or bool((budget < 0).any()):
            raise ValueError(f"eps must be a number or a (B,) tensor of radii >= 0 with B = {x.shape[0]}")
        return budget.clone()
    return torch.full((x.shape[0],), check_positive_float("eps", eps, allow_zero=True), device=x.device, dtype=x.dtype)


def pgd_l2(
    model: nn.Module,
    x: torch.Tensor,
    labels: torch.Tensor,
    *,
    eps: float | torch.Tensor,
    n_iter: int = 50,
    step_size: float | None = None,
    n_restarts: int = 1,
    n_targets: int = 0,
    objective: Literal["margin", "ce"] = "margin",
    clip: tuple[float, float] | None = None,
    generator: torch.Generator | None = None,
) -> AttackResult:
    """Projected gradient descent in ℓ2 (untargeted), keeping the best point found over all iterates.

    Each step moves by ``step_size·eps`` along the normalised gradient of the objective and projects back
    onto the ball ``‖δ‖₂ ≤ eps`` (and onto the box ``clip``, if given). The first start is ``x`` itself;
    the ``n_restarts − 1`` others are uniform random points of the ball, drawn from ``generator``.
    The model is evaluated in eval mode (its mode is restored); its parameters receive no gradient.

    Args:
        model: maps ``(B, ...)`` to logits ``(B, K)``.
        x: ``(B, ...)`` clean inputs.
        labels: ``(B,)`` int64 classes to move away from (the true labels, or the predictions for an audit).
        eps: ℓ2 budget, a number or a ``(B,)`` tensor (one budget per input; 0 leaves that input unchanged).
        n_iter: gradient steps per run.
        step_size: step length as a fraction of ``eps``; default ``2.5 / n_iter`` (Madry et al.), so that a
            run can cross the ball and come back.
        n_restarts: number of starts (≥ 1).
        n_targets: 0 for one untargeted run per start; k > 0 for k targeted runs per start, each pushing one
            of the k strongest wrong classes of the clean point above the true class. The untargeted margin
            objective can stall in the local optimum of the steepest competitor, even on a linear model;
            targeting every class (``n_targets = K − 1``) finds the exact worst case of a linear model.
        objective: ``"margin"`` (default, see Note [margin objective]) or ``"ce"``.
        clip: optional ``(low, high)`` box for the inputs (e.g. ``(0, 1)`` for images). Leave it None to
            attack the whole ball, which is what an ℓ2 certificate claims.
        generator: torch generator for the random restarts (see ``stabkit._checks.resolve_generator``).

    Returns:
        :class:`AttackResult`. ``success`` is a certificate of *non*-robustness (an explicit
        counterexample); failure proves nothing.

    Shape:
        x ``(B, ...)``, labels ``(B,)`` → adversarial ``(B, ...)``, success ``(B,)``, margin ``(B,)``.

    Raises:
        ValueError: on non-finite input, mismatched shapes, a negative budget or bad options.

    Example:
        >>> model = torch.nn.Linear(2, 2)
        >>> x, y = torch.zeros(4, 2), torch.zeros(4, dtype=torch.int64)
        >>> res = pgd_l2(model, x, y, eps=10.0)

    References:
        Madry, Makelov, Schmidt, Tsipras, Vladu, "Towards Deep Learning Models Resistant to Adversarial
        Attacks", ICLR 2018; Carlini & Wagner, "Towards Evaluating the Robustness of Neural Networks", S&P
        2017 (margin objective). Thesis ch. 2 and 4.
    """
    _check_attack_inputs(model, x, labels)
    n_iter = check_positive_int("n_iter", n_iter)
    n_restarts = check_positive_int("n_restarts", n_restarts)
    n_targets = check_positive_int("n_targets", n_targets, minimum=0)
    if objective not in ("margin", "ce"):
        raise ValueError(f"objective must be 'margin' or 'ce', got {objective!r}")
    step = 2.5 / n_iter if step_size is None else check_positive_float("step_size", step_size)
    if clip is not None and not clip[0] < clip[1]:
        raise ValueError(f"clip must be a (low, high) pair with low < high, got {clip!r}")
    budget = _budget(eps, x)  # (B,)
    bshape = (-1, *([1] * (x.ndim - 1)))  # broadcast (B,) against (B, ...)
    gen = resolve_generator(generator, x.device) if n_restarts > 1 else None

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            clean_logits = model(x)  # (B, K)
        best_margin = classification_margin(clean_logits, labels)  # (B,)
        best_x = x.detach().clone()
        num_classes = clean_logits.shape[1]
        if not 0 <= n_targets < num_classes:
            raise ValueError(f"n_targets must lie in [0, {num_classes - 1}] (classes other than y), got {n_targets}")
        # targeted runs aim at the strongest competitors of the clean point, strongest first
        competitors = clean_logits.scatter(1, labels[:, None], -torch.inf).argsort(dim=1, descending=True)
        targets = [None] if n_targets == 0 else [competitors[:, t] for t in range(n_targets)]
        for restart in range(n_restarts):
            for target in targets:
                delta = torch.zeros_like(x) if restart == 0 else _uniform_ball(x.shape, budget, gen)
                delta = _project(x, delta, budget, clip)
                for it in range(n_iter + 1):
                    delta.requires_grad_(True)
                    logits = model(x + delta)  # (B, K)
                    margin = classification_margin(logits, labels)  # (B,)
                    improved = margin.detach() < best_margin
                    best_margin = torch.where(improved, margin.detach(), best_margin)
                    best_x = torch.where(improved.reshape(bshape), (x + delta).detach(), best_x)
                    if it == n_iter:  # the last iterate is evaluated, not stepped from
                        break
                    (grad,) = torch.autograd.grad(_attack_loss(logits, labels, target, objective).sum(), delta)
                    with torch.no_grad():
                        direction = grad / _norms(grad).clamp_min(1e-30)  # unit ℓ2 per sample
                        delta = _project(x, delta + step * budget.reshape(bshape) * direction, budget, clip)
    finally:
        model.train(was_training)
    return AttackResult(best_x, best_margin < 0, best_margin)


def _attack_loss(
    logits: torch.Tensor, labels: torch.Tensor, target: torch.Tensor | None, objective: str
) -> torch.Tensor:
    """Per-sample loss that the attack *maximises*, shape ``(B,)``."""
    if target is None:
        if objective == "margin":
            return -classification_margin(logits, labels)
        return F.cross_entropy(logits, labels, reduction="none")
    if objective == "margin":  # push the target logit above the true one
        return logits.gather(1, target[:, None]).squeeze(1) - logits.gather(1, labels[:, None]).squeeze(1)
    return -F.cross_entropy(logits, target, reduction="none")


def _project(
    x: torch.Tensor, delta: torch.Tensor, budget: torch.Tensor, clip: tuple[float, float] | None
) -> torch.Tensor:
    """Project ``delta`` onto ``‖δ‖ ≤ budget`` per sample, then ``x + δ`` onto the box (stays in the ball)."""
    delta = delta.detach()
    scale = (budget.reshape(-1, *([1] * (x.ndim - 1))) / _norms(delta).clamp_min(1e-30)).clamp(max=1.0)
    delta = delta * scale
    if clip is not None:
        # clamping toward the box only shrinks |δ| coordinate-wise (x is inside the box), so δ stays
        # in the ball
        delta = (x + delta).clamp(clip[0], clip[1]) - x
    return delta


@torch.no_grad()
def _closest_on_segment(
    model: nn.Module,
    x: torch.Tensor,
    adversarial: torch.Tensor,
    labels: torch.Tensor,
    success: torch.Tensor,
    *,
    n_steps: int,
) -> torch.Tensor:
    """Pull each successful adversarial point back along the segment from ``x`` while it stays adversarial.

    Bisection on ``t ∈ [0, 1]`` for the smallest ``x + t·(adversarial − x)`` still misclassified (the
    misclassified set along a segment need not be an interval; this keeps a point that is misclassified).
    Points with ``success`` False are returned unchanged.
    """
    bshape = (-1, *([1] * (x.ndim - 1)))
    delta = adversarial - x
    lo = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)  # (B,) t known (or assumed) robust
    hi = torch.ones_like(lo)  # (B,) t known adversarial
    for _ in range(n_steps):
        t = 0.5 * (lo + hi)
        adv = classification_margin(model(x + t.reshape(bshape) * delta), labels) < 0
        hi = torch.where(adv, t, hi)
        lo = torch.where(adv, lo, t)
    return torch.where(success.reshape(bshape), x + hi.reshape(bshape) * delta, adversarial)


def minimal_perturbation(
    model: nn.Module,
    x: torch.Tensor,
    labels: torch.Tensor,
    *,
    eps_max: float,
    n_bisect: int = 10,
    n_iter: int = 50,
    n_restarts: int = 1,
    n_targets: int = 0,
    clip: tuple[float, float] | None = None,
    generator: torch.Generator | None = None,
) -> MinimalPerturbation:
    """Smallest ℓ2 adversarial perturbation found by bisection over the PGD budget.

    First attack every input with budget ``eps_max``; for the inputs broken, bisect the budget ``n_bisect``
    times (PGD at the midpoint: success moves the upper end to the norm of the perturbation found, after
    pulling it back along its segment from ``x`` while it stays adversarial; failure moves the lower end).
    The reported radius is the norm of an explicit adversarial example, hence an **upper** bound on the
    distance to the decision boundary, to compare with a certified radius (a lower bound).

    Args:
        model: maps ``(B, ...)`` to logits ``(B, K)``.
        x: ``(B, ...)`` inputs.
        labels: ``(B,)`` int64 classes (true labels; inputs already misclassified get radius 0).
        eps_max: largest budget tried.
        n_bisect: bisection steps; the bracket shrinks by about ``2^-n_bisect`` relative to ``eps_max``.
        n_iter, n_restarts, n_targets, clip, generator: passed to :func:`pgd_l2`.

    Returns:
        :class:`MinimalPerturbation` (radius ``inf`` where no adversarial was found within ``eps_max``).

    Raises:
        ValueError: on bad input (see :func:`pgd_l2`).
    """
    _check_attack_inputs(model, x, labels)
    eps_max = check_positive_float("eps_max", eps_max)
    n_bisect = check_positive_int("n_bisect", n_bisect, minimum=0)
    gen = resolve_generator(generator, x.device)
    attack = dict(n_iter=n_iter, n_restarts=n_restarts, n_targets=n_targets, clip=clip, generator=gen)

    bshape = (-1, *([1] * (x.ndim - 1)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            clean_wrong = classification_margin(model(x), labels) < 0  # (B,)
        first = pgd_l2(model, x, labels, eps=eps_max, **attack)
        found = first.success
        best_x = _closest_on_segment(model, x, first.adversarial, labels, found, n_steps=n_bisect)
        best_x = torch.where(found.reshape(bshape), best_x, x)
        upper = torch.where(found, (best_x - x).flatten(1).norm(dim=1), torch.inf)  # (B,)
        upper = torch.where(clean_wrong, torch.zeros_like(upper), upper)
        best_x = torch.where(clean_wrong.reshape(bshape), x, best_x)
        lower = torch.zeros_like(upper)
        active = (found & ~clean_wrong).nonzero().squeeze(1)  # indices still bracketed
        for _ in range(n_bisect):
            if active.numel() == 0:
                break
            xa, ya = x[active], labels[active]
            mid = 0.5 * (lower[active] + upper[active])  # (A,)
            res = pgd_l2(model, xa, ya, eps=mid, **attack)
            adv = _closest_on_segment(model, xa, res.adversarial, ya, res.success, n_steps=n_bisect)
            dist = (adv - xa).flatten(1).norm(dim=1)
            closer = res.success & (dist < upper[active])
            upper[active] = torch.where(closer, dist, upper[active])
            best_x[active] = torch.where(closer.reshape(bshape), adv, best_x[active])
            # a failed attack proves nothing, so a later success may land below `lower`: keep lower <= upper
            lower[active] = torch.minimum(torch.where(res.success, lower[active], mid), upper[active])
    finally:
        model.train(was_training)
    return MinimalPerturbation(upper, best_x)
