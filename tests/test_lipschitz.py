"""Tests of stabkit.lipschitz: per-layer bounds against explicit layer matrices, PUB ≥ local lower bound."""

import pytest
import torch
from torch import nn

from stabkit.lipschitz import METHODS, layer_bounds, local_lipschitz_lower


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def layer_matrix(layer, in_shape):
    """The explicit matrix of a (bias-free) linear layer on inputs of shape in_shape (ground truth)."""
    n = int(torch.tensor(in_shape).prod())
    eye = torch.eye(n, dtype=torch.float64).reshape(n, *in_shape)
    with torch.no_grad():
        out = layer(eye) - layer(torch.zeros(1, *in_shape, dtype=torch.float64))
    return out.reshape(n, -1).T


def small_cnn(seed=0):
    torch.manual_seed(seed)  # test-side only: the library never touches the global RNG
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 3, 5, padding=2, stride=2),
        nn.ReLU(),
        nn.Conv2d(3, 3, 3, padding=1, padding_mode="circular"),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3 * 4 * 4, 5),
    ).double()


@pytest.mark.parametrize("method", METHODS)
def test_layer_bounds_dominate_explicit_matrices(method):
    net = small_cnn()
    x = torch.zeros(1, 2, 8, 8, dtype=torch.float64)
    nb = layer_bounds(net, x, method=method, n_iter=6)
    assert [lb.kind for lb in nb.layers] == ["conv2d", "conv2d", "conv2d", "linear"]
    assert [lb.input_size for lb in nb.layers[:3]] == [(8, 8), (8, 8), (4, 4)]
    shapes = [(2, 8, 8), (4, 8, 8), (3, 4, 4), (48,)]
    layers = [net[0], net[2], net[4], net[7]]
    exact = [torch.linalg.matrix_norm(layer_matrix(m, s), 2) for m, s in zip(layers, shapes, strict=True)]
    for lb, e in zip(nb.layers, exact, strict=True):
        assert float(lb.bound.detach()) >= float(e) * (1 - 1e-9), lb.name
    assert float(nb.product.detach()) == pytest.approx(
        float(torch.stack([lb.bound.detach() for lb in nb.layers]).prod())
    )
    if method == "exact":  # circular layer with stride 1: exact
        assert float(nb.layers[2].bound.detach()) == pytest.approx(float(exact[2]), rel=1e-9)


def test_pub_dominates_local_lower_bound_and_jacobian():
    net = small_cnn(1)
    x = torch.randn(4, 2, 8, 8, dtype=torch.float64, generator=gen(1))
    lower = local_lipschitz_lower(net, x, n_iter=60, generator=gen(2))
    assert lower.shape == (4,)
    pub = layer_bounds(net, x, method="exact").product
    assert float(lower.max()) <= float(pub.detach())
    for b in range(2):  # against the explicit Jacobian
        J = torch.autograd.functional.jacobian(net, x[b : b + 1]).reshape(5, -1)
        ref = torch.linalg.matrix_norm(J, 2)
        assert float(lower[b]) <= float(ref) * (1 + 1e-10)
        assert float(lower[b]) == pytest.approx(float(ref), rel=1e-4)


def test_batchnorm_and_linear_model():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    net = net.double().eval()
    net[1].running_var.copy_(torch.tensor([0.25, 4.0], dtype=torch.float64))
    nb = layer_bounds(net, torch.zeros(2, 1, 6, 6, dtype=torch.float64))
    assert [lb.kind for lb in nb.layers] == ["conv2d", "batchnorm2d", "linear"]
    ref = float(net[1].weight.detach().abs().max()) / (0.25 + 1e-5) ** 0.5
    assert float(nb.layers[1].bound.detach()) == pytest.approx(ref)


def test_bounds_are_differentiable():
    net = small_cnn(4)
    nb = layer_bounds(net, torch.zeros(1, 2, 8, 8, dtype=torch.float64), method="gram")
    nb.product.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net[0].parameters() if p.ndim == 4)


def test_bad_input():
    with pytest.raises(ValueError, match="input size"):  # reflect padding: the multiplicity depends on the size
        layer_bounds(nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect"))
    with pytest.raises(ValueError, match="method"):
        layer_bounds(nn.Linear(2, 2), torch.zeros(1, 2), method="svd")
    lin = nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        layer_bounds(lin, torch.zeros(1, 2))
    with pytest.raises(ValueError, match="NaN"):
        local_lipschitz_lower(nn.Linear(2, 2), torch.tensor([[float("inf"), 0.0]]))
    with pytest.raises(ValueError, match="LayerNorm"):  # unknown modules are named, never skipped
        layer_bounds(nn.Sequential(nn.LayerNorm(2)), torch.zeros(1, 2))
