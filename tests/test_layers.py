"""Tests of stabkit.layers: the 1-Lipschitz guarantees against explicit Jacobians and conv matrices."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stabkit.layers import (
    AOLConv2d,
    AOLLinear,
    CPLConv2d,
    CPLLinear,
    GroupSort,
    LinearNormalized,
    MaxMin,
    PaddingChannels,
    ScaledAvgPool2d,
    SLLConv2d,
    SLLLinear,
    SRConv2d,
    SRLinear,
    export_plain,
)
from stabkit.layers._common import conv_gram_bound, gram_bound, gram_kernel
from stabkit.lipschitz import local_lipschitz_lower

D = torch.float64
TOL = 1e-6


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def jacobian_matrix(f, x: torch.Tensor) -> torch.Tensor:
    """Exact Jacobian of f at one input x (no batch dim), as an (out, in) matrix, via torch.func.jacrev."""
    j = torch.func.jacrev(lambda z: f(z[None])[0])(x)
    return j.reshape(-1, x.numel())


def jacobian_norm_power(f, x: torch.Tensor, *, n_iter: int = 50, seed: int = 0) -> float:
    """‖J_f(x)‖₂ at a batch of one point, by the library's power iteration (a lower estimate; itself checked
    against the exact Jacobian in tests/test_lipschitz.py)."""
    return local_lipschitz_lower(f, x, n_iter=n_iter, generator=gen(seed)).max().item()


def fourier_gram_bound(kernel: torch.Tensor, *, n_iter: int, log_q: torch.Tensor | None = None) -> torch.Tensor:
    """Independent reference for the Gram-power row sums: the symbol of (KKᵀ)^(2^(T−1)) is (K̂K̂ᴴ)^(2^(T−1)); a DFT
    of size 2^(T−1)(2k − 2) + 1 per axis holds the whole support of its kernel, so the inverse DFT is exact."""
    kh, kw = kernel.shape[-2:]
    nh, nw = (2 ** (n_iter - 1) * (2 * k - 2) + 1 for k in (kh, kw))
    b = torch.fft.fft2(kernel.to(D), s=(nh, nw)).permute(2, 3, 0, 1)  # (nh, nw, n, m)
    g = b @ b.mH
    for _ in range(n_iter - 1):
        g = g @ g
    m = torch.fft.ifft2(g.permute(2, 3, 0, 1)).real  # (n, n, nh, nw)
    a = m.abs().sum(dim=(2, 3))
    q = torch.ones(a.shape[0], dtype=D) if log_q is None else torch.exp(log_q.to(D))
    return ((a @ q) / q) ** (2.0 ** (-(n_iter - 1)))


def conv_matrix(conv, c: int, n: int) -> torch.Tensor:
    """Explicit matrix of a linear map on (1, c, n, n) inputs, (out, c·n·n)."""
    eye = torch.eye(c * n * n, dtype=D).reshape(-1, c, n, n)
    return conv(eye).reshape(c * n * n, -1).T


def dense_layers(g):
    return [
        SLLLinear(6, 9, dtype=D, generator=g),
        SLLLinear(6, 4, n_iter=3, dtype=D, generator=g),
        CPLLinear(6, 9, dtype=D, generator=g),
        AOLLinear(6, 5, dtype=D, generator=g),
        SRLinear(6, 5, n_iter=4, dtype=D, generator=g),
        AOLLinear(3, 7, dtype=D, generator=g),
    ]


def conv_layers(g):
    return [
        SLLConv2d(3, 5, 3, dtype=D, generator=g),
        SLLConv2d(3, 4, (3, 5), n_iter=2, dtype=D, generator=g),
        CPLConv2d(3, 5, 3, dtype=D, generator=g),
        CPLConv2d(3, 2, 5, dtype=D, generator=g),
        AOLConv2d(3, 4, 3, dtype=D, generator=g),
        SRConv2d(3, 4, 3, n_iter=3, dtype=D, generator=g),
        AOLConv2d(3, 4, 3, stride=2, dtype=D, generator=g),
        SRConv2d(3, 6, (1, 3), n_iter=2, padding=0, dtype=D, generator=g),
    ]


def input_for(layer, g, n: int = 6) -> torch.Tensor:
    c = getattr(layer, "in_features", None) or getattr(layer, "features", None)
    if c is not None:
        return torch.randn(c, generator=g, dtype=D)
    c = getattr(layer, "in_channels", None) or layer.channels
    return torch.randn(c, n, n, generator=g, dtype=D)


def perturb_(layer, g, scale: float = 3.0) -> None:
    """Random, badly scaled weights: the guarantee must not depend on the initialisation."""
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)


def train_to_expand(layer, g, *, steps: int = 5, lr: float = 0.05) -> None:
    """A few SGD steps pushing the layer to stretch inputs apart (the direction that breaks 1-Lipschitz)."""
    layer.train()
    opt = torch.optim.SGD(layer.parameters(), lr=lr)
    for _ in range(steps):
        x = torch.stack([input_for(layer, g) for _ in range(8)])
        x2 = x + 0.1 * torch.randn(x.shape, generator=g, dtype=D)
        loss = -((layer(x) - layer(x2)) ** 2).sum() / ((x - x2) ** 2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    layer.eval()


@pytest.mark.parametrize("trained", [False, True])
@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_layers_are_1_lipschitz_exact_jacobian(kind, trained):
    g = gen(1 + trained)
    for draw in range(3):
        for layer in dense_layers(g) if kind == "dense" else conv_layers(g):
            if draw > 0:
                perturb_(layer, g, scale=[0.1, 5.0][draw - 1])
            if trained:
                train_to_expand(layer, g)
            layer.eval()
            for _ in range(3):
                x = input_for(layer, g)
                s = torch.linalg.matrix_norm(jacobian_matrix(layer, x), ord=2).item()
                assert s <= 1 + TOL, (type(layer).__name__, draw, s)


def test_layers_are_1_lipschitz_power_iteration_on_larger_inputs():
    # the conv guarantees hold for every input size: check a bigger one by jvp/vjp power iteration
    g = gen(3)
    for layer in conv_layers(g):
        layer.eval()
        x = input_for(layer, g, n=20)[None]
        s = jacobian_norm_power(layer, x, n_iter=30)
        assert s <= 1 + TOL, (type(layer).__name__, s)


def test_residual_layers_are_tight():
    # residual layers have Jacobian I − (PSD part): norm close to 1; far below 1 would hint at a bug
    g = gen(4)
    for layer in [SLLLinear(6, 9, dtype=D, generator=g), CPLLinear(6, 9, dtype=D, generator=g)]:
        layer.eval()
        s = torch.linalg.matrix_norm(jacobian_matrix(layer, input_for(layer, g)), ord=2).item()
        assert 0.9 < s <= 1 + TOL


def test_aol_equals_sr_with_one_iteration():
    g = gen(5)
    a, s = AOLLinear(7, 4, dtype=D, generator=g), SRLinear(7, 4, n_iter=1, dtype=D)
    s.load_state_dict(a.state_dict())
    x = torch.randn(5, 7, generator=g, dtype=D)
    assert torch.equal(a(x), s(x))
    a, s = AOLConv2d(3, 4, 3, dtype=D, generator=g), SRConv2d(3, 4, 3, n_iter=1, dtype=D)
    s.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 7, 7, generator=g, dtype=D)
    assert torch.equal(a(x), s(x))
    # and AOL against its closed form D_ii = (Σ_j |WᵀW|_ij)^(-1/2)
    w = a.weight.detach()
    lin = AOLLinear(7, 4, dtype=D, generator=g)
    wl = lin.weight.detach()
    d = (wl.T @ wl).abs().sum(1).rsqrt()
    torch.testing.assert_close(lin.effective_weight(), wl * d, rtol=1e-12, atol=0)
    assert w.shape == (4, 3, 3, 3)


def test_sll_dense_closed_form_q_zero():
    g = gen(6)
    layer = SLLLinear(5, 8, dtype=D, generator=g)  # log_q = 0, i.e. q = 1
    w, b = layer.weight.detach(), layer.bias.detach()
    t = (w @ w.T).abs().sum(1)
    torch.testing.assert_close(layer.gram_diagonal(), t, rtol=1e-12, atol=0)
    x = torch.randn(4, 5, generator=g, dtype=D)
    expected = x - 2 * (torch.relu(x @ w.T + b) / t) @ w
    torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-14)


def test_sll_conv_closed_form_q_zero_against_explicit_matrix():
    # T_ii from the Gram kernel must equal the Gershgorin row sum of AAᵀ at an interior pixel of the explicit
    # conv matrix A (all offsets are seen there), and the forward must equal x − 2 Aᵀ T⁻¹ relu(Ax + b)
    g = gen(7)
    c, inner, n = 2, 3, 9
    layer = SLLConv2d(c, inner, 3, dtype=D, generator=g)
    k, b = layer.weight.detach(), layer.bias.detach()
    a = conv_matrix(lambda z: F.conv2d(z, k, padding=1), c, n)  # (inner·n², c·n²)
    aat = (a @ a.T).abs().sum(1).reshape(inner, n, n)
    torch.testing.assert_close(layer.gram_diagonal(), aat[:, n // 2, n // 2], rtol=1e-12, atol=0)
    assert bool((aat <= layer.gram_diagonal()[:, None, None] + 1e-12).all())  # borders see fewer offsets
    x = torch.randn(1, c, n, n, generator=g, dtype=D)
    t_full = layer.gram_diagonal().repeat_interleave(n * n)
    z = torch.relu(a @ x.reshape(-1) + b.repeat_interleave(n * n))
    expected = x.reshape(-1) - 2 * a.T @ (z / t_full)
    torch.testing.assert_close(layer(x).reshape(-1), expected, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("n_iter", [1, 2, 3])
def test_gram_bound_dominates_gram_operator(n_iter):
    # diag(t) − AAᵀ ⪰ 0 on the explicit zero-padded conv matrix, with random positive weights q
    g = gen(10 + n_iter)
    for _ in range(3):
        c, inner, n = 2, 3, 6
        k = torch.randn(inner, c, 3, 3, generator=g, dtype=D)
        log_q = torch.randn(inner, generator=g, dtype=D)
        t = gram_bound(gram_kernel(k), n_iter=n_iter, log_q=log_q)
        # direct self-convolution (the layers) and Fourier-domain powers (independent) agree
        torch.testing.assert_close(conv_gram_bound(k, n_iter=n_iter, log_q=log_q), t, rtol=0, atol=0)
        torch.testing.assert_close(fourier_gram_bound(k, n_iter=n_iter, log_q=log_q), t, rtol=1e-9, atol=0)
        a = conv_matrix(lambda z, k=k: F.conv2d(z, k, padding=1), c, n)
        gap = torch.diag(t.repeat_interleave(n * n)) - a @ a.T
        assert torch.linalg.eigvalsh(gap).min().item() >= -1e-10
        w = torch.randn(5, 7, generator=g, dtype=D)
        gap = torch.diag(gram_bound(w @ w.T, n_iter=n_iter, log_q=log_q[:1].expand(5))) - w @ w.T
        assert torch.linalg.eigvalsh(gap).min().item() >= -1e-10


def test_sr_tightness_increases_with_n_iter():
    # [C] THESIS §4.2, 64×128 Gaussian W: ‖diag(1/t)W‖₂ = 0.690, 0.847, 0.936, 0.991, 0.9995
    # for T = 1, 2, 3, 5, 8.
    # Our SR rescales the input side, so the thesis' W (64×128, rows rescaled) is our weight Wᵀ (128×64).
    # The draw is not given; over default_rng(0..4) T = 1 varies in 0.687–0.716, hence the tolerance.
    w = torch.from_numpy(np.random.default_rng(2).standard_normal((64, 128)))
    expected = {1: 0.690, 2: 0.847, 3: 0.936, 5: 0.991, 8: 0.9995}
    norms = []
    for n_iter, ref in expected.items():
        layer = SRLinear(64, 128, n_iter=n_iter, dtype=D)
        with torch.no_grad():
            layer.weight.copy_(w.T)
        s = torch.linalg.matrix_norm(layer.effective_weight(), ord=2).item()
        assert s <= 1 + 1e-12
        assert abs(s - ref) < 0.02, (n_iter, s, ref)
        norms.append(s)
    assert norms == sorted(norms)


def test_sr_never_above_one_on_random_scaled_nonnegative_matrices():
    g = gen(12)
    for i in range(60):
        m, n = (int(v) for v in torch.randint(1, 30, (2,), generator=g))
        w = torch.randn(m, n, generator=g, dtype=D) * 10 ** float(torch.empty(1).uniform_(-3, 3, generator=g))
        if i % 2:
            w = w.abs()  # non-negative matrices are the Gershgorin-tight case
        layer = SRLinear(n, m, n_iter=1 + i % 5, dtype=D)
        with torch.no_grad():
            layer.weight.copy_(w)
        assert torch.linalg.matrix_norm(layer.effective_weight(), ord=2).item() <= 1 + 1e-12


def test_gram_bound_does_not_overflow_in_float32():
    w = torch.randn(64, 64, generator=gen(13)) * 100
    layer = SRLinear(64, 64, n_iter=8)
    with torch.no_grad():
        layer.weight.copy_(w)
    s = torch.linalg.matrix_norm(layer.effective_weight().double(), ord=2).item()
    assert math.isfinite(s) and 0.99 < s <= 1 + 1e-5


def test_cpl_power_iteration_alone_is_not_sound_but_eval_mode_is():
    # The papers' estimate is a lower bound: a start orthogonal to the top singular vector leaves power
    # iteration at σ2, and h = 2/(σ2² + 1e-4) breaks 1-Lipschitz (Note [CPL norm]).
    # Eval mode uses a certified bound.
    layer = CPLLinear(2, 2, bias=False, dtype=D)
    with torch.no_grad():
        layer.weight.copy_(torch.diag(torch.tensor([2.0, 1.0], dtype=D)))
        layer.u.copy_(torch.tensor([0.0, 1.0], dtype=D))
    x = torch.tensor([1.0, 1.0], dtype=D)  # both units active
    layer.train()
    s_train = torch.linalg.matrix_norm(jacobian_matrix(layer, x), ord=2).item()
    assert s_train > 1.5  # I − (2/1)·diag(4, 1) has norm 7
    layer.eval()
    s_eval = torch.linalg.matrix_norm(jacobian_matrix(layer, x), ord=2).item()
    assert s_eval <= 1 + TOL
    torch.testing.assert_close(layer.norm_bound(), torch.tensor(2.0, dtype=D), rtol=1e-8, atol=0)


def test_cpl_power_iteration_converges_in_training():
    g = gen(14)
    layer = CPLConv2d(3, 4, 3, n_grid=12, dtype=D, generator=g)
    layer.train()
    u0 = layer.u.clone()
    for _ in range(60):
        est = layer._power_step().item()
    assert not torch.equal(u0, layer.u)  # the state advances in training
    # the circular power iteration converges from below to σ1 of the circular conv on the grid (Sedghi)
    khat = torch.fft.fft2(layer.weight.detach(), s=(12, 12)).permute(2, 3, 0, 1)
    exact = torch.linalg.matrix_norm(khat, ord=2).max().item()
    assert est <= exact * (1 + 1e-9) and est > 0.99 * exact
    assert layer.norm_bound().item() >= exact


def test_eval_mode_mutates_nothing_and_works_under_torch_func():
    g = gen(16)
    for layer in dense_layers(g) + conv_layers(g):
        layer.eval()
        x = input_for(layer, g)[None].repeat(3, *([1] * input_for(layer, g).ndim))
        before = {k: v.clone() for k, v in layer.state_dict().items()}
        params = {k: v.detach() for k, v in layer.named_parameters()}
        buffers = dict(layer.named_buffers())
        out = torch.func.functional_call(layer, (params, buffers), (x,))
        torch.testing.assert_close(out, layer(x))
        jac = torch.func.vmap(torch.func.jacrev(lambda z, m=layer: m(z[None])[0]))(x)
        assert jac.shape[0] == 3

        # gradient with respect to the parameters through functional_call (weights are functorch-wrapped here)
        def loss(p, m=layer, b=buffers, x=x):
            return torch.func.functional_call(m, (p, b), (x,)).sum()

        grads = torch.func.grad(loss)(params)
        assert all(torch.isfinite(v).all() for v in grads.values())
        for k, v in layer.state_dict().items():
            assert torch.equal(v, before[k]), (type(layer).__name__, k)


def test_cpl_eval_bound_follows_the_weights():
    g = gen(17)
    layer = CPLLinear(4, 4, dtype=D, generator=g).eval()
    b1 = layer.norm_bound().item()
    with torch.no_grad():
        layer.weight.mul_(3.0)  # in-place change: the cached bound must be refreshed
    assert layer.norm_bound().item() == pytest.approx(3 * b1, rel=1e-9)
    # functional_call with other weights uses those weights' bound, not the cache
    w = layer.weight.detach() / 3
    params = {"weight": w, "bias": layer.bias.detach()}
    x = torch.randn(2, 4, generator=g, dtype=D)
    out = torch.func.functional_call(layer, params, (x,))
    z = torch.relu(x @ w.T + layer.bias.detach())
    expected = x - z @ w * (2 / (torch.linalg.matrix_norm(w, ord=2) ** 2 * (1 + 1e-9) ** 2 + 1e-4))
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-12)


def test_export_equals_original():
    g = gen(18)
    for layer in dense_layers(g) + conv_layers(g) + [LinearNormalized(6, 3, dtype=D, generator=g)]:
        if not isinstance(layer, LinearNormalized):
            train_to_expand(layer, g, steps=2)
        layer.eval()
        plain = export_plain(layer)
        with_params = [m for m in plain.modules() if any(True for _ in m.parameters(recurse=False))]
        assert all(type(m) in (torch.nn.Linear, torch.nn.Conv2d) for m in with_params)
        x = torch.stack([input_for(layer, g) for _ in range(4)])
        torch.testing.assert_close(plain(x), layer(x), rtol=1e-10, atol=1e-12)


def test_building_blocks():
    g = gen(19)
    x = torch.randn(2, 3, 8, 8, generator=g, dtype=D)
    assert PaddingChannels(5)(x).shape == (2, 5, 8, 8)
    torch.testing.assert_close(PaddingChannels(5)(x)[:, :3], x)
    pool = ScaledAvgPool2d(4)
    torch.testing.assert_close(pool(x), F.avg_pool2d(x, 4, divisor_override=4))
    a = conv_matrix(pool, 1, 8)
    assert torch.linalg.matrix_norm(a, ord=2).item() == pytest.approx(1.0, abs=1e-12)
    for act in (MaxMin(), GroupSort(3)):
        y = torch.randn(3, 6, generator=g, dtype=D)
        j = jacobian_matrix(act, y[0])
        torch.testing.assert_close(j.T @ j, torch.eye(6, dtype=D))  # a permutation: norm-preserving
        torch.testing.assert_close(act(y).norm(dim=1), y.norm(dim=1))
    assert MaxMin()(torch.tensor([[1.0, 5.0, 3.0, 2.0, 7.0]])).tolist() == [[3.0, 5.0, 1.0, 2.0, 7.0]]
    assert GroupSort(2)(torch.tensor([[1.0, 5.0, 3.0, 2.0]])).tolist() == [[5.0, 1.0, 3.0, 2.0]]
    lln = LinearNormalized(6, 4, dtype=D, generator=g)
    torch.testing.assert_close(lln.normalized_weight().norm(dim=1), torch.ones(4, dtype=D))
    assert lln.lipschitz_constant() == pytest.approx(torch.linalg.matrix_norm(lln.normalized_weight(), 2).item())


def test_initialisation_is_deterministic_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    a = SLLConv2d(4, 4, 3, generator=gen(0))
    b = SLLConv2d(4, 4, 3)  # None = seeded 0
    c = CPLConv2d(4, 4, 3, generator=gen(1))
    assert torch.equal(a.weight, b.weight) and not torch.equal(a.weight, c.weight[:, :, :, :])
    assert torch.equal(state, torch.get_rng_state())


def test_bad_inputs():
    with pytest.raises(ValueError, match="odd"):
        SLLConv2d(3, 3, 4)
    with pytest.raises(ValueError, match="odd"):
        AOLConv2d(3, 3, (3, 2))
    with pytest.raises(ValueError, match="n_iter"):
        SRLinear(3, 3, n_iter=0)
    with pytest.raises(ValueError, match="features"):
        SLLLinear(0)
    with pytest.raises(ValueError, match="more than out_channels"):
        PaddingChannels(2)(torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="divisible"):
        GroupSort(4)(torch.zeros(1, 6))
    with pytest.raises(ValueError, match="eps"):
        CPLLinear(3, eps=-1.0)


def test_layers_move_and_cast_like_torch_modules():
    # .to()/.double() go through nn.Module._apply: no layer may shadow it
    g = gen(20)
    for layer in [
        CPLConv2d(2, 3, 3, generator=g),
        CPLLinear(3, 4, generator=g),
        SLLConv2d(2, 2, 3, generator=g),
    ]:
        layer = layer.double().eval()
        assert all(p.dtype == D for p in layer.parameters())
        x = input_for(layer, g)[None]
        assert layer(x).dtype == D


def test_cpl_bound_made_under_inference_mode_is_usable_with_autograd():
    layer = CPLConv2d(2, 2, 3, dtype=D, generator=gen(21)).eval()
    x = torch.randn(1, 2, 5, 5, generator=gen(22), dtype=D)
    with torch.inference_mode():
        y0 = layer(x)
    xr = x.clone().requires_grad_(True)
    y = layer(xr)
    y.sum().backward()
    torch.testing.assert_close(y.detach(), y0.clone())
    assert xr.grad is not None


def test_gram_power_matches_fourier_reference_for_rectangular_and_float32():
    g = gen(23)
    for shape in [(4, 3, 3, 5), (2, 6, 1, 3), (5, 5, 5, 5)]:
        k = torch.randn(shape, generator=g, dtype=D)
        for n_iter in (1, 2, 3):
            ref = fourier_gram_bound(k, n_iter=n_iter)
            torch.testing.assert_close(conv_gram_bound(k, n_iter=n_iter), ref, rtol=1e-9, atol=0)
            t32 = conv_gram_bound(k.float(), n_iter=n_iter)
            assert t32.dtype == torch.float32
            torch.testing.assert_close(t32.double(), ref, rtol=1e-5, atol=0)
