"""Input sensitivity of a network at data points (chapter 1): exact local Lipschitz constants.

The local ℓ2 Lipschitz constant of a differentiable network f at x is the spectral norm of its input Jacobian
``J_f(x)``. For the small inputs of the introductory chapter (2-D points, 8×8 digits) the Jacobian is formed
exactly with ``torch.func.jacrev`` and its norm taken by SVD; for large inputs use the power iteration of
:mod:`stabkit.lipschitz`, which is a lower estimate.

Two functions of the network matter: the logits ``f`` (:func:`input_jacobian_norms`, the local Lipschitz
constant of the network) and the *margin* ``f_c − f_c'`` between the predicted class and the runner-up
(:func:`margin_gradient_norms`), the only function of the logits that decides the class; its gradient norm is what
a margin certificate divides by. :func:`boundary_distances` measures where a 2-D map lies with respect to the
decision boundary, in input space.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

from stabkit._checks import check_positive_int, check_tensor


def input_jacobian_norms(model: nn.Module, x: torch.Tensor, *, batch_size: int = 256) -> torch.Tensor:
    """Exact spectral norm of the input Jacobian of ``model`` at each point of ``x``.

    Args:
        model: maps a batch (N, *input_shape) to outputs (N, K); evaluated in its current mode, without
            updating any buffer.
        x: the points, (N, *input_shape).
        batch_size: points per vectorised Jacobian computation (memory: batch_size · K · prod(input_shape)).

    Returns:
        ``‖J_f(x_i)‖₂`` for each point, shape (N,). This is the exact local Lipschitz constant at x_i, so it is a
        lower bound on the global Lipschitz constant of ``model``.

    Shape:
        x: (N, *D) → (N,)

    Raises:
        ValueError: ``x`` not a finite batch of at least one point, or a bad ``batch_size``.

    Example:
        >>> import torch
        >>> layer = torch.nn.Linear(2, 2, bias=False)
        >>> with torch.no_grad():
        ...     _ = layer.weight.copy_(torch.tensor([[3.0, 0.0], [0.0, 1.0]]))
        >>> input_jacobian_norms(layer, torch.ones(4, 2)).tolist()  # σ₁ of the weight, at every point
        [3.0, 3.0, 3.0, 3.0]

    References:
        Thesis arXiv:2510.25282, ch. 1 (input sensitivity).
    """
    norms = [torch.linalg.matrix_norm(j, ord=2) for j, _ in _jacobians(model, x, batch_size)]  # (B,) each
    return torch.cat(norms)


def margin_gradient_norms(model: nn.Module, x: torch.Tensor, *, batch_size: int = 256) -> torch.Tensor:
    """Norm of the input gradient of the margin between the predicted class and the runner-up, at each point.

    At each point x_i the two largest logits ``c`` (predicted) and ``c'`` (runner-up) are fixed, and the exact
    gradient ``∇_x (f_c − f_c')(x_i)`` is taken from the input Jacobian. For two classes this is
    ``‖∇_x (f_1 − f_0)‖₂``, the local Lipschitz constant of the decision function; unlike the logit Jacobian norm
    it ignores directions that move all logits together and cannot change the class. Since ``f_c − f_c'`` is a
    difference of two rows of the Jacobian, it is at most ``√2·‖J_f(x_i)‖₂``.

    Args:
        model: maps a batch (N, *input_shape) to logits (N, K), K ≥ 2; evaluated in its current mode.
        x: the points, (N, *input_shape).
        batch_size: points per vectorised Jacobian computation.

    Returns:
        ``‖∇_x (f_c − f_c')(x_i)‖₂`` for each point, shape (N,). Ties between the two largest logits are broken
        by ``torch.topk``.

    Shape:
        x: (N, *D) → (N,)

    Raises:
        ValueError: ``x`` not a finite batch of at least one point, a bad ``batch_size``, or outputs that are not
            (N, K) logits with K ≥ 2.

    Example:
        >>> import torch
        >>> layer = torch.nn.Linear(2, 2, bias=False)
        >>> with torch.no_grad():
        ...     _ = layer.weight.copy_(torch.tensor([[3.0, 0.0], [0.0, 4.0]]))
        >>> margin_gradient_norms(layer, torch.ones(2, 2)).tolist()  # ‖(0, 4) − (3, 0)‖ = 5
        [5.0, 5.0]

    References:
        Thesis arXiv:2510.25282, ch. 1 (input sensitivity); Tsuzuku et al., *Lipschitz-Margin Training*,
        arXiv:1802.04034 (the margin over the Lipschitz constant as a certified radius).
    """
    out = []
    for j, z in _jacobians(model, x, batch_size):
        if z.ndim != 2 or z.shape[1] < 2:
            raise ValueError(
                f"margin_gradient_norms needs (N, K) logits with K >= 2, got output shape {tuple(z.shape)}"
            )
        top2 = torch.topk(z, 2, dim=1).indices  # (B, 2): predicted, runner-up
        rows = torch.arange(len(j), device=j.device)
        out.append(torch.linalg.vector_norm(j[rows, top2[:, 0]] - j[rows, top2[:, 1]], dim=1))
    return torch.cat(out)


def _jacobians(model: nn.Module, x: torch.Tensor, batch_size: int):
    """Yield (Jacobian (B, K, prod(D)), output (B, *out)) per batch of points, exactly (``jacrev`` under ``vmap``)."""
    check_tensor("x", x, min_ndim=2)
    if x.shape[0] == 0:
        raise ValueError("x is an empty batch; pass at least one point, shape (N, *input_shape)")
    check_positive_int("batch_size", batch_size)
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def f(xi: torch.Tensor) -> torch.Tensor:  # one point (*D) -> (K,), any output shape flattened
        return functional_call(model, (params, buffers), (xi.unsqueeze(0),)).reshape(-1)

    jac = vmap(jacrev(f))
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size]
        j = jac(xb)  # (B, K, *D)
        with torch.no_grad():
            z = functional_call(model, (params, buffers), (xb,))
        yield j.reshape(len(j), -1, x[0].numel()), z


class BoundaryDistances(NamedTuple):
    """Result of :func:`boundary_distances`."""

    distances: np.ndarray  # (n2, n1): distance of each grid point to the nearest boundary crossing
    crossings: np.ndarray  # (M, 2): the boundary crossings found on the grid edges, (x1, x2)


def boundary_distances(x1: np.ndarray, x2: np.ndarray, margin: np.ndarray) -> BoundaryDistances:
    """Euclidean distance of each point of a regular 2-D grid to the decision boundary ``margin = 0``.

    The boundary is located on every grid edge whose two ends have margins of opposite sign (or a zero), at the
    zero of the linear interpolation along that edge; the distance of a grid point is its distance to the nearest
    such crossing. For a boundary that is a straight line the crossings lie on it exactly, so the distances are
    exact up to the spacing of the crossings along the line (at most one grid step).

    Args:
        x1, x2: coordinates of the grid, each (n2, n1) as from ``numpy.meshgrid(..., indexing="xy")``; n1, n2 ≥ 2.
        margin: the decision function at the grid points, (n2, n1); the boundary is its zero level set.

    Returns:
        :class:`BoundaryDistances`: ``distances`` (n2, n1) and the ``crossings`` (M, 2).

    Raises:
        ValueError: arrays of different or non-2-D shapes, a grid smaller than 2×2, non-finite values, or a margin
            of one sign on the whole grid (no boundary crosses it).

    Example:
        >>> import numpy as np
        >>> x1, x2 = np.meshgrid(np.linspace(-1, 1, 5), np.linspace(-1, 1, 5), indexing="xy")
        >>> boundary_distances(x1, x2, x1 - 0.25).distances[0].tolist()  # the line x1 = 0.25
        [1.25, 0.75, 0.25, 0.25, 0.75]
    """
    arrays = [np.asarray(a, dtype=float) for a in (x1, x2, margin)]
    if any(a.ndim != 2 for a in arrays) or len({a.shape for a in arrays}) != 1:
        raise ValueError(f"x1, x2 and margin must be 2-D arrays of one shape, got {[a.shape for a in arrays]}")
    if min(arrays[0].shape) < 2:
        raise ValueError(f"the grid must be at least 2×2, got {arrays[0].shape}")
    if not all(np.isfinite(a).all() for a in arrays):
        raise ValueError("x1, x2 and margin must be finite")
    x1, x2, m = arrays
    pts = np.stack([x1, x2], axis=-1)
    crossings = []
    for a, b in (
        ((slice(None), slice(1, None)), (slice(None), slice(None, -1))),
        ((slice(1, None),), (slice(None, -1),)),
    ):
        ma, mb = m[a], m[b]
        cross = (ma == 0) | (np.sign(ma) != np.sign(mb))
        with np.errstate(invalid="ignore", divide="ignore"):
            t = np.where(ma == mb, 0.0, ma / (ma - mb))  # zero of the interpolation, from a towards b
        crossings.append((pts[a] + t[..., None] * (pts[b] - pts[a]))[cross])
    c = np.concatenate(crossings)
    if len(c) == 0:
        raise ValueError("the margin has one sign on the whole grid: no decision boundary crosses it")
    flat = pts.reshape(-1, 2)
    dist = np.empty(len(flat))
    for start in range(0, len(flat), 4096):  # memory: 4096 × M distances at a time
        d = flat[start : start + 4096, None, :] - c[None]
        dist[start : start + 4096] = np.sqrt((d**2).sum(-1)).min(1)
    return BoundaryDistances(distances=dist.reshape(m.shape), crossings=c)
