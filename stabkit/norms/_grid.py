"""Certified upper bounds of spectral norms from exact pieces: a slack-covered SVD, and a frequency grid.

Note [grid bound]
-----------------
A zero-padded stride-1 convolution on any input size is a compression of the bi-infinite convolution, whose norm
is ``S = sup_ω σ1(K̂(ω))``, ``K̂(ω) = Σ_ab K[:, :, a, b] e^{-i(ω1 a + ω2 b)}``; so ``S`` bounds it for every
input size (and bounds the circular convolution on every grid).

*Cell bound.* For a cell ``{ω : d_h|ω1 − ω0,1| + d_w|ω2 − ω0,2| ≤ ρ}`` around a node ω0, ``d = (k − 1)/2``:
``sup_cell σ1 ≤ σ1(K̂(ω0)) / (1 − ρ²/2)``. Proof: take the maximiser ω* in that cell and unit u, v with
``|uᴴK̂(ω*)v| = S``; ``g(s) = Re(e^{-iθ} e^{iφ(ω)} uᴴK̂(ω)v)`` along the segment from ω* to ω0 (φ centres the
kernel, whose taps then lie in [−d_h, d_h] × [−d_w, d_w]) is a real exponential sum of type
``≤ d_h|δ1| + d_w|δ2| ≤ ρ``, bounded by S, with maximum S at s = 0; Bernstein's inequality twice gives
``g(1) ≥ S(1 − ρ²/2)``, and ``σ1(K̂(ω0)) ≥ g(1)``. These diamonds tile the plane: in the coordinates
``(d_h ω1, d_w ω2)`` they are the cells of the checkerboard lattice ``{(iρ, jρ): i + j even}``, twice the area
per node of the squares of the same correction, and each splits into the 4 diamonds of radius ρ/2 centred at
±ρ/2 along an axis. The half plane ω1 ∈ [0, 2π], ω2 ∈ [0, π] suffices (σ1(K̂(−ω)) = σ1(K̂(ω)) for a real kernel).

*Search.* We aim at ``B = low·(1 + rtol)``, ``low`` the largest σ1 found at a node (a lower value of S), and
prove ``S ≤ B`` cell by cell: a cell is done once ``σ1(K̂(ω0)) ≤ B (1 − ρ²/2)``, which needs no eigenvalue — a
Cholesky factorisation of ``μI − K̂ᴴK̂(ω0)`` that succeeds certifies ``λ_max < μ`` (backward error ~1e−12,
covered by a 1e−9 margin), at a third of an eigensolver's cost; the cells that fail split. A pilot lattice
(radius ``π (d_h + d_w) / n_samples``) gives the first ``low`` (Lanczos estimates, the exact value of the best
4 nodes) and the distribution of σ1 over ω, from which the first certified lattice is the one of least expected
work (coarse when σ1 has a clear peak, as for trained kernels; finer when it is nearly flat, as for random
kernels with many channels, where it varies by a few per cent). The failed nodes hold the largest values: the
exact value of the best 4 raises ``low`` at each level, and the failed cells are tested again when it rose.
``K̂ᴴK̂(ω)`` comes from the kernel's self-correlation computed once (one GEMM over the lags per batch of
frequencies, not a c×c×c product each). The result never exceeds ``S (1 + rtol)`` (``low ≤ S``); if cells
still fail after ``refine`` halvings, the exact value of their node over ``1 − ρ²/2`` bounds them instead.

Compared with :func:`stabkit.norms.conv_lipgrid` (Araujo et al. 2021: Frobenius norms on the grid, loose with
many channels) this bounds σ1 itself; compared with :func:`stabkit.norms.kernel_gram_iteration` it is tighter at
the cost of an eigen-decomposition per frequency.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import torch

from stabkit._checks import check_positive_float, check_positive_int, is_transformed
from stabkit.norms._dense import _batched_lapack, _check_kernel, _f64, _max_abs_scale, _one_torch_thread, _prepare
from stabkit.norms._dense import _round_up as _dense_round_up
from stabkit.norms._selfcorr import _self_correlation

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


def _lapack_batches(fn, batch: torch.Tensor) -> torch.Tensor:
    """``fn`` (a batched LAPACK call returning one value per matrix) over a batch (F, c, c), split on the CPU.

    The batch is cut into one slice per intra-op thread and the slices run side by side, each as a one-thread
    LAPACK call from its own Python thread (torch releases the GIL): independent calls do not spin-wait for each
    other, which is what makes multithreaded batched eigvalsh collapse on a shared CPU (Note [shared CPU] in
    ``_dense.py``), and on a quiet machine the cores share the batch. The values are those of the one-call
    version (each matrix is solved alone either way).
    """
    # split only batches worth a thread each (~1 ms of LAPACK: F·c³ ≥ 2·10⁶); a pool costs ~0.1 ms to start
    big = batch.shape[0] * batch.shape[-1] ** 3 >= 2_000_000
    workers = min(torch.get_num_threads(), 8, batch.shape[0] // 16) if big else 1
    if batch.device.type != "cpu" or workers < 2:
        with _batched_lapack(batch):  # Note [shared CPU] in _dense.py
            return fn(batch)
    parts = batch.tensor_split(workers)
    with _batched_lapack(batch), ThreadPoolExecutor(workers) as pool:
        return torch.cat(list(pool.map(fn, parts)))


def _top_eigenvalues(gram: torch.Tensor) -> torch.Tensor:
    """Largest eigenvalue of each Hermitian matrix of a batch (F, c, c), split as :func:`_lapack_batches`."""
    return _lapack_batches(lambda part: torch.linalg.eigvalsh(part)[:, -1], gram)


def _below(P: torch.Tensor, mu: float) -> torch.Tensor:
    """Certificates ``λ_max(P_f) < mu`` (F,) bool: a Cholesky factorisation of ``mu I − P_f`` that succeeds.

    Floating-point Cholesky that runs to completion on A factors ``A + ΔA`` with ``‖ΔA‖₂ ≤ c(c+1)u‖A‖₂``
    (Higham, *Accuracy and Stability of Numerical Algorithms*, Thms 10.3 and 10.5; ≈ 2·10⁻¹² ‖A‖ for c = 128 in
    float64), so ``λ_max(P) ≤ mu (1 + 2·10⁻¹²)`` — covered by the relative margin the caller takes. A μ that is not
    positive certifies nothing. P is overwritten with ``mu I − P``. On the CPU each matrix goes to LAPACK's
    ``zpotrf`` through scipy (3–4× faster than ``torch.linalg.cholesky_ex`` on 128×128 blocks here: 0.28 vs
    0.83–1.3 ms on one thread); the C-ordered Hermitian A is read as its Fortran-ordered transpose ``conj(A)``,
    which has the same eigenvalues.
    """
    A = P.neg_()
    A.diagonal(dim1=-2, dim2=-1).add_(mu)
    if mu <= 0:
        return torch.zeros(P.shape[0], dtype=torch.bool, device=P.device)
    if P.device.type != "cpu" or is_transformed(P):
        return torch.linalg.cholesky_ex(A)[1] == 0
    from scipy.linalg import lapack

    ok = [lapack.zpotrf(a.T, lower=1, clean=0)[1] == 0 for a in A.numpy()]
    return torch.tensor(ok, dtype=torch.bool)


class _Symbol:
    """Gram matrices ``P(ω) = K̂(ω)ᴴK̂(ω)`` of a real kernel at any frequencies, from its self-correlation.

    ``P(ω) = Σ_τ G_τ e^{i⟨τ, ω⟩}`` with ``G_τ = Σ_(o, x) K[o, :, x + τ]ᵀ K[o, :, x]`` (c×c, c = the smaller channel
    count, lags τ ∈ [1 − kh, kh − 1] × [1 − kw, kw − 1]): the self-correlation is computed once
    (:func:`stabkit.norms._selfcorr._self_correlation`, float64), then a batch of Gram matrices is one complex GEMM
    (F, lags) @ (lags, c²) — (2kh − 1)(2kw − 1)·c² multiply-adds per frequency instead of the c²·c' of
    ``K̂ᴴK̂`` and the kh·kw·c·c' of K̂ (a 128-channel 5×5 kernel: 0.43 ms instead of ~1 ms per frequency on one core).
    """

    def __init__(self, kernel: torch.Tensor) -> None:
        if kernel.shape[0] < kernel.shape[1]:
            kernel = kernel.transpose(0, 1)  # K̂ᵀ is the symbol of the channel-swapped kernel: same σ1
        M = kernel.transpose(0, 1).contiguous()  # (c, c', kh, kw): contract over the larger channel count
        c, _, kh, kw = M.shape
        with torch.no_grad():
            G = _self_correlation(M)[0]  # (c, c, 2kh − 1, 2kw − 1), lag τ at index τ + (k − 1)
        self.c = c
        self.g = G.permute(2, 3, 0, 1).reshape(-1, c * c).to(torch.complex128).contiguous()  # (lags, c²)
        # scipy's BLAS and LAPACK on plain CPU tensors; torch elsewhere (GPU, or inside a torch.func transform)
        self.scipy = G.device.type == "cpu" and not is_transformed(G)
        self.g_np = self.g.numpy() if self.scipy else None
        self.lags = (
            torch.stack(torch.meshgrid(torch.arange(1 - kh, kh), torch.arange(1 - kw, kw), indexing="ij"), dim=-1)
            .reshape(-1, 2)
            .to(device=kernel.device, dtype=torch.float64)
        )
        # every entry of G_τ is a sum of products of kernel entries, at most ‖K‖²_F in absolute value
        # (Cauchy–Schwarz); the rounding of G (FFT or direct) and of the GEMM over the lags leaves each entry of P
        # within 1e−12·lags·‖K‖²_F, so P's spectral error is at most c times that: the certificates subtract it
        # from μ
        self.rounding = 1e-12 * c * (2 * kh - 1) * (2 * kw - 1) * float(kernel.square().sum())

    def gram(self, omegas: torch.Tensor) -> torch.Tensor:
        """P(ω) for omegas (F, 2) → (F, c, c) complex128 (Hermitian up to rounding)."""
        theta = omegas @ self.lags.T  # (F, lags)
        e = torch.polar(torch.ones_like(theta), theta)
        if not self.scipy:
            return (e @ self.g).reshape(-1, self.c, self.c)
        from scipy.linalg import blas

        # on the CPU, scipy's BLAS: the library of the Cholesky certificates, one thread pool instead of two that
        # spin-wait against each other (Note [shared CPU] in _dense.py). (Two real GEMMs on G, which is real, save
        # 30 % of the product but lose more to interleaving real and imaginary parts.)
        p = blas.zgemm(1.0, self.g_np.T, e.numpy().T)  # (c², F) Fortran-ordered = (E G)ᵀ
        return torch.from_numpy(p.T).reshape(-1, self.c, self.c)


def _lanczos(P: torch.Tensor, v: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``steps`` Lanczos steps on each Hermitian P_f from v (F, c): (top Ritz values, their Ritz vectors).

    A Ritz value is a Rayleigh quotient, so it is ≤ λ_max(P_f) up to rounding; used as an estimate only (where
    to look, never as a bound). No reorthogonalisation: lost orthogonality only repeats converged values.
    """
    q = v.to(P.dtype)
    q = q / torch.linalg.vector_norm(q, dim=-1, keepdim=True).clamp_min(1e-300)
    basis, alpha, beta = [], [], []
    prev, b = torch.zeros_like(q), torch.zeros(q.shape[0], dtype=torch.float64, device=q.device)
    for _ in range(min(steps, P.shape[-1])):
        w = (P @ q[..., None])[..., 0]
        a = torch.einsum("fi,fi->f", q.conj(), w).real
        w = w - a[:, None] * q - b[:, None] * prev
        b = torch.linalg.vector_norm(w, dim=-1)
        basis.append(q)
        alpha.append(a)
        beta.append(b)
        prev, q = q, w / b.clamp_min(1e-300)[:, None]
    k = len(alpha)
    T = torch.diag_embed(torch.stack(alpha, dim=1))
    if k > 1:
        off = torch.stack(beta[:-1], dim=1)
        T = T + torch.diag_embed(off, offset=1) + torch.diag_embed(off, offset=-1)
    val, vec = torch.linalg.eigh(T)  # (F, k), small
    ritz = torch.einsum("fk,fkc->fc", vec[:, :, -1].to(P.dtype), torch.stack(basis, dim=1))
    return val[:, -1], ritz


