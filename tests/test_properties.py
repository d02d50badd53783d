"""Property tests (Hypothesis) of every layer guarantee and of the network-bound engine.

Each property draws shapes, dtypes, scales (float32 weights over 1e-30 … 1e30) and adversarial weight families and
checks the certified claim against an independent reference: the explicit Jacobian of the layer or network. Runs
are derandomized (the same examples in CI every time) and keep no example database.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from stabkit.layers import (
    AOLConv2d,
    CPLConv2d,
    CPLLinear,
    LinearNormalized,
    SLLConv2d,
    SLLLinear,
    SRConv2d,
    SRLinear,
    spectral_rescale,
)
from stabkit.lipschitz import layer_bounds

PROPS = settings(
    max_examples=25, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)
FAMILIES = ("gauss", "rank1", "onehot", "equal", "sparse", "tiny_rows", "zero")


def family_tensor(shape: tuple[int, ...], family: str, seed: int, dtype: torch.dtype) -> torch.Tensor:
    """An adversarial weight of ``shape``: Gaussian, rank one, one-hot, all equal, sparse, one huge row, zero."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g, dtype=torch.float64)
    if family == "rank1":
        u = torch.randn(shape[0], generator=g, dtype=torch.float64)
        w = u.reshape(-1, *([1] * (len(shape) - 1))) * w[:1]
    elif family == "onehot":
        w = torch.zeros(shape, dtype=torch.float64)
        w.view(-1)[int(torch.randint(w.numel(), (1,), generator=g))] = 1.0
    elif family == "equal":
        w = torch.ones(shape, dtype=torch.float64)
    elif family == "sparse":
        w = w * (torch.rand(shape, generator=g, dtype=torch.float64) < 0.2)
    elif family == "tiny_rows":  # rows of very different sizes (nearly dead units)
        w = w * torch.logspace(-6, 3, shape[0], dtype=torch.float64).reshape(-1, *([1] * (len(shape) - 1)))
    elif family == "zero":
        w = torch.zeros(shape, dtype=torch.float64)
    return w.to(dtype)


def jac_norm(f, x: torch.Tensor) -> float:
    J = torch.autograd.functional.jacobian(lambda z: f(z.view_as(x)).reshape(-1), x.reshape(-1))
    return torch.linalg.matrix_norm(J.double(), 2).item()


def tolerance(dtype: torch.dtype) -> float:
    return 1e-5 if dtype == torch.float32 else 1e-9


COUNTS: dict[str, int] = {}


def count(name: str) -> None:
    COUNTS[name] = COUNTS.get(name, 0) + 1


def build_layer(kind: str, c: int, inner: int, n_iter: int, k: int, dtype: torch.dtype) -> tuple[nn.Module, tuple]:
    kw = {"dtype": dtype, "generator": torch.Generator().manual_seed(0)}
    if kind == "sr":
        return SRLinear(c, inner, n_iter=n_iter, **kw), (c,)
    if kind == "sll":
        return SLLLinear(c, inner, n_iter=n_iter, **kw), (c,)
    if kind == "cpl":
        return CPLLinear(c, inner, **kw), (c,)
    if kind == "srconv":
        return SRConv2d(c, inner, k, n_iter=min(n_iter, 2), **kw), (c, 5, 5)
    if kind == "srconv_s2":
        return SRConv2d(c, inner, k, stride=2, **kw), (c, 5, 5)
    if kind == "aolconv":
        return AOLConv2d(c, inner, k, **kw), (c, 5, 5)
    if kind == "sllconv":
        return SLLConv2d(c, inner, k, n_iter=min(n_iter, 2), **kw), (c, 5, 5)
    if kind == "cplconv":
        return CPLConv2d(c, inner, k, **kw), (c, 5, 5)
    if kind == "param_linear":
        return spectral_rescale(nn.Linear(c, inner, dtype=dtype), n_iter=n_iter), (c,)
    if kind == "param_conv":
        return spectral_rescale(nn.Conv2d(c, inner, k, padding=k // 2, dtype=dtype), n_iter=min(n_iter, 2)), (c, 5, 5)
    raise AssertionError(kind)


KINDS = ("sr", "sll", "cpl", "srconv", "srconv_s2", "aolconv", "sllconv", "cplconv", "param_linear", "param_conv")


@settings(PROPS, max_examples=60)
@given(
    kind=st.sampled_from(KINDS),
    c=st.integers(1, 4),
    inner=st.integers(1, 5),
    n_iter=st.integers(1, 4),
    k=st.sampled_from([1, 3]),
    family=st.sampled_from(FAMILIES),
    log_scale=st.integers(-30, 30),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**16),
)
def test_every_layer_is_1_lipschitz_and_finite(kind, c, inner, n_iter, k, family, log_scale, dtype, seed):
    layer, shape = build_layer(kind, c, inner, n_iter, k, dtype)
    target = layer.parametrizations.weight.original if hasattr(layer, "parametrizations") else layer.weight
    with torch.no_grad():  # weight and bias scaled together: the layers are functions of (W, b) up to scale
        target.copy_(family_tensor(tuple(target.shape), family, seed, torch.float64).to(dtype) * 10.0**log_scale)
        if layer.bias is not None:
            layer.bias.mul_(10.0**log_scale)
    layer.eval()
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(1, *shape, generator=g, dtype=dtype)
    y = torch.randn(1, *shape, generator=g, dtype=dtype)
    out = layer(torch.cat([x, y])).detach()
    assert torch.isfinite(out).all(), (kind, family, log_scale)
    assert jac_norm(layer, x) <= 1 + tolerance(dtype), (kind, family, log_scale)
    # ‖f(x) − f(y)‖ ≤ ‖x − y‖, up to the rounding of the outputs themselves (a large bias is rounded at eps·|f|)
    diff = float(torch.linalg.vector_norm((out[0] - out[1]).double()))
    dist = float(torch.linalg.vector_norm((x - y).double()))
    rounding = 4 * torch.finfo(dtype).eps * float(out.double().abs().sum())
    assert diff <= dist * (1 + tolerance(dtype)) + rounding, (kind, family, log_scale, diff, dist)
    # the zero weight and every family also train: finite gradients
    layer.train()
    layer(x).pow(2).sum().backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in layer.parameters())
    count("layers")


