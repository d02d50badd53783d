"""Spectral norm of dense matrices: Gram iteration (certified upper bound), power iteration, exact SVD.

Note [rescaling]
----------------
Gram iteration squares the matrix at every step, so its entries grow like σ1^(2^t): in float32 the Frobenius norm
overflows at t = 4 for a 500×400 Gaussian matrix. Every iterate is therefore divided by its Frobenius norm and the
logarithm of the scale is carried along (Delattre et al. 2023, arXiv:2305.16173). That alone is not enough for
extreme inputs: the *first* Frobenius norm sums squares of the raw entries and overflows in float32 once entries
reach ~1e19 (and underflows to 0 below ~1e-23). We first divide by the largest absolute entry, which is exact to
compute and never overflows, so weights anywhere in 1e-30 … 1e30 give finite, correct bounds. The scales are
positive numbers that do not change the value of the bound, only its representation; they are detached from
autograd, which leaves the gradient exact (the bound is the same function of W whatever scales are used).

Note [certified rounding]
-------------------------
A bound computed in floating point is a bound on the matrices the computer formed, not on W, unless the rounding
errors are accounted for. We account for them with the standard a-priori bounds (Higham, *Accuracy and Stability
of Numerical Algorithms*, 2nd ed., §3.5): with unit roundoff u of the working precision and ``γ_k = k u / (1 − k u)``,

* a matrix product of inner dimension k has ``|fl(AB) − AB| ≤ γ_k |A||B|`` entrywise, so its error E has
  ``‖E‖_2 ≤ ‖E‖_F ≤ γ_k ‖A‖_F ‖B‖_F`` (``2 γ_(k+2)`` for complex products);
* the division of an iterate A by the positive scalar r errs by ``D`` with ``‖D‖_F ≤ u ‖A‖_F / r``.

Write ``A_t`` for the computed (rescaled) iterate, ``r_t`` for the divisor, ``B = fl(A_(t−1)/r)`` and
``A_t = fl(BᴴB)``. Weyl's inequality gives ``σ1(A_(t−1)) ≤ r (σ1(B) + ‖D‖)`` and ``σ1(B)² ≤ σ1(A_t) + ‖E‖``, so
a certified upper bound ``V_t ≥ σ1(A_t)`` propagates backwards::

    V_T = ‖A_T‖_F,     V_(t−1) = r_t (sqrt(V_t + γ_k b_t²) + u b_t),     b_t ≥ ‖B‖_F,

down to ``σ1(W) ≤ s (V_0 + u ‖A_0‖_F)`` with s the max-abs scale. Every quantity in the recursion is of order one
(the iterates are normalised), so it is computed in float64 without overflow, from norms taken in float64; the
result is multiplied by ``1 + 2^−46`` (float64 rounding of the recursion itself, ≤ 64 ulps) and rounded *up* to
the output dtype. With u = γ = 0 the recursion is exactly the Gram-iteration bound ``‖A_T‖_F^(2^−T) · scale``, so
the margin is the only difference. It is negligible in float64 and of relative size ``γ_k ‖W‖_F² / σ1²`` at worst
in float32 (float32 bounds are a little looser than float64 ones: use float64 weights for the tightest bound).
On CUDA with TF32 or bfloat16 matmuls enabled (``torch.get_float32_matmul_precision() != "highest"``), u is that
of the reduced format. The same recursion, with the FFT error added, certifies the convolution bounds.
"""

from __future__ import annotations

import contextlib
import math
from typing import NamedTuple

import torch

from stabkit._checks import check_positive_float, check_positive_int, check_tensor, resolve_generator

__all__ = [
    "SpectralBounds",
    "gram_iteration",
    "gram_iteration_bounds",
    "power_iteration",
    "spectral_norm_exact",
]

_SUPPORTED = (torch.float32, torch.float64, torch.complex64, torch.complex128)
_F64_SLACK = 1.0 + 2.0**-46  # float64 rounding of the certification recursion itself, 64 ulps


class SpectralBounds(NamedTuple):
    """A certified interval ``lower ≤ σ1 ≤ upper`` and the number of Gram iterations that produced it."""

    lower: torch.Tensor
    upper: torch.Tensor
    n_iter: int


