"""Loss smoothing and its two last-layer inequalities, activation decay, SAM, landscape slices."""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import integrate, stats
from torch import nn

from stabkit.curvature import (
    SAM,
    ActivationDecay,
    HessianOperator,
    filter_normalized_direction,
    last_layer_hessian_bound,
    last_layer_smoothing,
    loss_slice_1d,
    loss_slice_2d,
    penultimate,
    second_order_smoothed_loss,
    smoothed_loss,
    weierstrass_hessian_bound,
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(out.squeeze(-1), y)


def linear_regression(seed: int):
    """A model whose loss is exactly quadratic in its parameters: smoothing adds exactly σ²/2 tr H."""
    torch.manual_seed(seed)
    model = nn.Linear(4, 1).double()
    g = gen(seed)
    x = torch.randn(32, 4, generator=g, dtype=torch.float64)
    y = torch.randn(32, generator=g, dtype=torch.float64)
    return model, (x, y)


# ---------------------------------------------------------------------------------------------- smoothing


def test_smoothed_loss_of_a_quadratic_matches_the_closed_form():
    model, data = linear_regression(0)
    H = HessianOperator(model, data, loss_fn=mse)
    exact_trace = float(H.dense().trace())
    loss = float(mse(model(data[0]), data[1]).detach())
    sigma = 0.3
    exact = loss + sigma**2 / 2 * exact_trace
    mc = smoothed_loss(model, data, sigma=sigma, n_samples=400, loss_fn=mse, generator=gen(1))
    assert mc.low <= exact <= mc.high
    # antithetic pairs: a quadratic has no odd terms left, so every pair mean is exact up to the noise's norm
    anti = smoothed_loss(model, data, sigma=sigma, n_samples=400, loss_fn=mse, antithetic=True, generator=gen(1))
    assert anti.low <= exact <= anti.high
    assert anti.stderr < mc.stderr
    so = second_order_smoothed_loss(model, data, sigma=sigma, n_probes=200, loss_fn=mse, generator=gen(2))
    assert so.loss == pytest.approx(loss, rel=1e-12)
    assert abs(so.value - exact) <= 4 * sigma**2 / 2 * so.trace_stderr + 1e-12


def test_smoothed_loss_interval_coverage():
    model, data = linear_regression(1)
    H = HessianOperator(model, data, loss_fn=mse)
    sigma = 0.5
    exact = float(mse(model(data[0]), data[1]).detach()) + sigma**2 / 2 * float(H.dense().trace())
    hits = [
        smoothed_loss(model, data, sigma=sigma, n_samples=30, loss_fn=mse, generator=gen(s)).low
        <= exact
        <= smoothed_loss(model, data, sigma=sigma, n_samples=30, loss_fn=mse, generator=gen(s)).high
        for s in range(60)
    ]
    # 95 % intervals: binomial(60, 0.95) is ≥ 51 with probability > 0.99
    assert sum(hits) >= 51


def test_smoothed_loss_is_deterministic_and_leaves_the_model():
    model, data = linear_regression(2)
    before = copy.deepcopy(model.state_dict())
    a = smoothed_loss(model, data, sigma=0.1, n_samples=5, loss_fn=mse, generator=gen(3))
    b = smoothed_loss(model, data, sigma=0.1, n_samples=5, loss_fn=mse, generator=gen(3))
    assert torch.equal(a.samples, b.samples)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def two_layer(seed: int, d_in: int, width: int, n_classes: int, scale: float) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(d_in, width), nn.ReLU(), nn.Linear(width, n_classes)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
    return model


@pytest.mark.parametrize("seed", range(8))
def test_last_layer_hessian_bound_holds_over_random_models(seed):
    rng = np.random.default_rng(seed)
    d_in, width, C = 3, int(rng.integers(2, 7)), int(rng.integers(2, 6))
    scale = float(rng.choice([0.1, 1.0, 5.0]))
    model = two_layer(seed, d_in, width, C, scale)
    g = gen(seed)
    x = torch.randn(int(rng.integers(1, 20)), d_in, generator=g, dtype=torch.float64) * scale
    y = torch.randint(0, C, (len(x),), generator=g)
    h = penultimate(model, x, layer="2").features
    lam_w = torch.linalg.eigvalsh(HessianOperator(model, (x, y), params=["2.weight"]).dense())[-1]
    assert lam_w <= last_layer_hessian_bound(h) * (1 + 1e-10) + 1e-12
    lam_wb = torch.linalg.eigvalsh(HessianOperator(model, (x, y), params=["2.weight", "2.bias"]).dense())[-1]
    assert lam_wb <= last_layer_hessian_bound(h, bias=True) * (1 + 1e-10) + 1e-12


def test_last_layer_hessian_bound_is_tight_for_two_equal_logits():
    # C = 2, p = (½, ½): diag(p) − ppᵀ has eigenvalue ½, so λ_max = ½‖h‖² exactly
    model = two_layer(0, 3, 4, 2, 1.0)
    with torch.no_grad():
        model[2].weight.zero_()
        model[2].bias.zero_()
    x = torch.randn(1, 3, generator=gen(0), dtype=torch.float64)
    h = penultimate(model, x, layer=model[2]).features
    H = HessianOperator(model, (x, torch.tensor([1])), params=["2.weight"])
    lam = torch.linalg.eigvalsh(H.dense())[-1]
    assert float(lam) == pytest.approx(last_layer_hessian_bound(h), rel=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_smoothing_inequality_holds_at_every_example(seed):
    rng = np.random.default_rng(100 + seed)
    C, d, B = int(rng.integers(2, 8)), int(rng.integers(1, 10)), 16
    g = gen(seed)
    W = torch.randn(C, d, generator=g, dtype=torch.float64) * float(rng.choice([0.1, 1.0, 3.0]))
    h = torch.randn(B, d, generator=g, dtype=torch.float64) * float(rng.choice([0.3, 1.0, 2.0]))
    y = torch.randint(0, C, (B,), generator=g)
    sigma = float(rng.choice([0.01, 0.1, 0.5]))
    res = last_layer_smoothing(W, h, y, sigma=sigma, n_samples=2000, generator=g)
    assert (res.smoothed - 4 * res.stderr <= res.bound).all()
    assert (res.bound >= res.loss).all()


def test_last_layer_smoothing_matches_quadrature_for_two_classes():
    # C = 2: ℓ depends on z₁ − z₀ only, and (E h)₁ − (E h)₀ ~ N(0, 2σ²‖h‖²): a 1-D Gauss–Hermite reference
    g = gen(5)
    W = torch.randn(2, 3, generator=g, dtype=torch.float64)
    h = torch.randn(4, 3, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 0])
    sigma = 0.7
    res = last_layer_smoothing(W, h, y, sigma=sigma, n_samples=4000, generator=g)
    anti = last_layer_smoothing(W, h, y, sigma=sigma, n_samples=4000, antithetic=True, generator=g)
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)
    for i in range(4):
        z = (h[i] @ W.T).numpy()
        margin = z[1 - int(y[i])] - z[int(y[i])]  # ℓ = log(1 + e^{margin})
        s = math.sqrt(2) * sigma * float(h[i].norm())
        exact = float(np.sum(weights * np.logaddexp(0, margin + s * nodes)) / math.sqrt(2 * math.pi))
        assert abs(float(res.smoothed[i]) - exact) <= 4 * float(res.stderr[i])
        assert abs(float(anti.smoothed[i]) - exact) <= 4 * float(anti.stderr[i])
        assert anti.stderr[i] < res.stderr[i]
        assert exact <= float(res.bound[i])


