"""Margin and LLN certificates against hand-computed margins and the exact distance to a linear boundary."""

import math

import pytest
import torch

from stabkit.certify import Certificate, certified_accuracy
from stabkit.certify.margin import certify_model, lln_certificate, margin_certificate, network_lipschitz

SQRT2 = math.sqrt(2.0)


def _linear(W: torch.Tensor, b: torch.Tensor) -> torch.nn.Linear:
    lin = torch.nn.Linear(W.shape[1], W.shape[0]).to(W.dtype)
    with torch.no_grad():
        lin.weight.copy_(W)
        lin.bias.copy_(b)
    return lin


def _exact_linear_distance(W, b, x):
    """Distance from x to the nearest point classified differently by z = Wx + b (closed form)."""
    z = x @ W.T + b  # (B, K)
    y = z.argmax(1)
    gap = z.gather(1, y[:, None]) - z  # (B, K)
    dist = torch.linalg.vector_norm(W[y][:, None, :] - W[None, :, :], dim=-1)  # (B, K)
    ratio = torch.where(torch.arange(W.shape[0])[None] == y[:, None], torch.inf, gap / dist)
    return y, ratio.min(1).values


def test_margin_certificate_hand_computed():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 0.5, 2.5], [1.0, 1.0, -1.0]], dtype=torch.float64)
    cert = margin_certificate(logits, lipschitz=1.0)
    assert isinstance(cert, Certificate)
    assert cert.prediction.tolist() == [0, 2, 0]
    torch.testing.assert_close(cert.radius, torch.tensor([2 / SQRT2, 2 / SQRT2, 0.0], dtype=torch.float64))
    # L scales the radius as 1/L
    torch.testing.assert_close(margin_certificate(logits, lipschitz=4.0).radius, cert.radius / 4)


def test_margin_certificate_matches_sorted_logits_over_draws():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        k = int(torch.randint(2, 12, (1,), generator=g))
        logits = torch.randn(64, k, generator=g, dtype=torch.float64) * 3
        lip = float(torch.rand(1, generator=g, dtype=torch.float64)) * 5 + 0.1
        srt = logits.sort(dim=1, descending=True).values
        expected = (srt[:, 0] - srt[:, 1]) / (SQRT2 * lip)
        cert = margin_certificate(logits, lipschitz=lip)
        torch.testing.assert_close(cert.radius, expected)
        assert torch.equal(cert.prediction, logits.argmax(1))


def test_lln_certificate_is_the_exact_distance_for_a_linear_model():
    g = torch.Generator().manual_seed(1)
    for _ in range(10):
        W = torch.randn(7, 12, generator=g, dtype=torch.float64)
        b = torch.randn(7, generator=g, dtype=torch.float64)
        x = torch.randn(100, 12, generator=g, dtype=torch.float64)
        y, exact = _exact_linear_distance(W, b, x)
        lln = lln_certificate(x @ W.T + b, W, lipschitz=1.0)
        assert torch.equal(lln.prediction, y)
        torch.testing.assert_close(lln.radius, exact)
        # the margin certificate with L = ‖W‖₂ is sound (≤ exact) and never better than LLN
        margin = margin_certificate(x @ W.T + b, lipschitz=float(torch.linalg.matrix_norm(W, 2)))
        assert bool((margin.radius <= exact * (1 + 1e-12)).all())


