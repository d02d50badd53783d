"""Hessian-vector products, top eigenvalues, trace and spectral density against exact Hessians."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stabkit.curvature import (
    HessianOperator,
    ParameterSpace,
    hutchinson_trace,
    power_eigenpairs,
    slq_density,
    spectral_density,
    top_eigenvalues,
)


def mlp(seed: int, d_in: int = 5, width: int = 8, n_classes: int = 3) -> nn.Module:
    torch.manual_seed(seed)  # tests may seed the global RNG to build models; the library never does
    return nn.Sequential(nn.Linear(d_in, width), nn.Tanh(), nn.Linear(width, n_classes)).double()


def batch(seed: int, n: int = 24, d_in: int = 5, n_classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + seed)
    x = torch.randn(n, d_in, generator=g, dtype=torch.float64)
    return x, torch.randint(0, n_classes, (n,), generator=g)


def exact_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor, params=None) -> torch.Tensor:
    """Reference: torch.autograd.functional.hessian of the flat loss (independent of the jvp-of-grad path)."""
    space = ParameterSpace(model, params)
    return torch.autograd.functional.hessian(lambda t: space.loss(t, x, y, F.cross_entropy), space.current())


@pytest.mark.parametrize("seed", range(3))
def test_hvp_matches_exact_hessian(seed):
    model, (x, y) = mlp(seed), batch(seed)
    H = HessianOperator(model, (x, y))
    assert H.dim == 5 * 8 + 8 + 8 * 3 + 3
    exact = exact_hessian(model, x, y)
    v = torch.randn(H.dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    torch.testing.assert_close(H @ v, exact @ v, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(H.dense(), exact, rtol=1e-10, atol=1e-12)


def test_hvp_on_parameter_subset_is_the_subblock():
    model, (x, y) = mlp(0), batch(0)
    full = exact_hessian(model, x, y)
    H = HessianOperator(model, (x, y), params=["2.weight"])
    # the last-layer weight sits at offsets [48, 72) of the full flat vector
    torch.testing.assert_close(H.dense(), full[48:72, 48:72], rtol=1e-10, atol=1e-12)
    # names in any order give the model's layout
    H2 = HessianOperator(model, (x, y), params=["2.bias", "0.weight"])
    assert H2.space.names == ["0.weight", "2.bias"]


def test_hvp_over_loader_equals_full_batch():
    model, (x, y) = mlp(1), batch(1, n=30)
    v = torch.randn(75, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    full = HessianOperator(model, (x, y)) @ v
    loader = [(x[:7], y[:7]), (x[7:20], y[7:20]), (x[20:], y[20:])]  # unequal sizes: weights matter
    torch.testing.assert_close(HessianOperator(model, loader) @ v, full, rtol=1e-10, atol=1e-12)


def test_hvp_float32_cnn_close_to_float64():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 4))
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 1, 6, 6, generator=g), torch.randint(0, 4, (16,), generator=g)
    H32 = HessianOperator(model, (x, y))
    H64 = HessianOperator(model.double(), (x.double(), y))
    v = torch.randn(H32.dim, generator=g)
    torch.testing.assert_close(H32 @ v, (H64 @ v.double()).float(), rtol=1e-4, atol=1e-5)


def test_dropout_in_train_mode_is_refused():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Dropout(0.5), nn.Linear(6, 3)).double()
    with pytest.raises(ValueError, match="Dropout in training mode"):
        HessianOperator(model, batch(0))
    HessianOperator(model.eval(), batch(0))


def test_batchnorm_in_train_mode_is_refused_and_eval_leaves_buffers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).double()
    x, y = batch(0, d_in=4)
    with pytest.raises(ValueError, match="model.eval"):
        HessianOperator(model, (x, y))
    model.eval()
    before = [b.clone() for b in model.buffers()]
    H = HessianOperator(model, (x, y))
    H @ torch.ones(H.dim, dtype=torch.float64)
    for b, b0 in zip(model.buffers(), before, strict=True):
        assert torch.equal(b, b0)


@pytest.mark.parametrize("seed", range(3))
def test_lanczos_and_power_eigenpairs_match_eigvalsh(seed):
    model, (x, y) = mlp(seed), batch(seed)
    exact = torch.linalg.eigvalsh(exact_hessian(model, x, y)).flip(0)  # decreasing
    H = HessianOperator(model, (x, y))
    top = top_eigenvalues(H, k=3, tol=1e-10)
    torch.testing.assert_close(top.eigenvalues, exact[:3], rtol=1e-8, atol=1e-10)
    # eigenvectors: unit norm and H u = λ u
    for i in range(3):
        u = top.eigenvectors[:, i]
        torch.testing.assert_close(H @ u, top.eigenvalues[i] * u, rtol=1e-6, atol=1e-8)
    pw = power_eigenpairs(H, k=1, n_iter=2000, tol=1e-12)
    # the top of a small MLP's Hessian dominates in magnitude, so power iteration finds it
    assert exact[0] > abs(exact[-1])
    torch.testing.assert_close(pw.eigenvalues[0], exact[0], rtol=1e-6, atol=1e-10)
    # a Rayleigh quotient never exceeds λ_max
    assert pw.eigenvalues[0] <= exact[0] + 1e-12


def test_power_eigenpairs_deflation_and_magnitude_on_explicit_matrix():
    g = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(40, 40, generator=g, dtype=torch.float64))
    lam = torch.cat([torch.tensor([10.0, 5.0, -7.0]), torch.linspace(-1, 1, 37)]).double()
    A = Q @ torch.diag(lam) @ Q.T
    pw = power_eigenpairs(A, k=3, n_iter=5000, tol=1e-14, generator=g)
    torch.testing.assert_close(pw.eigenvalues, torch.tensor([10.0, 5.0, -7.0]).double(), rtol=1e-6, atol=1e-6)
    la = top_eigenvalues(A, k=2, tol=1e-12, generator=g)
    torch.testing.assert_close(la.eigenvalues, torch.tensor([10.0, 5.0]).double(), rtol=1e-10, atol=1e-10)
    sa = top_eigenvalues(A, k=1, which="SA", generator=g)
    torch.testing.assert_close(sa.eigenvalues, torch.tensor([-7.0]).double(), rtol=1e-8, atol=1e-8)


def test_eigensolvers_are_deterministic_with_a_generator():
    model, (x, y) = mlp(0), batch(0)
    H = HessianOperator(model, (x, y))
    a = power_eigenpairs(H, n_iter=5, generator=torch.Generator().manual_seed(7))
    b = power_eigenpairs(H, n_iter=5, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a.eigenvectors, b.eigenvectors)
    c = top_eigenvalues(H, k=2, generator=torch.Generator().manual_seed(7))
    d = top_eigenvalues(H, k=2, generator=torch.Generator().manual_seed(7))
    assert torch.equal(c.eigenvalues, d.eigenvalues) and c.n_hvp == d.n_hvp
    assert c.n_hvp > 0


def test_hutchinson_diagonal_is_exact_and_probe_count_fixed():
    A = torch.diag(torch.tensor([3.0, -1.0, 0.5, 2.0], dtype=torch.float64))
    est = hutchinson_trace(A, n_probes=10)
    assert est.trace == pytest.approx(4.5) and est.stderr == pytest.approx(0.0, abs=1e-12)
    assert est.samples.shape == (10,)


def test_hutchinson_never_stops_on_a_negative_running_mean():
    # trace 2.4 but huge off-diagonal terms: single probe values are often negative
    g = torch.Generator().manual_seed(0)
    n = 30
    B = torch.randn(n, n, generator=g, dtype=torch.float64)
    A = (B + B.T) * 3 + torch.diag(torch.full((n,), 0.08, dtype=torch.float64))
    A = A - torch.diag(torch.diag(A)) + torch.diag(torch.full((n,), 0.08, dtype=torch.float64))
    assert float(A.trace()) == pytest.approx(2.4)
    est = hutchinson_trace(A, n_probes=50, generator=torch.Generator().manual_seed(1))
    running = est.samples.cumsum(0) / torch.arange(1, 51)
    assert (running < 0).any()  # the situation where an early stop would have been wrong
    assert est.samples.shape == (50,)
    assert est.trace == pytest.approx(float(est.samples.mean()))


def test_hutchinson_is_unbiased_over_many_draws():
    model, (x, y) = mlp(2), batch(2)
    exact = float(exact_hessian(model, x, y).trace())
    H = HessianOperator(model, (x, y))
    zs = []
    for seed in range(20):
        est = hutchinson_trace(H, n_probes=30, generator=torch.Generator().manual_seed(seed))
        zs.append((est.trace - exact) / est.stderr)
    zs = torch.tensor(zs)
    # standardised errors: mean near 0, nearly all within 3.5
    assert abs(float(zs.mean())) < 1.0
    assert (zs.abs() < 3.5).float().mean() >= 0.9


def test_slq_weights_quadrature_and_hutchinson_identity():
    g = torch.Generator().manual_seed(0)
    n = 25
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    lam = torch.linspace(-2, 6, n, dtype=torch.float64)
    A = Q @ torch.diag(lam) @ Q.T
    sd = slq_density(A, n_probes=6, n_iter=n, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(sd.weights.sum(1), torch.ones(6, dtype=torch.float64))
    # n · Σ τ²θ is vᵀAv for the unnormalised Rademacher probe: Hutchinson on the same probes
    hutch = hutchinson_trace(A, n_probes=6, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(n * (sd.weights * sd.nodes).sum(1), hutch.samples, rtol=1e-10, atol=1e-10)
    # full Lanczos: the nodes are the eigenvalues
    torch.testing.assert_close(sd.nodes[0].sort().values, lam, rtol=1e-8, atol=1e-8)
    grid = torch.linspace(-5, 9, 2001, dtype=torch.float64)
    dens = spectral_density(sd, grid, bandwidth=0.2)
    assert float(torch.trapezoid(dens, grid)) == pytest.approx(1.0, abs=1e-4)


def test_bad_inputs_raise():
    model, (x, y) = mlp(0), batch(0)
    with pytest.raises(ValueError, match="unknown parameter names"):
        HessianOperator(model, (x, y), params=["fc.weight"])
    with pytest.raises(ValueError, match="list of parameter names"):
        HessianOperator(model, (x, y), params="2.weight")
    H = HessianOperator(model, (x, y))
    with pytest.raises(ValueError, match="shape"):
        H @ torch.ones(3, dtype=torch.float64)
    with pytest.raises(ValueError, match="NaN"):
        H @ torch.full((H.dim,), float("nan"), dtype=torch.float64)
    with pytest.raises(ValueError, match="n_probes"):
        hutchinson_trace(H, n_probes=1)
    with pytest.raises(ValueError, match="k must be smaller"):
        top_eigenvalues(torch.eye(3, dtype=torch.float64), k=3)
    with pytest.raises(ValueError, match="which"):
        top_eigenvalues(H, which="BE")
    with pytest.raises(ValueError, match="square"):
        power_eigenpairs(torch.ones(3, 4))
    with pytest.raises(ValueError, match="same length"):
        HessianOperator(model, (x, y[:3]))
    with pytest.raises(ValueError, match="empty"):
        HessianOperator(model, [])


def test_cached_and_uncached_products_agree():
    model, (x, y) = mlp(4), batch(4)
    loader = [(x[:10], y[:10]), (x[10:], y[10:])]
    v = torch.randn(75, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a, b = HessianOperator(model, loader, cache=True), HessianOperator(model, loader, cache=False)
    torch.testing.assert_close(a @ v, b @ v, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(a.gradient(), b.gradient(), rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="n_basis"):
        top_eigenvalues(a, k=2, n_basis=2)


def test_linear_operator_view_works_with_scipy():
    from scipy.sparse.linalg import eigsh

    model, (x, y) = mlp(5), batch(5)
    H = HessianOperator(model, (x, y))
    lin = H.to_linear_operator()
    v = torch.randn(H.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    np.testing.assert_allclose(lin @ v.numpy(), (H @ v).numpy(), rtol=1e-12, atol=1e-14)
    v0 = np.ones(H.dim)
    top = eigsh(lin, k=1, which="LA", v0=v0, return_eigenvectors=False)
    exact = torch.linalg.eigvalsh(exact_hessian(model, x, y))[-1]
    assert float(top[0]) == pytest.approx(float(exact), rel=1e-8)


def test_empty_batches_and_non_symmetric_matrices_are_refused():
    model, (x, y) = mlp(0), batch(0)
    with pytest.raises(ValueError, match="no examples"):
        HessianOperator(model, (x[:0], y[:0]))
    # an empty batch inside a loader adds nothing: same operator as without it
    v = torch.randn(75, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with_empty = HessianOperator(model, [(x, y), (x[:0], y[:0])])
    torch.testing.assert_close(with_empty @ v, HessianOperator(model, (x, y)) @ v)
    a = torch.randn(5, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for solver in (top_eigenvalues, power_eigenpairs, hutchinson_trace):
        with pytest.raises(ValueError, match="symmetric"):
            solver(a)
    sym = (a + a.T).float()  # exactly symmetric; float32 rounding of a Gram matrix passes too
    assert top_eigenvalues(sym, k=1).eigenvalues.shape == (1,)
    gram = a.float() @ a.float().T
    assert power_eigenpairs(gram, n_iter=5).eigenvalues.shape == (1,)
