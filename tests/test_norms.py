"""Tests of stabkit.norms against exact SVDs, explicit convolution matrices and the [C] values of THESIS.md
§3–4."""

import math

import numpy as np
import pytest
import torch

from stabkit.norms import (
    conv_fantastic_four,
    conv_gram_iteration,
    conv_gram_iteration_bounds,
    conv_grid_bound,
    conv_lipgrid,
    conv_matrix,
    conv_power_iteration,
    conv_spectral_norm_exact,
    gram_iteration,
    gram_iteration_bounds,
    kernel_gram_iteration,
    power_iteration,
    spectral_norm_exact,
    spectral_norm_upper,
)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def svd_norm(W):
    """Independent reference: numpy SVD in float64."""
    return float(np.linalg.norm(np.asarray(W.detach().to(torch.complex128 if W.is_complex() else torch.float64)), 2))


@pytest.fixture(scope="module")
def w500():
    """The [C] matrix of THESIS §3.1: 500×400 N(0,1), numpy default_rng(0)."""
    return torch.from_numpy(np.random.default_rng(0).standard_normal((500, 400)))


@pytest.fixture(scope="module")
def k8():
    """The [C] kernel of THESIS §3.2: (8, 8, 3, 3) N(0,1), numpy default_rng(0), first draw."""
    return torch.from_numpy(np.random.default_rng(0).standard_normal((8, 8, 3, 3)))


# ------------------------------------------------------------------------------------------- dense:
def test_dense_reference_values(w500):
    sigma = spectral_norm_exact(w500)
    assert float(sigma) == pytest.approx(41.9208850163, abs=1e-9)
    assert float(sigma) == pytest.approx(svd_norm(w500), rel=1e-12)
    errors = [73.853, 21.164, 6.861, 2.142, 0.5405, 0.07468, 2.798e-3, 1.006e-5, 4.00e-10]
    for T, err in enumerate(errors, start=1):
        # abs: the certified rounding margin (Note [certified rounding]) adds ~2e-10 in float64
        assert float(gram_iteration(w500, n_iter=T) - sigma) == pytest.approx(err, rel=2e-3, abs=5e-10)
    assert (
        abs(float(gram_iteration(w500, n_iter=10) - sigma)) < 1e-9
    )  # the certified rounding margin (float64: ~1e-11 relative)


def test_power_iteration_converges_from_below(w500):
    sigma = float(spectral_norm_exact(w500))
    prev = -math.inf
    for n_iter, tol in [(10, 3.0), (100, 0.05), (1000, 1e-9)]:
        est = float(power_iteration(w500, n_iter=n_iter, generator=gen(1)))
        assert est <= sigma * (1 + 1e-12)
        assert sigma - est < tol
        assert est >= prev - 1e-9
        prev = est


def test_gram_iteration_matches_closed_form():
    """The bound is (Σ σ_i^(2^(T+1)))^(2^-(T+1)) exactly."""
    W = torch.randn(30, 20, dtype=torch.float64, generator=gen(2))
    s = torch.linalg.svdvals(W)
    for T in range(6):
        p = 2 ** (T + 1)
        ref = (s / s[0]).pow(p).sum().pow(1 / p) * s[0]
        assert float(gram_iteration(W, n_iter=T)) == pytest.approx(float(ref), rel=1e-10)


# ------------------------------------------------------------------------------------------- dense:
def _draws(g):
    """(name, matrix) pairs covering the spectra the issue lists."""
    out = []
    for i in range(5):
        m, n = torch.randint(2, 40, (2,), generator=g).tolist()
        out.append((f"gauss{i}", torch.randn(m, n, dtype=torch.float64, generator=g)))
        out.append((f"complex{i}", torch.randn(m, n, dtype=torch.complex128, generator=g)))
        u, v = (
            torch.randn(m, 1, generator=g, dtype=torch.float64),
            torch.randn(1, n, generator=g, dtype=torch.float64),
        )
        out.append((f"rank1_{i}", u @ v))
        q, _ = torch.linalg.qr(torch.randn(max(m, n), max(m, n), dtype=torch.float64, generator=g))
        out.append((f"orth{i}", q[:m, :n]))
    out.append(("tiny", torch.randn(9, 7, dtype=torch.float64, generator=g) * 1e-200))
    out.append(("huge", torch.randn(9, 7, dtype=torch.float64, generator=g) * 1e200))
    return out


