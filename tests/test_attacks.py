"""ℓ2 PGD and the minimal-perturbation search against closed forms on linear models; the soundness audit on
honest and lying models (linear, and small networks trained on scikit-learn digits)."""

import pytest
import torch
from torch import nn

from stabkit.attacks import classification_margin, minimal_perturbation, pgd_l2
from stabkit.certify.margin import certify_model, margin_certificate, soundness_audit
from stabkit.data import load
from stabkit.losses import multiclass_hinge, offset_cross_entropy
from stabkit.models import LipschitzNet
from stabkit.train import fit, supervised


def _linear(W, b):
    lin = nn.Linear(W.shape[1], W.shape[0]).to(W.dtype)
    with torch.no_grad():
        lin.weight.copy_(W)
        lin.bias.copy_(b)
    return lin


def _random_linear(seed, k=5, d=10, n=64):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(k, d, generator=g, dtype=torch.float64)
    b = torch.randn(k, generator=g, dtype=torch.float64)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    return W, b, x


def _pairwise(W, b, x):
    """Per point: prediction, gaps z_y − z_j (B, K), row distances ‖w_y − w_j‖ (B, K); class y masked."""
    z = x @ W.T + b
    y = z.argmax(1)
    gap = z.gather(1, y[:, None]) - z
    dist = torch.linalg.vector_norm(W[y][:, None, :] - W[None], dim=-1)
    mask = torch.arange(W.shape[0])[None] == y[:, None]
    return y, gap.masked_fill(mask, torch.inf), dist.masked_fill(mask, 1.0)


def test_pgd_targeted_reaches_the_exact_worst_margin_of_a_linear_model():
    W, b, x = _random_linear(0)
    y, gap, dist = _pairwise(W, b, x)
    for eps in (0.1, 0.5, 2.0):
        res = pgd_l2(_linear(W, b), x, y, eps=eps, n_targets=4, n_iter=30)
        # min over the ball of min_j (z_y − z_j) is min_j (gap_j − ε ‖w_y − w_j‖): the linear worst case
        worst = (gap - eps * dist).min(1).values
        torch.testing.assert_close(res.margin, worst, rtol=1e-9, atol=1e-9)
        assert bool(((res.adversarial - x).norm(dim=1) <= eps * (1 + 1e-12)).all())
        torch.testing.assert_close(res.margin, classification_margin(_linear(W, b)(res.adversarial).detach(), y))
        assert torch.equal(res.success, res.margin < 0)


def test_pgd_breaks_exactly_beyond_the_exact_distance():
    W, b, x = _random_linear(1)
    y, gap, dist = _pairwise(W, b, x)
    exact = (gap / dist).min(1).values  # distance to the decision boundary
    model = _linear(W, b)
    assert not bool(pgd_l2(model, x, y, eps=exact * 0.999, n_targets=4).success.any())
    assert bool(pgd_l2(model, x, y, eps=exact * 1.001, n_targets=4).success.all())
    # the untargeted margin attack alone is weaker but still sound
    assert not bool(pgd_l2(model, x, y, eps=exact * 0.999).success.any())


def test_pgd_respects_per_sample_budget_box_and_leaves_model_untouched():
    g = torch.Generator().manual_seed(2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).train()
    x = torch.rand(40, 1, 4, 4, generator=g)
    y = torch.randint(0, 4, (40,), generator=g)
    eps = torch.rand(40, generator=g) * 2
    eps[:5] = 0
    res = pgd_l2(model, x, y, eps=eps, n_iter=10, n_restarts=3, clip=(0.0, 1.0), generator=g)
    norms = (res.adversarial - x).flatten(1).norm(dim=1)
    assert bool((norms <= eps * (1 + 1e-5) + 1e-7).all())
    assert torch.equal(res.adversarial[:5], x[:5])
    assert float(res.adversarial.min()) >= 0.0 and float(res.adversarial.max()) <= 1.0
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    # deterministic given the generator, and with the default (None) generator
    again = pgd_l2(model, x, y, eps=eps, n_iter=10, n_restarts=3, clip=(0.0, 1.0), generator=g.manual_seed(2))
    first = pgd_l2(model, x, y, eps=eps, n_iter=10, n_restarts=3, clip=(0.0, 1.0), generator=g.manual_seed(2))
    assert torch.equal(again.adversarial, first.adversarial)
    a = pgd_l2(model, x, y, eps=1.0, n_iter=5, n_restarts=2)
    b = pgd_l2(model, x, y, eps=1.0, n_iter=5, n_restarts=2)
    assert torch.equal(a.adversarial, b.adversarial)


