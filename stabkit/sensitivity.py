"""Input sensitivity of a network at data points (chapter 1): exact local Lipschitz constants.

The local ℓ2 Lipschitz constant of a differentiable network f at x is the spectral norm of its input Jacobian
``J_f(x)``. For the small inputs of the introductory chapter (2-D points, 8×8 digits) the Jacobian is formed
exactly with ``torch.func.jacrev`` and its norm taken by SVD; for large inputs use the power iteration of
:mod:`stabkit.lipschitz`, which is a lower estimate.
"""

from __future__ import annotations

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
    check_tensor("x", x, min_ndim=2)
    if x.shape[0] == 0:
        raise ValueError("x is an empty batch; pass at least one point, shape (N, *input_shape)")
    check_positive_int("batch_size", batch_size)
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def f(xi: torch.Tensor) -> torch.Tensor:  # one point (*D) -> (K,), any output shape flattened
        return functional_call(model, (params, buffers), (xi.unsqueeze(0),)).reshape(-1)

    jac = vmap(jacrev(f))
    norms = []
    for start in range(0, len(x), batch_size):
        j = jac(x[start : start + batch_size])  # (B, K, *D)
        norms.append(torch.linalg.matrix_norm(j.reshape(len(j), -1, x[0].numel()), ord=2))  # (B,)
    return torch.cat(norms)
