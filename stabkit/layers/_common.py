"""Shared pieces of the Lipschitz layers: argument parsing, initialisation, Gram bounds.

Note [Gram bound]
-----------------
Every rescaled or residual layer here needs a diagonal ``diag(t)`` that dominates a Gram operator ``G = AᵀA``
(``G ⪯ diag(t)``). The weighted Gershgorin bound gives one in closed form: for a symmetric ``G`` and positive
weights ``q``, ``t_i = Σ_j |G_ij| q_j / q_i`` satisfies ``G ⪯ diag(t)`` because
``xᵀ(diag(t) − G)x ≥ ½ Σ_ij |G_ij| (√(q_j/q_i)|x_i| − √(q_i/q_j)|x_j|)² ≥ 0`` (Araujo et al. 2023, Thm 3).
With ``q = 1`` this is AOL (Prach & Lampert 2022). Spectral Rescaling (Delattre et al. 2024) tightens it by
applying the same bound to the Gram power ``G^(2^(T−1))`` and taking the ``2^-(T−1)``-th root: the map
``X ↦ X^p`` is operator monotone for ``0 < p ≤ 1`` (Löwner–Heinz), so ``G^(2^(T−1)) ⪯ diag(s)`` implies
``G ⪯ diag(s^(2^-(T−1)))``. ``T = 1`` is the plain bound; ``T → ∞`` tends to ``‖G‖ I``.

For a convolution with kernel ``K`` (c_out, c_in, kh, kw) the Gram operator ``KᵀK`` (or ``KKᵀ``) is itself a
convolution, whose kernel is ``conv2d(Kᵀ, Kᵀ, padding=(kh−1, kw−1))`` (shape (c, c, 2kh−1, 2kw−1)); summing
``|·|`` over (j, u, v) gives the Gershgorin row sums of the operator on the infinite grid, which dominate
those of any zero-padded or circular restriction, so the bound holds for every input size. Squaring the
operator is self-convolving its (symmetric) kernel again.

The powers are rescaled by their Frobenius norm at every step (the scale kept in log space) so that float32
does not overflow; the norm is taken without gradient, which does not change the gradient because the scale
cancels exactly in the returned value.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from stabkit._checks import check_positive_int, resolve_generator


def pair_odd(name: str, kernel_size: object) -> tuple[int, int]:
    """Parse ``kernel_size`` (int or pair) and check both are odd (padding k//2 keeps the size)."""
    ks = int_pair(name, kernel_size, minimum=1)
    for k in ks:
        if k % 2 == 0:
            raise ValueError(
                f"{name} must be odd (padding k//2 keeps the size only for odd kernels), got {kernel_size!r}"
            )
    return int(ks[0]), int(ks[1])


def int_pair(name: str, value: object, *, minimum: int) -> tuple[int, int]:
    """Parse an int or a pair of ints, each ``>= minimum``; a clear ValueError otherwise (floats, bools, ...)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if not isinstance(value, tuple | list) or len(value) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints >= {minimum}, got {value!r}")
    for v in value:
        check_positive_int(name, v, minimum=minimum)
    return int(value[0]), int(value[1])


def normal_(
    tensor: torch.Tensor, std: float, generator: torch.Generator | None
) -> torch.Tensor:  # in-place init from an explicit generator
    g = resolve_generator(generator, tensor.device)
    with torch.no_grad():
        tensor.copy_(torch.randn(tensor.shape, generator=g, device=tensor.device, dtype=tensor.dtype) * std)
    return tensor


def uniform_(tensor: torch.Tensor, bound: float, generator: torch.Generator | None) -> torch.Tensor:
    g = resolve_generator(generator, tensor.device)
    with torch.no_grad():
        u = torch.rand(tensor.shape, generator=g, device=tensor.device, dtype=tensor.dtype)
        tensor.copy_((2 * u - 1) * bound)
    return tensor


def gram_kernel(kernel: torch.Tensor) -> torch.Tensor:
    """Kernel of the Gram operator ``KKᵀ`` of a conv with kernel ``K`` (n, m, kh, kw), on the n side.

    Shape: (n, m, kh, kw) → (n, n, 2kh−1, 2kw−1).
    """
    kh, kw = kernel.shape[-2:]
    return F.conv2d(kernel, kernel, padding=(kh - 1, kw - 1))


def unit_scale(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weight / s, s)`` with ``s`` the largest |entry| (detached; 1 for an all-zero weight).

    Every layer guarantee here is a homogeneous function of the weight, so the layers compute it from the
    unit-scale weight and put the scale back analytically: float32 weights anywhere in 1e-30 … 1e30 then give
    finite, correct rescalings (the Gram matrix of a raw 1e20 weight overflows). ``s`` is a constant for autograd,
    which leaves the gradient exact (the expression is the same function of the weight for every constant ``s``).
    See Note [rescaling] in ``stabkit/norms/_dense.py``.
    """
    s = weight.detach().abs().amax()
    s = torch.where(torch.isfinite(s) & (s > 0), s, torch.ones_like(s))
    return weight / s, s


def _rowsum_bound(m: torch.Tensor, logr: torch.Tensor, p: float, log_q: torch.Tensor | None) -> torch.Tensor:
    """``(Σ_j |M_ij| q_j/q_i)^p · exp(p·logr)`` for M (n, n) or a kernel (n, n, sh, sw).

    Zero entries are raised to the smallest normal number: the Gershgorin bound holds for any symmetric
    ``a_ij ≥ |M_ij|``, and no row sum is then 0 (a dead unit would divide by zero). With weights ``q`` the sum is
    taken in log space (``logsumexp``), so ``|log q|`` in the hundreds neither overflows nor underflows.
    """
    tiny = torch.finfo(m.dtype).tiny
    a = m.abs()
    if a.ndim == 4:
        a = a.sum(dim=(2, 3))  # (n, n): sum over the spatial offsets
    a = a.clamp_min(tiny)
    if log_q is None:
        log_s = torch.log(a.sum(dim=1))
    else:
        log_s = torch.logsumexp(torch.log(a) + log_q[None, :], dim=1) - log_q  # log Σ_j |G_ij| q_j / q_i
    # Raising a row sum keeps G ⪯ diag(t) true. Rows below eps × the largest (dead or nearly dead units) are raised
    # to that level, so that their scale t^(-1/2) and its gradient stay moderate; an all-zero Gram matrix (a zero
    # weight: any t > 0 is valid) gets t = 1.
    top = log_s.detach().max()
    floor = torch.where(top < math.log(tiny) + 20.0, torch.zeros_like(top), top + math.log(torch.finfo(m.dtype).eps))
    log_s = torch.where(top < math.log(tiny) + 20.0, torch.zeros_like(log_s), torch.maximum(log_s, floor))
    return torch.exp(p * (log_s + logr))


def gram_bound(gram: torch.Tensor, *, n_iter: int = 1, log_q: torch.Tensor | None = None) -> torch.Tensor:
    """Diagonal ``t`` with ``G ⪯ diag(t)`` from a Gram matrix (n, n) or Gram kernel (n, n, s, s).

    See Note [Gram bound]. ``log_q`` holds the log of the Gershgorin weights (``None`` = all ones). Kernels are
    squared by direct self-convolution here; :func:`conv_gram_bound` does it in the Fourier domain. Form the Gram
    matrix from a unit-scale weight (:func:`unit_scale`) so that it does not overflow; an all-zero Gram matrix gives
    a finite positive ``t``.

    Shape: (n, n) or (n, n, sh, sw) → (n,).
    """
    m = gram
    logr = gram.new_zeros(())
    for _ in range(n_iter - 1):
        r = torch.linalg.vector_norm(m.detach())
        r = torch.where(torch.isfinite(r) & (r > 0), r, torch.ones_like(r))  # a zero iterate stays zero
        m = m / r
        logr = 2 * (logr + torch.log(r))
        if m.ndim == 2:
            m = m @ m  # G is symmetric: G Gᵀ = G²
        else:
            sh, sw = m.shape[-2:]
            m = F.conv2d(m, m, padding=(sh - 1, sw - 1))  # (n, n, 2sh−1, 2sw−1): kernel of G²
    return _rowsum_bound(m, logr, 2.0 ** (-(n_iter - 1)), log_q)


def conv_gram_bound(kernel: torch.Tensor, *, n_iter: int = 1, log_q: torch.Tensor | None = None) -> torch.Tensor:
    """Diagonal ``t`` with ``KKᵀ ⪯ diag(t)`` for the conv with kernel ``K`` (n, m, kh, kw), on the n side.

    Row sums of the kernel of ``(KKᵀ)^(2^(n_iter−1))`` (Note [Gram bound]), by direct self-convolution. (Squaring
    in the Fourier domain, exact with a DFT of size ``2^(n_iter−1)(2k − 2) + 1``, needs float64 complex batched
    matmuls and measured 1.5–2× slower on CPU; the tests use it as an independent reference.)

    Shape: (n, m, kh, kw) → (n,).
    """
    return gram_bound(gram_kernel(kernel), n_iter=n_iter, log_q=log_q)


def fan_in_bound(fan_in: int) -> float:
    return 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