def conv_grid_bound(kernel: torch.Tensor, *, n_samples: int = 32, refine: int = 8, rtol: float = 1e-4) -> torch.Tensor:
    """Certified upper bound of the ℓ2 norm of a stride-1 conv with ``kernel``, valid for every input size.

    Upper bound of ``S = sup_ω σ1(K̂(ω))`` within ``S (1 + rtol)`` (Note [grid bound] for the proof and the
    search): frequency cells whose bound ``σ1(node) / (1 − ρ²/2)`` is certified below ``B = low (1 + rtol)`` by a
    Cholesky factorisation, the others halved, ``low`` the largest σ1 found. Computed in float64 on the kernel
    divided by its largest entry (any scale gives a finite bound), and rounded up to the kernel's dtype. The cost
    is about one Cholesky factorisation and one Gram matrix of size ``min(c_out, c_in)`` per cell; a 128-channel
    5×5 kernel takes about a second on 2 CPU cores (``benchmarks/bench_norms.py``).

    Args:
        kernel: real kernel (c_out, c_in, kh, kw).
        n_samples: resolution of the pilot lattice, as points per axis of a grid (the same name as
            :func:`~stabkit.norms.conv_lipgrid`); at least ``max(kh, kw)`` and large enough that
            ``π (kh + kw − 2) / (2 n_samples) < 1``.
        refine: maximum number of halvings of the cells that may hold the maximum (≥ 0); past it the exact
            value bounds the remaining cells (still certified, possibly above ``S (1 + rtol)``).
        rtol: relative precision of the bound (> 0): it never exceeds ``S (1 + rtol)`` once the search has
            converged.

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


def _pilot_radius(n_samples: int, kh: int, kw: int) -> float:
    """The cell radius ρ0 of the pilot lattice for a kh×kw kernel, after checking ``n_samples`` (ValueError)."""
    check_positive_int("n_samples", n_samples)
    rho0 = math.pi * ((kh - 1) / 2 + (kw - 1) / 2) / n_samples
    if rho0 * rho0 >= 1.0 or n_samples < max(kh, kw):
        raise ValueError(f"n_samples={n_samples} is too small for a {kh}×{kw} kernel; use at least {4 * max(kh, kw)}")
    return rho0


def _grid_search(kernel: torch.Tensor, *, n_samples: int, refine: int, rtol: float) -> tuple[torch.Tensor, int, int]:
    """:func:`conv_grid_bound` and its work: ``(bound, Gram matrices formed, halvings run)``."""
    kernel = _check_kernel(kernel)
    kh, kw = kernel.shape[-2:]
    rho0 = _pilot_radius(n_samples, kh, kw)
    check_positive_int("refine", refine, minimum=0)
    rtol = check_positive_float("rtol", rtol)
    d = ((kh - 1) / 2, (kw - 1) / 2)
    dev = kernel.device
    k = kernel.detach().to(torch.float64)
    scale = k.abs().amax()
    if float(scale) == 0.0:
        return _round_up(scale, kernel.dtype), 0, 0  # the zero convolution
    k = k / scale  # max-abs rescaling: no under/overflow of the Gram matrices at 1e±200
    symbol = _Symbol(k)
    if kh == kw == 1:  # a constant symbol: one exact eigenproblem
        lam = _top_eigenvalues(symbol.gram(torch.zeros(1, 2, dtype=torch.float64, device=dev)))
        return _round_up(lam.clamp_min(0).sqrt()[0] * _SVD_SLACK * scale, kernel.dtype), 1, 0
    # torch on one thread while scipy's BLAS and LAPACK do the heavy work: torch's intra-op threads spin-waiting
    # beside scipy's made both 1.5–2× slower on this 2-core machine (Note [shared CPU] in _dense.py)
    with _one_torch_thread():
        return _certify(symbol, _Lattice(d, dev), rho0=rho0, refine=refine, rtol=rtol, scale=scale, dtype=kernel.dtype)


def _certify(symbol, lattice, *, rho0: float, refine: int, rtol: float, scale: torch.Tensor, dtype: torch.dtype):
    """The search of :func:`conv_grid_bound` once the symbol is set up: ``(bound, Gram matrices formed, levels)``."""
    dev = lattice.device
    chunk = max(1, (1 << 21) // (symbol.c * symbol.c))  # 32 MiB of complex128 Gram matrices at a time: reused memory
    margin = 1.0 - 1e-9

    def exact(x: torch.Tensor) -> torch.Tensor:  # σ1 at nodes x (float64 eigvalsh)
        lam = [_top_eigenvalues(symbol.gram(lattice.omegas(part))) for part in x.split(chunk)]
        return torch.cat(lam).clamp_min(0).sqrt()

    def threshold(rho: float, low: torch.Tensor) -> float:  # μ: σ1(node)² < μ proves the cell ≤ B = low (1 + rtol)
        return float((low * (1.0 + rtol) * (1.0 - rho * rho / 2.0)) ** 2) * margin - symbol.rounding

    def test(x: torch.Tensor, vecs: torch.Tensor, rho: float, low: torch.Tensor):
        """Cells x (radius ρ) whose node σ1 is not certified ≤ B (1 − ρ²/2), B = low (1 + rtol): their centres,
        Lanczos values and vectors (estimates, warm-started from vecs, on the same Gram matrices)."""
        mu = threshold(rho, low)
        out = [], [], []
        for part, v in zip(x.split(chunk), vecs.split(chunk), strict=True):
            A = symbol.gram(lattice.omegas(part))
            bad = ~_below(A, mu)
            if bool(bad.any()):
                A = A[bad].neg_()
                A.diagonal(dim1=-2, dim2=-1).add_(mu)  # P again, up to a rounding of μ's size: estimates only
                lam, v = _lanczos(A, v[bad], 6)
                for o, t in zip(out, (part[bad], lam, v), strict=True):
                    o.append(t)
        return tuple(torch.cat(o) for o in out) if out[0] else None

    # 1. pilot: estimates on the lattice of radius ρ0, the exact value at the 4 best nodes: a lower value `low`
    #    of S, and the bound aimed at, B = low (1 + rtol)
    pilot = lattice.cover(rho0)
    first = torch.linspace(-1, 1, symbol.c, dtype=torch.float64, device=dev)
    first = (1 + 0.5j * first).expand(pilot.shape[0], -1)  # the Lanczos start: fixed, no RNG
    est, vecs = [], []
    for part, v in zip(pilot.split(chunk), first.split(chunk), strict=True):
        lam, v = _lanczos(symbol.gram(lattice.omegas(part)), v, 8)
        est.append(lam)
        vecs.append(v)
    est, vecs = torch.cat(est), torch.cat(vecs)
    low = exact(pilot[est.topk(min(4, est.shape[0])).indices]).max()
    n_eval = pilot.shape[0]
    # 2. the certified cover starts on the lattice whose expected work is least: N(ρ) nodes, of which the fraction
    #    q(ρ) whose value exceeds B·(1 − ρ²/2) fail and split into 4, and so on: N(ρ) + N(ρ/2) q(ρ) + N(ρ/4) q(ρ/2)
    #    + … (the pilot's values stand in for the new nodes'); its nodes start their estimates from the vector of
    #    the nearest pilot node
    ratio = est.clamp_min(0).sqrt() / (low * (1 + rtol))

    def expected_work(r: float) -> float:
        q = [float((ratio > 1 - (r / 2**j) ** 2 / 2).double().mean()) for j in range(3)]
        return lattice.count(r) * (1 + 4 * q[0] + 16 * q[1] + 64 * q[2])

    radii = [rho0 * f for f in (1.5, 1.25, 1.0, 0.85, 0.7, 0.6, 0.5) if (rho0 * f) ** 2 < 1.0]
    rho = min(radii, key=expected_work)
    cells = lattice.cover(rho)
    cell_vecs = vecs[torch.cdist(cells, pilot, p=1).argmin(dim=1)]
    level, worst = 0, []
    for level in range(refine + 1):  # noqa: B007 - the level reached is returned
        # a cell is done when σ1(node) ≤ B·(1 − ρ²/2), certified by Cholesky (S ≤ σ1(node)/(1 − ρ²/2) on it).
        # The failed nodes hold the largest values: the exact value of the best 4 raises `low`, and the failed
        # cells are tested again when it rose (a higher B passes more) before they split
        n_eval += cells.shape[0]
        failed = test(cells, cell_vecs, rho, low)
        if failed is not None:
            x, est, v = failed
            best = exact(x[est.topk(min(4, est.shape[0])).indices]).max()
            if best > low:
                low = best
                # a node whose estimate (≤ σ1² up to rounding) already reaches the new μ fails again: not retested
                again = est < threshold(rho, low)
                n_eval += int(again.sum())
                retest = test(x[again], v[again], rho, low) if bool(again.any()) else None
                kept = [t[~again] for t in (x, est, v)]
                if retest is not None:
                    kept = [torch.cat([k, r]) for k, r in zip(kept, retest, strict=True)]
                failed = tuple(kept) if kept[0].shape[0] else None
        if failed is None:
            break
        x, est, v = failed
        if level == refine:  # out of refinements: the exact value bounds each remaining cell
            worst.append(exact(x).max() / (1.0 - rho * rho / 2.0))
            break
        cells, cell_vecs = lattice.split(x, v, rho)
        rho = rho / 2
    # every cell passed at a value of B no larger than the final one (low only grows)
    bound = torch.stack([low * (1.0 + rtol), *worst]).max() / margin * _SVD_SLACK
    return _round_up(bound * scale, dtype), n_eval, level


class _Lattice:
    """Cells of :func:`conv_grid_bound` (Note [grid bound]): diamonds ``d_h|δω1| + d_w|δω2| ≤ ρ`` covering the half
    plane ω1 ∈ [0, 2π], ω2 ∈ [0, π] (σ1(K̂(−ω)) = σ1(K̂(ω)) for a real kernel).

    In the coordinates ``x = d_h ω1, y = d_w ω2`` they are the cells of the checkerboard lattice
    ``{(iρ, jρ): i + j even}``, and a cell splits into the 4 of radius ρ/2 centred ±ρ/2 along an axis. An axis of
    a 1-wide kernel is dropped (the symbol does not depend on it): cells are then intervals (centres 2jρ, split
    in 2), on [0, π d] by the symmetry.
    """

    def __init__(self, d: tuple[float, float], device: torch.device) -> None:
        self.d, self.device = d, device
        self.axes = [a for a in (0, 1) if d[a] > 0]
        hi = [2 * math.pi * d[0], math.pi * d[1]]
        if self.axes == [0]:
            hi[0] = math.pi * d[0]
        self.hi = torch.tensor(hi, dtype=torch.float64, device=device)
        self.offsets = torch.zeros(2 * len(self.axes), 2, dtype=torch.float64, device=device)
        for n, a in enumerate(self.axes):
            self.offsets[2 * n, a], self.offsets[2 * n + 1, a] = -0.5, 0.5

    def _meets(self, x: torch.Tensor, rho: float) -> torch.Tensor:  # ℓ1 distance to the half plane ≤ ρ
        dist = (torch.clamp(-x, min=0) + torch.clamp(x - self.hi, min=0)).sum(dim=1)
        return dist <= rho * (1 + 1e-12)

    def cover(self, rho: float) -> torch.Tensor:
        """Centres (F, 2), in (x, y), of the lattice cells of radius ρ that meet the half plane."""
        ranges = [
            torch.arange(-1, int(self.hi[a] / rho) + 2, device=self.device)
            if a in self.axes
            else torch.zeros(1, dtype=torch.long, device=self.device)
            for a in (0, 1)
        ]
        i, j = torch.meshgrid(*ranges, indexing="ij")
        ij = torch.stack([i.flatten(), j.flatten()], dim=1)
        ij = ij[ij.sum(dim=1) % 2 == 0] if len(self.axes) == 2 else ij * 2
        x = ij.to(torch.float64) * rho
        return x[self._meets(x, rho)]

    def count(self, rho: float) -> int:
        return self.cover(rho).shape[0]

    def split(self, x: torch.Tensor, vecs: torch.Tensor, rho: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The children (radius ρ/2) of the cells x (radius ρ) that meet the half plane, with their parents'
        vectors."""
        kids = (x[:, None, :] + rho * self.offsets[None]).reshape(-1, 2)
        keep = self._meets(kids, rho / 2)
        return kids[keep], vecs.repeat_interleave(self.offsets.shape[0], dim=0)[keep]

    def omegas(self, x: torch.Tensor) -> torch.Tensor:
        return x / torch.tensor([self.d[0] or 1.0, self.d[1] or 1.0], dtype=torch.float64, device=self.device)
