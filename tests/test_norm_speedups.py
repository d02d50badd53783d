"""The faster paths of stabkit.norms keep their guarantees: the grid bound's ``rtol`` (CPL's eval bound) and the
kernel Gram iteration's frequency-domain steps (row sums on the whole grid), against explicit matrices, spatial
self-convolutions and fine-grid circular norms, over random and adversarial kernels, float32 included."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stabkit.norms import conv_grid_bound, conv_matrix, kernel_gram_iteration
from stabkit.norms._grid import _grid_search
from stabkit.norms._selfcorr import _self_correlation, _self_correlation_pocketfft


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def svd_norm(W):
    return float(np.linalg.norm(np.asarray(W.detach().double()), 2))


def fine_sup(k, n=192):
    """σ1 of the circular conv on an n×n grid: a lower bound of sup_ω σ1(K̂(ω)), close to it for large n."""
    khat = torch.fft.fft2(k.double(), s=(n, n)).permute(2, 3, 0, 1)
    return torch.linalg.matrix_norm(khat, ord=2).max().item()


def peaked(c_out, c_in, kh, kw, omega, g):
    """A kernel whose symbol peaks sharply at ``omega`` (off every DFT node): a modulated, nearly rank-one kernel."""
    a = torch.arange(kh, dtype=torch.float64)[:, None]
    b = torch.arange(kw, dtype=torch.float64)[None, :]
    wave = torch.cos(omega[0] * a + omega[1] * b)  # (kh, kw)
    u = torch.randn(c_out, 1, 1, 1, generator=g, dtype=torch.float64)
    v = torch.randn(1, c_in, 1, 1, generator=g, dtype=torch.float64)
    return u * v * wave + 1e-3 * torch.randn(c_out, c_in, kh, kw, generator=g, dtype=torch.float64)


KERNELS = st.tuples(
    st.integers(1, 5), st.integers(1, 5), st.sampled_from([1, 3, 5]), st.sampled_from([1, 3, 5]), st.integers(0, 10**6)
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=KERNELS, rtol=st.sampled_from([1e-2, 1e-3, 1e-4]), adversarial=st.booleans(), f32=st.booleans())
def test_grid_bound_never_below_the_explicit_norm(shape, rtol, adversarial, f32):
    c_out, c_in, kh, kw, seed = shape
    g = gen(seed)
    if adversarial:
        omega = (torch.rand(2, generator=g, dtype=torch.float64) * 2 - 1) * math.pi
        k = peaked(c_out, c_in, kh, kw, omega, g)
    else:
        k = torch.randn(c_out, c_in, kh, kw, generator=g, dtype=torch.float64)
    if f32:
        k = k.float()
    bound = float(conv_grid_bound(k, rtol=rtol))
    assert bound >= fine_sup(k) * (1 - 1e-12)
    for n in (max(kh, kw), 7):
        assert bound >= svd_norm(conv_matrix(k.double(), n, padding="zero")) * (1 - 1e-12)
    if f32:  # rounded up from the float64 bound of the float32 kernel
        assert bound >= float(conv_grid_bound(k.double(), rtol=rtol))


def test_grid_bound_rtol_controls_tightness_and_work():
    g = gen(3)
    k = torch.randn(6, 6, 5, 5, generator=g, dtype=torch.float64)
    sup = fine_sup(k, 384)
    work = {}
    for rtol in (1e-2, 1e-3, 1e-4):
        b, n_eval, _levels = _grid_search(k, n_samples=32, refine=6, rtol=rtol)
        assert sup * (1 - 1e-12) <= float(b) <= sup * (1 + rtol) * (1 + 1e-6)
        work[rtol] = n_eval
    assert work[1e-2] <= work[1e-3] <= work[1e-4]
    assert float(conv_grid_bound(k)) == float(conv_grid_bound(k, rtol=1e-4))  # the default


def test_grid_bound_adversarial_peak_between_nodes():
    """The maximum sits half-way between DFT nodes: the cell correction, not the nodes, must cover it."""
    g = gen(5)
    omega = torch.tensor([math.pi / 32, 3 * math.pi / 32], dtype=torch.float64)  # centre of a cell of the 32-grid
    k = peaked(3, 2, 5, 5, omega, g)
    for rtol in (1e-2, 1e-4):
        assert float(conv_grid_bound(k, rtol=rtol)) >= fine_sup(k, 512) * (1 - 1e-12)


@pytest.mark.parametrize("shape", [(3, 5, 5, 5), (6, 2, 3, 1), (2, 4, 1, 3), (4, 4, 3, 5)])
def test_grid_bound_gram_matrices_from_the_self_correlation(shape):
    """K̂ᴴK̂(ω) from the kernel's self-correlation equals the product of the DFT blocks (the smaller side)."""
    from stabkit.norms._grid import _Symbol

    g = gen(sum(shape))
    k = torch.randn(*shape, generator=g, dtype=torch.float64)
    omegas = (torch.rand(9, 2, generator=g, dtype=torch.float64) * 2 - 1) * 2 * math.pi
    kh, kw = shape[-2:]
    phase = omegas[:, 0, None, None] * torch.arange(kh)[:, None] + omegas[:, 1, None, None] * torch.arange(kw)
    khat = torch.einsum("oiab,fab->foi", k.to(torch.complex128), torch.exp(-1j * phase))
    # the smaller Gram: K̂ᴴK̂, or for c_out < c_in that of the channel-swapped kernel, conj(K̂K̂ᴴ) (same spectrum)
    ref = khat.mH @ khat if shape[0] >= shape[1] else (khat @ khat.mH).conj()
    torch.testing.assert_close(_Symbol(k).gram(omegas), ref, rtol=0, atol=1e-12 * float(k.square().sum()))


