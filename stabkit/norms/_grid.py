"""Certified upper bounds of spectral norms from exact pieces: a slack-covered SVD, and a frequency grid.

Note [grid bound]
-----------------
A zero-padded stride-1 convolution on any input size is a compression of the bi-infinite convolution, whose norm
is ``S = sup_ω σ1(K̂(ω))``, ``K̂(ω) = Σ_ab K[:, :, a, b] e^{-i(ω1 a + ω2 b)}``; so ``S`` bounds it for every
input size (and bounds the circular convolution on every grid). We compute σ1(K̂) on the
``n_samples × n_samples`` DFT grid (float64 ``eigvalsh`` of the Gram blocks of the kernel divided by its largest
entry) and bound the points of the cell of half-width w around a node ω0 by
``S ≤ σ1(K̂(ω0)) / (1 − τ²/2)``, ``τ = w (d_h + d_w)``, ``d = (k − 1)/2`` (w = π / n_samples on the DFT grid).
Proof: take the maximiser ω* in that cell and unit u, v with ``|uᴴK̂(ω*)v| = S``;
``g(s) = Re(e^{-iθ} e^{iφ(ω)} uᴴK̂(ω)v)`` along the segment from ω* to ω0 (φ centres the kernel) is a real
exponential sum of type ≤ τ, bounded by S, with maximum S at s = 0; Bernstein's inequality twice gives
``g(1) ≥ S(1 − τ²/2)``, and ``σ1(K̂(ω0)) ≥ g(1)``. So S is at most the largest cell bound. Branch and bound: a cell
whose bound is below the best node value cannot hold a larger maximum and is kept as it is; the others are split
3×3 (τ shrinks 3×, the correction 9×) until every bound is within ``rtol`` (default 1e−4) of the best value;
the centre child keeps its parent's node, so a split costs 8 new eigenproblems. The work goes to the cells whose
value is within the correction of the maximum: a few when σ1(K̂(ω)) has a clear peak (trained kernels), most of
the grid when it is nearly flat (random kernels with many channels, where σ1 varies by a few per cent over ω).
The cost is one Hermitian eigenproblem of size min(c_out, c_in) per evaluated frequency, and a certified value
needs one per leaf cell whatever the solver (a lower estimate such as Lanczos would not bound the cell).

Compared with :func:`stabkit.norms.conv_lipgrid` (Araujo et al. 2021: Frobenius norms on the grid, loose with
many channels) this bounds σ1 itself; compared with :func:`stabkit.norms.kernel_gram_iteration` it is tighter at
the cost of an eigen-decomposition per frequency.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import torch

from stabkit._checks import check_positive_float, check_positive_int
from stabkit.norms._dense import _batched_lapack, _check_kernel, _f64, _max_abs_scale, _prepare
from stabkit.norms._dense import _round_up as _dense_round_up

_SVD_SLACK = 1.0 + 1e-9  # covers float64 SVD / eigvalsh rounding (error ≤ n·u·σ1 ≈ 1e−13 σ1)


def _round_up(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Cast a float64 upper bound to (the real part of) ``dtype`` without rounding it down."""
    return _dense_round_up(x, dtype)


def spectral_norm_upper(W: torch.Tensor) -> torch.Tensor:
    """Certified upper bound of ‖W‖₂: the float64 SVD σ1 times ``1 + 1e−9``, rounded up to ``W``'s dtype.

    A backward-stable SVD errs by at most about ``n·u·σ1 ≈ 1e−13 σ1`` in float64; the slack covers it, and the
    cast never rounds down. The matrix is divided by its largest entry first, so float64 weights at any scale
    give a finite bound. Use it where an estimate must never fall below the truth (e.g. CPL's step size).

    Args:
        W: a real or complex matrix (m, n).

    Returns:
        The bound, a 0-dim tensor in W's real dtype (float32 for half precision).

    Shape:
        (m, n) → ().

    Raises:
        ValueError: W is not 2-D, is empty, has NaN/inf, or has an integer/bool dtype.
    """

    W = _prepare("W", W)
    if W.ndim != 2:
        raise ValueError(f"W must have 2 dimensions, got shape {tuple(W.shape)}")
    s = _max_abs_scale(W).to(torch.float64).reshape(())
    sigma = torch.linalg.matrix_norm(_f64(W) / s, ord=2)
    return _round_up(sigma * s * _SVD_SLACK, W.dtype)


