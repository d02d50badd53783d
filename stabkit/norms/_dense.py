"""Spectral norm of dense matrices: Gram iteration (certified upper bound), power iteration, exact SVD.

Note [rescaling]
----------------
Gram iteration squares the matrix at every step, so its entries grow like σ1^(2^t): in float32 the
Frobenius norm
overflows at t = 4 for a 500×400 Gaussian matrix. Every iterate is therefore divided by its Frobenius norm
and the
logarithm of the scale is carried along (Delattre et al. 2023). That alone is not enough for extreme
inputs: the
*first* Frobenius norm sums squares of the raw entries and overflows in float32 once entries reach ~1e19 (and
underflows to 0 below ~1e-23). We first divide by the largest absolute entry, which is exact to compute and
never
overflows, so weights anywhere in 1e-30 … 1e30 give finite, correct bounds. The scales are positive numbers
that
do not change the value of the bound, only its representation; they are detached from autograd, which
leaves the
gradient exact (the bound is the same function of W whatever scales are used).
"""

from __future__ import annotations

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
    W = check_tensor(name, W, min_ndim=min_ndim)
    if W.dtype in (torch.float16, torch.bfloat16):
        W = W.float()
    if W.dtype not in _SUPPORTED:
        raise ValueError(
            f"{name} must be a floating or complex tensor (float32/64, complex64/128, or half precision), "
            f"got dtype {W.dtype}; convert it with .double() first"
        )
    return W


def _max_abs_scale(W: torch.Tensor) -> torch.Tensor:
    """Largest |entry| of each matrix (..., 1, 1), with 1 for all-zero matrices. See Note [rescaling]."""
    s = W.detach().abs().amax(dim=(-2, -1), keepdim=True)
    return torch.where(s > 0, s, torch.ones_like(s))


def _fro(G: torch.Tensor) -> torch.Tensor:
    """Frobenius norm of each matrix, (..., 1, 1), real."""
    return torch.linalg.matrix_norm(G, "fro", keepdim=True)


def _tall(W: torch.Tensor) -> torch.Tensor:
    """Transpose wide matrices so that the Gram matrix WᴴW is the smaller one (same singular values)."""
    return W.mT if W.shape[-1] > W.shape[-2] else W


def _gram_steps(W0: torch.Tensor, n_iter: int):
    """Yield ``(t, G_t, log c_t)`` for t = 0..n_iter, where ``(WᴴW)^(2^(t-1)) = c_t G_t`` (``W = c_0 G_0``).

    ``W0`` is tall (m ≥ n). Every iterate is rescaled by its (detached) Frobenius norm, see Note [rescaling].
    """
    s = _max_abs_scale(W0)
    G = W0 / s  # (..., m, n), entries ≤ 1 in modulus
    logc = torch.log(s).to(G.real.dtype)  # (..., 1, 1)
    yield 0, G, logc
    for t in range(1, n_iter + 1):
        r = _fro(G.detach())
        r = torch.where(r > 0, r, torch.ones_like(r))  # all-zero matrix: stays zero, bound 0
        G = G / r
        logc = 2.0 * (logc + torch.log(r))
        G = G.mH @ G  # (..., n, n), Hermitian PSD
        yield t, G, logc


def _upper_from(G: torch.Tensor, logc: torch.Tensor, t: int) -> torch.Tensor:
    """The Gram-iteration bound ‖H_t‖_F^(2^-t) from the rescaled iterate, shape (...)."""
    p = 0.5**t
    return (_fro(G).pow(p) * torch.exp(logc * p)).squeeze(-1).squeeze(-1)


def _lower_from(W0: torch.Tensor, G: torch.Tensor, logc0: torch.Tensor) -> torch.Tensor:
    """Certified lower bound on σ1 from a Gram iterate G ∝ (WᴴW)^(2^(t-1)), t ≥ 1.

    The column of G with the largest diagonal entry is (WᴴW)^k applied to a basis vector, i.e. a
    power-iteration
    vector v. Then ``‖WᴴW v‖ / ‖v‖ ≤ σ1²`` for every v, and it dominates the Rayleigh quotient ‖Wv‖²/‖v‖².
    """
    s = torch.exp(logc0)  # (..., 1, 1) the max-abs scale of W
    W = W0 / s
    j = torch.diagonal(G, dim1=-2, dim2=-1).real.argmax(dim=-1)  # (...)
    idx = j[..., None, None].expand(*G.shape[:-1], 1)
    v = torch.gather(G, -1, idx)  # (..., n, 1)
    y = W.mH @ (W @ v)  # (..., n, 1)
    ratio = torch.linalg.vector_norm(y, dim=(-2, -1)) / torch.linalg.vector_norm(v, dim=(-2, -1)).clamp_min(
        torch.finfo(y.real.dtype).tiny
    )
    return ratio.sqrt() * s.squeeze(-1).squeeze(-1)