@PROPS
@given(
    n_in=st.integers(1, 6),
    n_out=st.integers(2, 6),
    family=st.sampled_from(FAMILIES[:-1]),
    log_scale=st.integers(-20, 20),
    seed=st.integers(0, 2**16),
)
def test_lln_constant_is_an_upper_bound(n_in, n_out, family, log_scale, seed):
    lln = LinearNormalized(n_in, n_out, dtype=torch.float32)
    with torch.no_grad():
        lln.weight.copy_(family_tensor((n_out, n_in), family, seed, torch.float32) * 10.0**log_scale)
    x = torch.randn(1, n_in, generator=torch.Generator().manual_seed(seed))
    assert jac_norm(lln, x) <= lln.lipschitz_bound() * (1 + 1e-5)
    count("lln")


def conv_module(draw, c_in: int) -> tuple[nn.Module, int]:
    kind = draw(st.sampled_from(["conv", "conv", "convT", "conv1d"]))
    k = draw(st.integers(1, 4))
    stride = draw(st.integers(1, 2))
    dilation = draw(st.integers(1, 2))
    groups = draw(st.sampled_from([1, c_in])) if c_in > 1 else 1
    c_out = groups * draw(st.integers(1, 2))
    if kind == "convT":
        return nn.ConvTranspose2d(
            c_in, c_out, k, stride=stride, padding=draw(st.integers(0, k - 1)), groups=groups, dilation=dilation
        ), c_out
    mode = draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"]))
    padding = draw(st.integers(0, 2))
    cls = nn.Conv1d if kind == "conv1d" else nn.Conv2d
    return cls(
        c_in, c_out, k, stride=stride, padding=padding, padding_mode=mode, dilation=dilation, groups=groups
    ), c_out


@settings(PROPS, max_examples=40)
@given(data=st.data(), method=st.sampled_from(["gram", "exact", "kernel_gram", "grid"]), seed=st.integers(0, 2**16))
def test_network_bound_dominates_the_exact_jacobian_norm(data, method, seed):
    c0 = data.draw(st.integers(1, 3))
    n = data.draw(st.integers(4, 7))
    c = c0
    layers: list[nn.Module] = []
    for _ in range(data.draw(st.integers(1, 3))):
        choice = data.draw(st.sampled_from(["conv", "conv", "bn", "pool", "up", "other"]))
        if choice == "conv":
            m, c = conv_module(data.draw, c)
            if isinstance(m, nn.Conv1d):  # a 1×k conv on the image rows
                m = nn.Conv2d(
                    m.in_channels,
                    m.out_channels,
                    (1, m.kernel_size[0]),
                    padding=(0, m.padding[0]),
                    padding_mode=m.padding_mode,
                    groups=m.groups,
                )
            layers.append(m)
        elif choice == "bn":
            layers.append(nn.BatchNorm2d(c))
        elif choice == "pool":
            layers.append(
                data.draw(
                    st.sampled_from(
                        [nn.AvgPool2d(2, stride=1), nn.AdaptiveAvgPool2d(3), nn.AvgPool2d(3, stride=2, padding=1)]
                    )
                )
            )
        elif choice == "up":
            layers.append(nn.Upsample(scale_factor=2, mode=data.draw(st.sampled_from(["nearest", "bilinear"]))))
        else:
            layers.append(data.draw(st.sampled_from([nn.Identity(), nn.Dropout(0.3), nn.Flatten(2)])))
    net = nn.Sequential(*layers).double().eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in net.modules():
            for p in mod.parameters(recurse=False):
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_var.copy_(torch.rand(mod.running_var.shape, generator=g, dtype=torch.float64) + 0.05)
    x = torch.zeros(1, c0, n, n, dtype=torch.float64)
    try:
        net(x)
    except RuntimeError:  # a configuration torch itself rejects at this size (e.g. reflect padding ≥ n)
        return
    truth = jac_norm(net, x)  # a linear network: the Jacobian is its matrix
    bound = float(layer_bounds(net, x, method=method).product.detach())
    assert bound >= truth * (1 - 1e-9), (net, truth, bound)
    count("networks")


@pytest.fixture(scope="module", autouse=True)
def report_counts():
    yield
    print("\nproperty examples checked (0 violations):", dict(sorted(COUNTS.items())))
    assert all(v > 0 for v in COUNTS.values()) and math.isfinite(sum(COUNTS.values()))