def _block_norms(kernel: torch.Tensor, omegas: torch.Tensor) -> torch.Tensor:
    """σ1 of the transfer matrices ``K̂(ω) = Σ_ab K[:, :, a, b] e^{-i(ω1 a + ω2 b)}`` (float64, eigvalsh).

    Shape: kernel (c_out, c_in, kh, kw) float64, omegas (F, 2) → (F,).
    """
    kh, kw = kernel.shape[-2:]
    a = torch.arange(kh, dtype=torch.float64, device=kernel.device)
    b = torch.arange(kw, dtype=torch.float64, device=kernel.device)
    phase = omegas[:, 0, None, None] * a[:, None] + omegas[:, 1, None, None] * b[None, :]  # (F, kh, kw)
    c_out, c_in = kernel.shape[:2]
    # one GEMM (c_out·c_in, kh·kw) @ (kh·kw, F): much faster than an einsum with an (F, c_out, c_in) output
    khat = kernel.reshape(c_out * c_in, kh * kw).to(torch.complex128) @ torch.exp(-1j * phase).reshape(-1, kh * kw).T
    khat = khat.T.reshape(-1, c_out, c_in)  # (F, c_out, c_in)
    if khat.shape[1] < khat.shape[2]:
        khat = khat.mH  # the smaller Gram has the same top eigenvalue
    khat = khat.contiguous()
    gram = khat.mH @ khat  # (F, c, c) Hermitian PSD

    return _top_eigenvalues(gram).clamp_min(0.0).sqrt()