class _GramIterationExplicit(torch.autograd.Function):
    """Gram iteration with the closed-form gradient (saves the autograd graph of the loop).

    ``∂σ̂/∂W = W (WᴴW)^(2^T − 1) / ‖(WᴴW)^(2^(T−1))‖_F^(2 − 2^−T)``; the numerator is ``W H_1 H_2 ⋯ H_T``
    with the
    Gram iterates ``H_t = (WᴴW)^(2^(t−1))``, so the saved rescaled iterates give it in T products, with the
    scales
    accumulated as logarithms (Note [rescaling]).
    """

    @staticmethod
    def forward(ctx, W0: torch.Tensor, n_iter: int) -> torch.Tensor:
        Gs, logcs = [], []
        for _t, G, logc in _gram_steps(W0, n_iter):
            Gs.append(G)
            logcs.append(logc)
        ctx.n_iter = n_iter
        ctx.save_for_backward(*Gs, *logcs)
        return _upper_from(Gs[-1], logcs[-1], n_iter)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        T = ctx.n_iter
        saved = ctx.saved_tensors
        Gs, logcs = saved[: T + 1], saved[T + 1 :]
        D = Gs[0]
        log_d = torch.zeros_like(logcs[0])
        for G in Gs[1:]:
            D = D @ G  # (..., m, n)
            d = _fro(D)
            d = torch.where(d > 0, d, torch.ones_like(d))
            D = D / d
            log_d = log_d + torch.log(d)
        log_num = log_d + sum(logcs)
        log_den = (2.0 - 0.5**T) * (logcs[-1] + torch.log(_fro(Gs[-1])))
        grad = D * torch.exp(log_num - log_den)
        return grad * grad_out[..., None, None], None


def gram_iteration(W: torch.Tensor, *, n_iter: int = 6, explicit_backward: bool = False) -> torch.Tensor:
    """Certified upper bound on the spectral norm σ1 of (a batch of) matrices by Gram iteration.

    Returns ``(Σ_i σ_i^(2^(T+1)))^(2^-(T+1))`` with T = ``n_iter``: an upper bound on σ1 at every T,
    non-increasing
    in T, and at most ``rank^(2^-(T+1))`` times σ1. The ratio is reached for a flat spectrum (e.g.
    orthogonal W:
    bound = rank^(2^-(T+1)), 1.09 for rank 256 at T = 5), and it shrinks like (σ2/σ1)^(2^(T+1)) otherwise,
    so the
    convergence is super-linear. Deterministic (no random start). Iterates are rescaled (Note [rescaling]
    in this
    module), so float32 weights anywhere in 1e-30 … 1e30 give finite, correct bounds.

    Args:
        W: matrices of shape (..., m, n), real or complex. Each matrix of the batch is rescaled on its own.
        n_iter: number of Gram iterations T (≥ 0; 0 gives the Frobenius norm).
        explicit_backward: use the closed-form gradient instead of autograd through the loop (same values,
            checked by gradcheck in the tests; saves the memory of the loop's graph). Real or complex W.

    Returns:
        Upper bounds, shape (...). Half-precision input gives float32 output.

    Shape:
        W: (..., m, n) → (...).

    Raises:
        ValueError: W has fewer than 2 dimensions, contains NaN/inf, or has an integer dtype; bad ``n_iter``.

    Example:
        >>> W = torch.randn(500, 400, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        >>> bool(gram_iteration(W, n_iter=10) >= torch.linalg.matrix_norm(W, 2))
        True

    References:
        Delattre, Barthélemy, Araujo, Allauzen, "Efficient Bound of Lipschitz Constant for Convolutional
        Layers by
        Gram Iteration", ICML 2023 (arXiv 2305.16173); thesis chapter 3.
    """
    W = _prepare("W", W)
    n_iter = check_positive_int("n_iter", n_iter, minimum=0)
    W0 = _tall(W)
    if explicit_backward:
        return _GramIterationExplicit.apply(W0, n_iter)
    *_, (t, G, logc) = _gram_steps(W0, n_iter)
    return _upper_from(G, logc, t)