@settings(max_examples=40, deadline=None)
@given(c=st.integers(1, 40), seed=st.integers(0, 10**6), gap=st.sampled_from([1e-6, 1e-3, 0.1]))
def test_cholesky_certificate_is_sound_and_sharp(c, seed, gap):
    """λ_max < μ certified by a Cholesky factorisation: never wrong, and it fails just below λ_max."""
    from stabkit.norms._grid import _below

    g = gen(seed)
    A = torch.randn(3, c, c, generator=g, dtype=torch.complex128)
    P = A.mH @ A  # rank-deficient when c is 1, Hermitian PSD
    lam = torch.linalg.eigvalsh(P)[:, -1]
    for i in range(3):
        one = P[i : i + 1]
        assert bool(_below(one.clone(), float(lam[i]) * (1 + gap))[0])
        assert not bool(_below(one.clone(), float(lam[i]) * (1 - gap))[0])
    assert not bool(_below(P[:1].clone(), 0.0)[0])


def test_grid_lattice_covers_the_half_plane_and_children_cover_parents():
    """Every frequency of the half plane lies in a cell (weighted ℓ1 distance ≤ ρ to a centre), and the 4 (or 2)
    children of a cell cover it."""
    from stabkit.norms._grid import _Lattice

    g = gen(4)
    for d in [(2.0, 2.0), (1.0, 2.0), (0.0, 1.5), (2.0, 0.0)]:
        lat = _Lattice(d, torch.device("cpu"))
        rho = 0.37
        centres = lat.cover(rho)
        pts = torch.rand(4000, 2, generator=g, dtype=torch.float64) * lat.hi  # (x, y) = (d_h ω1, d_w ω2)
        assert float(torch.cdist(pts, centres, p=1).min(dim=1).values.max()) <= rho * (1 + 1e-12)
        parent = centres[len(centres) // 2 : len(centres) // 2 + 1]
        kids, _ = lat.split(parent, torch.zeros(1, 3), rho)
        inside = parent + (torch.rand(2000, 2, generator=g, dtype=torch.float64) * 2 - 1) * rho
        if len(lat.axes) == 1:  # a dropped axis stays at 0
            inside[:, [a for a in (0, 1) if a not in lat.axes]] = 0.0
        inside = inside[torch.cdist(inside, parent, p=1)[:, 0] <= rho]
        inside = inside[lat._meets(inside, 0.0)]  # the children outside the half plane are dropped
        assert len(inside) > 100
        assert float(torch.cdist(inside, kids, p=1).min(dim=1).values.max()) <= rho / 2 * (1 + 1e-12)


def test_grid_bound_rejects_bad_rtol():
    with pytest.raises(ValueError, match="rtol"):
        conv_grid_bound(torch.ones(1, 1, 3, 3), rtol=0.0)


@pytest.mark.parametrize("form", ["torch", "pocketfft"])  # torch.fft (small grids, autograd) or scipy's FFT
@pytest.mark.parametrize("shape", [(3, 2, 5, 5), (4, 4, 9, 9), (2, 3, 17, 17), (5, 1, 9, 5)])
def test_self_correlation_frequency_matches_spatial(shape, form):
    M = torch.randn(*shape, generator=gen(sum(shape)), dtype=torch.float64)
    h, w = shape[-2:]
    ref = F.conv2d(M, M, padding=(h - 1, w - 1))
    if form == "torch":
        M.requires_grad_(True)
        G, N, how = _self_correlation(M)
        assert G.requires_grad  # autograd: the torch form, whose graph is kept
        sums, _, _ = _self_correlation(M, row_sums=True)
        G, sums = G.detach(), sums.detach()
    else:
        G, N, how = _self_correlation_pocketfft(M, row_sums=False)
        sums, _, _ = _self_correlation_pocketfft(M, row_sums=True)
    assert G.shape == ref.shape
    torch.testing.assert_close(G, ref, rtol=0, atol=1e-11 * ref.abs().max().item())
    ref_sums = ref.abs().sum(dim=(1, 2, 3))
    # whole-grid sums: the zero region adds only rounding, never less than the exact lags' sums
    assert torch.all(sums >= ref_sums * (1 - 1e-12))
    torch.testing.assert_close(sums, ref_sums, rtol=1e-9, atol=0)
    if how == "frequency":
        assert N >= (2 * h - 1) * (2 * w - 1)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=KERNELS, T=st.integers(1, 4), f32=st.booleans())