def test_upper_bound_property_and_monotone():
    for name, W in _draws(gen(3)):
        sigma = spectral_norm_exact(W)
        rank = min(W.shape)
        prev = math.inf
        for T in range(8):
            b = float(gram_iteration(W, n_iter=T) / sigma)
            assert b >= 1 - 1e-12, name
            assert b <= rank ** (0.5 ** (T + 1)) * (1 + 1e-10), name
            assert b <= prev * (1 + 1e-10), name
            prev = b
        if name.startswith("rank1"):
            assert float(gram_iteration(W, n_iter=0) / sigma) == pytest.approx(1, rel=1e-10)


def test_flat_spectrum_bound_is_rank_power():
    """Orthogonal W: all σ_i = 1, so the bound is exactly rank^(2^-(T+1)) (documented worst case)."""
    q, _ = torch.linalg.qr(torch.randn(64, 64, dtype=torch.float64, generator=gen(4)))
    for T in range(6):
        assert float(gram_iteration(q, n_iter=T)) == pytest.approx(64 ** (0.5 ** (T + 1)), rel=1e-10)


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float64, torch.complex64, torch.complex128, torch.float16, torch.bfloat16]
)
def test_every_dtype(dtype):
    W = torch.randn(20, 12, generator=gen(5), dtype=torch.complex128 if dtype.is_complex else torch.float64)
    Wd = W.to(dtype)
    sigma = svd_norm(Wd.to(torch.complex128 if dtype.is_complex else torch.float64))
    b = gram_iteration(Wd, n_iter=8)
    assert torch.isfinite(b)
    assert b.dtype in (torch.float32, torch.float64)
    rel = 1e-12 if dtype in (torch.float64, torch.complex128) else 1e-5
    assert float(b) >= sigma * (1 - rel)
    assert float(b) == pytest.approx(sigma, rel=1e-2)


@pytest.mark.parametrize("scale", [1e-30, 1e-20, 1e-10, 1.0, 1e10, 1e19, 1e25, 1e30])
def test_float32_extreme_scales(scale):
    W = torch.randn(60, 40, generator=gen(6), dtype=torch.float64)
    sigma = svd_norm(W)
    Wf = (W * scale).float()
    for f in (
        lambda x: gram_iteration(x, n_iter=8),
        lambda x: gram_iteration(x, n_iter=8, explicit_backward=True),
        spectral_norm_exact,
        lambda x: power_iteration(x, n_iter=500),
        lambda x: gram_iteration_bounds(x, n_iter=8).upper,
    ):
        v = f(Wf)
        assert torch.isfinite(v)
        assert float(v) / scale == pytest.approx(sigma, rel=1e-4)


def test_batching_equals_looping():
    W = torch.randn(3, 4, 10, 7, dtype=torch.float64, generator=gen(7))
    W[1, 2] *= 1e50  # each matrix is rescaled on its own
    for f in (gram_iteration, spectral_norm_exact, lambda x: gram_iteration_bounds(x, n_iter=5).upper):
        batched = f(W)
        assert batched.shape == (3, 4)
        looped = torch.stack([torch.stack([f(W[i, j]) for j in range(4)]) for i in range(3)])
        torch.testing.assert_close(batched, looped, rtol=1e-12, atol=0)
    lo = gram_iteration_bounds(W, n_iter=5).lower
    assert bool((lo <= spectral_norm_exact(W) * (1 + 1e-12)).all())


def test_zero_matrix_gives_zero():
    assert float(gram_iteration(torch.zeros(4, 3))) == 0.0
    assert float(spectral_norm_exact(torch.zeros(4, 3))) == 0.0


# ------------------------------------------------------------------------------------------- dense:
def test_interval_brackets_truth_and_stops_at_tol(w500):
    sigma = float(spectral_norm_exact(w500))
    for tol in (1e-2, 1e-4, 1e-6):
        b = gram_iteration_bounds(w500, n_iter=20, tol=tol)
        assert float(b.lower) <= sigma * (1 + 1e-13)
        assert float(b.upper) >= sigma * (1 - 1e-13)
        assert float(b.upper - b.lower) <= tol * float(b.upper)
        assert b.n_iter < 20
    full = gram_iteration_bounds(w500, n_iter=6)
    assert full.n_iter == 6
    assert float(full.upper) == pytest.approx(float(gram_iteration(w500, n_iter=6)), rel=1e-10)


def test_interval_property_over_draws():
    for name, W in _draws(gen(8)):
        sigma = float(spectral_norm_exact(W))
        for T in (1, 3, 6):
            b = gram_iteration_bounds(W, n_iter=T)
            assert float(b.lower) <= sigma * (1 + 1e-12), name
            assert float(b.upper) >= sigma * (1 - 1e-12), name


