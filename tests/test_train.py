import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stabkit.train import accuracy, batches, fit, load_checkpoint, predict, supervised, triangular_lr


def toy(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(200, 5, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    return x, y


def model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 2))


def train(seed=0, **kw):
    net = model()
    hist = fit(
        net,
        toy(),
        objective=supervised(F.cross_entropy),
        optimizer=torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.9),
        epochs=5,
        batch_size=32,
        generator=torch.Generator().manual_seed(seed),
        **kw,
    )
    return net, hist


def test_fit_is_deterministic_given_the_generator():
    a, ha = train(0)
    b, hb = train(0)
    c, _ = train(1)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert ha == hb
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters(), strict=True))


def test_fit_learns_and_reports_history():
    net, hist = train(evaluate=lambda m, e: {"acc": accuracy(m, *toy())})
    assert [h["epoch"] for h in hist] == [1, 2, 3, 4, 5]
    assert hist[-1]["loss"] < hist[0]["loss"] and hist[-1]["acc"] > 0.85
    assert not net.training


def test_batches_cover_every_example_once():
    x, y = torch.arange(10.0), torch.arange(10)
    seen = torch.cat([yb for _, yb in batches(x, y, batch_size=3, generator=torch.Generator().manual_seed(0))])
    assert sorted(seen.tolist()) == list(range(10))
    with pytest.raises(ValueError, match="same length"):
        next(batches(x, y[:5], batch_size=3))


def test_triangular_schedule_matches_the_papers():
    f = triangular_lr()
    assert f(0.0) == 0 and f(0.4) == pytest.approx(1) and f(0.8) == pytest.approx(0.05) and f(1.0) == 0
    assert f(0.2) == pytest.approx(0.5) and f(0.9) == pytest.approx(0.025)
    with pytest.raises(ValueError):
        triangular_lr(peak_at=0.9, end_at=0.5)


def test_lr_schedule_is_applied_per_step():
    lrs = []
    net = model()
    opt = torch.optim.SGD(net.parameters(), lr=1.0)

    def objective(m, x, y):
        lrs.append(opt.param_groups[0]["lr"])
        return F.cross_entropy(m(x), y)

    fit(net, toy(), objective=objective, optimizer=opt, epochs=2, batch_size=50, lr_schedule=lambda p: 1 - p)
    assert lrs == pytest.approx([1 - i / 8 for i in range(8)])


def test_augment_receives_a_generator_on_the_model_device():
    calls = []

    def augment(x, g):
        calls.append(g.device.type)
        return x + 0.01 * torch.randn(x.shape, generator=g)

    train(augment=augment)
    assert calls and set(calls) == {"cpu"}


def test_divergence_raises():
    net = model()
    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        fit(
            net,
            toy(),
            objective=lambda m, x, y: m(x).sum() * math.inf,
            optimizer=torch.optim.SGD(net.parameters()),
            epochs=1,
            batch_size=32,
        )


def test_checkpoint_round_trip(tmp_path):
    net, hist = train(checkpoint=tmp_path / "ck.pt")
    fresh = model(seed=5)
    assert load_checkpoint(tmp_path / "ck.pt", fresh) == hist
    x, _ = toy()
    assert torch.equal(predict(fresh, x), predict(net, x))


def test_sam_style_optimizers_get_a_reusable_closure():
    class TwoCalls(torch.optim.SGD):
        def step(self, closure):
            closure()
            return super().step(closure)

    net = model()
    fit(
        net,
        toy(),
        objective=supervised(F.cross_entropy),
        optimizer=TwoCalls(net.parameters(), lr=0.1),
        epochs=1,
        batch_size=50,
    )
