"""Regression tests of the layer defects of the reliability report (D1, D4, D6, D10, D13–D16), one per defect."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from torch import nn

from stabkit.layers import AOLConv2d, AOLLinear, CPLConv2d, CPLLinear, SLLConv2d, SLLLinear, SRConv2d, SRLinear


def jac_norm(m: nn.Module, x: torch.Tensor) -> float:
    J = torch.autograd.functional.jacobian(lambda z: m(z.view_as(x)).reshape(-1), x.reshape(-1))
    return torch.linalg.matrix_norm(J.double(), 2).item()


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------------------ D1
def _fused_adam(m):
    opt = torch.optim.Adam(m.parameters(), lr=1.0, fused=True)
    for _ in range(3):
        m.train()
        loss = -m(torch.randn(16, 8, generator=gen(3))).pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()


def _data_mul(m):
    m.weight.data.mul_(5)


def _data_assign(m):
    m.weight.data = m.weight.data * 7


def _vector_to_parameters(m):
    v = torch.nn.utils.parameters_to_vector(m.parameters())
    torch.nn.utils.vector_to_parameters(v * 9, m.parameters())


def _load_assign(m):
    sd = {k: v * 6 if k == "weight" else v for k, v in m.state_dict().items()}
    m.load_state_dict(sd, assign=True)


def _load_copy(m):
    m.load_state_dict({k: v * 6 if k == "weight" else v for k, v in m.state_dict().items()})


def _ema(m):
    with torch.no_grad():  # hand-written EMA towards a large target
        m.weight.data.lerp_(torch.randn(m.weight.shape, generator=gen(4)) * 20, 0.9)


def _dtype_round_trip(m):
    m.double()
    with torch.no_grad():
        m.weight.data.mul_(8)
    m.float()


CHANGES = [
    _fused_adam,
    _data_mul,
    _data_assign,
    _vector_to_parameters,
    _load_assign,
    _load_copy,
    _ema,
    _dtype_round_trip,
]


@pytest.mark.parametrize("change", CHANGES, ids=lambda f: f.__name__.strip("_"))
def test_cpl_eval_bound_follows_the_weights_under_every_change(change):
    x = torch.randn(1, 8, generator=gen(1)) * 3 + 1
    m = CPLLinear(8, 8, generator=gen(0)).eval()
    m(x)  # fills the cache
    change(m)
    m.eval()
    assert jac_norm(m, x) <= 1 + 1e-5
    ref = copy.deepcopy(m)
    ref.__dict__.pop("_bound_cache", None)
    assert torch.equal(m.norm_bound(), ref.norm_bound())


def test_cpl_conv_eval_bound_follows_a_data_write():
    x = torch.randn(1, 2, 6, 6, generator=gen(1))
    m = CPLConv2d(2, generator=gen(0)).eval()
    m(x)
    m.weight.data.mul_(30)
    assert jac_norm(m, x) <= 1 + 1e-5


def test_cpl_eval_bound_follows_averaged_model():
    m = CPLLinear(8, 8, generator=gen(0)).eval()
    avg = torch.optim.swa_utils.AveragedModel(m)
    x = torch.randn(1, 8, generator=gen(1))
    avg.eval()(x)
    with torch.no_grad():
        m.weight.mul_(40)
    avg.update_parameters(m)
    assert jac_norm(avg.module.eval(), x) <= 1 + 1e-5


# ------------------------------------------------------------------------------------------------------ D16
def test_cpl_network_pickles_after_an_eval_forward():
    from stabkit.models import LipschitzNet

    net = LipschitzNet((4,), 3, layer="cpl", size="tiny").eval()
    x = torch.randn(2, 4, generator=gen(0))
    y = net(x)
    buf = io.BytesIO()
    torch.save(net, buf)
    buf.seek(0)
    back = torch.load(buf, weights_only=False)
    assert torch.allclose(back(x), y)
    assert torch.allclose(pickle.loads(pickle.dumps(net))(x), y)


# ------------------------------------------------------------------------------------------------------ D4
ZERO_LAYERS = [
    lambda: SRConv2d(2, 2, 3),
    lambda: SRConv2d(2, 2, 3, n_iter=4),
    lambda: SRLinear(4, 4),
    lambda: SRLinear(4, 4, n_iter=5),
    lambda: AOLLinear(4, 4),
    lambda: AOLConv2d(2, 2),
    lambda: SLLLinear(4, n_iter=2),
    lambda: SLLLinear(4, n_iter=4),
    lambda: SLLConv2d(2, n_iter=2),
    lambda: CPLLinear(4, eps=0.0),
    lambda: CPLConv2d(2, eps=0.0),
]


@pytest.mark.parametrize("make", ZERO_LAYERS, ids=range(len(ZERO_LAYERS)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("training", [True, False])
def test_zero_weights_give_finite_outputs_and_gradients(make, dtype, training):
    m = make().to(dtype).train(training)
    nn.init.zeros_(m.weight)
    conv = m.weight.ndim == 4
    x = torch.randn((3, 2, 5, 5) if conv else (3, 4), generator=gen(0), dtype=dtype)
    y = m(x)
    assert torch.isfinite(y).all()
    y.pow(2).sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), name


# ------------------------------------------------------------------------------------------------------ D10
SCALED = [
    lambda: SRLinear(6, 6),
    lambda: SRLinear(6, 5, n_iter=5),
    lambda: AOLLinear(6, 6),
    lambda: SRConv2d(2, 3, 3),
    lambda: AOLConv2d(2, 2),
    lambda: SLLLinear(6, n_iter=1),
    lambda: SLLLinear(6, n_iter=3),
    lambda: SLLConv2d(2, n_iter=2),
]


@pytest.mark.parametrize("make", SCALED, ids=range(len(SCALED)))
@pytest.mark.parametrize("scale", [1e-30, 1e-25, 1e-20, 1e-10, 1e10, 1e19, 1e20, 1e30])
def test_rescaled_layers_are_scale_free_in_float32(make, scale):
    m = make().eval()
    conv = m.weight.ndim == 4
    x = torch.randn((2, m.weight.shape[1], 5, 5) if conv else (2, m.weight.shape[1]), generator=gen(1))
    if hasattr(m, "effective_weight"):  # SR/AOL: the map W diag(d) does not depend on the scale at all
        ref = m.effective_weight().detach().clone()
        with torch.no_grad():
            m.weight.mul_(scale)
        assert torch.allclose(m.effective_weight(), ref, rtol=1e-4, atol=1e-6)
    else:  # SLL: A ↦ x − 2AᵀT⁻¹relu(Ax + b) at a scaled A stays finite and 1-Lipschitz
        with torch.no_grad():
            m.weight.mul_(scale)
        assert torch.isfinite(m(x)).all()
        assert jac_norm(m, x[:1]) <= 1 + 1e-5


@pytest.mark.parametrize("log_q", [200.0, -200.0, 500.0])
def test_sll_is_finite_for_extreme_log_q(log_q):
    m = SLLLinear(6, n_iter=2).eval()
    with torch.no_grad():
        m.log_q.copy_(torch.linspace(-1, 1, 6) * log_q)
    x = torch.randn(1, 6, generator=gen(0))
    assert torch.isfinite(m(x)).all()
    assert jac_norm(m, x) <= 1 + 1e-5


# ------------------------------------------------------------------------------------------------------ D6
@pytest.mark.parametrize(("k", "n_eval"), [(5, 10), (5, 12), (7, 14), (7, 18), (3, 6)])
def test_cpl_rejects_at_construction_an_n_eval_its_eval_bound_rejects(k, n_eval):
    with pytest.raises(ValueError, match="n_eval"):
        CPLConv2d(2, kernel_size=k, n_eval=n_eval)


@pytest.mark.parametrize(("k", "n_eval"), [(5, 13), (7, 19), (3, 7)])
def test_cpl_accepts_every_n_eval_its_eval_bound_accepts(k, n_eval):
    m = CPLConv2d(2, kernel_size=k, n_eval=n_eval).eval()
    assert torch.isfinite(m(torch.randn(1, 2, 8, 8, generator=gen(0)))).all()


# ------------------------------------------------------------------------------------------------------ D13
@pytest.mark.parametrize("layer", ["plain", "sll", "cpl", "aol", "sr"])
def test_lipschitz_net_leaves_the_global_rng_alone(layer):
    from stabkit.models import LipschitzNet

    state = torch.random.get_rng_state().clone()
    LipschitzNet((1, 8, 8), 3, layer=layer, size="tiny")
    assert torch.equal(state, torch.random.get_rng_state())


# ------------------------------------------------------------------------------------------------------ D14
def test_lipschitz_net_validation_gaps():
    from stabkit.models import LipschitzNet

    with pytest.raises(ValueError, match="n_iter"):
        LipschitzNet((4,), 3, layer="sr", n_iter=0, size="tiny")
    with pytest.raises(ValueError, match="num_classes"):
        LipschitzNet((4,), 1, size="tiny")
    with pytest.raises(ValueError, match="mean"):
        LipschitzNet((4,), 3, size="tiny", mean=float("nan"))
    with pytest.raises(ValueError, match="std"):
        LipschitzNet((4,), 3, size="tiny", std=float("inf"))
    assert LipschitzNet((4,), 3, layer="sr", n_iter=4, size="tiny").body[1][0].n_iter == 4


# ------------------------------------------------------------------------------------------------------ D15
@pytest.mark.parametrize(
    "make",
    [
        lambda: SRConv2d(2, 2, kernel_size=3.0),
        lambda: SLLConv2d(2, kernel_size=3.0),
        lambda: CPLConv2d(2, kernel_size=(3.0, 3)),
        lambda: AOLConv2d(2, 2, kernel_size=True),
    ],
)
def test_float_kernel_size_is_a_clear_error(make):
    with pytest.raises(ValueError, match="kernel_size"):
        make()


@pytest.mark.parametrize("padding", [-1, (1, -1), 1.5, (1, 2, 3)])
def test_bad_padding_is_refused_at_construction(padding):
    with pytest.raises(ValueError, match="padding"):
        SRConv2d(2, 2, 3, padding=padding)


def test_plain_lipschitz_net_has_a_certified_bound():
    from stabkit.lipschitz import local_lipschitz_lower
    from stabkit.models import LipschitzNet

    net = LipschitzNet((1, 8, 8), 3, layer="plain", size="tiny", generator=gen(0)).eval()
    x = torch.randn(4, 1, 8, 8, generator=gen(1))
    assert float(local_lipschitz_lower(net, x, n_iter=30).max()) <= net.lipschitz_bound()