def test_lln_certificate_hand_computed_and_identical_rows():
    W = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)  # rows 0 and 2 identical
    logits = torch.tensor([[2.0, 0.0, 1.0], [0.0, 3.0, 1.0]], dtype=torch.float64)
    cert = lln_certificate(logits, W, lipschitz=2.0)
    # row 0: vs class 1 gap 2 / √2, vs class 2 identical row -> ignored; row 1: min(3/√2, 2/√2)
    torch.testing.assert_close(cert.radius, torch.tensor([2 / SQRT2 / 2, 2 / SQRT2 / 2], dtype=torch.float64))
    # only identical competitors: nothing can ever overtake
    cert = lln_certificate(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    assert cert.radius.item() == math.inf


def test_certified_accuracy_hand_computed_and_monotone():
    cert = Certificate(torch.tensor([0, 1, 2, 1]), torch.tensor([0.5, 0.1, 0.0, 2.0]))
    labels = torch.tensor([0, 1, 2, 0])
    acc = certified_accuracy(cert, labels, [0.0, 0.05, 0.1, 0.4, 1.0])
    # ε = 0: clean accuracy 3/4; 0.05: points 0, 1; 0.1: strict, point 0 only; 0.4: point 0; 1.0: none correct
    torch.testing.assert_close(acc, torch.tensor([0.75, 0.5, 0.25, 0.25, 0.0], dtype=torch.float64))
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(500, 10, generator=g)
    labels = torch.randint(0, 10, (500,), generator=g)
    acc = certified_accuracy(margin_certificate(logits, lipschitz=1.0), labels, torch.linspace(0, 2, 30))
    assert bool((acc[1:] <= acc[:-1]).all())
    assert acc[0].item() == pytest.approx((logits.argmax(1) == labels).double().mean().item())


class _Claims(torch.nn.Module):
    """A linear model that declares a Lipschitz constant, optionally ending with an LLN-like layer."""

    def __init__(self, W, b, claim, lln=False):
        super().__init__()
        self.body = torch.nn.Identity()
        self.head = _linear(W, b)
        if lln:
            self.head.normalized_weight = lambda: self.head.weight
        self.lipschitz = claim

    def forward(self, x):
        return self.head(self.body(x))


def test_certify_reads_the_model_claim_and_detects_lln():
    g = torch.Generator().manual_seed(3)
    W, b = (
        torch.randn(4, 6, generator=g, dtype=torch.float64),
        torch.randn(4, generator=g, dtype=torch.float64),
    )
    x = torch.randn(50, 6, generator=g, dtype=torch.float64)
    model = _Claims(W, b, claim=2.0).train()
    cert = certify_model(model, x, batch_size=7)
    assert model.training  # mode restored
    torch.testing.assert_close(cert.radius, margin_certificate(x @ W.T + b, lipschitz=2.0).radius)
    lln = certify_model(_Claims(W, b, claim=lambda: 1.0, lln=True), x)
    torch.testing.assert_close(lln.radius, lln_certificate(x @ W.T + b, W).radius)
    forced = certify_model(_Claims(W, b, claim=1.0, lln=True), x, lln=False, lipschitz=3.0)
    torch.testing.assert_close(forced.radius, margin_certificate(x @ W.T + b, lipschitz=3.0).radius)
    assert network_lipschitz(model) == 2.0


def test_bad_input():
    with pytest.raises(ValueError, match="at least 2 classes"):
        margin_certificate(torch.zeros(3, 1), lipschitz=1.0)
    with pytest.raises(ValueError, match="lipschitz"):
        margin_certificate(torch.zeros(3, 2), lipschitz=0.0)
    with pytest.raises(ValueError, match="NaN"):
        margin_certificate(torch.tensor([[0.0, float("nan")]]), lipschitz=1.0)
    with pytest.raises(ValueError, match="one row per class"):
        lln_certificate(torch.zeros(3, 2), torch.zeros(3, 5))
    cert = margin_certificate(torch.zeros(3, 2), lipschitz=1.0)
    with pytest.raises(ValueError, match="epsilons"):
        certified_accuracy(cert, torch.zeros(3, dtype=torch.int64), [-0.1])
    with pytest.raises(ValueError, match="labels has shape"):
        certified_accuracy(cert, torch.zeros(4, dtype=torch.int64), [0.1])
    with pytest.raises(ValueError, match="declares no Lipschitz guarantee"):
        certify_model(torch.nn.Linear(2, 2), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="normalized_weight"):
        certify_model(torch.nn.Linear(2, 2), torch.zeros(1, 2), lipschitz=1.0, lln=True)
