"""Losses against torch references and closed forms; the Gram-iteration penalty against exact norms."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stabkit import norms
from stabkit.losses import (
    PENALTY_METHODS,
    SLL_OFFSET,
    layer_spectral_bounds,
    lipschitz_penalty,
    multiclass_hinge,
    offset_cross_entropy,
)


def _draw(seed, b=32, k=10):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, k, generator=g, dtype=torch.float64) * 2, torch.randint(0, k, (b,), generator=g)


def test_multiclass_hinge_equals_torch_multi_margin_loss():
    for seed in range(10):
        logits, labels = _draw(seed, k=2 + seed)
        for margin in (0.7, 0.1, 2.0):
            ours = multiclass_hinge(logits, labels, margin=margin)
            torch.testing.assert_close(ours, F.multi_margin_loss(logits, labels, margin=margin))
    logits, labels = _draw(0)
    assert multiclass_hinge(logits, labels).item() == pytest.approx(
        F.multi_margin_loss(logits, labels, margin=0.7).item()
    )


def test_multiclass_hinge_is_zero_iff_every_margin_exceeds_the_margin():
    labels = torch.tensor([0, 1])
    logits = torch.tensor([[1.0, 0.3, 0.2], [0.0, 0.71, 0.0]], dtype=torch.float64)
    assert multiclass_hinge(logits, labels).item() == 0.0
    logits = torch.tensor([[1.0, 0.31, 0.2], [0.0, 0.71, 0.0]], dtype=torch.float64)
    # one violating pair: (0.7 − (1 − 0.31)) / 3 classes / 2 rows
    assert multiclass_hinge(logits, labels).item() == pytest.approx(0.01 / 3 / 2)


def test_offset_cross_entropy_closed_form():
    assert pytest.approx(2.1213203435596424) == SLL_OFFSET
    for seed in range(5):
        logits, labels = _draw(seed)
        # τ = 1, offset 0 is the plain cross-entropy
        torch.testing.assert_close(
            offset_cross_entropy(logits, labels, offset=0.0, temperature=1.0), F.cross_entropy(logits, labels)
        )
        # explicit formula τ · mean_b [logsumexp((z − o e_y)/τ) − (z_y − o)/τ]
        tau, off = 0.25, SLL_OFFSET
        shifted = logits.clone()
        shifted[torch.arange(len(labels)), labels] -= off
        expected = tau * (torch.logsumexp(shifted / tau, 1) - shifted.gather(1, labels[:, None]).squeeze(1) / tau)
        torch.testing.assert_close(offset_cross_entropy(logits, labels), expected.mean())


def test_offset_cross_entropy_tends_to_a_hinge_as_temperature_vanishes():
    # τ → 0: τ·CE → max(0, max_j (z_j − z_y + offset))  (the softmax becomes a max)
    logits, labels = _draw(7)
    z_y = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], -math.inf).max(1).values
    hinge = F.relu(others - z_y + SLL_OFFSET).mean()
    torch.testing.assert_close(offset_cross_entropy(logits, labels, temperature=1e-4), hinge, rtol=1e-3, atol=1e-3)


def _cnn(seed=0, channels=(1, 4, 6), num_classes=10):
    """conv 3×3 → ReLU → strided conv 3×3 → ReLU → linear, for 8×8 inputs, in float64."""
    c_in, c1, c2 = channels
    torch.manual_seed(seed)  # init of the test network only; the library never seeds
    return nn.Sequential(
        nn.Conv2d(c_in, c1, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(c1, c2, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(c2 * 4 * 4, num_classes),
    ).double()


def test_layer_bounds_are_upper_bounds_of_the_exact_operator_norms():
    model = _cnn()
    bounds = layer_spectral_bounds(model)
    assert list(bounds) == ["0", "2", "5"]
    # exact operator norms on the 8×8 input (explicit zero-padding matrices; stride 2 included)
    exact = {
        "0": torch.linalg.matrix_norm(norms.conv_matrix(model[0].weight.detach(), 8, padding="zero"), 2),
        "2": torch.linalg.matrix_norm(norms.conv_matrix(model[2].weight.detach(), 8, padding="zero", stride=2), 2),
        "5": torch.linalg.matrix_norm(model[5].weight.detach(), 2),
    }
    for name, value in bounds.items():
        assert value.item() >= exact[name].item() * (1 - 1e-12), name
        assert value.item() <= exact[name].item() * 3, name  # and not absurdly loose at T = 6
    # with the input size: circular DFT-block bound at n + k − 1 per conv, still above the zero-padding truth
    sized = layer_spectral_bounds(model, input_shape=(1, 8, 8))
    for name, value in sized.items():
        assert value.item() >= exact[name].item() * (1 - 1e-12), name
        assert value.item() <= bounds[name].item() * (1 + 1e-9), name  # at least as tight as the kernel bound
    # the circular layer on n×n is bounded at n itself (no padding growth)
    circ = nn.Conv2d(3, 5, 3, padding=1, padding_mode="circular").double()
    (b,) = layer_spectral_bounds(circ, input_shape=(3, 6, 6)).values()
    exact_circ = norms.conv_spectral_norm_exact(circ.weight.detach(), 6)
    assert exact_circ.item() * (1 - 1e-12) <= b.item() <= exact_circ.item() * 1.01


def test_lipschitz_penalty_matches_relu_of_bounds_and_its_gradient():
    model = _cnn()
    with torch.no_grad():
        model[5].weight.mul_(0.01)  # this layer is far below 1: no penalty, no gradient
    exact_bound = lambda m, n_iter: torch.linalg.matrix_norm(m.weight.flatten(1), 2)
    penalty = lipschitz_penalty(model, bound=exact_bound)
    expected = sum(F.relu(exact_bound(m, 0) - 1) for m in (model[0], model[2], model[5]))
    torch.testing.assert_close(penalty, expected)
    gi = lipschitz_penalty(model)  # default: Gram iteration, differentiable
    gi.backward()
    assert model[5].weight.grad is None or float(model[5].weight.grad.abs().max()) == 0.0
    assert float(model[0].weight.grad.abs().max()) > 0
    assert lipschitz_penalty(nn.Sequential(nn.ReLU())).item() == 0.0


def test_penalty_descent_brings_every_layer_bound_below_threshold():
    model = _cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(60):
        opt.zero_grad()
        lipschitz_penalty(model, n_iter=4, input_shape=(1, 8, 8)).backward()
        opt.step()
    bounds = layer_spectral_bounds(model, n_iter=4, input_shape=(1, 8, 8)).values()
    assert all(b.item() <= 1.0 + 1e-2 for b in bounds)


def test_loss_bad_input():
    logits, labels = _draw(0)
    with pytest.raises(ValueError, match="margin"):
        multiclass_hinge(logits, labels, margin=0.0)
    with pytest.raises(ValueError, match="labels"):
        multiclass_hinge(logits, labels[:3])
    with pytest.raises(ValueError, match="labels"):
        offset_cross_entropy(logits, labels.double())
    with pytest.raises(ValueError, match="temperature"):
        offset_cross_entropy(logits, labels, temperature=0.0)
    with pytest.raises(ValueError, match="NaN"):
        multiclass_hinge(torch.full_like(logits, math.nan), labels)
    with pytest.raises(ValueError, match="input size"):
        lipschitz_penalty(nn.Conv2d(4, 4, 3, padding=1, padding_mode="replicate"))
    with pytest.raises(ValueError, match="threshold"):
        lipschitz_penalty(nn.Linear(2, 2), threshold=-1.0)


# --- each bound method as the regulariser (Note [penalty methods]) ---------------------------------------------


def _strided_cnn(seed):
    return _cnn(seed, channels=(2, 4, 3), num_classes=5)


def _exact_norms(model, size=8):
    # explicit matrices of the zero-padded (strided) convolutions and SVDs: the ground truth
    out, n = {}, size
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            A = norms.conv_matrix(m.weight.detach(), n, padding="zero", pad=m.padding, stride=m.stride)
            out[name] = float(torch.linalg.matrix_norm(A, ord=2))
            n = (n + 2 * m.padding[0] - 3) // m.stride[0] + 1
        elif isinstance(m, nn.Linear):
            out[name] = float(torch.linalg.matrix_norm(m.weight.detach(), ord=2))
    return out


@pytest.mark.parametrize("seed", range(4))
def test_certified_methods_bound_and_estimates_stay_below_the_explicit_matrix_norms(seed):
    model = _strided_cnn(seed)
    exact = _exact_norms(model)
    for method in PENALTY_METHODS:
        bounds = layer_spectral_bounds(model, input_shape=(2, 8, 8), method=method)
        assert list(bounds) == list(exact)
        for name, b in bounds.items():
            if method == "power":  # a lower estimate, and close after many iterations
                assert float(b.detach()) <= exact[name] * (1 + 1e-9)
            elif method != "fantastic_four":  # certified upper bounds
                assert float(b.detach()) >= exact[name] * (1 - 1e-12), (method, name)
    many = layer_spectral_bounds(model, input_shape=(2, 8, 8), method="power", n_iter=500)
    for name, b in many.items():
        assert float(b.detach()) == pytest.approx(exact[name], rel=1e-3)


def test_fantastic_four_is_the_norms_function_with_the_same_generator():
    model = _strided_cnn(0)
    ours = layer_spectral_bounds(
        model, input_shape=(2, 8, 8), method="fantastic_four", generator=torch.Generator().manual_seed(3)
    )
    g = torch.Generator().manual_seed(3)
    ref = norms.conv_fantastic_four(model[0].weight, n_iter=6, generator=g)
    assert float(ours["0"].detach()) == float(ref.detach())


def test_every_penalty_method_is_differentiable_and_layers_conv_skips_dense_layers():
    model = _strided_cnn(1)
    for method in PENALTY_METHODS:
        model.zero_grad()
        penalty = lipschitz_penalty(model, input_shape=(2, 8, 8), method=method, threshold=0.01)
        penalty.backward()
        for p in (model[0].weight, model[2].weight, model[5].weight):
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, method
        convs = layer_spectral_bounds(model, input_shape=(2, 8, 8), method=method, layers="conv")
        assert list(convs) == ["0", "2"]
        expected = sum(F.relu(b - 0.01) for b in convs.values())
        got = lipschitz_penalty(model, input_shape=(2, 8, 8), method=method, threshold=0.01, layers="conv")
        if method not in ("power", "fantastic_four"):  # the estimates redraw their starts on every call
            torch.testing.assert_close(got, expected)


def test_penalty_methods_bad_input():
    model = _strided_cnn(0)
    with pytest.raises(ValueError, match="method"):
        lipschitz_penalty(model, input_shape=(2, 8, 8), method="svd")
    with pytest.raises(ValueError, match="layers"):
        lipschitz_penalty(model, input_shape=(2, 8, 8), layers="dense")
    dilated = nn.Sequential(nn.Conv2d(2, 2, 3, padding=2, dilation=2))
    with pytest.raises(ValueError, match="dilation"):
        lipschitz_penalty(dilated, input_shape=(2, 8, 8), method="power")
    with pytest.raises(ValueError, match="input size"):
        lipschitz_penalty(nn.Sequential(nn.Conv2d(2, 2, 3, padding=1)), method="power")