def _top_eigenvalues(gram: torch.Tensor) -> torch.Tensor:
    """Largest eigenvalue of each Hermitian matrix of a batch (F, c, c).

    On the CPU the batch is cut into one slice per intra-op thread and the slices run side by side, each as a
    one-thread LAPACK call from its own Python thread (torch releases the GIL): independent calls do not
    spin-wait for each other, which is what makes multithreaded batched eigvalsh collapse on a shared CPU (Note
    [shared CPU] in ``_dense.py``), and on a quiet machine the cores share the batch. The values are those of the
    one-call version (each matrix is solved alone either way).
    """
    # split only batches worth a thread each (~1 ms of LAPACK: F·c³ ≥ 2·10⁶); a pool costs ~0.1 ms to start
    big = gram.shape[0] * gram.shape[-1] ** 3 >= 2_000_000
    workers = min(torch.get_num_threads(), 8, gram.shape[0] // 16) if big else 1
    if gram.device.type != "cpu" or workers < 2:
        with _batched_lapack(gram):  # Note [shared CPU] in _dense.py
            return torch.linalg.eigvalsh(gram)[:, -1]
    parts = gram.tensor_split(workers)
    with _batched_lapack(gram), ThreadPoolExecutor(workers) as pool:
        return torch.cat(list(pool.map(lambda part: torch.linalg.eigvalsh(part)[:, -1], parts)))


def conv_grid_bound(kernel: torch.Tensor, *, n_samples: int = 32, refine: int = 4, rtol: float = 1e-4) -> torch.Tensor:
    """Certified upper bound of the ℓ2 norm of a stride-1 conv with ``kernel``, valid for every input size.

    Upper bound of ``S = sup_ω σ1(K̂(ω))`` (Note [grid bound] for the proof): σ1 on the ``n_samples × n_samples``
    DFT grid, then branch and bound: cells that may hold the maximum are split 3×3 until their correction
    ``1/(1 − τ²/2)`` brings the bound within ``rtol`` of the best node value (or ``refine`` splits). Computed in
    float64 on the kernel divided by its largest entry (any scale gives a finite bound), and rounded up to the
    kernel's dtype. The result never exceeds ``S (1 + rtol)`` once the refinement has converged; the cost is one
    Hermitian eigenproblem of size ``min(c_out, c_in)`` per evaluated frequency, so a larger ``rtol`` is cheaper
    (for a 128-channel random 5×5 kernel the function is nearly flat in ω and most of the grid is refined).

    Args:
        kernel: real kernel (c_out, c_in, kh, kw).
        n_samples: coarse grid points per axis (the same name as :func:`~stabkit.norms.conv_lipgrid`); at least
            ``max(kh, kw)`` and large enough that ``π (kh + kw − 2) / (2 n_samples) < 1``.
        refine: maximum number of 3×3 refinements of the cells that may hold the maximum (≥ 0).
        rtol: relative gap to the best node value at which a cell is not refined further (> 0).

    Returns:
        The bound, a 0-dim tensor in the kernel's dtype.

    Shape:
        (c_out, c_in, kh, kw) → ().

    Raises:
        ValueError: bad kernel (shape, dtype, empty, NaN/inf), ``n_samples`` too small, negative ``refine``,
            non-positive ``rtol``.

    References:
        Bernstein's inequality for trigonometric polynomials; the grid argument follows Araujo et al., AAAI 2021
        (arXiv:2006.08391), with σ1 instead of the Frobenius norm; thesis (arXiv:2510.25282), chapter 3.
    """
    return _grid_search(kernel, n_samples=n_samples, refine=refine, rtol=rtol)[0]


def _grid_search(kernel: torch.Tensor, *, n_samples: int, refine: int, rtol: float) -> tuple[torch.Tensor, int, int]:
    """:func:`conv_grid_bound` and its work: ``(bound, frequencies evaluated, refinements run)``."""
    kernel = _check_kernel(kernel)
    check_positive_int("n_samples", n_samples)
    check_positive_int("refine", refine, minimum=0)
    rtol = check_positive_float("rtol", rtol)
    kh, kw = kernel.shape[-2:]
    d = (kh - 1) / 2 + (kw - 1) / 2
    tau_c = math.pi * d / n_samples
    if tau_c * tau_c >= 1.0 or n_samples < max(kh, kw):
        raise ValueError(f"n_samples={n_samples} is too small for a {kh}×{kw} kernel; use at least {4 * max(kh, kw)}")
    dev = kernel.device
    k = kernel.detach().to(torch.float64)
    scale = k.abs().amax()
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    k = k / scale  # max-abs rescaling: no under/overflow of the Gram blocks at 1e±200
    # Branch and bound on cells (Note [grid bound]): a cell of half-width w around a node ω0 has
    # sup σ1 ≤ σ1(K̂(ω0)) / (1 − τ²/2), τ = w (d_h + d_w). Start from the n_samples × n_samples DFT grid on the
    # half plane ω2 ∈ [0, π] (σ1(K̂(−ω)) = σ1(K̂(ω)) for a real kernel); split into 3×3 children only the cells
    # whose bound exceeds the best node value by more than rtol, ``refine`` times at most (each split
    # shrinks the correction 9×). Cells whose bound is below the best value can hold no larger maximum. The
    # centre child has its parent's node: its value is carried over, only the 8 others are evaluated.
    step = 2 * math.pi / n_samples
    j1, j2 = torch.meshgrid(
        torch.arange(n_samples, device=dev), torch.arange(n_samples // 2 + 1, device=dev), indexing="ij"
    )
    nodes = torch.stack([j1.flatten(), j2.flatten()], dim=1).to(torch.float64) * step  # (F, 2)
    vals = _block_norms(k, nodes)
    n_eval = nodes.shape[0]
    w = step / 2
    best = vals.max()
    target = rtol * (d > 0)  # a 1×1 kernel has a constant symbol: the first grid is exact
    done = []  # bounds of the cells no longer refined
    third = torch.tensor([-2.0 / 3.0, 0.0, 2.0 / 3.0], dtype=torch.float64, device=dev)
    offsets = torch.stack(torch.meshgrid(third, third, indexing="ij"), dim=-1).reshape(-1, 2)  # (9, 2)
    offsets = offsets[(offsets != 0).any(dim=1)]  # (8, 2): the centre child keeps its parent's node
    level = 0
    for level in range(refine + 1):  # noqa: B007 - the level reached is returned
        tau = w * d
        ub = vals / (1.0 - tau * tau / 2.0)
        active = ub > best * (1.0 + target)
        if level == refine or not bool(active.any()):
            done.append(ub.max())
            break
        if bool((~active).any()):
            done.append(ub[~active].max())
        parents, pvals = nodes[active], vals[active]
        new = (parents[:, None, :] + w * offsets[None]).reshape(-1, 2)
        new_vals = torch.cat([_block_norms(k, chunk) for chunk in new.split(4096)])
        n_eval += new.shape[0]
        nodes = torch.cat([parents, new])
        vals = torch.cat([pvals, new_vals])
        best = torch.maximum(best, new_vals.max())
        w = w / 3.0
    bound = torch.stack(done).max() * _SVD_SLACK
    return _round_up(bound * scale, kernel.dtype), n_eval, level