def _bounds_loop(W0: torch.Tensor, n_iter: int, tol: float | None, reduce_max: bool) -> SpectralBounds:
    """Shared loop of the certified-interval mode; ``reduce_max`` takes the max over all blocks
    (convolutions)."""
    lower = upper = None
    t_done = 0
    logc0 = None
    for t, G, logc in _gram_steps(W0, n_iter):
        if t == 0:
            logc0 = logc
            continue
        up = _upper_from(G, logc, t)
        lo = _lower_from(W0, G, logc0)
        if reduce_max:
            up, lo = up.amax(), lo.amax()
        # The bound is non-increasing in exact arithmetic; keeping the running min/max makes the interval
        # monotone under rounding too.
        upper = up if upper is None else torch.minimum(upper, up)
        lower = lo if lower is None else torch.maximum(lower, lo)
        lower = torch.minimum(lower, upper)
        t_done = t
        if tol is not None and bool(((upper - lower) <= tol * upper).all()):
            break
    if upper is None:  # n_iter == 0: Frobenius norm above, nothing below but 0
        up = _fro(W0).squeeze(-1).squeeze(-1)
        upper = up.amax() if reduce_max else up
        lower = torch.zeros_like(upper)
    return SpectralBounds(lower, upper, t_done)


def gram_iteration_bounds(W: torch.Tensor, *, n_iter: int = 12, tol: float | None = None) -> SpectralBounds:
    """Certified interval ``lower ≤ σ1 ≤ upper`` from the same Gram iterates, stopping once the gap is ≤
    ``tol``.

    The upper end is :func:`gram_iteration`. The lower end reuses the iterate ``G_t ∝ (WᴴW)^(2^(t-1))``: its
    column with the largest diagonal is a power-iteration vector v after 2^(t-1) steps, and
    ``sqrt(‖WᴴWv‖/‖v‖) ≤ σ1``. The relative gap (upper − lower)/upper therefore tells how far the bound can
    be from
    the truth, at the cost of two matrix–vector products per iteration. Both ends are exact bounds in exact
    arithmetic; in floating point they are off by rounding (relative ~ n·eps of the dtype).

    Args:
        W: matrices of shape (..., m, n), real or complex.
        n_iter: maximum number of Gram iterations (≥ 0).
        tol: stop as soon as every matrix has ``upper − lower ≤ tol · upper``; ``None`` runs all ``n_iter``.

    Returns:
        ``SpectralBounds(lower, upper, n_iter)``: tensors of shape (...) and the iterations used.

    Raises:
        ValueError: as :func:`gram_iteration`, or ``tol`` not a positive number.

    References:
        Delattre et al., ICML 2023 (arXiv 2305.16173); thesis chapter 3. The lower end is ours.
    """
    W = _prepare("W", W)
    n_iter = check_positive_int("n_iter", n_iter, minimum=0)
    if tol is not None:
        tol = check_positive_float("tol", tol)
    return _bounds_loop(_tall(W), n_iter, tol, reduce_max=False)


def power_iteration(W: torch.Tensor, *, n_iter: int = 100, generator: torch.Generator | None = None) -> torch.Tensor:
    """Power iteration on WᴴW: a lower estimate of σ1 (``‖Wv‖`` for a unit vector v, so never above σ1).

    Converges linearly, at rate (σ2/σ1)² per iteration, from a random Gaussian start drawn from ``generator``.

    Args:
        W: matrices of shape (..., m, n), real or complex.
        n_iter: number of iterations (≥ 1).
        generator: source of the random start; ``None`` = fresh generator seeded 0 (deterministic).

    Returns:
        Lower estimates of σ1, shape (...).

    Raises:
        ValueError: bad W (NaN/inf, < 2 dims, integer dtype) or ``n_iter``.

    References:
        Classical (von Mises 1929); used for layers by Miyato et al. 2018 and Ryu et al. 2019; thesis
        chapter 3.
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
    # Re-apply the (possibly differentiable) W to the final direction so that gradients flow as in
    # torch's spectral_norm.
    return torch.linalg.vector_norm((W / s) @ v, dim=(-2, -1)) * s.squeeze(-1).squeeze(-1)


def spectral_norm_exact(W: torch.Tensor) -> torch.Tensor:
    """Exact σ1 of (a batch of) matrices by SVD, after max-abs rescaling (robust to extreme scales).

    Args:
        W: matrices of shape (..., m, n), real or complex.

    Returns:
        σ1, shape (...).

    Raises:
        ValueError: bad W (NaN/inf, < 2 dims, integer dtype).
    """
    W = _prepare("W", W)
    s = _max_abs_scale(W)
    return torch.linalg.matrix_norm(W / s, 2) * s.squeeze(-1).squeeze(-1)
