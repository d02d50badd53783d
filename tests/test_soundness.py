"""Soundness suite: certified points of small trained Lipschitz nets survive a strong attack; a lying model does not.

Tiny LipschitzNets are trained for a few seconds on Gaussian blobs (one conv net on small images), then each
certified point (margin certificate with the engine's bound, ``radius = margin / (√2 L)``) is attacked inside its
certified ball (shrunk by 1e-6) by ℓ2 PGD with 10 restarts at 3 step sizes (untargeted and targeted margins).
Any success would be a counterexample to the certificate. The same attack must break a model that claims a
Lipschitz constant 20 times too small. CPL is trained with a fused optimizer and evaluated every epoch, the
setting in which its cached bound used to go stale (with the old ``_version`` cache, 17 of 20 certified points of
the dense CPL case are broken).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from stabkit.attacks import pgd_l2
from stabkit.lipschitz import layer_bounds
from stabkit.losses import multiclass_hinge
from stabkit.models import LipschitzNet

RUNS = ((0.1, 0), (0.5, 0), (0.25, 1))  # (step size as a fraction of the radius, targeted classes)
N_RESTARTS = 10


def blobs(shape: tuple[int, ...], k: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(k, *shape, generator=g) * 1.2
    y = torch.randint(0, k, (n,), generator=g)
    return centers[y] + 0.5 * torch.randn(n, *shape, generator=g), y


def train(net: nn.Module, x: torch.Tensor, y: torch.Tensor, *, steps: int, fused: bool) -> None:
    opt = torch.optim.Adam(net.parameters(), lr=5e-2, fused=fused)
    with torch.no_grad():
        net.eval()(x[:8])  # an evaluation before training, as a training loop does
    for step in range(steps):
        net.train()
        loss = multiclass_hinge(net(x), y, margin=0.5)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 10 == 0:  # a per-epoch evaluation, as a training loop does (fills CPL's eval cache)
            with torch.no_grad():
                net.eval()(x[:8])
    net.eval()


class Lying(nn.Module):
    """``net(20·x)`` that claims the Lipschitz constant of ``net``: every certificate it yields is 20× too large."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(20.0 * x)

    def lipschitz_bound(self) -> float:
        return self.net.lipschitz_bound()


def certified_points(model: nn.Module, x: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Up to n points with a positive certified radius: inputs, predictions, radii."""
    lip = float(layer_bounds(model).product)
    assert math.isfinite(lip) and lip > 0
    with torch.no_grad():
        z = model(x)
    pred = z.argmax(1)
    top2 = z.topk(2, dim=1).values
    radius = (top2[:, 0] - top2[:, 1]) / (math.sqrt(2) * lip)
    keep = torch.nonzero(radius > 1e-4).flatten()[:n]
    return x[keep], pred[keep], radius[keep]


def violations(
    model: nn.Module, x: torch.Tensor, pred: torch.Tensor, radius: torch.Tensor, seed: int, *, strong: bool = True
) -> int:
    """Certified points the attack breaks: untargeted margin at two step sizes, targeted at a third (10 restarts)."""
    broken = torch.zeros(len(x), dtype=torch.bool)
    runs = RUNS if strong else RUNS[:1]
    for i, (step, n_targets) in enumerate(runs):
        res = pgd_l2(
            model,
            x,
            pred,
            eps=radius * (1 - 1e-6),
            n_iter=20,
            step_size=step,
            n_restarts=N_RESTARTS if strong else 2,
            n_targets=n_targets,
            generator=torch.Generator().manual_seed(seed + i),
        )
        assert bool((torch.linalg.vector_norm((res.adversarial - x).flatten(1), dim=1) <= radius).all())
        broken |= res.success
    return int(broken.sum())


CASES = [
    ("sll", (6,), False),
    ("aol", (6,), False),
    ("sr", (6,), False),
    ("cpl", (6,), True),
    ("cpl", (1, 6, 6), True),
    ("sll", (1, 6, 6), False),
]


@pytest.mark.parametrize(("layer", "shape", "fused"), CASES, ids=[f"{c[0]}-{len(c[1])}d" for c in CASES])
def test_certified_points_survive_a_strong_attack_and_a_lie_is_caught(layer, shape, fused):
    x, y = blobs(shape, 4, 256, seed=0)
    net = LipschitzNet(
        shape, 4, layer=layer, size="tiny", pool=2 if len(shape) == 3 else 4, generator=torch.Generator().manual_seed(1)
    )
    train(net, x, y, steps=60, fused=fused)
    xc, pred, radius = certified_points(net, x, 20)
    assert len(xc) >= 10, "too few certified points to test"
    n_bad = violations(net, xc, pred, radius, seed=2)
    print(f"\n{layer} {shape}: {len(xc)} certified points attacked, {n_bad} violations")
    assert n_bad == 0
    liar = Lying(net).eval()
    xl, pl, rl = certified_points(liar, x / 20.0, 20)
    caught = violations(liar, xl, pl, rl, seed=3, strong=False)
    print(f"lying model: {len(xl)} certified points attacked, {caught} violations")
    assert caught > 0