def test_weierstrass_hessian_bound_is_tight_for_the_absolute_value():
    sigma = 0.4

    def smoothed_abs(t: float) -> float:
        return integrate.quad(lambda e: abs(t + e) * stats.norm.pdf(e, scale=sigma), -10, 10, points=[-t])[0]

    step = 1e-3
    for t in (0.0, 0.2, 1.0):
        second = (smoothed_abs(t + step) - 2 * smoothed_abs(t) + smoothed_abs(t - step)) / step**2
        assert second <= weierstrass_hessian_bound(1.0, sigma=sigma) * (1 + 1e-3)
    second0 = (smoothed_abs(step) - 2 * smoothed_abs(0.0) + smoothed_abs(-step)) / step**2
    assert second0 == pytest.approx(weierstrass_hessian_bound(1.0, sigma=sigma), rel=1e-3)


# ---------------------------------------------------------------------------------------- activation decay


def test_activation_decay_value_hook_and_feature_function_agree():
    model = two_layer(0, 3, 5, 4, 1.0)
    g = gen(0)
    x, y = torch.randn(10, 3, generator=g, dtype=torch.float64), torch.randint(0, 4, (10,), generator=g)
    h = torch.relu(model[0](x))
    expected = F.cross_entropy(model(x), y) + 0.3 * h.pow(2).sum(1).mean()
    by_hook = ActivationDecay(lam=0.3, layer="2")(model, x, y)
    by_fn = ActivationDecay(lam=0.3, features=lambda m, x: (m(x), torch.relu(m[0](x))))(model, x, y)
    torch.testing.assert_close(by_hook, expected)
    torch.testing.assert_close(by_fn, expected)
    assert len(model[2]._forward_pre_hooks) == 0  # the hook does not outlive the call
    by_hook.backward()
    assert model[0].weight.grad is not None  # the penalty reaches the body