# ------------------------------------------------------------------------------------------- dense:
@pytest.mark.parametrize("n_iter", range(9))
def test_explicit_backward_gradcheck(n_iter):
    W = torch.randn(7, 5, dtype=torch.float64, generator=gen(9), requires_grad=True)
    assert torch.autograd.gradcheck(lambda w: gram_iteration(w, n_iter=n_iter, explicit_backward=True), (W,))
    g_auto = torch.autograd.grad(gram_iteration(W, n_iter=n_iter), W)[0]
    g_expl = torch.autograd.grad(gram_iteration(W, n_iter=n_iter, explicit_backward=True), W)[0]
    torch.testing.assert_close(g_expl, g_auto, rtol=1e-9, atol=1e-12)


def test_explicit_backward_complex_and_batched():
    W = torch.randn(2, 4, 6, dtype=torch.complex128, generator=gen(10), requires_grad=True)
    assert torch.autograd.gradcheck(lambda w: gram_iteration(w, n_iter=3, explicit_backward=True), (W,))
    assert torch.autograd.gradcheck(lambda w: gram_iteration(w, n_iter=3), (W,))


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("n_iter", [0, 1, 4])
def test_conv_explicit_backward_equals_autograd_and_saves_one_block(n_iter, stride):
    # the gradient of the max over DFT blocks is the arg-max block's: the explicit backward recomputes and saves
    # only that block's iterates, and its gradient equals autograd's through the whole loop
    K = torch.randn(3, 4, 3, 3, dtype=torch.float64, generator=gen(12 + n_iter), requires_grad=True)
    f = lambda k, eb: conv_gram_iteration(k, 6, n_iter=n_iter, stride=stride, explicit_backward=eb)  # noqa: E731
    g_auto = torch.autograd.grad(f(K, False), K)[0]
    g_expl = torch.autograd.grad(f(K, True), K)[0]
    torch.testing.assert_close(f(K, True), f(K, False), rtol=0, atol=0)
    torch.testing.assert_close(g_expl, g_auto, rtol=1e-8, atol=1e-12)
    assert torch.autograd.gradcheck(lambda k: f(k, True), (K,))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        f(K, True)
    block = 4 * 4 * stride**2  # one (c_in·s²)² iterate after the first step
    per_block = [t for t in saved if t.dim() == 3 and t.shape[0] == 1]
    assert len(per_block) >= n_iter + 1 and all(t.numel() <= 3 * 4 * stride**2 + block for t in per_block)


def test_gradient_tends_to_top_singular_pair():
    W = torch.randn(12, 9, dtype=torch.float64, generator=gen(11), requires_grad=True)
    g = torch.autograd.grad(gram_iteration(W, n_iter=10), W)[0]
    U, _, Vh = torch.linalg.svd(W.detach())
    torch.testing.assert_close(g, torch.outer(U[:, 0], Vh[0]), rtol=0, atol=1e-8)


