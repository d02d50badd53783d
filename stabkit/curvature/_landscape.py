"""1-D and 2-D slices of the loss landscape along filter-normalised or eigenvector directions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from stabkit._checks import check_tensor, resolve_generator
from stabkit.curvature._functional import LossFn, ParameterSpace, check_functional_model, iterate_data


def filter_normalized_direction(
    model: nn.Module,
    *,
    params: Sequence[str] | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A Gaussian direction rescaled filter by filter to the norms of the model's filters.

    For every parameter with at least two dimensions, each filter (slice along dim 0: an output neuron of a
    linear layer, an output channel of a convolution) of the random direction is rescaled to the norm of the
    corresponding filter of the weights; one-dimensional parameters (biases, BatchNorm affine) get zero, as in
    Li et al. This removes the scale invariance of ReLU networks from the picture.

    Args:
        model: the network.
        params: parameter names spanning the space (as for :class:`HessianOperator`); ``None`` means all.
        generator: source of the direction.

    Returns:
        A flat direction, shape ``(dim,)``, in the layout of ``ParameterSpace(model, params)``.

    References:
        H. Li, Z. Xu, G. Taylor, C. Studer, T. Goldstein, "Visualizing the Loss Landscape of Neural Nets",
        NeurIPS 2018. Thesis arXiv:2510.25282, ch. 5.
    """
    space = ParameterSpace(model, params)
    g = resolve_generator(generator, space.device)
    weights = space.unflatten(space.current())
    out = {}
    for name, w in weights.items():
        d = torch.randn(w.shape, generator=g, device=w.device, dtype=w.dtype)
        if w.ndim <= 1:
            out[name] = torch.zeros_like(w)
            continue
        # per-filter norms: (out, 1, ..., 1) so that they broadcast over the filter
        dims = tuple(range(1, w.ndim))
        w_norm = torch.linalg.vector_norm(w, dim=dims, keepdim=True)
        d_norm = torch.linalg.vector_norm(d, dim=dims, keepdim=True)
        out[name] = d * w_norm / d_norm.clamp_min(torch.finfo(w.dtype).tiny)
    return space.flatten(out)


class Slice1D(NamedTuple):
    """Loss along ``θ + α d``."""

    alphas: torch.Tensor  # (A,)
    losses: torch.Tensor  # (A,) float64


class Slice2D(NamedTuple):
    """Loss on the plane ``θ + α d₁ + β d₂``."""

    alphas: torch.Tensor  # (A,)
    betas: torch.Tensor  # (B,)
    losses: torch.Tensor  # (A, B) float64


def _check_direction(name: str, d: torch.Tensor, space: ParameterSpace) -> torch.Tensor:
    check_tensor(name, d, ndim=1)
    if d.shape[0] != space.dim:
        raise ValueError(f"{name} must have shape ({space.dim},) (chosen parameters), got {tuple(d.shape)}")
    return d.to(device=space.device, dtype=space.dtype)


def loss_slice_1d(
    model: nn.Module,
    data: Any,
    direction: torch.Tensor,
    alphas: torch.Tensor,
    *,
    params: Sequence[str] | None = None,
    loss_fn: LossFn = F.cross_entropy,
) -> Slice1D:
    """Mean loss over ``data`` at ``θ + α·direction`` for each ``α`` (the model is not modified).

    Args:
        model: the network (eval mode if it has BatchNorm).
        data: one ``(x, y)`` batch or an iterable of batches.
        direction: flat direction ``(dim,)`` (from :func:`filter_normalized_direction` or an eigenvector).
        alphas: step sizes ``(A,)``.
        params: the parameter names the direction lives on; ``None`` means all.
        loss_fn: ``loss_fn(logits, y)``, mean-reduced.

    Returns:
        :class:`Slice1D`.
    """
    check_functional_model(model)
    check_tensor("alphas", alphas, ndim=1)
    space = ParameterSpace(model, params)
    d = _check_direction("direction", direction, space)
    batches = iterate_data(data, space.device)
    theta = space.current()
    losses = torch.empty(len(alphas), dtype=torch.float64)
    with torch.no_grad():
        for i, a in enumerate(alphas.tolist()):
            losses[i] = float(sum(w * space.loss(theta + a * d, x, y, loss_fn) for x, y, w in batches))
    return Slice1D(alphas, losses)


def loss_slice_2d(
    model: nn.Module,
    data: Any,
    directions: tuple[torch.Tensor, torch.Tensor],
    alphas: torch.Tensor,
    betas: torch.Tensor,
    *,
    params: Sequence[str] | None = None,
    loss_fn: LossFn = F.cross_entropy,
) -> Slice2D:
    """Mean loss over ``data`` at ``θ + α d₁ + β d₂`` on the grid ``alphas × betas``.

    Args:
        model, data, params, loss_fn: as in :func:`loss_slice_1d`.
        directions: ``(d₁, d₂)``, flat ``(dim,)`` each.
        alphas: ``(A,)`` steps along ``d₁``.
        betas: ``(B,)`` steps along ``d₂``.

    Returns:
        :class:`Slice2D` with ``losses[i, j]`` at ``(alphas[i], betas[j])``.
    """
    check_functional_model(model)
    check_tensor("alphas", alphas, ndim=1)
    check_tensor("betas", betas, ndim=1)
    space = ParameterSpace(model, params)
    d1 = _check_direction("directions[0]", directions[0], space)
    d2 = _check_direction("directions[1]", directions[1], space)
    batches = iterate_data(data, space.device)
    theta = space.current()
    losses = torch.empty(len(alphas), len(betas), dtype=torch.float64)
    with torch.no_grad():
        for i, a in enumerate(alphas.tolist()):
            for j, b in enumerate(betas.tolist()):
                point = theta + a * d1 + b * d2
                losses[i, j] = float(sum(w * space.loss(point, x, y, loss_fn) for x, y, w in batches))
    return Slice2D(alphas, betas, losses)