def test_activation_decay_bad_inputs():
    with pytest.raises(ValueError, match="exactly one"):
        ActivationDecay(lam=0.1)
    with pytest.raises(ValueError, match="exactly one"):
        ActivationDecay(lam=0.1, layer="2", features=lambda m, x: (m(x), x))
    with pytest.raises(ValueError, match="lam"):
        ActivationDecay(lam=-1.0, layer="2")
    model = two_layer(0, 3, 5, 4, 1.0)
    x, y = torch.randn(2, 3, dtype=torch.float64), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="unknown layer"):
        ActivationDecay(lam=0.1, layer="fc")(model, x, y)
    shared = nn.Linear(3, 3).double()
    twice = nn.Sequential(shared, nn.ReLU(), shared)
    with pytest.raises(ValueError, match="2 times"):
        penultimate(twice, x, layer=shared)
    assert len(shared._forward_pre_hooks) == 0


# ---------------------------------------------------------------------------------------------------- SAM


def quadratic(seed: int, n: int = 5):
    g = gen(seed)
    B = torch.randn(n, n, generator=g, dtype=torch.float64)
    A = B @ B.T + torch.eye(n, dtype=torch.float64)
    b = torch.randn(n, generator=g, dtype=torch.float64)
    w0 = torch.randn(n, generator=g, dtype=torch.float64)
    return A, b, w0


@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_matches_hand_written_reference_on_a_quadratic(adaptive):
    A, b, w0 = quadratic(0)
    rho, lr = 0.1, 0.05
    # reference: e = ρ T²g/‖Tg‖, g' = ∇L(w + e), w ← w − lr g'
    w_ref = w0.clone()
    for _ in range(4):
        grad = A @ w_ref - b
        t = w_ref.abs() if adaptive else torch.ones_like(w_ref)
        e = rho * t**2 * grad / torch.linalg.vector_norm(t * grad)
        w_ref = w_ref - lr * (A @ (w_ref + e) - b)

    w = nn.Parameter(w0.clone())
    opt = SAM(torch.optim.SGD([w], lr=lr), rho=rho, adaptive=adaptive)

    def closure():
        opt.zero_grad()
        loss = 0.5 * w @ A @ w - b @ w
        loss.backward()
        return loss

    for _ in range(4):
        opt.step(closure)
    torch.testing.assert_close(w.detach(), w_ref, rtol=1e-12, atol=1e-12)

    # by hand: first_step / second_step give the same trajectory
    v = nn.Parameter(w0.clone())
    opt2 = SAM(torch.optim.SGD([v], lr=lr), rho=rho, adaptive=adaptive)
    for _ in range(4):
        (0.5 * v @ A @ v - b @ v).backward()
        opt2.first_step(zero_grad=True)
        (0.5 * v @ A @ v - b @ v).backward()
        opt2.second_step(zero_grad=True)
    torch.testing.assert_close(v.detach(), w_ref, rtol=1e-12, atol=1e-12)


def bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).double()


def sam_step(model: nn.Module, x, y, *, protect: bool) -> None:
    opt = SAM(torch.optim.SGD(model.parameters(), lr=0.1), model=model if protect else None, rho=0.5)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    opt.step(closure)


def test_sam_second_pass_leaves_batchnorm_statistics_alone():
    g = gen(0)
    x = torch.randn(16, 4, generator=g, dtype=torch.float64) * 3 + 1
    y = torch.randint(0, 3, (16,), generator=g)
    model = bn_model()
    reference = copy.deepcopy(model)
    reference(x)  # plain training: one forward pass at the current weights updates the statistics once
    sam_step(model, x, y, protect=True)
    bn, ref = model[1], reference[1]
    torch.testing.assert_close(bn.running_mean, ref.running_mean, rtol=0, atol=0)
    torch.testing.assert_close(bn.running_var, ref.running_var, rtol=0, atol=0)
    assert int(bn.num_batches_tracked) == 1
    # the pitfall being guarded against: without the model the second pass counts the batch twice
    unprotected = bn_model()
    sam_step(unprotected, x, y, protect=False)
    assert int(unprotected[1].num_batches_tracked) == 2
    assert not torch.equal(unprotected[1].running_mean, ref.running_mean)


def test_sam_shares_learning_rate_and_state_dict():
    w = nn.Parameter(torch.ones(3, dtype=torch.float64))
    base = torch.optim.SGD([w], lr=0.1, momentum=0.9)
    opt = SAM(base, rho=0.05)
    opt.param_groups[0]["lr"] = 0.01  # what a learning-rate schedule does
    assert base.param_groups[0]["lr"] == 0.01

    def closure():
        opt.zero_grad()
        loss = (w**2).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert float(loss) == pytest.approx(3.0)
    state = copy.deepcopy(opt.state_dict())
    w2 = nn.Parameter(w.detach().clone())
    opt2 = SAM(torch.optim.SGD([w2], lr=0.1, momentum=0.9), rho=0.05)
    opt2.load_state_dict(state)
    assert opt2.param_groups[0]["lr"] == 0.01 and opt2.param_groups[0]["rho"] == 0.05
    torch.testing.assert_close(opt2.base_optimizer.state[w2]["momentum_buffer"], base.state[w]["momentum_buffer"])


def test_sam_bad_inputs():
    w = nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match="rho"):
        SAM(torch.optim.SGD([w], lr=0.1), rho=0.0)
    with pytest.raises(TypeError, match="base_optimizer"):
        SAM(torch.optim.SGD, rho=0.1)  # type: ignore[arg-type]
    opt = SAM(torch.optim.SGD([w], lr=0.1))
    with pytest.raises(ValueError, match="closure"):
        opt.step()
    with pytest.raises(ValueError, match="no parameter has a gradient"):
        opt.first_step()


# ---------------------------------------------------------------------------------------------- landscape