def _prepare(name: str, W: object, *, min_ndim: int = 2) -> torch.Tensor:
    """Validate a matrix argument and bring it to a supported floating dtype.

    Half precision is computed in float32 (and the float32 result returned): rounding a bound to float16 could
    round it below the true value.
    """
    if isinstance(W, torch.Tensor) and not (W.is_floating_point() or W.is_complex()):
        raise ValueError(
            f"{name} must be a floating or complex tensor (float32/64, complex64/128, or half precision), "
            f"got dtype {W.dtype}; convert it with .double() first"
        )
    W = check_tensor(name, W, min_ndim=min_ndim)
    if W.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(W.shape)}); a norm needs at least one entry per matrix")
    if W.dtype in (torch.float16, torch.bfloat16):
        W = W.float()
    if W.dtype not in _SUPPORTED:
        raise ValueError(
            f"{name} must be a floating or complex tensor (float32/64, complex64/128, or half precision), "
            f"got dtype {W.dtype}; convert it with .double() first"
        )
    return W


@contextlib.contextmanager
def _batched_lapack(x: torch.Tensor):
    """Run a batched LAPACK call (eigvalsh / SVD of many small matrices) on one CPU thread. See Note [shared CPU].

    Note [shared CPU]
    -----------------
    torch runs a batched ``eigvalsh`` as one MKL call per matrix, each multithreaded. On a CPU shared with other
    processes the threads of every small call spin-wait for each other: with 2 threads on a loaded 2-core machine
    a batch of 144 Hermitian 64×64 eigenproblems took 8.8 s instead of 0.15 s on one thread (59×), which is why the
    FFT-based paths degraded far more than the peers' code under load. Small batched problems gain nothing from
    intra-op threads, so we run them on one thread and restore the setting afterwards. (``torch.set_num_threads``
    is process-wide: a program that calls these functions from several Python threads at once should set one
    thread itself.)
    """
    if x.device.type != "cpu" or x.ndim < 3 or x.shape[-1] > 512 or torch.get_num_threads() == 1:
        yield
        return
    with _one_torch_thread():
        yield