def test_kernel_gram_iteration_never_below_the_explicit_norm(shape, T, f32):
    c_out, c_in, kh, kw, seed = shape
    k = torch.randn(c_out, c_in, kh, kw, generator=gen(seed), dtype=torch.float64)
    if f32:
        k = k.float()
    bound = float(kernel_gram_iteration(k, n_iter=T))
    assert bound >= fine_sup(k) * (1 - 1e-12)
    assert bound >= svd_norm(conv_matrix(k.double(), 6, padding="zero")) * (1 - 1e-12)


def test_kernel_gram_iteration_large_grid_forms_agree():
    # from ~2e6 block entries on, a kernel without autograd is squared by scipy's FFT: the bound equals the torch
    # form's (the kernel requiring grad) to rounding, and stays above the norm on a fine grid
    k = torch.randn(32, 32, 3, 3, generator=gen(77), dtype=torch.float64)
    fast = kernel_gram_iteration(k, n_iter=5)
    slow = kernel_gram_iteration(k.clone().requires_grad_(True), n_iter=5).detach()
    torch.testing.assert_close(fast, slow, rtol=1e-12, atol=0)
    assert float(fast) >= fine_sup(k, n=48) * (1 - 1e-12)


def test_grid_bound_threads_give_the_same_value():
    """The eigenproblems split over Python threads (one LAPACK thread each) give the one-call values."""
    k = torch.randn(5, 4, 5, 5, generator=gen(8), dtype=torch.float64)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = conv_grid_bound(k, rtol=1e-3)
        torch.set_num_threads(3)
        several = conv_grid_bound(k, rtol=1e-3)
        assert torch.get_num_threads() == 3  # restored after the one-thread LAPACK section
    finally:
        torch.set_num_threads(threads)
    assert float(one) == float(several)
