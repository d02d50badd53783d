"""Activation decay: penalise the squared norm of the penultimate activations (thesis arXiv:2510.25282, ch. 5)."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from stabkit._checks import check_positive_float
from stabkit.curvature._functional import LossFn

FeatureFn = Callable[[nn.Module, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class Penultimate(NamedTuple):
    """Logits and the activations that enter the last layer."""

    logits: torch.Tensor  # (B, C)
    features: torch.Tensor  # (B, d), flattened


def _find_module(model: nn.Module, layer: str | nn.Module) -> nn.Module:
    if isinstance(layer, nn.Module):
        if not any(m is layer for m in model.modules()):
            raise ValueError("layer is not a submodule of model")
        return layer
    named = dict(model.named_modules())
    if layer not in named:
        raise ValueError(f"unknown layer {layer!r}; the model has modules {[n for n in named if n]}")
    return named[layer]


def penultimate(model: nn.Module, x: torch.Tensor, *, layer: str | nn.Module) -> Penultimate:
    """Run ``model(x)`` and capture the input of ``layer`` (the classifier) with a forward pre-hook.

    Args:
        model: the network.
        x: inputs.
        layer: the last layer, by name (``"fc"``) or as the module; its input is the penultimate activation.

    Returns:
        :class:`Penultimate`; gradients flow through both parts.
    """
    module = _find_module(model, layer)
    captured: list[torch.Tensor] = []

    def hook(_m: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        captured.append(args[0])

    handle = module.register_forward_pre_hook(hook)
    try:
        logits = model(x)
    finally:
        handle.remove()  # the hook must not outlive the call, even when the forward pass fails
    if len(captured) != 1:
        raise ValueError(f"layer was called {len(captured)} times in one forward pass; expected exactly once")
    return Penultimate(logits, captured[0].flatten(1))


class ActivationDecay:
    """Training objective ``loss_fn(z, y) + λ · mean_batch ‖h‖²`` with ``h`` the penultimate activations.

    A callable ``objective(model, x, y) -> loss`` for :func:`stabkit.train.fit`. The penalty is the bound
    ``½‖h‖² ≥ λ_max(∇²_W ℓ)`` on the last-layer curvature (see :func:`last_layer_hessian_bound`), and, through
    ``E ℓ((W+E)h) ≤ ℓ(Wh) + σ²C/4 ‖h‖²``, a surrogate of the loss smoothed over the last-layer weights with
    ``λ = σ²C/4``. It costs one extra squared norm per batch.

    Args:
        lam: penalty weight ``λ ≥ 0`` (0 gives the plain objective).
        layer: the last layer, by name or module; ``h`` is its input, captured by a forward pre-hook.
        features: alternatively, ``features(model, x) -> (logits, h)``; give exactly one of
            ``layer``/``features``.
        loss_fn: ``loss_fn(logits, y)``, default cross-entropy.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
        >>> x, y = torch.ones(5, 3), torch.zeros(5, dtype=torch.int64)
        >>> objective = ActivationDecay(lam=1e-3, layer="2")  # h = the input of the last layer, model[2]
        >>> loss = objective(model, x, y)  # cross-entropy + 1e-3 · mean ‖h‖², differentiable
        >>> loss.shape
        torch.Size([])

    With :func:`stabkit.train.fit`, pass ``objective=objective``.

    References:
        Delattre et al., "Activation Decay by Loss Smoothing to Enhance Generalization", ICLR 2025 submission
        (OpenReview InRaT76E2S; no public code: which layers and which λ are open, we use the penultimate
        layer). Thesis arXiv:2510.25282, ch. 5.
    """

    def __init__(
        self,
        *,
        lam: float,
        layer: str | nn.Module | None = None,
        features: FeatureFn | None = None,
        loss_fn: LossFn = F.cross_entropy,
    ) -> None:
        self.lam = check_positive_float("lam", lam, allow_zero=True)
        if (layer is None) == (features is None):
            raise ValueError("give exactly one of layer= (the last layer, hooked) or features= (a function)")
        self.layer = layer
        self.features = features
        self.loss_fn = loss_fn

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.features is not None:
            logits, h = self.features(model, x)
            h = h.flatten(1)
        else:
            logits, h = penultimate(model, x, layer=self.layer)  # type: ignore[arg-type]
        return self.loss_fn(logits, y) + self.lam * h.pow(2).sum(1).mean()

    def __repr__(self) -> str:
        return f"ActivationDecay(lam={self.lam}, layer={self.layer!r})"