@contextlib.contextmanager
def _one_torch_thread():
    """torch's intra-op work on one thread inside the block, the setting restored afterwards (process-wide)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _unit_roundoff(dtype: torch.dtype, device: torch.device) -> float:
    """Unit roundoff of matrix products in ``dtype`` on ``device`` (Note [certified rounding])."""
    real = torch.finfo(dtype).eps / 2 if not dtype.is_complex else torch.finfo(dtype.to_real()).eps / 2
    if device.type == "cuda" and real == 2.0**-24:
        precision = torch.get_float32_matmul_precision()
        if precision == "high":  # TF32: 10 explicit mantissa bits
            return 2.0**-11
        if precision == "medium":  # bfloat16: 7 explicit mantissa bits
            return 2.0**-8
    return real


def _gamma(k: int, u: float, is_complex: bool) -> float:
    """The constant γ_k = k u / (1 − k u) of a product with inner dimension k (2 γ_(k+2) for complex)."""
    if is_complex:
        k += 2
    ku = k * u
    if ku >= 0.5:
        raise ValueError(
            f"inner dimension {k} is too large to certify a bound at unit roundoff {u:.1e}; use float64 weights"
        )
    return (2.0 if is_complex else 1.0) * ku / (1.0 - ku)


def _f64(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.complex128 if x.is_complex() else torch.float64)


def _max_abs_scale(W: torch.Tensor) -> torch.Tensor:
    """Largest |entry| of each matrix (..., 1, 1), with 1 for all-zero matrices. See Note [rescaling]."""
    s = W.detach().abs().amax(dim=(-2, -1), keepdim=True)
    return torch.where(s > 0, s, torch.ones_like(s))


def _fro(G: torch.Tensor) -> torch.Tensor:
    """Frobenius norm of each matrix, (..., 1, 1), real."""
    return torch.linalg.matrix_norm(G, "fro", keepdim=True)


def _safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """sqrt with the gradient 0 (not inf/NaN) at 0: the subgradient of a norm at the zero matrix."""
    pos = x > 0
    return torch.where(pos, torch.where(pos, x, torch.ones_like(x)).sqrt(), torch.zeros_like(x))


def _safe_fro64(G: torch.Tensor, dims: tuple[int, ...] = (-2, -1)) -> torch.Tensor:
    """Frobenius norm in float64 over ``dims`` (kept), differentiable with gradient 0 at the zero matrix."""
    G = _f64(G)
    sq = (G.real.square() + G.imag.square()) if G.is_complex() else G.square()
    return _safe_sqrt(sq.sum(dim=dims, keepdim=True))


def _tall(W: torch.Tensor) -> torch.Tensor:
    """Transpose wide matrices so that the Gram matrix WᴴW is the smaller one (same singular values)."""
    return W.mT if W.shape[-1] > W.shape[-2] else W


class _Steps(NamedTuple):
    """What the certification recursion needs from one Gram step (float64, detached, shape (..., 1, 1))."""

    f: torch.Tensor  # ‖A_(t−1)‖_F
    r: torch.Tensor  # the divisor actually used (in the working dtype, as float64)
    k: int  # inner dimension of the product BᴴB


def _gram_steps(W0: torch.Tensor, n_iter: int, record: list | None = None):
    """Yield ``(t, G_t, log c_t)`` for t = 0..n_iter, where ``(WᴴW)^(2^(t-1)) = c_t G_t`` (``W = c_0 G_0``).

    ``W0`` is tall (m ≥ n). Every iterate is rescaled by its (detached) Frobenius norm, see Note [rescaling];
    ``log c_t`` is carried in float64. If ``record`` is a list, the step data of Note [certified rounding] are
    appended to it.
    """
    s = _max_abs_scale(W0)
    G = W0 / s  # (..., m, n), entries ≤ 1 in modulus
    logc = torch.log(s.to(torch.float64))  # (..., 1, 1)
    yield 0, G, logc
    for t in range(1, n_iter + 1):
        f = _fro(_f64(G.detach()))  # float64: exact enough, never overflows (entries are O(1))
        r = torch.where(f > 0, f, torch.ones_like(f)).to(G.real.dtype)  # all-zero matrix: stays zero, bound 0
        if record is not None:
            record.append(_Steps(f, r.to(torch.float64), G.shape[-2]))
        G = G / r
        logc = 2.0 * (logc + torch.log(r.to(torch.float64)))
        G = G.mH @ G  # (..., n, n), Hermitian PSD
        yield t, G, logc


def _certified_upper(
    G_T: torch.Tensor,
    steps: list[_Steps],
    f0: torch.Tensor,
    s: torch.Tensor,
    u: float,
    is_complex: bool,
    extra0: torch.Tensor | float = 0.0,
) -> torch.Tensor:
    """Certified upper bound on σ1 of the original matrices from the final iterate (Note [certified rounding]).

    ``f0`` is ‖A_0‖_F, ``s`` the scale with ``W = s · A_0``, ``extra0`` an absolute error of A_0 beyond its
    rounding to the working dtype (the FFT of a convolution). Returns float64 of shape (...), differentiable
    through ``G_T``.
    """
    n = G_T.shape[-2] * G_T.shape[-1]
    V = _safe_fro64(G_T) * (1.0 + n * 2.0**-52)  # float64 sum of squares
    for st in reversed(steps):
        b = (1.0 + u) * st.f / st.r
        V = st.r * (_safe_sqrt(V + _gamma(st.k, u, is_complex) * b * b) + u * b)
    V = V + u * f0 * (1.0 + 2.0 * u) + extra0
    return (s.to(torch.float64) * V * _F64_SLACK).squeeze(-1).squeeze(-1)


def _round_up(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Cast a float64 upper bound to (the real part of) ``dtype`` without rounding it down."""
    if dtype.is_complex:
        dtype = dtype.to_real()
    y = x.to(dtype)
    if dtype == torch.float64:
        return y
    up = torch.nextafter(y.detach(), torch.full_like(y.detach(), math.inf))
    # keep y's autograd graph; only the value moves up by one ulp where the cast rounded down
    return torch.where(y.detach().to(torch.float64) < x.detach(), y + (up - y.detach()), y)