def test_pgd_cross_entropy_objective_breaks_a_linear_model():
    W, b, x = _random_linear(3)
    y, gap, dist = _pairwise(W, b, x)
    exact = (gap / dist).min(1).values
    res = pgd_l2(_linear(W, b), x, y, eps=exact * 3 + 1, objective="ce", n_iter=50)
    assert res.success.float().mean().item() > 0.9


def test_minimal_perturbation_matches_the_exact_distance():
    W, b, x = _random_linear(4, n=16)
    y, gap, dist = _pairwise(W, b, x)
    exact = (gap / dist).min(1).values
    model = _linear(W, b)
    res = minimal_perturbation(model, x, y, eps_max=float(exact.max()) * 2, n_bisect=10, n_targets=4, n_iter=10)
    assert bool((res.radius >= exact * (1 - 1e-9)).all())  # an explicit adversarial is never closer than exact
    torch.testing.assert_close(res.radius, exact, rtol=3e-3, atol=0)
    assert bool((classification_margin(model(res.adversarial).detach(), y) < 0).all())
    # misclassified inputs get radius 0; unreachable ones inf
    wrong = (y + 1) % W.shape[0]
    assert bool((minimal_perturbation(model, x[:4], wrong[:4], eps_max=1.0).radius == 0).all())
    small = minimal_perturbation(model, x, y, eps_max=float(exact.min()) * 0.5, n_targets=4, n_iter=10)
    assert bool(torch.isinf(small.radius).all())
    assert torch.equal(small.adversarial, x)


def test_attack_bad_input():
    model = nn.Linear(3, 2)
    x, y = torch.zeros(4, 3), torch.zeros(4, dtype=torch.int64)
    with pytest.raises(ValueError, match="eps"):
        pgd_l2(model, x, y, eps=-1.0)
    with pytest.raises(ValueError, match="eps"):
        pgd_l2(model, x, y, eps=torch.ones(3))
    with pytest.raises(ValueError, match="labels"):
        pgd_l2(model, x, y.float(), eps=1.0)
    with pytest.raises(ValueError, match="n_targets"):
        pgd_l2(model, x, y, eps=1.0, n_targets=2)
    with pytest.raises(ValueError, match="objective"):
        pgd_l2(model, x, y, eps=1.0, objective="hinge")
    with pytest.raises(ValueError, match="clip"):
        pgd_l2(model, x, y, eps=1.0, clip=(1.0, 0.0))
    with pytest.raises(ValueError, match="NaN"):
        pgd_l2(model, torch.full((4, 3), float("nan")), y, eps=1.0)
    with pytest.raises(ValueError, match="eps_max"):
        minimal_perturbation(model, x, y, eps_max=0.0)
    with pytest.raises(ValueError, match="rtol"):
        soundness_audit(model, x, lipschitz=1.0, rtol=1.0)


# --- soundness audit ---------------------------------------------------------------------------------------


