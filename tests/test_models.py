"""Tests of stabkit.models: shapes, guaranteed Lipschitz constants against Jacobian norms, export, baselines."""

import math

import pytest
import torch
from torch import nn

from stabkit.layers import export_plain
from stabkit.lipschitz import local_lipschitz_lower
from stabkit.models import LAYER_TYPES, SIZES, BasicBlock, LipschitzNet, NetSize, mlp, small_cnn, small_resnet

D = torch.float64
TOL = 1e-6
GUARANTEED = [t for t in LAYER_TYPES if t != "plain"]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def jacobian_norm_power(f, x: torch.Tensor, *, n_iter: int = 40, seed: int = 0) -> float:
    """‖J_f(x)‖₂ at a batch of one point, by the library's power iteration (a lower estimate; itself checked
    against the exact Jacobian in tests/test_lipschitz.py)."""
    return local_lipschitz_lower(f, x, n_iter=n_iter, generator=gen(seed)).max().item()


def train_a_little(net: LipschitzNet, g: torch.Generator, *, steps: int = 4) -> None:
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(steps):
        x = torch.rand(8, *net.input_shape, generator=g, dtype=D)
        y = torch.randint(0, net.num_classes, (8,), generator=g)
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


# ------------------------------------------------------------------------------------- unconstrained baselines
def last_name(net: nn.Sequential) -> str:
    return list(net.named_children())[-1][0]


def has_dropout(net: nn.Module) -> bool:
    return any(isinstance(m, nn.Dropout) for m in net.modules())


@pytest.mark.parametrize("in_shape", [(2,), (1, 8, 8), (3, 5, 7), 13, (2, 3, 4, 5)])
@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_mlp_shapes_and_names(in_shape, activation):
    torch.manual_seed(0)
    net = mlp(in_shape, 7, width=16, activation=activation)
    shape = (in_shape,) if isinstance(in_shape, int) else in_shape
    assert net(torch.randn(3, *shape)).shape == (3, 7)
    assert [n for n, _ in net.named_children()] == ["flatten", "fc1", "act1", "fc2", "act2", "classifier"]
    assert isinstance(net.act1, {"relu": nn.ReLU, "tanh": nn.Tanh}[activation])
    assert net.classifier.in_features == 16 and net.fc1.in_features == math.prod(shape)


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_mlp_depth(depth):
    net = mlp((1, 4, 4), 3, width=8, depth=depth)
    assert sum(isinstance(m, nn.Linear) for m in net.modules()) == depth + 1
    assert net.classifier.in_features == (8 if depth else 16)
    assert net(torch.zeros(2, 1, 4, 4)).shape == (2, 3)


@pytest.mark.parametrize(
    "build",
    [
        lambda p: mlp((1, 8, 8), 10, width=8, dropout=p),
        lambda p: small_cnn(1, 10, width=4, dropout=p),
        lambda p: small_resnet(3, 10, width=4, dropout=p),
    ],
    ids=["mlp", "small_cnn", "small_resnet"],
)
def test_dropout_only_when_asked_and_always_before_the_classifier(build):
    without, with_ = build(0.0), build(0.5)
    assert not has_dropout(without) and last_name(without) == "classifier"
    names = [n for n, _ in with_.named_children()]
    assert names[-2:] == ["dropout", "classifier"] and with_.dropout.p == 0.5
    # the Dropout module holds no parameters: both models have the same parameter names
    assert [n for n, _ in without.named_parameters()] == [n for n, _ in with_.named_parameters()]


@pytest.mark.parametrize("in_channels, size", [(1, 8), (3, 32), (2, 13)])
def test_small_cnn_shapes(in_channels, size):
    torch.manual_seed(0)
    net = small_cnn(in_channels, 5, width=4)
    assert net(torch.randn(2, in_channels, size, size)).shape == (2, 5)
    assert last_name(net) == "classifier" and net.classifier.in_features == 8 * 4


@pytest.mark.parametrize("in_channels, size", [(3, 32), (1, 8), (3, 9)])
def test_small_resnet_shapes(in_channels, size):
    torch.manual_seed(0)
    net = small_resnet(in_channels, 10, width=4).eval()
    assert net(torch.randn(2, in_channels, size, size)).shape == (2, 10)
    assert last_name(net) == "classifier" and net.classifier.in_features == 16
    assert [n for n, _ in net.named_children()][3:6] == ["stage0", "stage1", "stage2"]
    # stages 1 and 2 halve the resolution: 32 → 32, 16, 8
    x = net.relu(net.bn(net.stem(torch.randn(1, in_channels, size, size))))
    for i, c in enumerate((4, 8, 16)):
        x = getattr(net, f"stage{i}")(x)
        assert x.shape[1] == c and x.shape[-1] == math.ceil(size / 2**i)


def test_basic_block_shortcut():
    assert isinstance(BasicBlock(4, 4, 1).short, nn.Identity)
    assert isinstance(BasicBlock(4, 8, 1).short, nn.Sequential)
    assert BasicBlock(4, 8, 2).eval()(torch.randn(1, 4, 9, 9)).shape == (1, 8, 5, 5)
    # identity shortcut: with the residual branch zeroed, the block is relu(x)
    block = BasicBlock(3, 3).eval()
    nn.init.zeros_(block.bn2.weight)
    x = torch.randn(2, 3, 5, 5)
    assert torch.allclose(block(x), torch.relu(x))


def test_builders_initialise_like_the_torch_layers_they_replace():
    # the notebooks built these inline; the library must draw the same weights from the same global seed
    torch.manual_seed(3)
    ref = nn.Sequential(
        nn.Flatten(), nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 10)
    )  # fmt: skip
    torch.manual_seed(3)
    net = mlp((1, 8, 8), 10, width=16, activation="tanh")
    for a, b in zip(ref.parameters(), net.parameters(), strict=True):
        assert torch.equal(a, b)
    torch.manual_seed(4)
    ref = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(),
        nn.Conv2d(4, 8, 3, padding=1, stride=2), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, stride=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 10),
    )  # fmt: skip
    torch.manual_seed(4)
    net = small_cnn(1, 10, width=4)
    for a, b in zip(ref.parameters(), net.parameters(), strict=True):
        assert torch.equal(a, b)
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(ref(x), net(x))


def test_builders_follow_the_global_seed():
    for build in (lambda: mlp(5, 2, width=4), lambda: small_cnn(1, 2, width=2), lambda: small_resnet(1, 2, width=2)):
        torch.manual_seed(0)
        a = build()
        torch.manual_seed(0)
        b = build()
        for pa, pb in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
            assert torch.equal(pa, pb)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: mlp((1, 0, 8), 10, width=8), "in_shape"),
        (lambda: mlp((), 10, width=8), "in_shape"),
        (lambda: mlp(4, 10, width=0), "width"),
        (lambda: mlp(4, 0, width=8), "num_classes"),
        (lambda: mlp(4, 10, width=8, depth=-1), "depth"),
        (lambda: mlp(4, 10, width=8, activation="gelu"), "activation"),
        (lambda: mlp(4, 10, width=8, dropout=1.0), "dropout"),
        (lambda: small_cnn(1, 10, width=8, dropout=-0.1), "dropout"),
        (lambda: small_cnn(0, 10, width=8), "in_channels"),
        (lambda: small_resnet(3, 10, width=0), "width"),
    ],
)
def test_baseline_bad_inputs(call, match):
    with pytest.raises(ValueError, match=match):
        call()
