"""Hessian-vector products and the spectral quantities built from them: top eigenvalues, trace, density."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple, get_args

import numpy as np
import torch
import torch.nn.functional as F
from scipy.sparse.linalg import LinearOperator, eigsh
from torch import nn

from stabkit._checks import check_choice, check_positive_float, check_positive_int, check_tensor, resolve_generator
from stabkit.curvature._functional import LossFn, ParameterSpace, check_functional_model, iterate_data


class HessianOperator:
    """The Hessian of a model's mean loss w.r.t. (a subset of) its parameters, as a matrix-free operator.

    ``H @ v`` is a Hessian-vector product by reverse-over-reverse differentiation (``torch.func.vjp`` of
    ``torch.func.grad``), costing about two gradient evaluations and never forming ``H``. Over a loader the
    product is the batch-size-weighted sum of the per-batch products, i.e. the Hessian of the mean loss over
    all the data (for a mean-reduced ``loss_fn``).

    Args:
        model: the network, in eval mode if it has BatchNorm (the loss must be a function of the parameters
            only).
        data: one ``(x, y)`` batch, or an iterable of ``(x, y)`` batches (e.g. a list or a ``DataLoader``).
        params: parameter names to differentiate w.r.t. (e.g. ``["fc.weight"]``); ``None`` means all.
        loss_fn: ``loss_fn(logits, y)``, mean-reduced. Default: cross-entropy.
        cache: keep, per batch, the graph of the gradient computation between products, so that each product
            is one double-backward pass (about 1.7 gradients instead of 3 for a small CNN on CPU). It holds one
            such graph per batch in memory: set ``False`` for a loader too large for that.

    Attributes:
        dim: number of chosen parameters ``n``; vectors are flat ``(n,)`` in ``named_parameters`` order.
        n_hvp: how many products have been computed so far (cost counter for benchmarks).

    Raises:
        ValueError: a BatchNorm module in training mode, unknown parameter names, or bad data.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).double()
        >>> g = torch.Generator().manual_seed(0)
        >>> x, y = torch.randn(16, 3, dtype=torch.float64, generator=g), torch.arange(16) % 2
        >>> H = HessianOperator(model.eval(), (x, y), params=["2.weight"])  # the last layer: 8 parameters
        >>> top = top_eigenvalues(H, k=1)
        >>> exact = torch.linalg.eigvalsh(H.dense())[-1]
        >>> bool(abs(top.eigenvalues[0] - exact) < 1e-6 * exact)
        True

    References:
        B. A. Pearlmutter, "Fast exact multiplication by the Hessian", Neural Computation 1994.
        Thesis arXiv:2510.25282, ch. 5 (curvature).
    """

    def __init__(
        self,
        model: nn.Module,
        data: Any,
        *,
        params: Sequence[str] | None = None,
        loss_fn: LossFn = F.cross_entropy,
        cache: bool = True,
    ) -> None:
        check_functional_model(model)
        self.space = ParameterSpace(model, params)
        self.batches = iterate_data(data, self.space.device)
        self.loss_fn = loss_fn
        self.theta = self.space.current()  # the point where the Hessian is taken, frozen at construction
        self.dim = self.space.dim
        self.dtype = self.space.dtype
        self.device = self.space.device
        self.n_hvp = 0
        self.cache = bool(cache)
        # (gradient, vjp of the gradient map) per batch, built once when caching
        self._cached = [self._linearise(x, y) for x, y, _ in self.batches] if self.cache else None

    def _linearise(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Callable]:
        def loss(theta: torch.Tensor) -> torch.Tensor:
            return self.space.loss(theta, x, y, self.loss_fn)

        # reverse-over-reverse: the vector-Jacobian product of the gradient map with v is Hᵀv = Hv.
        # Forward-over-reverse (jvp of grad) measured no faster on CPU, fails on some losses
        # (mse_loss: "ZeroTensors are immutable") and warns about torch.jit on first use.
        return torch.func.vjp(torch.func.grad(loss), self.theta)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """Return ``H v`` for a flat vector ``v`` of shape ``(dim,)``."""
        check_tensor("v", v, ndim=1)
        if v.shape[0] != self.dim:
            raise ValueError(f"v must have shape ({self.dim},), got {tuple(v.shape)}")
        v = v.to(device=self.device, dtype=self.dtype)
        out = torch.zeros_like(self.theta)
        for i, (x, y, w) in enumerate(self.batches):
            _, vjp_fn = self._cached[i] if self._cached is not None else self._linearise(x, y)
            (hv,) = vjp_fn(v)
            out += w * hv.detach()
        self.n_hvp += 1
        return out

    __matmul__ = matvec

    def gradient(self) -> torch.Tensor:
        """The gradient of the mean loss at ``theta``, shape ``(dim,)`` (free when cached)."""
        out = torch.zeros_like(self.theta)
        for i, (x, y, w) in enumerate(self.batches):
            if self._cached is not None:
                out += w * self._cached[i][0].detach()
            else:
                out += w * torch.func.grad(lambda t, x=x, y=y: self.space.loss(t, x, y, self.loss_fn))(self.theta)
        return out.detach()

    def dense(self) -> torch.Tensor:
        """The explicit ``(dim, dim)`` Hessian, column by column (only for small models: ``dim`` products)."""
        eye = torch.eye(self.dim, dtype=self.dtype, device=self.device)
        return torch.stack([self.matvec(e) for e in eye], dim=1)

    def to_linear_operator(self) -> LinearOperator:
        """A float64 :class:`scipy.sparse.linalg.LinearOperator` view (products are computed in the model
        dtype)."""

        def mv(v: np.ndarray) -> np.ndarray:
            t = torch.as_tensor(np.ascontiguousarray(v).reshape(-1), dtype=self.dtype, device=self.device)
            return self.matvec(t).to(torch.float64).cpu().numpy()

        return LinearOperator((self.dim, self.dim), matvec=mv, rmatvec=mv, dtype=np.float64)


Operator = HessianOperator | torch.Tensor
#: ARPACK's choice of eigenvalues: largest algebraic, largest magnitude, smallest algebraic.
Which = Literal["LA", "LM", "SA"]


def _as_matvec(op: Operator) -> tuple[Callable[[torch.Tensor], torch.Tensor], int, torch.dtype, torch.device]:
    """Accept a HessianOperator or an explicit symmetric matrix; return (matvec, dim, dtype, device)."""
    if isinstance(op, HessianOperator):
        return op.matvec, op.dim, op.dtype, op.device
    if isinstance(op, torch.Tensor):
        check_tensor("op", op, ndim=2)
        if op.shape[0] != op.shape[1]:
            raise ValueError(f"op must be a square matrix, got shape {tuple(op.shape)}")
        # symmetric up to rounding: 100 ulps of the largest entry (an A + Aᵀ or a Gram matrix passes)
        scale = float(op.abs().max()) if op.numel() else 0.0
        if op.is_floating_point() and float((op - op.T).abs().max()) > 100 * torch.finfo(op.dtype).eps * scale:
            raise ValueError(
                "op must be a symmetric matrix (these are eigensolvers for Hessians); symmetrise it with "
                "(op + op.T) / 2 if the asymmetry is rounding"
            )
        return (lambda v: op @ v.to(op.dtype)), op.shape[0], op.dtype, op.device
    raise TypeError(f"op must be a HessianOperator or a square torch.Tensor, got {type(op).__name__}")


class Eigen(NamedTuple):
    """Top eigenpairs of a symmetric operator."""

    eigenvalues: torch.Tensor  # (k,) float64, in decreasing order
    eigenvectors: torch.Tensor  # (dim, k), unit norm, in the operator's dtype
    n_hvp: int  # operator products used


def top_eigenvalues(
    op: Operator,
    k: int = 1,
    *,
    tol: float = 1e-6,
    n_iter: int | None = None,
    which: Which = "LA",
    n_basis: int | None = None,
    generator: torch.Generator | None = None,
) -> Eigen:
    """Top-``k`` eigenpairs by implicitly restarted Lanczos (ARPACK, ``scipy.sparse.linalg.eigsh``).

    The start vector is drawn from ``generator`` (ARPACK would otherwise draw it from numpy's global RNG), so
    the result is deterministic.

    Args:
        op: a :class:`HessianOperator` or an explicit symmetric matrix ``(n, n)``.
        k: number of eigenpairs, ``k < n``.
        tol: ARPACK relative accuracy: ``‖Hx − λx‖ ≤ tol·|λ|``. Products are in the model dtype, so ask for no
            less than ~1e-6 with float32 models.
        n_iter: maximum number of Arnoldi restarts (ARPACK ``maxiter``); ``None`` lets ARPACK choose.
        which: ``"LA"`` largest algebraic (the sharpness), ``"LM"`` largest magnitude, ``"SA"`` smallest.
        n_basis: Lanczos basis size (ARPACK ``ncv``), ``k < n_basis ≤ n``; the first convergence check comes
            after ``n_basis`` products. ``None``: ``max(2k + 1, 6)``: measured by ``benchmarks/bench_curvature.py``, a
            small basis reaches 1e-8 in 13 products where 10 takes 16 and ARPACK's own default (20) takes 21.
        generator: source of the start vector.

    Returns:
        :class:`Eigen` with eigenvalues in decreasing order. Lanczos converges to the extreme eigenvalues from
        inside the spectrum, so ``eigenvalues[0]`` is a lower bound on ``λ_max`` up to ``tol``.

    Raises:
        ValueError: ``k`` not in ``[1, n)``, an unknown ``which``, or a non-symmetric matrix.
        scipy.sparse.linalg.ArpackNoConvergence: no convergence within ``n_iter``.

    References:
        R. B. Lehoucq, D. C. Sorensen, C. Yang, ARPACK Users' Guide, SIAM 1998. Thesis arXiv:2510.25282, ch. 5.
    """
    matvec, dim, dtype, device = _as_matvec(op)
    check_positive_int("k", k)
    if k >= dim:
        raise ValueError(f"k must be smaller than the dimension {dim}, got {k}; use torch.linalg.eigvalsh")
    check_choice("which", which, get_args(Which))
    check_positive_float("tol", tol)
    if n_iter is not None:
        check_positive_int("n_iter", n_iter)
    ncv = min(dim, max(2 * k + 1, 6)) if n_basis is None else check_positive_int("n_basis", n_basis)
    if not k < ncv <= dim:
        raise ValueError(f"n_basis must satisfy k < n_basis <= {dim}, got {n_basis}")
    g = resolve_generator(generator, device)
    v0 = torch.randn(dim, generator=g, device=device, dtype=torch.float64).cpu().numpy()
    count = [0]

    def mv(v: np.ndarray) -> np.ndarray:
        count[0] += 1
        t = torch.as_tensor(np.ascontiguousarray(v).reshape(-1), device=device, dtype=dtype)
        return matvec(t).to(torch.float64).cpu().numpy()

    lin = LinearOperator((dim, dim), matvec=mv, rmatvec=mv, dtype=np.float64)
    vals, vecs = eigsh(lin, k=k, which=which, tol=tol, maxiter=n_iter, v0=v0, ncv=ncv)
    order = np.argsort(vals)[::-1]  # eigsh returns ascending order
    values = torch.as_tensor(vals[order].copy(), dtype=torch.float64)
    vectors = torch.as_tensor(vecs[:, order].copy(), device=device).to(dtype)
    return Eigen(values, vectors, count[0])


def power_eigenpairs(
    op: Operator,
    k: int = 1,
    *,
    n_iter: int = 100,
    tol: float = 1e-6,
    generator: torch.Generator | None = None,
) -> Eigen:
    """Top-``k`` eigenpairs by power iteration with deflation (orthogonalisation against those found).

    Each eigenpair stops when the Rayleigh quotient changes by at most ``tol`` relatively, or after ``n_iter``
    products. Power iteration finds the eigenvalues of largest *magnitude*: on a Hessian with a large negative
    eigenvalue it returns that one.

    Args:
        op: a :class:`HessianOperator` or an explicit symmetric matrix ``(n, n)``.
        k: number of eigenpairs.
        n_iter: maximum number of products per eigenpair.
        tol: relative change of the Rayleigh quotient at which to stop.
        generator: source of the start vectors.

    Returns:
        :class:`Eigen`. Each value is a Rayleigh quotient, hence at most ``λ_max`` in the first slot: a lower
        bound on the top eigenvalue when that one dominates in magnitude.

    References:
        R. von Mises, H. Pollaczek-Geiringer, 1929; Z. Yao et al., "PyHessian", IEEE BigData 2020.
        Thesis arXiv:2510.25282, ch. 5.
    """
    matvec, dim, dtype, device = _as_matvec(op)
    check_positive_int("k", k)
    if k > dim:
        raise ValueError(f"k must be at most the dimension {dim}, got {k}")
    check_positive_int("n_iter", n_iter)
    check_positive_float("tol", tol)
    g = resolve_generator(generator, device)
    values: list[float] = []
    vectors: list[torch.Tensor] = []
    n_hvp = 0

    def deflate(v: torch.Tensor) -> torch.Tensor:
        for u in vectors:  # Gram–Schmidt against the eigenvectors already found
            v = v - (u @ v) * u
        return v

    for _ in range(k):
        v = deflate(torch.randn(dim, generator=g, device=device, dtype=dtype))
        v = v / torch.linalg.vector_norm(v)
        value = 0.0
        for _ in range(n_iter):
            hv = deflate(matvec(v))
            n_hvp += 1
            new = float(v @ hv)  # Rayleigh quotient vᵀHv with ‖v‖ = 1
            norm = torch.linalg.vector_norm(hv)
            if norm == 0:  # v in the null space: the eigenvalue is 0
                value = 0.0
                break
            v = hv / norm
            done = abs(new - value) <= tol * abs(value)
            value = new
            if done:
                break
        values.append(value)
        vectors.append(v)
    order = np.argsort(values)[::-1]
    return Eigen(
        torch.tensor([values[i] for i in order], dtype=torch.float64),
        torch.stack([vectors[i] for i in order], dim=1),
        n_hvp,
    )


class TraceEstimate(NamedTuple):
    """A Monte-Carlo trace estimate with its standard error."""

    trace: float  # mean of the probe values
    stderr: float  # sample standard deviation / √n_probes
    samples: torch.Tensor  # (n_probes,) float64, the values vᵀHv


def _rademacher(dim: int, g: torch.Generator, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return (torch.randint(0, 2, (dim,), generator=g, device=device) * 2 - 1).to(dtype)


def hutchinson_trace(op: Operator, *, n_probes: int = 100, generator: torch.Generator | None = None) -> TraceEstimate:
    """Hutchinson's estimator of ``tr H``: the mean of ``vᵀHv`` over Rademacher probes ``v``.

    Always uses exactly ``n_probes`` probes. The estimator is unbiased, and single probe values can be
    negative even when the trace is large and positive; stopping when the running mean goes negative (as a
    popular Hessian package does) biases it, e.g. 0.69 instead of 2.40. Use ``stderr`` to judge the precision
    instead.

    Args:
        op: a :class:`HessianOperator` or an explicit symmetric matrix ``(n, n)``.
        n_probes: number of probes, at least 2 (for the standard error).
        generator: source of the Rademacher probes.

    Returns:
        :class:`TraceEstimate`; ``trace ± 2·stderr`` is an approximate 95 % interval (neither side is
        bounded).

    References:
        M. F. Hutchinson, "A stochastic estimator of the trace of the influence matrix", 1989. Thesis
        arXiv:2510.25282, ch. 5.
    """
    matvec, dim, dtype, device = _as_matvec(op)
    check_positive_int("n_probes", n_probes, minimum=2)
    g = resolve_generator(generator, device)
    samples = torch.empty(n_probes, dtype=torch.float64)
    for i in range(n_probes):
        v = _rademacher(dim, g, device, dtype)
        samples[i] = float(v.to(torch.float64) @ matvec(v).to(torch.float64))
    return TraceEstimate(float(samples.mean()), float(samples.std() / n_probes**0.5), samples)


class SpectralDensity(NamedTuple):
    """Stochastic Lanczos quadrature: one Gauss quadrature rule per probe."""

    nodes: torch.Tensor  # (n_probes, n_iter) float64, Ritz values
    weights: torch.Tensor  # (n_probes, n_iter) float64, each row sums to 1 (zero weight pads a short rule)


def slq_density(
    op: Operator, *, n_probes: int = 10, n_iter: int = 30, generator: torch.Generator | None = None
) -> SpectralDensity:
    """Spectral density of ``H`` by stochastic Lanczos quadrature (SLQ).

    For each normalised Rademacher probe ``v``, ``n_iter`` Lanczos steps (full reorthogonalisation, float64)
    give a tridiagonal ``T``; its eigenvalues ``θ`` and squared first eigenvector components ``τ²`` are a
    Gauss rule for ``vᵀ f(H) v``. Averaged over probes this estimates ``(1/n) Σ_i f(λ_i)``; in particular
    ``n · mean_probes Σ τ²θ`` is exactly Hutchinson's trace estimate on the same probes.

    Args:
        op: a :class:`HessianOperator` or an explicit symmetric matrix ``(n, n)``.
        n_probes: number of probes.
        n_iter: Lanczos steps per probe (clipped to ``n``).
        generator: source of the probes.

    Returns:
        :class:`SpectralDensity`; smooth it with :func:`spectral_density`.

    References:
        L. Lin, Y. Saad, C. Yang, "Approximating spectral densities of large matrices", SIAM Review 2016;
        B. Ghorbani, S. Krishnan, Y. Xiao, ICML 2019. Thesis arXiv:2510.25282, ch. 5.
    """
    matvec, dim, dtype, device = _as_matvec(op)
    check_positive_int("n_probes", n_probes)
    check_positive_int("n_iter", n_iter)
    m = min(n_iter, dim)
    g = resolve_generator(generator, device)
    nodes = torch.zeros(n_probes, m, dtype=torch.float64)
    weights = torch.zeros(n_probes, m, dtype=torch.float64)
    for p in range(n_probes):
        v = _rademacher(dim, g, device, torch.float64) / dim**0.5
        basis = [v]
        alphas: list[float] = []
        betas: list[float] = []
        for j in range(m):
            w = matvec(basis[j].to(dtype)).to(torch.float64)
            alpha = float(basis[j] @ w)
            alphas.append(alpha)
            if j == m - 1:
                break
            for u in basis:  # full reorthogonalisation: float32 products lose orthogonality fast
                w = w - (u @ w) * u
            beta = float(torch.linalg.vector_norm(w))
            if beta < 1e-10 * max(1.0, abs(alpha)):  # invariant subspace found: the rule is exact
                break
            betas.append(beta)
            basis.append(w / beta)
        T = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if betas:
            off = torch.tensor(betas, dtype=torch.float64)
            T = T + torch.diag(off, 1) + torch.diag(off, -1)
        theta, vecs = torch.linalg.eigh(T)
        nodes[p, : len(alphas)] = theta
        weights[p, : len(alphas)] = vecs[0] ** 2
    return SpectralDensity(nodes, weights)


def spectral_density(density: SpectralDensity, grid: torch.Tensor, *, bandwidth: float) -> torch.Tensor:
    """Gaussian-kernel smoothing of an SLQ result on ``grid``: ``mean_p Σ_i τ²_pi N(t; θ_pi, bandwidth²)``.

    Args:
        density: output of :func:`slq_density`.
        grid: points ``t``, shape ``(G,)``.
        bandwidth: kernel standard deviation.

    Returns:
        The density values, shape ``(G,)``; integrates to 1 over the real line.
    """
    check_tensor("grid", grid, ndim=1)
    check_positive_float("bandwidth", bandwidth)
    t = grid.to(torch.float64)[:, None, None]  # (G, 1, 1)
    kernel = torch.exp(-0.5 * ((t - density.nodes) / bandwidth) ** 2) / (bandwidth * (2 * torch.pi) ** 0.5)
    return (kernel * density.weights).sum(-1).mean(-1)  # (G,)
