"""Spectral norms of 2-D convolutions: circular padding via the DFT, zero padding via the kernel, and baselines.

Conventions. A kernel has shape (c_out, c_in, kh, kw) and acts like ``torch.nn.functional.conv2d``
(cross-correlation). ``input_size`` is the spatial size n (int) or (h, w) of the layer's input. With circular
padding the operator is the same whatever the padding offset (a circular shift does not change singular values);
with zero padding, ``pad`` zeros are added on each side (default ``(k - 1) // 2``, the usual "same" padding for
odd k).

Note [strides]
--------------
A stride-s circular convolution on n×n inputs (s dividing n) keeps one output in s per axis. In the unitary DFT
basis the subsampling folds the s² frequencies ω' + (a, b)·n/s onto ω', so the operator is block-diagonal with
(n/s)² blocks of size c_out × (c_in·s²): ``[K̂(ω' + a n/s, ω' + b n/s)]_(a,b) / s``. The functions with a
``stride`` argument use this exact formulation. Every other bound here is for stride 1; it remains a valid (loose)
upper bound for a strided layer, since subsampling has norm ≤ 1.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from stabkit._checks import check_positive_float, check_positive_int, resolve_generator
from stabkit.norms._dense import (
    _F64_SLACK,
    SpectralBounds,
    _bounds_loop,
    _check_kernel,
    _f64,
    _fro,
    _gamma,
    _gram_upper64,
    _GramIterationMaxExplicit,
    _round_up,
    _safe_fro64,
    _safe_sqrt,
    _tall,
    _unit_roundoff,
    power_iteration,
)
from stabkit.norms._grid import _top_eigenvalues, spectral_norm_upper
from stabkit.norms._selfcorr import _self_correlation

__all__ = [
    "conv_fantastic_four",
    "conv_gram_iteration",
    "conv_gram_iteration_bounds",
    "conv_lipgrid",
    "conv_matrix",
    "conv_power_iteration",
    "conv_spectral_norm_exact",
    "kernel_gram_iteration",
]


# --------------------------------------------------------------------------------------------------
def _pair(name: str, value: object) -> tuple[int, int]:
    if isinstance(value, int | bool) and not isinstance(value, bool):
        value = (value, value)
    if not (isinstance(value, tuple | list) and len(value) == 2):
        raise ValueError(f"{name} must be an int or a pair of ints (h, w), got {value!r}")
    return check_positive_int(name, value[0]), check_positive_int(name, value[1])


def _check_stride(stride: object, size: tuple[int, int]) -> tuple[int, int]:
    s = _pair("stride", stride)
    if size[0] % s[0] or size[1] % s[1]:
        raise ValueError(
            f"stride {s} must divide the input size {size} for the exact strided formulation "
            "(Note [strides]); "
            "pad the input size up to a multiple of the stride, or bound the stride-1 convolution instead"
        )
    return s


def _check_padding(padding: object) -> str:
    if padding not in ("zero", "circular"):
        raise ValueError(f"padding must be 'zero' or 'circular', got {padding!r}")
    return padding  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------
def _fold_kernel(kernel: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Wrap a kernel larger than the input onto the n×n torus (taps i and i+n act on the same pixel)."""
    c_out, c_in, kh, kw = kernel.shape
    h, w = size
    if kh <= h and kw <= w:
        return kernel
    ph, pw = -kh % h, -kw % w
    k = F.pad(kernel, (0, pw, 0, ph))  # (c_out, c_in, a·h, b·w)
    k = k.reshape(c_out, c_in, k.shape[-2] // h, h, k.shape[-1] // w, w)
    # an axis that already fitted is zero-padded up to h or w and reshaped with one block: unchanged
    return k.sum(dim=(2, 4))  # (c_out, c_in, h, w)


@functools.lru_cache(maxsize=64)
def _distinct_frequencies(h: int, w: int, device: torch.device) -> torch.Tensor:
    """Indices into the row-major (h, w//2 + 1) rfft2 grid of one frequency per conjugate pair {ω, −ω}.

    rfft2 keeps ω2 ∈ [0, w/2]; in the columns ω2 = 0 and (w even) ω2 = w/2 the frequencies (ω1, ω2) and
    (h − ω1, ω2) are conjugate, so only ω1 ≤ h/2 is kept there: 10–15 % fewer blocks at n = 8–16.
    """
    w2 = w // 2 + 1
    u = torch.arange(h, device=device).repeat_interleave(w2)
    v = torch.arange(w2, device=device).repeat(h)
    self_conjugate = (v == 0) | ((w % 2 == 0) & (v == w // 2))
    return (~self_conjugate | (u <= h // 2)).nonzero().squeeze(1)


def _dft_blocks(kernel: torch.Tensor, size: tuple[int, int], stride: tuple[int, int]) -> torch.Tensor:
    """The blocks whose largest singular value is σ1 of the circular convolution, shape (B, c_out,
    c_in·s²)."""
    c_out, c_in = kernel.shape[:2]
    k = _fold_kernel(kernel, size)
    if stride == (1, 1):
        # Real kernel: K̂(-ω) = conj K̂(ω), so the half-spectrum of rfft2 holds all distinct singular values;
        # its self-conjugate columns (ω2 = 0, and n/2 for even n) hold each pair twice: one of each is kept
        Kf = torch.fft.rfft2(k, s=size)  # (c_out, c_in, h, w//2+1)
        return Kf.permute(2, 3, 0, 1).reshape(-1, c_out, c_in)[_distinct_frequencies(*size, k.device)]
    (h, w), (sh, sw) = size, stride
    Kf = torch.fft.fft2(k, s=size)  # (c_out, c_in, h, w)
    # frequency u = a·(h/sh) + u' → (a, u'); Note [strides]
    Kf = Kf.reshape(c_out, c_in, sh, h // sh, sw, w // sw)
    Kf = Kf.permute(3, 5, 0, 1, 2, 4).reshape(-1, c_out, c_in * sh * sw)  # (B, c_out, c_in·s²)
    return Kf / math.sqrt(sh * sw)


def _dft_blocks_certified(
    kernel: torch.Tensor, size: tuple[int, int], stride: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The blocks of :func:`_dft_blocks` by a direct (separable) DFT, and a bound on their rounding error.

    A direct DFT of the few taps of a kernel has an error bound proportional to the taps' absolute sum, unlike the
    FFT of the zero-padded kernel, whose a-priori bound grows with the grid: each entry of a block errs by at most
    ``2 γ_(kh+kw+6) Σ_ab |k_ij[a, b]|`` (two products of inner dimension kw and kh with twiddles rounded from
    float64, Note [certified rounding] in ``_dense.py``), so every block errs in Frobenius norm by at most that
    constant times ``‖(Σ_ab |k_ij[a, b]|)_ij‖_F``. Returns ``(blocks (B, c_out, c_in·s²), error)``, the error a
    0-dim float64 tensor.
    """
    c_out, c_in = kernel.shape[:2]
    k = _fold_kernel(_f64(kernel), size)  # folding in float64 (exact enough), then one rounding below
    k = k.to(kernel.dtype)
    kh, kw = k.shape[-2:]
    (h, w), (sh, sw) = size, stride
    cdtype = torch.complex64 if kernel.dtype == torch.float32 else torch.complex128
    half = stride == (1, 1)
    jw = torch.arange(w // 2 + 1 if half else w, device=k.device, dtype=torch.float64)
    jh = torch.arange(h, device=k.device, dtype=torch.float64)
    b = torch.arange(kw, device=k.device, dtype=torch.float64)
    a = torch.arange(kh, device=k.device, dtype=torch.float64)
    Pw = torch.exp(-2j * math.pi * b[:, None] * jw[None, :] / w).to(cdtype)  # (kw, w')
    Ph = torch.exp(-2j * math.pi * jh[:, None] * a[None, :] / h).to(cdtype)  # (h, kh)
    X = k.to(cdtype) @ Pw  # (c_out, c_in, kh, w')
    Kf = torch.einsum("ua,oiaj->ujoi", Ph, X)  # (h, w', c_out, c_in)
    u = _unit_roundoff(kernel.dtype, kernel.device)
    err = _gamma(kh + kw + 6, u, True) * _fro(_f64(k.detach()).abs().sum(dim=(-2, -1), keepdim=False)[None, None])
    err = err.reshape(())
    if half:
        return Kf.reshape(-1, c_out, c_in), err
    Kf = Kf.reshape(sh, h // sh, sw, w // sw, c_out, c_in)  # frequency u = a·(h/sh) + u'
    Kf = Kf.permute(1, 3, 4, 5, 0, 2).reshape(-1, c_out, c_in * sh * sw)  # (B, c_out, c_in·s²)
    # the division by sqrt(s²) adds one rounding per entry, i.e. at most u ‖block‖_F ≤ u ‖(Σ|k_ij|)‖_F
    return Kf / math.sqrt(sh * sw), err + u * _fro(_f64(k.detach()).abs().sum(dim=(-2, -1))[None, None]).reshape(())


def conv_spectral_norm_exact(
    kernel: torch.Tensor, input_size: int | tuple[int, int], *, stride: int | tuple[int, int] = 1
) -> torch.Tensor:
    """Exact spectral norm of a circular-padding convolution (FFT, then the top eigenvalue of each Gram block).

    The DFT block-diagonalises the convolution (Sedghi et al. 2019); we take ``rfft2`` (half the blocks, real
    kernels) and ``eigvalsh`` of the smaller Gram matrix of each block instead of an SVD of every block: the top
    eigenvalue of KᴴK is as accurate as σ1² (relative rounding of the dtype) and much cheaper. Exact up to
    rounding; :func:`~stabkit.norms.spectral_norm_bound` with ``method="exact"`` gives a certified upper bound.

    Args:
        kernel: real kernel (c_out, c_in, kh, kw); kernels larger than the input are wrapped around the torus.
        input_size: spatial size n or (h, w) of the input.
        stride: stride of the convolution; must divide the input size (Note [strides] in this module).

    Returns:
        σ1 of the circular convolution on h×w inputs, a 0-dim tensor.

    Raises:
        ValueError: bad kernel shape/dtype, empty or NaN/inf kernel, non-positive size, stride not dividing the
            size.

    References:
        Sedghi, Gupta, Long, "The Singular Values of Convolutional Layers", ICLR 2019 (arXiv:1805.10408),
        Theorem 6; thesis (arXiv:2510.25282), chapter 3.
    """
    kernel = _check_kernel(kernel)
    size = _pair("input_size", input_size)
    stride = _check_stride(stride, size)
    s = kernel.detach().abs().amax().clamp_min(torch.finfo(kernel.dtype).tiny)  # scale: robust to 1e±30
    B = _tall(_dft_blocks(kernel / s, size, stride)).contiguous()  # (B, m, n), m ≥ n; contiguous: fast bmm
    # top eigenvalue of every Gram block, the batch split over one-LAPACK-thread workers (Note [shared CPU])
    return _top_eigenvalues(B.mH @ B).amax().clamp_min(0).sqrt() * s


def conv_gram_iteration(
    kernel: torch.Tensor,
    input_size: int | tuple[int, int],
    *,
    n_iter: int = 6,
    stride: int | tuple[int, int] = 1,
    explicit_backward: bool = False,
) -> torch.Tensor:
    """Certified upper bound on the spectral norm of a circular-padding convolution: Gram iteration on DFT blocks.

    Batched :func:`~stabkit.norms.gram_iteration` on the half-spectrum DFT blocks (each block rescaled on its
    own), then the max. Upper bound at every ``n_iter``, float32 included (the blocks come from a direct DFT whose
    rounding is bounded, and the Gram steps carry the margin of Note [certified rounding] in ``_dense.py``),
    non-increasing, within a factor ``min(c_in, c_out)^(2^-(T+1))`` of the exact value. For a zero-padding layer
    with ``pad`` zeros per side, use ``input_size = n + 2·pad``: the zero-padded convolution is a sub-block of that
    circular one, so this is still an upper bound.

    Args:
        kernel: real kernel (c_out, c_in, kh, kw).
        input_size: spatial size n or (h, w) of the input.
        n_iter: number of Gram iterations (4–7 is typical; ≥ 0).
        stride: stride of the convolution; must divide the input size (Note [strides] in this module).
        explicit_backward: use the closed-form gradient of the Gram iteration instead of autograd through the
            loop (same values): the gradient of the max over blocks is that of the arg-max block, whose iterates
            alone are recomputed and saved, so the memory saved for backward is one block's, not the loop's graph.

    Returns:
        Upper bound on σ1, a 0-dim tensor; differentiable w.r.t. the kernel (gradient 0 at the zero kernel).

    Raises:
        ValueError: bad kernel shape/dtype, empty or NaN/inf kernel, non-positive size or ``n_iter``, stride not
            dividing the size.

    References:
        Delattre, Barthélemy, Araujo, Allauzen, ICML 2023 (arXiv:2305.16173), Algorithm 2; Sedghi, Gupta, Long,
        ICLR 2019 (arXiv:1805.10408) for the DFT blocks; thesis (arXiv:2510.25282), chapter 3.
    """
    kernel = _check_kernel(kernel)
    size = _pair("input_size", input_size)
    n_iter = check_positive_int("n_iter", n_iter, minimum=0)
    stride = _check_stride(stride, size)
    s = kernel.detach().abs().amax()
    s = torch.where(s > 0, s, torch.ones_like(s))
    blocks, err = _dft_blocks_certified(kernel / s, size, stride)
    blocks = _tall(blocks)
    if explicit_backward:  # the closed-form gradient of the arg-max block only (the gradient of the max)
        up = _GramIterationMaxExplicit.apply(blocks, n_iter, err)
    else:
        up = _gram_upper64(blocks, n_iter, err).amax()
    return _round_up(up * s.to(torch.float64), kernel.dtype)


def conv_gram_iteration_bounds(
    kernel: torch.Tensor,
    input_size: int | tuple[int, int],
    *,
    n_iter: int = 12,
    tol: float | None = None,
    stride: int | tuple[int, int] = 1,
) -> SpectralBounds:
    """Certified interval on the circular-convolution spectral norm; stops when the relative gap is ≤ ``tol``.

    Upper end: :func:`conv_gram_iteration`. Lower end: the max over DFT blocks of the block lower bounds of
    :func:`~stabkit.norms.gram_iteration_bounds` (each is ≤ its block's σ1 ≤ the convolution's σ1), less the
    rounding error of the blocks.

    Args:
        kernel: real kernel (c_out, c_in, kh, kw).
        input_size: spatial size n or (h, w).
        n_iter: maximum number of Gram iterations.
        tol: relative gap ``(upper − lower)/upper`` at which to stop; ``None`` runs all iterations.
        stride: stride (must divide the input size).

    Returns:
        ``SpectralBounds(lower, upper, n_iter)`` with 0-dim tensors.

    Raises:
        ValueError: as :func:`conv_gram_iteration`, or bad ``tol``.

    References:
        Delattre et al., ICML 2023 (arXiv:2305.16173); thesis (arXiv:2510.25282), chapter 3. The lower end is
        ours.
    """
    kernel = _check_kernel(kernel)
    size = _pair("input_size", input_size)
    n_iter = check_positive_int("n_iter", n_iter, minimum=0)
    if tol is not None:
        tol = check_positive_float("tol", tol)
    stride = _check_stride(stride, size)
    s = kernel.detach().abs().amax()
    s = torch.where(s > 0, s, torch.ones_like(s))
    blocks, err = _dft_blocks_certified(kernel / s, size, stride)
    return _bounds_loop(_tall(blocks), n_iter, tol, reduce_max=True, outer_scale=s.to(torch.float64), extra0=err)


# --------------------------------------------------------------------------------------------------
def _resolve_pad(kernel: torch.Tensor, pad: int | tuple[int, int] | None) -> tuple[int, int]:
    if pad is None:
        return (kernel.shape[-2] - 1) // 2, (kernel.shape[-1] - 1) // 2
    if isinstance(pad, int) and not isinstance(pad, bool):
        pad = (pad, pad)
    if not (isinstance(pad, tuple | list) and len(pad) == 2 and all(isinstance(p, int) and p >= 0 for p in pad)):
        raise ValueError(f"pad must be a non-negative int or a pair (ph, pw), got {pad!r}")
    return int(pad[0]), int(pad[1])


def _conv_operator(kernel, size, padding, pad, stride):
    """The convolution and its adjoint as functions of batches (B, c_in, h, w) ↔ (B, c_out, h', w').

    The adjoint is written out (``conv_transpose2d``, then the transpose of the padding) rather than taken by
    ``torch.func.vjp``, which costs ~50× more per call on small inputs; the tests check ⟨Ax, y⟩ = ⟨x, Aᵀy⟩.
    """
    h, w = size
    if padding == "circular":
        k = _fold_kernel(kernel, size)
        kh, kw = k.shape[-2:]
        # total circular padding k - 1 keeps the n×n output; the offset does not change singular values
        t, lf = (kh - 1) // 2, (kw - 1) // 2
        b, r = kh - 1 - t, kw - 1 - lf
        H, W = h + kh - 1, w + kw - 1

        def forward(x):
            return F.conv2d(F.pad(x, (lf, r, t, b), mode="circular"), k, stride=stride)

        def adjoint(y):
            z = _transpose_conv(y, k, stride, (H, W), (0, 0))  # (B, c_in, H, W) on the padded grid
            # transpose of circular padding: fold the borders back onto the pixels they copied
            x = z[..., t : t + h, :].clone()
            x[..., h - t :, :] += z[..., :t, :]
            x[..., :b, :] += z[..., t + h :, :]
            out = x[..., lf : lf + w].clone()
            out[..., w - lf :] += x[..., :lf]
            out[..., :r] += x[..., lf + w :]
            return out

        return forward, adjoint
    ph, pw = _resolve_pad(kernel, pad)
    if h + 2 * ph < kernel.shape[-2] or w + 2 * pw < kernel.shape[-1]:
        raise ValueError(
            f"kernel {tuple(kernel.shape[-2:])} is larger than the padded input {(h + 2 * ph, w + 2 * pw)}"
        )
    return (
        lambda x: F.conv2d(x, kernel, stride=stride, padding=(ph, pw)),
        lambda y: _transpose_conv(y, kernel, stride, (h, w), (ph, pw)),
    )


def _transpose_conv(y, kernel, stride, size, pad):
    """Adjoint of ``conv2d(·, kernel, stride, padding=pad)`` on h×w inputs (output_padding restores the
    size)."""
    (h, w), (sh, sw), (ph, pw) = size, stride, pad
    kh, kw = kernel.shape[-2:]
    oph = h - ((y.shape[-2] - 1) * sh - 2 * ph + kh)
    opw = w - ((y.shape[-1] - 1) * sw - 2 * pw + kw)
    return F.conv_transpose2d(y, kernel, stride=stride, padding=(ph, pw), output_padding=(oph, opw))


def conv_matrix(
    kernel: torch.Tensor,
    input_size: int | tuple[int, int],
    *,
    padding: str = "zero",
    pad: int | tuple[int, int] | None = None,
    stride: int | tuple[int, int] = 1,
) -> torch.Tensor:
    """The explicit matrix of a convolution (the ground truth for small cases).

    Built by applying ``conv2d`` to every basis image, so it is independent of the DFT formulas.

    Args:
        kernel: kernel (c_out, c_in, kh, kw).
        input_size: spatial size n or (h, w) of the input.
        padding: ``"zero"`` or ``"circular"``.
        pad: zeros per side for zero padding (int or (ph, pw)); default ``(k - 1) // 2``. Ignored for
            circular padding.
        stride: stride of the convolution. For circular padding it must divide the input size.

    Returns:
        Matrix of shape (c_out·h'·w', c_in·h·w) acting on inputs flattened in (c, h, w) order.

    Raises:
        ValueError: bad arguments, or a matrix with more than 2**26 entries (use the norm functions instead).
    """
    kernel = _check_kernel(kernel)
    size = _pair("input_size", input_size)
    padding = _check_padding(padding)
    stride = _check_stride(stride, size) if padding == "circular" else _pair("stride", stride)
    n_in = kernel.shape[1] * size[0] * size[1]
    op, _ = _conv_operator(kernel, size, padding, pad, stride)
    out_numel = op(torch.zeros(1, kernel.shape[1], *size, dtype=kernel.dtype, device=kernel.device)).numel()
    if n_in * out_numel > 2**26:
        raise ValueError(
            f"the explicit matrix would have {n_in}×{out_numel} entries; use conv_spectral_norm_exact or the bounds"
        )
    eye = torch.eye(n_in, dtype=kernel.dtype, device=kernel.device).reshape(n_in, kernel.shape[1], *size)
    return op(eye).reshape(n_in, -1).T  # column j = image of basis vector j


def conv_power_iteration(
    kernel: torch.Tensor,
    input_size: int | tuple[int, int],
    *,
    padding: str = "zero",
    pad: int | tuple[int, int] | None = None,
    stride: int | tuple[int, int] = 1,
    n_iter: int = 100,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Power iteration with the convolution and its adjoint on an h×w input: a lower estimate of σ1.

    Returns ``‖A v‖`` for a unit input v, which never exceeds σ1 up to rounding (converges from below,
    linearly). The adjoint is written out (``conv_transpose2d`` and the transpose of the padding) for any kernel
    size, padding and stride (peers hard-code padding 1, which is right only for 3×3 kernels).

    Args:
        kernel: real kernel (c_out, c_in, kh, kw).
        input_size: spatial size n or (h, w).
        padding: ``"zero"`` or ``"circular"``.
        pad: zeros per side for zero padding, default ``(k - 1) // 2``.
        stride: stride of the convolution.
        n_iter: number of iterations (100 is the zero-padding reference of the thesis, arXiv:2510.25282).
        generator: source of the random start; ``None`` = fresh generator seeded 0.

    Returns:
        Lower estimate of σ1, a 0-dim tensor.

    Raises:
        ValueError: bad arguments.

    References:
        Ryu et al., "Plug-and-Play Methods Provably Converge with Properly Trained Denoisers", ICML 2019
        (arXiv:1905.05406); Farnia, Zhang, Tse, "Generalizable Adversarial Training via Spectral
        Normalization", ICLR 2019 (arXiv:1811.07457); thesis (arXiv:2510.25282), chapter 3.
    """
    kernel = _check_kernel(kernel)
    size = _pair("input_size", input_size)
    padding = _check_padding(padding)
    stride = _check_stride(stride, size) if padding == "circular" else _pair("stride", stride)
    n_iter = check_positive_int("n_iter", n_iter)
    g = resolve_generator(generator, kernel.device)
    s = kernel.detach().abs().amax().clamp_min(torch.finfo(kernel.dtype).tiny)
    op, adjoint = _conv_operator(kernel.detach() / s, size, padding, pad, stride)
    v = torch.randn(1, kernel.shape[1], *size, generator=g, dtype=kernel.dtype, device=kernel.device)
    for _ in range(n_iter):
        v = adjoint(op(v))  # (1, c_in, h, w)
        v = v / torch.linalg.vector_norm(v).clamp_min(torch.finfo(v.dtype).tiny)
    final, _ = _conv_operator(kernel / s, size, padding, pad, stride)
    return torch.linalg.vector_norm(final(v)) * s


# --------------------------------------------------------------------------------------------------
def conv_lipgrid(kernel: torch.Tensor, *, n_samples: int = 50) -> torch.Tensor:
    """LipGrid: max of ‖K̂(ω)‖_F over an n_s×n_s frequency grid, corrected for the grid: an upper bound.

    Bounds ``sup_ω σ1(K̂(ω))`` (hence both zero and circular padding, any input size) by ``sup_ω ‖K̂(ω)‖_F``,
    evaluated on ``n_samples`` equispaced frequencies per axis and multiplied by ``1 / (1 − (k − 1)/n_s)`` to
    cover the frequencies between grid points (Araujo et al. 2021, theorem on trigonometric polynomials; k = the
    larger kernel side). The grid values come from a direct DFT whose rounding is bounded and added, and the
    result is rounded up, so it is certified in float32 too. The Frobenius norm makes it loose for many
    channels.

    Args:
        kernel: real kernel (c_out, c_in, kh, kw).
        n_samples: grid points per axis; must exceed k − 1.

    Returns:
        Upper bound, a 0-dim tensor.

    Raises:
        ValueError: bad kernel or ``n_samples ≤ k − 1``.

    References:
        Araujo, Negrevergne, Chevaleyre, Atif, "On Lipschitz Regularization of Convolutional Layers using
        Toeplitz Matrix Theory", AAAI 2021 (arXiv:2006.08391); thesis (arXiv:2510.25282), chapter 3.
    """
    kernel = _check_kernel(kernel)
    n_samples = check_positive_int("n_samples", n_samples)
    k = max(kernel.shape[-2:])
    if n_samples <= k - 1:
        raise ValueError(f"n_samples must exceed k - 1 = {k - 1} for the grid correction, got {n_samples}")
    if k == 1:  # constant symbol: exact Frobenius norm
        return _round_up(_safe_fro64(kernel.reshape(1, -1)).reshape(()) * (1 + kernel.numel() * 2.0**-52), kernel.dtype)
    s = kernel.detach().abs().amax()
    s = torch.where(s > 0, s, torch.ones_like(s))
    # the symbol on the grid ω = 2πj/n_s (half-plane: real kernel), by the direct DFT whose rounding is bounded
    blocks, err = _dft_blocks_certified(kernel / s, (n_samples, n_samples), (1, 1))
    fro = _safe_fro64(blocks).amax() + err  # ‖K̂(ω)‖_F ≤ ‖computed‖_F + error, for every node
    bound = fro * s.to(torch.float64) / (1.0 - (k - 1) / n_samples) * _F64_SLACK
    return _round_up(bound, kernel.dtype)


def conv_fantastic_four(
    kernel: torch.Tensor, *, n_iter: int = 50, certified: bool = False, generator: torch.Generator | None = None
) -> torch.Tensor:
    """ "Fantastic Four": √(kh·kw) · min of σ1 over four reshapes of the kernel; an estimate unless ``certified``.

    The reshapes are (c_out·kh) × (c_in·kw), (c_out·kw) × (c_in·kh), c_out × (c_in·kh·kw) and
    c_in × (c_out·kh·kw). With exact σ1 the result bounds the convolution's norm from above (zero or circular
    padding, any size; loose by up to √(kh·kw)). As in the paper, each σ1 is by default estimated by ``n_iter``
    power iterations, which approach σ1 from *below*: the default result is an **estimate** that can fall below
    the true norm (e.g. by 0.6 % for a 1×1 kernel with σ1/σ2 = 1.0007) and must not be used as a certificate.
    ``certified=True`` replaces the power iterations by :func:`~stabkit.norms.spectral_norm_upper` (SVD with a
    rounding slack, rounded up): a certified upper bound, what a network bound must use.

    Args:
        kernel: real kernel (c_out, c_in, kh, kw).
        n_iter: power iterations per reshape (ignored when ``certified``).
        certified: use certified SVD bounds of the reshapes instead of power iteration.
        generator: source of the random starts; ``None`` = fresh generator seeded 0.

    Returns:
        The estimate (or bound), a 0-dim tensor.

    Raises:
        ValueError: bad kernel or ``n_iter``.

    References:
        Singla, Feizi, "Fantastic Four: Differentiable Bounds on Singular Values of Convolution Layers",
        ICLR 2021 (arXiv:1911.10258), Theorem 1; thesis (arXiv:2510.25282), chapter 3.
    """
    kernel = _check_kernel(kernel)
    n_iter = check_positive_int("n_iter", n_iter)
    c_out, c_in, kh, kw = kernel.shape
    mats = [
        kernel.transpose(1, 2).reshape(c_out * kh, c_in * kw),
        kernel.permute(0, 3, 1, 2).reshape(c_out * kw, c_in * kh),
        kernel.reshape(c_out, c_in * kh * kw),
        kernel.transpose(0, 1).reshape(c_in, c_out * kh * kw),
    ]
    if certified:
        sig = torch.stack([spectral_norm_upper(m).to(torch.float64) for m in mats])
        return _round_up(math.sqrt(kh * kw) * sig.amin() * _F64_SLACK, kernel.dtype)
    g = resolve_generator(generator, kernel.device)
    sig = torch.stack([power_iteration(m, n_iter=n_iter, generator=g) for m in mats])
    return math.sqrt(kh * kw) * sig.amin()


def kernel_gram_iteration(kernel: torch.Tensor, *, n_iter: int = 6) -> torch.Tensor:
    """Certified upper bound on the spectral norm of a convolution with zero (or circular) padding, any input size.

    The Gram operator of a convolution is a convolution with the self-correlated kernel (support 2s − 1); T
    iterations give the kernel M_T of ``(K̂K̂ᴴ)^(2^(T−1))`` and the bound ``max_i (Σ_(j,u,v) |M_T[i,j,u,v]|)^(2^−T)``
    ≥ sup_ω σ1(K̂(ω)) ≥ σ1 of the layer for every input size and both paddings. It converges to sup_ω σ1(K̂(ω)).

    Cost. Self-convolving in the spatial domain costs (c·s_t²)² per step with s_t = 2^t(k−1)+1, which explodes
    with T; squaring in the frequency domain costs one FFT pair and a batched c×c product on ~s_t²/2 frequencies.
    Each step takes whichever is cheaper by a flop count (spatial while the iterate is small, frequency after),
    so the total cost is dominated by the last step: for c channels and T steps, ``8 c³`` flops on each of the
    ~``2^(2T) (k − 1)²`` frequencies of its grid, plus two FFTs of c² planes of that size (memory-bound). The last
    step sums the absolute rows on its grid directly, without forming the centred kernel. The iterates are rescaled
    by their Frobenius norm and the log-scale carried (as in :func:`~stabkit.norms.gram_iteration`).

    Rounding. The a-priori error bound of an FFT-based product grows with the grid, which makes it useless in
    float32, so the iterates are computed in float64 whatever the kernel's dtype; the margin of Note [certified
    rounding] in ``_dense.py`` (with the FFT error ``3η log2 N + γ_c`` per step, η = 8u) is added and the result
    rounded up to the kernel's dtype. For float32 kernels this costs about twice the float32 arithmetic.

    Args:
        kernel: real kernel (c_out, c_in, kh, kw).
        n_iter: number of Gram iterations T (≥ 1).

    Returns:
        Upper bound, a 0-dim tensor in the kernel's dtype; differentiable w.r.t. the kernel (gradient 0 at the
        zero kernel).

    Raises:
        ValueError: bad kernel (shape, dtype, empty, NaN/inf) or ``n_iter``.

    References:
        Delattre, Barthélemy, Allauzen, "Spectral Norm of Convolutional Layers with Circular and Zero Paddings",
        arXiv:2402.00240, Theorem 2; thesis (arXiv:2510.25282), chapter 3.
    """
    kernel = _check_kernel(kernel)
    n_iter = check_positive_int("n_iter", n_iter)
    dtype = kernel.dtype
    if kernel.shape[1] > kernel.shape[0]:
        kernel = kernel.transpose(0, 1)  # c_in ≤ c_out, as in the paper (the Gram below is c_out × c_out)
    k64 = kernel.to(torch.float64)
    s0 = k64.detach().abs().amax()
    s0 = torch.where(s0 > 0, s0, torch.ones_like(s0))
    M = k64 / s0
    M0_taps = kernel.shape[-2] * kernel.shape[-1]
    u = 2.0**-53
    eta = 8.0 * u
    records = []  # (f, r, N, c') of each step, for the rounding recursion
    for t in range(1, n_iter + 1):
        f = torch.linalg.vector_norm(M.detach())
        r = torch.where(f > 0, f, torch.ones_like(f))
        G, N, _how = _self_correlation(M / r, row_sums=t == n_iter)
        records.append((f, r, N, M.shape[1]))
        M = G
    # M: (c,) row sums Σ_(j,τ) |M_T[i, j, τ]| of the Gram kernel (on its whole grid): the Schur test on its symbol
    V = M.amax() * (1.0 + 4.0 * kernel.shape[0] * records[-1][2] * u)  # float64 sums of c·N terms
    # Note [certified rounding]: V_(t−1) = r (sqrt(V_t + 2ε_t) + u √N b), ε_t = (3η log2 N + γ_c') N b²
    for f, r, N, cp in reversed(records):
        b = (1.0 + u) * f / r
        eps = (3.0 * eta * (math.log2(N) + 1.0) + _gamma(cp * N, u, False)) * N * b * b
        V = r * (_safe_sqrt(V + 2.0 * eps) + u * math.sqrt(N) * b)
    # V bounds sup σ1 of the symbol of the float64 kernel k64 / s0, whose division rounded each tap by ≤ u
    V = V + u * math.sqrt(M0_taps) * records[0][0]
    return _round_up(V * s0 * _F64_SLACK, dtype)
