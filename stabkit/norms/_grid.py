"""Certified upper bounds of spectral norms from exact pieces: a slack-covered SVD, and a frequency grid.

Note [grid bound]
-----------------
A zero-padded stride-1 convolution on any input size is a compression of the bi-infinite convolution, whose norm
is ``S = sup_ω σ1(K̂(ω))``, ``K̂(ω) = Σ_ab K[:, :, a, b] e^{-i(ω1 a + ω2 b)}``; so ``S`` bounds it for every
input size (and bounds the circular convolution on every grid). We compute σ1(K̂) on the ``n_eval × n_eval`` DFT
grid (float64 ``eigvalsh`` of the Gram blocks) and bound the points between nodes by
``S ≤ max_grid / (1 − τ²/2)``, ``τ = π (d_h + d_w) / n_eval``, ``d = (k − 1)/2``. Proof: take ω* and unit u, v
with ``|uᴴK̂(ω*)v| = S``; ``g(s) = Re(e^{-iθ} e^{iφ(ω)} uᴴK̂(ω)v)`` along the segment from ω* to its nearest node
(φ centres the kernel) is a real exponential sum of type ≤ τ, bounded by S, with maximum S at s = 0; Bernstein's
inequality twice gives ``g(1) ≥ S(1 − τ²/2)``, and ``σ1(K̂(node)) ≥ g(1)``. The same inequality says that only
coarse nodes with ``σ1 ≥ (1 − τ²/2) max_grid`` can be nearest to ω*, so the grid is refined ``refine`` times
around those only: the correction for 3×3 kernels drops from 2 % (32 × 32) to 0.12 %.

Compared with :func:`stabkit.norms.conv_lipgrid` (Araujo et al. 2021: Frobenius norms on the grid, loose with
many channels) this bounds σ1 itself; compared with :func:`stabkit.norms.kernel_gram_iteration` it is tighter at
the cost of an eigen-decomposition per frequency.
"""

from __future__ import annotations

import math

import torch

from stabkit._checks import check_positive_int, check_tensor

_SVD_SLACK = 1.0 + 1e-9  # covers float64 SVD rounding (error ≤ n·u·σ1 ≈ 1e−13 σ1)


def _round_up(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Cast a float64 upper bound to ``dtype`` without rounding it down (the cast rounds to nearest)."""
    y = x.to(dtype)
    if dtype == torch.float64:
        return y
    return torch.where(y.to(torch.float64) < x, torch.nextafter(y, torch.full_like(y, math.inf)), y)


def spectral_norm_upper(W: torch.Tensor) -> torch.Tensor:
    """Certified upper bound of ‖W‖₂: the float64 SVD σ1 times ``1 + 1e−9``, rounded up to ``W``'s dtype.

    A backward-stable SVD errs by at most about ``n·u·σ1 ≈ 1e−13 σ1`` in float64; the slack covers it, and the
    cast never rounds down. Use it where an estimate must never fall below the truth (e.g. CPL's step size).

    Shape: (m, n) → ().
    """
    W = check_tensor("W", W, ndim=2)
    s = torch.linalg.matrix_norm(W.to(torch.float64), ord=2)
    return _round_up(s * _SVD_SLACK, W.dtype)


def _block_norms(kernel: torch.Tensor, omegas: torch.Tensor) -> torch.Tensor:
    """σ1 of the transfer matrices ``K̂(ω) = Σ_ab K[:, :, a, b] e^{-i(ω1 a + ω2 b)}`` (float64, eigvalsh).

    Shape: kernel (c_out, c_in, kh, kw), omegas (F, 2) → (F,).
    """
    kh, kw = kernel.shape[-2:]
    k = kernel.to(torch.float64)
    a = torch.arange(kh, dtype=torch.float64, device=k.device)
    b = torch.arange(kw, dtype=torch.float64, device=k.device)
    phase = omegas[:, 0, None, None] * a[:, None] + omegas[:, 1, None, None] * b[None, :]  # (F, kh, kw)
    khat = torch.einsum("oiab,fab->foi", k.to(torch.complex128), torch.exp(-1j * phase))  # (F, c_out, c_in)
    if khat.shape[1] < khat.shape[2]:
        khat = khat.mH  # the smaller Gram has the same top eigenvalue
    gram = khat.mH @ khat  # (F, c, c) Hermitian PSD
    return torch.linalg.eigvalsh(gram)[:, -1].clamp_min(0.0).sqrt()


def conv_grid_bound(kernel: torch.Tensor, *, n_eval: int = 32, refine: int = 4) -> torch.Tensor:
    """Certified upper bound of the ℓ2 norm of a stride-1 conv with ``kernel``, valid for every input size.

    Upper bound of ``S = sup_ω σ1(K̂(ω))`` (Note [grid bound] for the proof): σ1 on the ``n_eval × n_eval`` DFT
    grid, then on a grid ``refine`` times finer around the coarse nodes that can be nearest to the
    maximiser, and the correction ``1/(1 − τ²/2)`` of the fine grid (0.12 % for 3×3 kernels with the
    defaults).

    Shape: (c_out, c_in, kh, kw) → () in the kernel's dtype.
    """
    kernel = check_tensor("kernel", kernel, ndim=4)
    check_positive_int("n_eval", n_eval)
    check_positive_int("refine", refine)
    kh, kw = kernel.shape[-2:]
    d = (kh - 1) / 2 + (kw - 1) / 2
    tau_c = math.pi * d / n_eval
    if tau_c * tau_c >= 1.0 or n_eval < max(kh, kw):
        raise ValueError(f"n_eval={n_eval} is too small for a {kh}×{kw} kernel; use at least {4 * max(kh, kw)}")
    if refine % 2:
        raise ValueError(f"refine must be even (the fine grid must contain the coarse cell borders), got {refine}")
    dev = kernel.device
    step = 2 * math.pi / n_eval
    # coarse grid on the half plane ω2 ∈ [0, π] (σ1(K̂(−ω)) = σ1(K̂(ω)) for a real kernel)
    j1, j2 = torch.meshgrid(torch.arange(n_eval, device=dev), torch.arange(n_eval // 2 + 1, device=dev), indexing="ij")
    nodes = torch.stack([j1.flatten(), j2.flatten()], dim=1).to(torch.float64) * step  # (F, 2)
    coarse = _block_norms(kernel, nodes)
    # the coarse node nearest to the maximiser ω* has σ1 ≥ S(1 − τ_c²/2) ≥ max(coarse)(1 − τ_c²/2)
    keep = coarse >= coarse.max() * (1.0 - tau_c * tau_c / 2.0) * (1.0 - 1e-9)
    s = torch.arange(-(refine // 2), refine // 2 + 1, device=dev, dtype=torch.float64) * (step / refine)
    offsets = torch.stack(torch.meshgrid(s, s, indexing="ij"), dim=-1).reshape(-1, 2)  # (r+1)², 2
    fine_nodes = (nodes[keep][:, None, :] + offsets[None]).reshape(-1, 2)
    fine = _block_norms(kernel, fine_nodes).max()
    tau_f = tau_c / refine
    return _round_up(torch.maximum(fine, coarse.max()) * _SVD_SLACK / (1.0 - tau_f * tau_f / 2.0), kernel.dtype)