# ------------------------------------------------------------------------------------------- dense:
@pytest.mark.parametrize("f", [gram_iteration, spectral_norm_exact, power_iteration, gram_iteration_bounds])
def test_bad_dense_input(f):
    with pytest.raises(ValueError, match="NaN or infinite"):
        f(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="NaN or infinite"):
        f(torch.tensor([[1.0, float("inf")], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        f(torch.ones(3))
    with pytest.raises(ValueError, match="dtype"):
        f(torch.ones(3, 3, dtype=torch.int64))


def test_bad_options():
    W = torch.ones(3, 3)
    with pytest.raises(ValueError, match="n_iter"):
        gram_iteration(W, n_iter=-1)
    with pytest.raises(ValueError, match="n_iter"):
        power_iteration(W, n_iter=0)
    with pytest.raises(ValueError, match="tol"):
        gram_iteration_bounds(W, tol=-1.0)


# ------------------------------------------------------------------------------------------- conv:
def test_conv_reference_values(k8):
    for n, ref in [(8, 17.062522), (10, 17.085214), (64, 17.170513)]:
        assert float(conv_spectral_norm_exact(k8, n)) == pytest.approx(ref, abs=2e-6)
    assert svd_norm(conv_matrix(k8, 8, padding="zero")) == pytest.approx(16.244653, abs=2e-6)
    gi = [18.828027, 17.362894, 17.085310, 17.062770, 17.062522, 17.062522]
    for T, ref in enumerate(gi, start=1):
        assert float(conv_gram_iteration(k8, 8, n_iter=T)) == pytest.approx(ref, abs=2e-6)
    kgi = [31.702890, 23.151490, 19.558933, 18.090491]
    for T, ref in enumerate(kgi, start=1):
        assert float(kernel_gram_iteration(k8, n_iter=T)) == pytest.approx(ref, abs=2e-6)


def test_circ_zero_bridge_reference(k8):
    """[C] σ1_zero(8) = 16.24 ≤ σ1_circ(8 + 2) = 17.09."""
    assert svd_norm(conv_matrix(k8, 8)) <= float(conv_spectral_norm_exact(k8, 10))


def _kernels(g, count=8):
    out = []
    for _ in range(count):
        c_out, c_in = torch.randint(1, 6, (2,), generator=g).tolist()
        kh, kw = torch.randint(1, 6, (2,), generator=g).tolist()
        out.append(torch.randn(c_out, c_in, kh, kw, dtype=torch.float64, generator=g))
    return out


def test_circular_exact_equals_explicit_matrix():
    g = gen(12)
    for K in _kernels(g):
        for size in [(6, 6), (5, 8), (3, 4)]:  # includes kernels larger than the input (wrapped)
            ref = svd_norm(conv_matrix(K, size, padding="circular"))
            assert float(conv_spectral_norm_exact(K, size)) == pytest.approx(ref, rel=1e-10)
            assert float(conv_gram_iteration(K, size, n_iter=12)) == pytest.approx(ref, rel=1e-10)


def test_circular_matrix_is_fft_svd_reference():
    """conv_matrix (circular) against the FFT + full SVD of every block (Sedghi et al.)."""
    K = torch.randn(4, 3, 3, 3, dtype=torch.float64, generator=gen(13))
    Kf = torch.fft.fft2(K, s=(7, 7)).permute(2, 3, 0, 1)
    ref = float(torch.linalg.svdvals(Kf).amax())
    assert svd_norm(conv_matrix(K, 7, padding="circular")) == pytest.approx(ref, rel=1e-12)


def test_strided_circular_exact():
    g = gen(14)
    for K in _kernels(g, 3):
        for stride, size in [(2, (8, 8)), ((2, 1), (6, 5)), (3, (6, 3))]:
            ref = svd_norm(conv_matrix(K, size, padding="circular", stride=stride))
            assert float(conv_spectral_norm_exact(K, size, stride=stride)) == pytest.approx(ref, rel=1e-10)
            up = float(conv_gram_iteration(K, size, n_iter=5, stride=stride))
            assert up >= ref * (1 - 1e-12)
            b = conv_gram_iteration_bounds(K, size, n_iter=12, stride=stride)
            assert float(b.lower) <= ref * (1 + 1e-12)
            assert ref * (1 - 1e-12) <= float(b.upper)
            lo = float(conv_power_iteration(K, size, padding="circular", stride=stride, n_iter=150))
            assert lo <= ref * (1 + 1e-12)
            assert lo == pytest.approx(ref, rel=2e-2)


def test_strided_zero_padding_power_iteration():
    K = torch.randn(3, 2, 3, 3, dtype=torch.float64, generator=gen(15))
    ref = svd_norm(conv_matrix(K, 9, stride=2))
    assert float(conv_power_iteration(K, 9, stride=2, n_iter=500)) == pytest.approx(ref, rel=1e-6)


@pytest.mark.parametrize("padding", ["zero", "circular"])
def test_explicit_adjoint(padding):
    """The hand-written adjoint used by power iteration satisfies ⟨Ax, y⟩ = ⟨x, Aᵀy⟩."""
    from stabkit.norms._conv import _conv_operator

    g = gen(21)
    for k, size, stride, pad in [
        ((3, 3), (7, 7), (1, 1), None),
        ((2, 5), (6, 8), (2, 2), None),
        ((4, 4), (3, 3), (1, 1), (3, 3)),
        ((5, 2), (9, 4), (3, 2), 0),
    ]:
        K = torch.randn(3, 2, *k, dtype=torch.float64, generator=g)
        f, a = _conv_operator(K, size, padding, pad, stride)
        x = torch.randn(2, 2, *size, dtype=torch.float64, generator=g)
        y = torch.randn(f(x).shape, dtype=torch.float64, generator=g)
        assert float((f(x) * y).sum()) == pytest.approx(float((x * a(y)).sum()), rel=1e-12)


def test_stride_must_divide_size():
    K = torch.randn(2, 2, 3, 3)
    with pytest.raises(ValueError, match="stride"):
        conv_spectral_norm_exact(K, 7, stride=2)
    with pytest.raises(ValueError, match="stride"):
        conv_gram_iteration(K, 7, stride=2)


# ------------------------------------------------------------------------------------------- conv:
def test_zero_padding_bounds_against_explicit_matrix():
    g = gen(16)
    for K in _kernels(g, 4):
        kh, kw = K.shape[-2:]
        kgi = [float(kernel_gram_iteration(K, n_iter=T)) for T in range(1, 6)]
        assert all(a >= b * (1 - 1e-12) for a, b in zip(kgi, kgi[1:], strict=False))  # non-increasing
        for n in (4, 9):
            for pad in [None, 0, (kh - 1, kw - 1)]:
                if n + 2 * (pad if isinstance(pad, int) else 0) < max(kh, kw):
                    continue
                exact = svd_norm(conv_matrix(K, n, padding="zero", pad=pad))
                assert kgi[-1] >= exact * (1 - 1e-12)
                lo = float(conv_power_iteration(K, n, padding="zero", pad=pad, n_iter=100))
                assert lo <= exact * (1 + 1e-12)
                assert lo == pytest.approx(exact, rel=5e-2)
                # the zero-padded conv is a sub-block of the circular conv on the padded grid
                ph, pw = ((kh - 1) // 2, (kw - 1) // 2) if pad is None else (pad, pad) if isinstance(pad, int) else pad
                circ = float(conv_spectral_norm_exact(K, (n + 2 * ph, n + 2 * pw)))
                assert exact <= circ * (1 + 1e-12)


def test_kernel_gram_iteration_bounds_circular_and_converges():
    g = gen(17)
    for K in _kernels(g, 4):
        sup = float(conv_spectral_norm_exact(K, 96))  # fine grid ≈ sup over ω
        for n in (3, 8, 17):
            assert float(kernel_gram_iteration(K, n_iter=1)) >= float(conv_spectral_norm_exact(K, n))
        assert float(kernel_gram_iteration(K, n_iter=7)) == pytest.approx(sup, rel=0.1)


def test_kernel_gram_iteration_transposed_kernel():
    """c_in > c_out is transposed first; the bound still holds."""
    K = torch.randn(2, 6, 3, 3, dtype=torch.float64, generator=gen(18))
    assert float(kernel_gram_iteration(K, n_iter=4)) >= float(conv_spectral_norm_exact(K, 32))


# ------------------------------------------------------------------------------------------- conv:
def test_conv_gram_iteration_upper_and_monotone():
    g = gen(19)
    for K in _kernels(g, 6):
        for n in (5, 8):
            exact = float(conv_spectral_norm_exact(K, n))
            vals = [float(conv_gram_iteration(K, n, n_iter=T)) for T in range(7)]
            assert all(v >= exact * (1 - 1e-12) for v in vals)
            assert all(a >= b * (1 - 1e-12) for a, b in zip(vals, vals[1:], strict=False))
            b = conv_gram_iteration_bounds(K, n, n_iter=15, tol=1e-8)
            assert float(b.lower) <= exact * (1 + 1e-12)
            assert exact * (1 - 1e-12) <= float(b.upper)
            assert float(b.upper - b.lower) <= 1e-8 * float(b.upper)


def test_baselines_are_upper_bounds():
    g = gen(20)
    for K in _kernels(g, 6):
        sup = float(conv_spectral_norm_exact(K, 64))
        assert float(conv_lipgrid(K, n_samples=30)) >= sup * (1 - 1e-9)
        assert float(conv_fantastic_four(K, n_iter=300)) >= sup * (1 - 1e-6)


@pytest.mark.parametrize("scale", [1e-30, 1e-15, 1e19, 1e30])
def test_conv_float32_extreme_scales(k8, scale):
    Kf = (k8 * scale).float()
    checks = [
        (conv_spectral_norm_exact(Kf, 8), 17.062522),
        (conv_gram_iteration(Kf, 8, n_iter=6), 17.062522),
        (conv_gram_iteration_bounds(Kf, 8, n_iter=6).upper, 17.062522),
        (kernel_gram_iteration(Kf, n_iter=4), 18.090491),
        (
            conv_power_iteration(Kf, 8, padding="circular", n_iter=30),
            float(conv_power_iteration(k8.float(), 8, padding="circular", n_iter=30)),
        ),
        (conv_lipgrid(Kf), float(conv_lipgrid(k8.float()))),
        (conv_fantastic_four(Kf), float(conv_fantastic_four(k8.float()))),
    ]
    for value, ref in checks:
        assert torch.isfinite(value)
        assert float(value) / scale == pytest.approx(ref, rel=1e-4)


def test_conv_autograd(k8):
    K = k8[:2, :2].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda k: conv_gram_iteration(k, 5, n_iter=3), (K,))
    assert torch.autograd.gradcheck(lambda k: kernel_gram_iteration(k, n_iter=2), (K,))


@pytest.mark.parametrize(
    "f",
    [
        lambda k: conv_spectral_norm_exact(k, 8),
        lambda k: conv_gram_iteration(k, 8),
        lambda k: kernel_gram_iteration(k),
        lambda k: conv_lipgrid(k),
        lambda k: conv_fantastic_four(k),
        lambda k: conv_power_iteration(k, 8),
        lambda k: conv_matrix(k, 4),
    ],
)
def test_bad_conv_input(f):
    with pytest.raises(ValueError, match="NaN or infinite"):
        f(torch.full((2, 2, 3, 3), float("nan")))
    with pytest.raises(ValueError, match="shape"):
        f(torch.ones(2, 3, 3))
    with pytest.raises(ValueError, match="complex"):
        f(torch.ones(2, 2, 3, 3, dtype=torch.complex64))


def test_bad_conv_options():
    K = torch.ones(2, 2, 3, 3)
    with pytest.raises(ValueError, match="padding"):
        conv_matrix(K, 4, padding="reflect")
    with pytest.raises(ValueError, match="input_size"):
        conv_gram_iteration(K, 0)
    with pytest.raises(ValueError, match="n_samples"):
        conv_lipgrid(K, n_samples=2)
    with pytest.raises(ValueError, match="pad"):
        conv_matrix(K, 4, pad=-1)


def test_default_generator_is_deterministic(k8):
    a = conv_power_iteration(k8, 8, n_iter=5)
    b = conv_power_iteration(k8, 8, n_iter=5)
    assert float(a) == float(b)
    c = conv_power_iteration(k8, 8, n_iter=5, generator=gen(123))
    assert float(c) != float(a)


# ---- certified bounds from exact pieces (stabkit/norms/_grid.py; used by CPL at eval) ----
def test_conv_grid_bound_is_an_upper_bound_and_tight():
    g = gen(15)
    D = torch.float64
    for c_out, c_in, kh, kw in [(4, 3, 3, 3), (2, 5, 5, 5), (3, 3, 3, 5), (6, 2, 1, 3)]:
        k = torch.randn(c_out, c_in, kh, kw, generator=g, dtype=D)
        bound = conv_grid_bound(k).item()
        # exact σ1 of the circular conv on a fine grid: a lower bound of the size-independent norm
        khat = torch.fft.fft2(k, s=(256, 256)).permute(2, 3, 0, 1)
        fine = torch.linalg.matrix_norm(khat, ord=2).max().item()
        assert fine <= bound <= fine * 1.01
        # and the explicit zero-padded conv matrices of several sizes
        for n in (3, 7):
            a = conv_matrix(k, n, padding="zero")
            assert torch.linalg.matrix_norm(a, ord=2).item() <= bound


def test_float32_bounds_are_rounded_up():
    g = gen(24)
    for _ in range(20):
        w = torch.randn(5, 4, generator=g)
        b32 = spectral_norm_upper(w)
        assert b32.dtype == torch.float32
        assert b32.double() >= torch.linalg.matrix_norm(w.double(), ord=2)
        k = torch.randn(2, 3, 3, 3, generator=g)
        assert conv_grid_bound(k).double() >= conv_grid_bound(k.double())


def test_conv_grid_bound_rejects_bad_input():
    with pytest.raises(ValueError, match="n_samples"):
        conv_grid_bound(torch.zeros(2, 2, 5, 5), n_samples=5)
    with pytest.raises(ValueError, match="NaN"):
        spectral_norm_upper(torch.full((2, 2), float("nan")))


def test_kernel_gram_iteration_equals_the_sll_sr_rescaling_bound():
    # The SLL/SR layers compute the same Gram powers by spatial self-convolution (cheaper for their n_iter ≤ 3);
    # kernel_gram_iteration squares in the frequency domain (cheaper for large n_iter). They must agree.
    from stabkit.layers._common import conv_gram_bound

    g = gen(7)
    for shape in [(6, 4, 3, 3), (3, 5, 5, 5), (4, 4, 1, 3)]:
        k = torch.randn(*shape, generator=g, dtype=torch.float64)
        for n_iter in (1, 2, 3):
            # kernel_gram_iteration works on the larger side (it transposes so that c_in ≤ c_out)
            t = conv_gram_bound(k if shape[0] >= shape[1] else k.transpose(0, 1), n_iter=n_iter)  # KKᵀ ⪯ diag(t)
            torch.testing.assert_close(kernel_gram_iteration(k, n_iter=n_iter), t.max().sqrt(), rtol=1e-9, atol=0)


# ---- regression tests of RELIABILITY.md D5, D9, D11, D12 and Hypothesis properties ----
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from stabkit.norms import spectral_norm_bound  # noqa: E402


def _family(kind, m, n, g):
    """Adversarial weight families: Gaussian, flat spectrum, near-degenerate top pair, rank one, one-hot."""
    W = torch.randn(m, n, generator=g, dtype=torch.float64)
    if kind == "gauss":
        return W
    U, _, Vh = torch.linalg.svd(W, full_matrices=False)
    r = min(m, n)
    s = {
        "flat": torch.ones(r, dtype=torch.float64),
        "gap": torch.cat([torch.tensor([1.0, 1.0 - 1e-4]), torch.linspace(0.5, 0.1, max(r - 2, 0))])[:r].double(),
        "rank1": torch.cat([torch.ones(1), torch.zeros(r - 1)]).double(),
    }.get(kind)
    if s is None:  # one-hot
        W = torch.zeros(m, n, dtype=torch.float64)
        W[0, 0] = 1.0
        return W
    return (U * s) @ Vh


@settings(max_examples=60, deadline=None)
@given(
    kind=st.sampled_from(["gauss", "flat", "gap", "rank1", "onehot"]),
    m=st.integers(1, 24),
    n=st.integers(1, 24),
    log_scale=st.floats(-30, 30),
    n_iter=st.integers(0, 10),
    seed=st.integers(0, 2**16),
)
def test_property_dense_bounds_never_below_float64_truth(kind, m, n, log_scale, n_iter, seed):
    W64 = _family(kind, m, n, gen(seed)) * 10.0**log_scale
    exact = svd_norm(W64)
    W32 = W64.float()
    exact32 = svd_norm(W32.double())  # the float32 matrix's own norm (the cast changed W)
    for eb in (False, True):
        assert float(gram_iteration(W32, n_iter=n_iter, explicit_backward=eb)) >= exact32
        assert float(gram_iteration(W64, n_iter=n_iter, explicit_backward=eb)) >= exact
    b = gram_iteration_bounds(W32, n_iter=n_iter)
    assert float(b.lower) <= exact32 <= float(b.upper)
    assert float(spectral_norm_upper(W32)) >= exact32
    nb = spectral_norm_bound(W32, rtol=1e-2)
    assert float(nb.lower) <= exact32 <= float(nb.upper)


@settings(max_examples=25, deadline=None)
@given(
    c_out=st.integers(1, 5),
    c_in=st.integers(1, 5),
    k=st.sampled_from([1, 2, 3, 5]),
    n=st.integers(3, 9),
    log_scale=st.floats(-20, 20),
    onehot=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_property_conv_bounds_never_below_float64_truth(c_out, c_in, k, n, log_scale, onehot, seed):
    K = torch.randn(c_out, c_in, k, k, generator=gen(seed), dtype=torch.float64)
    if onehot:
        K = torch.zeros_like(K)
        K[0, 0, 0, 0] = 1.0
    K32 = (K * 10.0**log_scale).float()
    K64 = K32.double()
    circ = float(conv_spectral_norm_exact(K64, n))
    sup = svd_norm(conv_matrix(K64, n, padding="zero"))  # an instance of the zero-padded operator
    for T in (0, 2, 5):
        assert float(conv_gram_iteration(K32, n, n_iter=T)) >= circ
        assert float(conv_gram_iteration(K32, n, n_iter=T, explicit_backward=True)) >= circ
    assert float(conv_gram_iteration_bounds(K32, n, n_iter=6).lower) <= circ
    for T in (1, 3):
        assert float(kernel_gram_iteration(K32, n_iter=T)) >= max(sup, circ)
    assert float(conv_lipgrid(K32, n_samples=max(8, 2 * k))) >= max(sup, circ)
    assert float(conv_grid_bound(K32, n_samples=max(8, 4 * k))) >= max(sup, circ)
    assert float(conv_fantastic_four(K32, certified=True)) >= max(sup, circ)
    assert float(spectral_norm_bound(K32, n, rtol=1e-3).upper) >= circ


def test_d5_finite_gradients_at_zero_weight():
    Z = torch.zeros(5, 4, dtype=torch.float64, requires_grad=True)
    Zk = torch.zeros(3, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    fns = [
        (Z, lambda w: gram_iteration(w, n_iter=6)),
        (Z, lambda w: gram_iteration(w, n_iter=6, explicit_backward=True)),
        (Zk, lambda k: conv_gram_iteration(k, 6)),
        (Zk, lambda k: conv_gram_iteration(k, 6, explicit_backward=True)),
        (Zk, lambda k: kernel_gram_iteration(k, n_iter=4)),
    ]
    for x, f in fns:
        value = f(x)
        (grad,) = torch.autograd.grad(value, x)
        assert float(value.detach()) == 0.0
        assert bool(torch.isfinite(grad).all()) and float(grad.abs().max()) == 0.0


def test_conv_explicit_backward_gradcheck(k8):
    K = k8[:3, :2].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda k: conv_gram_iteration(k, 5, n_iter=3, explicit_backward=True), (K,))


def test_d9_float32_extreme_scale_reproducer():
    W = torch.randn(30, 20, generator=gen(20)) * 1e-25
    assert gram_iteration(W, n_iter=10).double().item() >= svd_norm(W.double())


@pytest.mark.parametrize(
    "f",
    [
        gram_iteration,
        spectral_norm_upper,
        spectral_norm_bound,
        lambda w: conv_grid_bound(w.reshape(1, 1, *w.shape)),
        lambda w: kernel_gram_iteration(w.reshape(1, 1, *w.shape)),
    ],
)
def test_d11_empty_and_integer_inputs_are_clear_errors(f):
    with pytest.raises(ValueError, match="empty"):
        f(torch.zeros(0, 3))
    for dtype in (torch.int64, torch.bool):
        with pytest.raises(ValueError, match="dtype"):
            f(torch.ones(3, 3, dtype=dtype))


def test_d11_conv_grid_bound_tiny_and_huge_float64():
    k = torch.randn(3, 2, 3, 3, generator=gen(3), dtype=torch.float64)
    ref = float(conv_grid_bound(k))
    for scale in (1e-200, 1e200):
        b = float(conv_grid_bound(k * scale))
        assert math.isfinite(b) and b / scale == pytest.approx(ref, rel=1e-12)
        assert b >= float(conv_spectral_norm_exact(k * scale, 16))


def test_d12_fantastic_four_default_is_an_estimate_certified_is_a_bound():
    # 1×1 kernel with σ1/σ2 = 1.0007: power iteration approaches σ1 from below
    U, _, Vh = torch.linalg.svd(torch.randn(16, 16, generator=gen(1), dtype=torch.float64))
    s = torch.linspace(1.0, 0.2, 16, dtype=torch.float64)
    s[1] = 1.0 / 1.0007
    K = ((U * s) @ Vh).reshape(16, 16, 1, 1)
    exact = float(conv_spectral_norm_exact(K, 4))
    assert float(conv_fantastic_four(K, n_iter=5)) < exact  # the paper's estimate can be below
    assert float(conv_fantastic_four(K, certified=True)) >= exact


def test_spectral_norm_bound_methods_and_precision():
    W = torch.randn(40, 30, generator=gen(2))
    exact = svd_norm(W.double())
    for method in ("auto", "exact", "gram"):
        for rtol in (1e-2, 1e-5):
            b = spectral_norm_bound(W, method=method, rtol=rtol)
            assert float(b.lower) <= exact <= float(b.upper)
            if b.method == "exact" or method != "gram":
                assert float(b.upper) <= exact * (1 + rtol)
    assert spectral_norm_bound(W, method="exact").method == "exact"
    with pytest.raises(ValueError, match="method"):
        spectral_norm_bound(W, method="svd")


def test_norms_docstrings_have_no_orphan_fragments_or_internal_references():
    """A formatter once re-wrapped these docstrings into orphan fragments ("the top", "(loose)"); and docstrings
    cite papers by arXiv id, never the build spec or issue numbers."""
    import ast
    import pathlib

    import stabkit.norms

    folder = pathlib.Path(stabkit.norms.__file__).parent
    for path in sorted(folder.glob("*.py")):
        tree = ast.parse(path.read_text())
        nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.ClassDef))]
        for node in nodes:
            doc = ast.get_docstring(node, clean=True)
            if not doc:
                continue
            assert "THESIS" not in doc and "issue " not in doc, (path.name, getattr(node, "name", "module"))
            lines = doc.split("\n")
            for prev, line, nxt in zip(lines, lines[1:], lines[2:], strict=False):
                s = line.strip()
                orphan = 0 < len(s) < 30 and len(prev.strip()) > 90 and nxt.strip() and not s.endswith((".", ":"))
                assert not orphan, f"{path.name}: orphan docstring fragment {s!r}"