def test_filter_normalized_direction_matches_filter_norms():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    d = filter_normalized_direction(model, generator=gen(0))
    assert torch.equal(d, filter_normalized_direction(model, generator=gen(0)))
    assert not torch.equal(d, filter_normalized_direction(model, generator=gen(1)))
    names = ["0.weight", "0.bias", "3.weight", "3.bias"]
    parts = dict(zip(names, torch.split(d, [72, 4, 192, 3]), strict=True))
    conv = parts["0.weight"].reshape(4, 2, 3, 3)
    torch.testing.assert_close(conv.flatten(1).norm(dim=1), model[0].weight.flatten(1).norm(dim=1))
    torch.testing.assert_close(parts["3.weight"].reshape(3, 64).norm(dim=1), model[3].weight.norm(dim=1))
    assert (parts["0.bias"] == 0).all() and (parts["3.bias"] == 0).all()


def test_slices_of_a_quadratic_follow_gradient_and_hessian():
    model, data = linear_regression(3)
    H = HessianOperator(model, data, loss_fn=mse)
    d1 = filter_normalized_direction(model, generator=gen(0))
    d2 = torch.randn(H.dim, generator=gen(1), dtype=torch.float64)
    alphas = torch.linspace(-1, 1, 5, dtype=torch.float64)
    s1 = loss_slice_1d(model, data, d1, alphas, loss_fn=mse)
    loss0 = float(mse(model(data[0]), data[1]).detach())
    # exact for a quadratic: L(θ + αd) = L + α gᵀd + ½ α² dᵀHd
    pred = loss0 + alphas * (H.gradient() @ d1) + 0.5 * alphas**2 * (d1 @ (H @ d1))
    torch.testing.assert_close(s1.losses, pred, rtol=1e-10, atol=1e-12)
    betas = torch.tensor([0.0, 0.5], dtype=torch.float64)
    s2 = loss_slice_2d(model, data, (d1, d2), alphas, betas, loss_fn=mse)
    assert s2.losses.shape == (5, 2)
    torch.testing.assert_close(s2.losses[:, 0], s1.losses, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="direction"):
        loss_slice_1d(model, data, d1[:2], alphas, loss_fn=mse)


# ------------------------------------------------------------------------------------- with the shared loop


def test_sam_and_activation_decay_plug_into_fit():
    from stabkit.train import fit, supervised

    g = gen(0)
    x = torch.randn(96, 4, generator=g, dtype=torch.float64)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    model = bn_model()
    opt = SAM(torch.optim.SGD(model.parameters(), lr=0.1), model=model, rho=0.05)
    hist = fit(
        model, (x, y), objective=supervised(F.cross_entropy), optimizer=opt, epochs=2, batch_size=32, generator=gen(1)
    )
    assert int(model[1].num_batches_tracked) == 2 * 3  # once per step, not twice
    assert hist[-1]["loss"] < hist[0]["loss"]  # SAM through fit still trains

    def mean_sq(m):
        return float(penultimate(m, x, layer="3").features.pow(2).sum(1).mean().detach())

    norms = {}
    for lam in (0.0, 0.1):
        m = bn_model()
        fit(
            m,
            (x, y),
            objective=ActivationDecay(lam=lam, layer="3"),
            optimizer=torch.optim.SGD(m.parameters(), lr=0.1),
            epochs=5,
            batch_size=32,
            generator=gen(1),
        )
        norms[lam] = mean_sq(m)
    assert norms[0.1] < norms[0.0]  # the penalty does shrink the penultimate activations


def test_huge_sigma_and_empty_features_get_clear_errors():
    model = two_layer(0, 3, 5, 4, 1.0)
    x, y = torch.randn(6, 3, dtype=torch.float64, generator=gen(0)), torch.arange(6) % 4
    with pytest.raises(ValueError, match="smaller sigma"):
        smoothed_loss(model, (x, y), sigma=1e300, n_samples=4, generator=gen(1))
    with pytest.raises(ValueError, match="empty batch"):
        last_layer_hessian_bound(torch.zeros(0, 5))
    with pytest.raises(ValueError, match="no examples"):
        smoothed_loss(model, (x[:0], y[:0]), sigma=0.1, n_samples=4)