def _gram_upper64(W0: torch.Tensor, n_iter: int, extra0: torch.Tensor | float = 0.0) -> torch.Tensor:
    """Certified Gram-iteration bound of each (tall) matrix, float64, shape (...); ``extra0`` as in
    :func:`_certified_upper` but in the units of W0."""
    steps: list[_Steps] = []
    *_, (_t, G, _logc) = _gram_steps(W0, n_iter, steps)
    s = _max_abs_scale(W0)
    f0 = steps[0].f if steps else _fro(_f64(W0.detach() / s))
    u = _unit_roundoff(W0.dtype, W0.device)
    return _certified_upper(G, steps, f0, s, u, W0.is_complex(), extra0 / s)


def _gram_upper(W0: torch.Tensor, n_iter: int) -> torch.Tensor:
    """:func:`_gram_upper64` rounded up to W0's real dtype."""
    return _round_up(_gram_upper64(W0, n_iter), W0.dtype)


def _lower_from(W0: torch.Tensor, G: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Lower bound on σ1 from a Gram iterate G ∝ (WᴴW)^(2^(t-1)), t ≥ 1 (exact arithmetic; see below).

    The column of G with the largest diagonal entry is (WᴴW)^k applied to a basis vector, i.e. a power-iteration
    vector v. Then ``‖WᴴW v‖ / ‖v‖ ≤ σ1²`` for every v, and it dominates the Rayleigh quotient ‖Wv‖²/‖v‖². In
    floating point the quotient is shrunk by the a-priori error of the two products, so it stays below σ1.
    """
    W = W0 / s  # s: (..., 1, 1) the max-abs scale of W0
    j = torch.diagonal(G, dim1=-2, dim2=-1).real.argmax(dim=-1)  # (...)
    idx = j[..., None, None].expand(*G.shape[:-1], 1)
    v = torch.gather(G, -1, idx).detach()  # (..., n, 1)
    y = W.mH @ (W @ v)  # (..., n, 1)
    nv = _safe_fro64(v)
    ratio = _safe_fro64(y) / torch.where(nv > 0, nv, torch.ones_like(nv))
    # ‖fl(y) − y‖ ≤ (γ_m + γ_n + γ_m γ_n) ‖W‖_F² ‖v‖ (two products); subtract it from the quotient
    u = _unit_roundoff(W0.dtype, W0.device)
    g1, g2 = _gamma(W.shape[-2], u, W.is_complex()), _gamma(W.shape[-1], u, W.is_complex())
    err = (g1 + g2 + g1 * g2) * _safe_fro64(W.detach()).square() * (1.0 + 4 * u)
    q = (ratio - err).clamp_min(0.0)
    return (_safe_sqrt(q) * s.to(torch.float64) * (1.0 - 1e-12)).squeeze(-1).squeeze(-1)


class _GramIterationExplicit(torch.autograd.Function):
    """Gram iteration with the closed-form gradient (saves the autograd graph of the loop).

    ``∂σ̂/∂W = W (WᴴW)^(2^T − 1) / ‖(WᴴW)^(2^(T−1))‖_F^(2 − 2^−T)``; the numerator is ``W H_1 H_2 ⋯ H_T`` with the
    Gram iterates ``H_t = (WᴴW)^(2^(t−1))``, so the saved rescaled iterates give it in T products, with the scales
    accumulated as logarithms (Note [rescaling]). The forward value is the certified bound of
    Note [certified rounding]; the gradient is that of the Gram-iteration bound (they differ by the rounding
    margin only). At the zero matrix the gradient is 0 (a subgradient of the bound there).
    """

    @staticmethod
    def forward(ctx, W0: torch.Tensor, n_iter: int, extra0: torch.Tensor | float = 0.0, round_up: bool = True):
        Gs, logcs, steps = [], [], []
        for _t, G, logc in _gram_steps(W0, n_iter, steps):
            Gs.append(G)
            logcs.append(logc)
        ctx.n_iter = n_iter
        ctx.save_for_backward(*Gs, *logcs)
        s = _max_abs_scale(W0)
        f0 = steps[0].f if steps else _fro(_f64(Gs[0]))
        u = _unit_roundoff(W0.dtype, W0.device)
        up = _certified_upper(Gs[-1], steps, f0, s, u, W0.is_complex(), extra0 / s)
        return _round_up(up, W0.dtype) if round_up else up

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        T = ctx.n_iter
        saved = ctx.saved_tensors
        grad = _explicit_gradient(saved[: T + 1], saved[T + 1 :], T)
        return grad * grad_out[..., None, None].to(grad.dtype), None, None, None


def _explicit_gradient(Gs, logcs, T: int) -> torch.Tensor:
    """``∂σ̂/∂W`` of the Gram-iteration bound from the saved rescaled iterates (see :class:`_GramIterationExplicit`)."""
    D = Gs[0]
    log_d = torch.zeros_like(logcs[0])
    for G in Gs[1:]:
        D = D @ G  # (..., m, n)
        d = _fro(D)
        d = torch.where(d > 0, d, torch.ones_like(d))
        D = D / d
        log_d = log_d + torch.log(d.to(torch.float64))
    log_num = log_d + sum(logcs)
    fT = _fro(_f64(Gs[-1]))
    nz = fT > 0
    log_den = (2.0 - 0.5**T) * (logcs[-1] + torch.log(torch.where(nz, fT, torch.ones_like(fT))))
    factor = torch.where(nz, torch.exp(log_num - log_den), torch.zeros_like(fT)).to(D.real.dtype)
    return D * factor


class _GramIterationMaxExplicit(torch.autograd.Function):
    """``max`` over a batch of the certified Gram-iteration bounds (float64, 0-dim), with the closed-form gradient
    of the arg-max matrix only.

    The gradient of a max is that of its arg-max (a subgradient at ties), so the forward runs the batch without
    keeping any iterate, then recomputes the T + 1 iterates of the arg-max matrix alone for the backward: the
    memory saved for backward is one matrix's iterates, not the batch's (for a convolution, one DFT block instead
    of all of them), and the backward costs T products of one matrix. The value is the max of
    :func:`_gram_upper64` over the batch.
    """

    @staticmethod
    def forward(ctx, W0: torch.Tensor, n_iter: int, extra0: torch.Tensor | float = 0.0):
        up = _gram_upper64(W0, n_iter, extra0)  # (B,)
        i = int(up.argmax())
        Gs, logcs = [], []
        for _t, G, logc in _gram_steps(W0[i : i + 1], n_iter):
            Gs.append(G)
            logcs.append(logc)
        ctx.n_iter, ctx.index, ctx.shape = n_iter, i, W0.shape
        ctx.save_for_backward(*Gs, *logcs)
        return up[i]

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        T = ctx.n_iter
        saved = ctx.saved_tensors
        block = _explicit_gradient(saved[: T + 1], saved[T + 1 :], T)[0]
        grad = torch.zeros(ctx.shape, dtype=block.dtype, device=block.device)
        grad[ctx.index] = block * grad_out.to(block.dtype)
        return grad, None, None


def gram_iteration(W: torch.Tensor, *, n_iter: int = 6, explicit_backward: bool = False) -> torch.Tensor:
    """Certified upper bound on the spectral norm σ1 of (a batch of) matrices by Gram iteration.

    Returns ``(Σ_i σ_i^(2^(T+1)))^(2^-(T+1))`` with T = ``n_iter``, plus the rounding margin of
    Note [certified rounding]: an upper bound on σ1 at every T, also in float32, non-increasing in T, and at most
    ``rank^(2^-(T+1))`` times σ1. The ratio is reached for a flat spectrum (e.g. orthogonal W: bound =
    rank^(2^-(T+1)), 1.09 for rank 256 at T = 5), and it shrinks like (σ2/σ1)^(2^(T+1)) otherwise, so the
    convergence is super-linear. Deterministic (no random start). Iterates are rescaled (Note [rescaling] in this
    module), so float32 weights anywhere in 1e-30 … 1e30 give finite, correct bounds.

    Args:
        W: matrices of shape (..., m, n), real or complex. Each matrix of the batch is rescaled on its own.
        n_iter: number of Gram iterations T (≥ 0; 0 gives the Frobenius norm).
        explicit_backward: use the closed-form gradient instead of autograd through the loop (same values,
            checked by gradcheck in the tests; saves the memory of the loop's graph). Real or complex W.

    Returns:
        Upper bounds, shape (...), in W's real dtype (float32 for half-precision input). The gradient is finite
        everywhere, 0 at the zero matrix.

    Shape:
        W: (..., m, n) → (...).

    Raises:
        ValueError: W has fewer than 2 dimensions, is empty, contains NaN/inf, or has an integer/bool dtype;
            bad ``n_iter``.

    Example:
        >>> W = torch.randn(500, 400, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        >>> bool(gram_iteration(W, n_iter=10) >= torch.linalg.matrix_norm(W, 2))
        True

    References:
        Delattre, Barthélemy, Araujo, Allauzen, "Efficient Bound of Lipschitz Constant for Convolutional Layers by
        Gram Iteration", ICML 2023 (arXiv:2305.16173), Algorithm 1; Delattre, thesis (arXiv:2510.25282),
        chapter 3.
    """
    W = _prepare("W", W)
    n_iter = check_positive_int("n_iter", n_iter, minimum=0)
    W0 = _tall(W)
    if explicit_backward:
        return _GramIterationExplicit.apply(W0, n_iter)
    return _gram_upper(W0, n_iter)


def _bounds_loop(
    W0: torch.Tensor,
    n_iter: int,
    tol: float | None,
    reduce_max: bool,
    *,
    outer_scale: torch.Tensor | float = 1.0,
    extra0: torch.Tensor | float = 0.0,
    u: float | None = None,
) -> SpectralBounds:
    """Shared loop of the certified-interval mode; ``reduce_max`` takes the max over all blocks (convolutions).

    ``outer_scale`` multiplies both ends (the kernel scale of a convolution); ``extra0`` is an absolute error of
    the rescaled blocks beyond their rounding (FFT), ``u`` the unit roundoff (default: W0's). Returns float64
    ends rounded to W0's real dtype (upper up, lower down).
    """
    lower = upper = None
    t_done = 0
    steps: list[_Steps] = []
    s = _max_abs_scale(W0)
    u = _unit_roundoff(W0.dtype, W0.device) if u is None else u
    dtype = W0.dtype.to_real() if W0.is_complex() else W0.dtype
    f0 = None
    for t, G, _logc in _gram_steps(W0, n_iter, steps):
        if t == 0:
            continue
        f0 = steps[0].f
        up = _certified_upper(G, steps, f0, s, u, W0.is_complex(), extra0 / s) * outer_scale
        lo = (_lower_from(W0, G, s) - torch.as_tensor(extra0, dtype=torch.float64)) * outer_scale
        if reduce_max:
            up, lo = up.amax(), lo.amax()
        # The bound is non-increasing in exact arithmetic; keeping the running min/max makes the interval
        # monotone under rounding too.
        upper = up if upper is None else torch.minimum(upper, up)
        lower = lo if lower is None else torch.maximum(lower, lo)
        lower = torch.minimum(lower, upper).clamp_min(0.0)
        t_done = t
        if tol is not None and bool(((upper - lower) <= tol * upper).all()):
            break
    if upper is None:  # n_iter == 0: Frobenius norm above, nothing below but 0
        f0 = _fro(_f64(W0.detach() / s))
        up = _certified_upper(W0 / s, [], f0, s, u, W0.is_complex(), extra0 / s) * outer_scale
        upper = up.amax() if reduce_max else up
        lower = torch.zeros_like(upper)
    lo32 = lower.to(dtype)
    lo32 = torch.where(lo32.to(torch.float64) > lower, torch.nextafter(lo32, torch.zeros_like(lo32)), lo32)
    return SpectralBounds(lo32, _round_up(upper, dtype), t_done)


def gram_iteration_bounds(W: torch.Tensor, *, n_iter: int = 12, tol: float | None = None) -> SpectralBounds:
    """Certified interval ``lower ≤ σ1 ≤ upper`` from the same Gram iterates, stopping once the gap is ≤ ``tol``.

    The upper end is :func:`gram_iteration`. The lower end reuses the iterate ``G_t ∝ (WᴴW)^(2^(t-1))``: its
    column with the largest diagonal is a power-iteration vector v after 2^(t-1) steps, and
    ``sqrt(‖WᴴWv‖/‖v‖) ≤ σ1``. The relative gap (upper − lower)/upper therefore tells how far the bound can be from
    the truth, at the cost of two matrix–vector products per iteration. Both ends account for rounding
    (Note [certified rounding]): the upper end is rounded up, the lower end shrunk by the a-priori error of its
    two products, so the interval holds σ1 in float32 too.

    Args:
        W: matrices of shape (..., m, n), real or complex.
        n_iter: maximum number of Gram iterations (≥ 0).
        tol: stop as soon as every matrix has ``upper − lower ≤ tol · upper``; ``None`` runs all ``n_iter``.

    Returns:
        ``SpectralBounds(lower, upper, n_iter)``: tensors of shape (...) and the iterations used.

    Raises:
        ValueError: as :func:`gram_iteration`, or ``tol`` not a positive number.

    References:
        Delattre et al., ICML 2023 (arXiv:2305.16173); thesis (arXiv:2510.25282), chapter 3. The lower end is
        ours.
    """
    W = _prepare("W", W)
    n_iter = check_positive_int("n_iter", n_iter, minimum=0)
    if tol is not None:
        tol = check_positive_float("tol", tol)
    return _bounds_loop(_tall(W), n_iter, tol, reduce_max=False)


def power_iteration(W: torch.Tensor, *, n_iter: int = 100, generator: torch.Generator | None = None) -> torch.Tensor:
    """Power iteration on WᴴW: a lower estimate of σ1 (``‖Wv‖`` for a unit vector v, so never above σ1).

    Converges linearly, at rate (σ2/σ1)² per iteration, from a random Gaussian start drawn from ``generator``. Not
    a certified bound in either direction once rounding is counted (it is below σ1 up to rounding).

    Args:
        W: matrices of shape (..., m, n), real or complex.
        n_iter: number of iterations (≥ 1).
        generator: source of the random start; ``None`` = fresh generator seeded 0 (deterministic).

    Returns:
        Lower estimates of σ1, shape (...).

    Raises:
        ValueError: bad W (empty, NaN/inf, < 2 dims, integer/bool dtype) or ``n_iter``.

    References:
        Classical (von Mises, Pollaczek-Geiringer 1929); used for layers by Miyato et al., ICLR 2018
        (arXiv:1802.05957) and Ryu et al., ICML 2019 (arXiv:1905.05406); thesis (arXiv:2510.25282), chapter 3.
    """
    W = _prepare("W", W)
    n_iter = check_positive_int("n_iter", n_iter)
    g = resolve_generator(generator, W.device)
    s = _max_abs_scale(W)
    A = W.detach() / s  # see Note [rescaling]
    v = torch.randn(*A.shape[:-2], A.shape[-1], 1, generator=g, device=A.device, dtype=A.dtype)
    for _ in range(n_iter):
        v = A.mH @ (A @ v)  # (..., n, 1)
        v = v / torch.linalg.vector_norm(v, dim=(-2, -1), keepdim=True).clamp_min(torch.finfo(v.real.dtype).tiny)
    # Re-apply the (possibly differentiable) W to the final direction so that gradients flow as in torch's
    # spectral_norm.
    out = _safe_fro64((W / s) @ v).to(W.real.dtype)
    return (out * s).squeeze(-1).squeeze(-1)


def spectral_norm_exact(W: torch.Tensor) -> torch.Tensor:
    """Exact σ1 of (a batch of) matrices by SVD, after max-abs rescaling (robust to extreme scales).

    Exact up to the SVD's rounding (about ``n·u·σ1``); :func:`~stabkit.norms.spectral_norm_upper` adds the slack
    that makes it a certified upper bound.

    Args:
        W: matrices of shape (..., m, n), real or complex.

    Returns:
        σ1, shape (...).

    Raises:
        ValueError: bad W (empty, NaN/inf, < 2 dims, integer/bool dtype).
    """
    W = _prepare("W", W)
    s = _max_abs_scale(W)
    with _batched_lapack(W):
        sigma = torch.linalg.matrix_norm(W / s, 2)
    return sigma * s.squeeze(-1).squeeze(-1)


def _check_kernel(kernel: object, *, real: bool = True) -> torch.Tensor:
    """A real (by default) convolution kernel of shape (c_out, c_in, kh, kw), validated like every weight."""
    kernel = _prepare("kernel", kernel, min_ndim=4)
    if kernel.ndim != 4:
        raise ValueError(f"kernel must have shape (c_out, c_in, kh, kw), got shape {tuple(kernel.shape)}")
    if real and kernel.is_complex():
        raise ValueError("kernel must be real for convolution norms (complex kernels are not supported)")
    return kernel
