"""One entry point for a certified spectral-norm bound: the cheapest method that reaches a requested precision."""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch

from stabkit._checks import check_positive_float, check_positive_int
from stabkit.norms._conv import (
    _check_kernel,
    _check_stride,
    _pair,
    conv_gram_iteration_bounds,
    conv_spectral_norm_exact,
)
from stabkit.norms._dense import (
    _batched_lapack,
    _f64,
    _max_abs_scale,
    _prepare,
    _round_up,
    gram_iteration_bounds,
)
from stabkit.norms._grid import _SVD_SLACK

__all__ = ["NormBound", "spectral_norm_bound"]

Method = Literal["auto", "exact", "gram"]


class NormBound(NamedTuple):
    """A certified interval ``lower ≤ σ1 ≤ upper``, the method that produced it and its Gram iterations."""

    upper: torch.Tensor
    lower: torch.Tensor
    method: str  # "exact" (float64 SVD / rfft2 + eigvalsh) or "gram" (Gram iteration with early stopping)
    n_iter: int


# Gram iterations worth trying before the exact method is cheaper. On CPU the float64 exact method (one small
# eigvalsh / SVD per block, LAPACK) beat the certified Gram iteration at every benchmark size of bench_norms.py
# (convolutions 16–256 channels, n 8–32): the budget is 0 there. On GPU a batched eigvalsh / SVD is slow and
# matrix products fast, so Gram iteration is tried first.
_BUDGET = {"cpu": 0, "cuda": 14}
# float32 Gram iteration carries a rounding margin (Note [certified rounding]); below this rtol use float64
_F32_RTOL_FLOOR = 1e-3


def _round_down(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Cast a float64 lower bound to (the real part of) ``dtype`` without rounding it up."""
    dtype = dtype.to_real() if dtype.is_complex else dtype
    y = x.to(dtype)
    return torch.where(y.to(torch.float64) > x, torch.nextafter(y, torch.zeros_like(y)), y)


def _exact_dense(W: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    s = _max_abs_scale(W).to(torch.float64).squeeze(-1).squeeze(-1)
    with _batched_lapack(W):  # Note [shared CPU] in _dense.py
        sigma = torch.linalg.matrix_norm(_f64(W) / s[..., None, None], ord=2) * s
    return _round_up(sigma * _SVD_SLACK, W.dtype), _round_down(sigma / _SVD_SLACK, W.dtype)


def _exact_conv(kernel: torch.Tensor, size, stride) -> tuple[torch.Tensor, torch.Tensor]:
    # the exact norm in float64 (FFT rounding ≲ 1e−13, inside the slack)
    sigma = conv_spectral_norm_exact(kernel.detach().to(torch.float64), size, stride=stride)
    return _round_up(sigma * _SVD_SLACK, kernel.dtype), _round_down(sigma / _SVD_SLACK, kernel.dtype)


def spectral_norm_bound(
    weight: torch.Tensor,
    input_size: int | tuple[int, int] | None = None,
    *,
    method: Method = "auto",
    rtol: float = 1e-3,
    stride: int | tuple[int, int] = 1,
    max_iter: int | None = None,
) -> NormBound:
    """Certified upper bound on the spectral norm of a dense matrix or a circular convolution, within ``rtol``.

    Dense weights (``input_size=None``; shape (..., m, n)) or convolution kernels (c_out, c_in, kh, kw) with
    circular padding on ``input_size`` inputs. ``method="auto"`` runs Gram iteration with early stopping on its
    certified interval (it stops once ``upper − lower ≤ rtol · upper``) for as many iterations as cost less than
    the exact method on this device, and falls back to the exact method (float64 SVD, or rfft2 + eigvalsh of the
    DFT blocks, with a rounding slack) when that budget is spent. Gram iteration in float32 carries a rounding
    margin of up to ~1e−3 relative (Note [certified rounding] in ``_dense.py``), so a float32 ``rtol`` below 1e−3
    is computed in float64. ``"exact"`` and ``"gram"`` force one method. The budget (0 on CPU, 14 iterations on
    CUDA) comes from ``benchmarks/bench_norms.py``, which prints the time of every method next to the one
    ``auto`` chose. For zero padding, bound the circular convolution on ``n + 2·pad`` inputs, or use
    :func:`~stabkit.norms.conv_grid_bound` (every input size).

    Args:
        weight: matrix batch (..., m, n), or real kernel (c_out, c_in, kh, kw) when ``input_size`` is given.
        input_size: spatial input size n or (h, w) of a convolution; ``None`` for a dense weight.
        method: ``"auto"``, ``"exact"`` or ``"gram"``.
        rtol: requested relative precision of the upper bound (> 0).
        stride: stride of the convolution (must divide the input size).
        max_iter: Gram iterations at most (default: the device's budget for ``"auto"``, 20 for ``"gram"``).

    Returns:
        ``NormBound(upper, lower, method, n_iter)``: the certified interval (shape (...) for dense batches, 0-dim
        for a convolution), the method used and the Gram iterations it took (0 for ``"exact"``).

    Raises:
        ValueError: bad weight (dtype, empty, NaN/inf, shape), bad ``method``, ``rtol`` or ``max_iter``.

    Example:
        >>> W = torch.randn(64, 32, generator=torch.Generator().manual_seed(0))
        >>> b = spectral_norm_bound(W, rtol=1e-2)
        >>> bool(b.upper >= torch.linalg.matrix_norm(W.double(), 2)), b.method in ("gram", "exact")
        (True, True)

    References:
        Delattre et al., ICML 2023 (arXiv:2305.16173); Sedghi et al., ICLR 2019 (arXiv:1805.10408); thesis
        (arXiv:2510.25282), chapter 3.
    """
    if method not in ("auto", "exact", "gram"):
        raise ValueError(f"method must be 'auto', 'exact' or 'gram', got {method!r}")
    rtol = check_positive_float("rtol", rtol)
    conv = input_size is not None
    if conv:
        weight = _check_kernel(weight)
        size = _pair("input_size", input_size)
        stride = _check_stride(stride, size)
    else:
        weight = _prepare("weight", weight)
    dev = weight.device.type if weight.device.type in _BUDGET else "cuda"
    if max_iter is None:
        max_iter = _BUDGET[dev] if method == "auto" else 20
    max_iter = check_positive_int("max_iter", max_iter, minimum=0 if method == "auto" else 1)
    if method == "exact" or max_iter == 0:
        up, lo = _exact_conv(weight, size, stride) if conv else _exact_dense(weight)
        return NormBound(up, lo, "exact", 0)
    w = weight
    if rtol < _F32_RTOL_FLOOR and weight.dtype in (torch.float32, torch.complex64):
        w = _f64(weight)
    if conv:
        b = conv_gram_iteration_bounds(w, size, n_iter=max_iter, tol=rtol, stride=stride)
    else:
        b = gram_iteration_bounds(w, n_iter=max_iter, tol=rtol)
    done = bool(((b.upper - b.lower) <= rtol * b.upper).all())
    if method == "gram" or done:
        up = _round_up(b.upper.to(torch.float64), weight.dtype)
        return NormBound(up, _round_down(b.lower.to(torch.float64), weight.dtype), "gram", b.n_iter)
    up, lo = _exact_conv(weight, size, stride) if conv else _exact_dense(weight)
    return NormBound(up, lo, "exact", 0)