def test_audit_linear_honest_tight_and_lying():
    W, b, x = _random_linear(5, n=100)
    model = _linear(W, b)
    lip = float(torch.linalg.matrix_norm(W, 2))
    honest = soundness_audit(model, x, lipschitz=lip, n_targets=4)
    assert honest.n_certified == 100 and honest.n_violations == 0
    # an orthogonal map makes the margin certificate exactly tight: still no violation (budget shrunk by rtol)
    Q, _ = torch.linalg.qr(torch.randn(10, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    tight = soundness_audit(_linear(Q[:5], b), x, lipschitz=1.0, n_targets=4)
    assert tight.n_violations == 0
    assert float(tight.attack_margin.min()) < 1e-2 * float(
        margin_certificate(x @ Q[:5].T + b, lipschitz=1.0).radius.min()
    )
    lying = soundness_audit(model, x, lipschitz=lip / 1.3, n_targets=4)
    assert lying.n_violations > 0
    _check_violations_are_real(model, x, lying)


def _check_violations_are_real(model, x, audit):
    """Every reported violation is an explicit input inside the certified ball with another prediction."""
    i = audit.violations
    with torch.no_grad():
        pred = model(x[i]).argmax(1)
        adv_pred = model(audit.adversarial[i]).argmax(1)
    assert bool((adv_pred != pred).all())
    assert bool(((audit.adversarial[i] - x[i]).flatten(1).norm(dim=1) <= audit.radius[i]).all())


def _digits(n_train=1000):
    data = load("digits", generator=torch.Generator().manual_seed(0))
    return data.x_train[:n_train], data.y_train[:n_train], data.x_test, data.y_test


def _train(model, X, y, *, epochs, lr=3e-3, seed=0, loss=None):
    loss = loss or (lambda z, t: multiclass_hinge(z, t, margin=1.0))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    fit(
        model,
        (X, y),
        objective=supervised(loss),
        optimizer=opt,
        epochs=epochs,
        batch_size=64,
        generator=torch.Generator().manual_seed(seed),
    )
    return model.eval()


def test_audit_trained_mlp_with_its_exact_product_bound_is_clean():
    Xtr, ytr, Xte, yte = _digits()
    torch.manual_seed(0)  # init of the test model only; the library never seeds
    model = _train(nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)), Xtr, ytr, epochs=4)
    lip = 1.0
    for m in model:
        if isinstance(m, nn.Linear):
            lip *= float(torch.linalg.matrix_norm(m.weight.detach(), 2))  # exact per layer: a true upper bound
    x = Xte[:150]
    audit = soundness_audit(model, x, lipschitz=lip, n_iter=20, n_targets=3)
    assert audit.n_certified > 100
    assert audit.n_violations == 0


def test_audit_catches_torch_spectral_norm_conv_claimed_one_lipschitz():
    # torch's spectral_norm normalises the reshaped (c_out, c_in·k·k) kernel matrix, not the convolution
    # operator, whose norm can be up to k times larger: the network is not 1-Lipschitz; the audit must see it
    from torch.nn.utils.parametrizations import spectral_norm

    Xtr, ytr, Xte, yte = _digits()
    torch.manual_seed(0)
    model = nn.Sequential(
        spectral_norm(nn.Conv2d(1, 8, 3, padding=1)),
        nn.ReLU(),
        spectral_norm(nn.Conv2d(8, 8, 3, padding=1)),
        nn.ReLU(),
        nn.Flatten(),
        spectral_norm(nn.Linear(8 * 64, 10)),
    )
    model = _train(model, Xtr, ytr, epochs=3)
    x = Xte[:100]
    cert = certify_model(model, x, lipschitz=1.0)
    assert int((cert.radius > 0).sum()) > 50
    audit = soundness_audit(model, x, certificate=cert, n_iter=20, n_targets=3)
    assert audit.n_violations > 0
    _check_violations_are_real(model, x, audit)


@pytest.mark.parametrize("layer", ["sll", "cpl", "aol", "sr"])
def test_audit_trained_lipschitz_nets_have_no_violation(layer):
    Xtr, ytr, Xte, yte = _digits(600)
    model = LipschitzNet((1, 8, 8), 10, layer=layer, size="tiny", pool=2)
    loss = offset_cross_entropy if layer in ("sll", "aol") else (lambda z, t: multiclass_hinge(z, t, margin=0.7))
    model = _train(model, Xtr, ytr, epochs=3, lr=5e-3, loss=loss)
    x = Xte[:120]
    cert = certify_model(model, x)  # LLN certificate with the body's guaranteed constant
    assert int((cert.radius > 0).sum()) > 60
    assert float(cert.radius.max()) > 0.05  # non-trivial balls, so the audit tests something
    audit = soundness_audit(model, x, certificate=cert, n_iter=20, n_targets=3)
    assert audit.n_violations == 0, f"{layer}: {audit.n_violations} points broken inside their certified ball"
