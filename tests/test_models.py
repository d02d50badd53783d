"""Tests of stabkit.models: shapes, guaranteed Lipschitz constants against Jacobian norms, export."""

import math

import pytest
import torch

from stabkit.layers import export_plain
from stabkit.models import LAYER_TYPES, SIZES, LipschitzNet, NetSize

D = torch.float64
TOL = 1e-6
GUARANTEED = [t for t in LAYER_TYPES if t != "plain"]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def jacobian_norm_power(f, x: torch.Tensor, *, n_iter: int = 40, seed: int = 0) -> float:
    """‖J_f(x)‖₂ by power iteration on JᵀJ (vjp + double-backward jvp); a lower estimate that converges."""
    v = torch.randn(x.shape, generator=gen(seed), dtype=x.dtype)
    _, vjp_fn = torch.func.vjp(f, x)
    s = 0.0
    for _ in range(n_iter):
        v = v / v.norm()
        _, jv = torch.autograd.functional.jvp(f, x, v)
        s = float(jv.norm())
        (v,) = vjp_fn(jv)
    return s


def train_a_little(net: LipschitzNet, g: torch.Generator, *, steps: int = 4) -> None:
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(steps):
        x = torch.rand(8, *net.input_shape, generator=g, dtype=D)
        y = torch.randint(0, net.n_classes, (8,), generator=g)
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()


@pytest.mark.parametrize("layer", GUARANTEED)
@pytest.mark.parametrize("input_shape", [(1, 8, 8), (3, 9, 12), (2,)])
def test_model_respects_its_lipschitz_constant(layer, input_shape):
    g = gen(1)
    net = LipschitzNet(input_shape, 5, layer=layer, size="tiny", mean=0.3, std=0.5, dtype=D, generator=g)
    for trained in (False, True):
        if trained:
            train_a_little(net, g)
        net.eval()
        lip_body, lip = net.lipschitz_constant(head=False), net.lipschitz_constant()
        assert lip_body == pytest.approx(2.0)
        assert lip >= lip_body  # ‖Ŵ‖₂ ≥ max row norm = 1
        for _ in range(1):
            x = torch.rand(1, *input_shape, generator=g, dtype=D)
            s_body = jacobian_norm_power(net.features, x, n_iter=15)
            s = jacobian_norm_power(net, x, n_iter=15)
            assert s_body <= lip_body * (1 + TOL), (layer, trained, s_body)
            assert s <= lip * (1 + TOL), (layer, trained, s)
            # the exact Jacobian (small model) agrees with the power iteration and the guarantee
            j = torch.func.jacrev(lambda z: net.features(z[None])[0])(x[0]).reshape(-1, x.numel())
            exact = torch.linalg.matrix_norm(j, ord=2).item()
            assert s_body <= exact * (1 + 1e-9) and exact <= lip_body * (1 + TOL)


def test_xs_model_with_published_input_shape():
    g = gen(2)
    for layer in GUARANTEED:
        net = LipschitzNet((3, 32, 32), 10, layer=layer, size="xs", generator=g).eval()
        x = torch.rand(2, 3, 32, 32, generator=g)
        assert net(x).shape == (2, 10)
        assert net.features(x).shape == (2, 16 * 8 * 8)
        if layer == "sll":
            s = jacobian_norm_power(net.features, x[:1], n_iter=8)
            assert s <= 1 + 1e-4  # float32 model


def test_plain_model_has_no_guarantee_and_is_not_1_lipschitz():
    g = gen(3)
    net = LipschitzNet((2,), 3, layer="plain", size="tiny", dtype=D, generator=g).eval()
    assert net.lipschitz_constant() == math.inf
    x = torch.rand(1, 2, generator=g, dtype=D)
    assert jacobian_norm_power(net.features, x) > 1.0


@pytest.mark.parametrize("layer", LAYER_TYPES)
def test_export_equals_model(layer):
    g = gen(4)
    net = LipschitzNet((1, 8, 8), 4, layer=layer, size="tiny", dtype=D, generator=g)
    train_a_little(net, g, steps=2)
    plain = export_plain(net)
    x = torch.rand(3, 1, 8, 8, generator=g, dtype=D)
    torch.testing.assert_close(plain(x), net(x), rtol=1e-10, atol=1e-12)
    # the exported model holds only torch layers with parameters
    for m in plain.modules():
        if any(True for _ in m.parameters(recurse=False)):
            assert type(m) in (torch.nn.Linear, torch.nn.Conv2d), type(m)


def test_published_sizes():
    assert SIZES["s"] == NetSize(20, 7, 45, 2048)
    assert SIZES["m"] == NetSize(30, 10, 60, 2048)
    assert SIZES["l"] == NetSize(50, 10, 90, 2048)
    assert SIZES["xl"] == NetSize(70, 15, 120, 2048)
    # a 4×4 input keeps the dense part small (45 features after pooling); the layer counts are the published
    net = LipschitzNet((3, 4, 4), 10, layer="sll", size="S")
    n_conv = sum(1 for m in net.modules() if type(m).__name__ == "SLLConv2d")
    n_dense = sum(1 for m in net.modules() if type(m).__name__ == "SLLLinear")
    assert (n_conv, n_dense) == (20, 7)
    assert net.head.in_features == 45


def test_deterministic_and_global_rng_untouched():
    state = torch.get_rng_state()
    a = LipschitzNet((1, 8, 8), 3, layer="cpl", size="tiny", generator=gen(5))
    b = LipschitzNet((1, 8, 8), 3, layer="cpl", size="tiny", generator=gen(5))
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb)
    # two layers of one model get different weights (one stream through the whole model)
    p = LipschitzNet((4,), 3, layer="aol", size=NetSize(0, 2, 4, 8), generator=gen(5))
    assert not torch.equal(p.body[1][0].weight, p.body[2][0].weight)
    assert torch.equal(state, torch.get_rng_state())


def test_bad_inputs():
    with pytest.raises(ValueError, match="layer"):
        LipschitzNet((1, 8, 8), 3, layer="nope")
    with pytest.raises(ValueError, match="size"):
        LipschitzNet((1, 8, 8), 3, size="huge")
    with pytest.raises(ValueError, match="input_shape"):
        LipschitzNet((1, 8), 3)
    with pytest.raises(ValueError, match="pooling"):
        LipschitzNet((1, 3, 3), 3)
    with pytest.raises(ValueError, match="width"):
        LipschitzNet((20, 8, 8), 3, size="tiny")
    with pytest.raises(ValueError, match="std"):
        LipschitzNet((2,), 3, std=(1.0, 0.0))
    with pytest.raises(ValueError, match="one value per input channel"):
        LipschitzNet((3, 8, 8), 3, mean=(0.1, 0.2))
