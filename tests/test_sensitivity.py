import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from stabkit.sensitivity import boundary_distances, input_jacobian_norms, margin_gradient_norms


def test_linear_model_has_its_spectral_norm_everywhere():
    torch.manual_seed(0)
    lin = nn.Linear(6, 4).double()
    x = torch.randn(7, 6, dtype=torch.float64)
    expected = torch.linalg.matrix_norm(lin.weight, 2)
    torch.testing.assert_close(input_jacobian_norms(lin, x), expected.expand(7))


def test_mlp_matches_the_autograd_jacobian():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    x = torch.randn(5, 2, 2, dtype=torch.float64)
    got = input_jacobian_norms(net, x, batch_size=2)
    for i in range(5):
        jac = torch.autograd.functional.jacobian(lambda z: net(z.unsqueeze(0)).squeeze(0), x[i]).reshape(3, 4)
        assert got[i].item() == pytest.approx(torch.linalg.matrix_norm(jac, 2).item(), rel=1e-12)


def test_bad_input():
    with pytest.raises(ValueError, match="NaN or infinite"):
        input_jacobian_norms(nn.Linear(2, 2), torch.tensor([[float("nan"), 0.0]]))


def test_empty_batch_gets_a_clear_error():
    with pytest.raises(ValueError, match="empty batch"):
        input_jacobian_norms(nn.Linear(2, 2), torch.zeros(0, 2))


def test_conv_model_with_spatial_output_matches_the_explicit_jacobian():
    # the output is (B, C, H, W): its spatial dimensions must not be merged with the input's
    g = torch.Generator().manual_seed(0)
    model = torch.nn.Conv2d(2, 3, 3, padding=1).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(model.weight.shape, generator=g, dtype=torch.float64))
    x = torch.randn(2, 2, 5, 5, generator=g, dtype=torch.float64)
    expected = [
        torch.linalg.matrix_norm(
            torch.autograd.functional.jacobian(lambda z: model(z.unsqueeze(0)).reshape(-1), xi).reshape(-1, xi.numel()),
            ord=2,
        )
        for xi in x
    ]
    torch.testing.assert_close(input_jacobian_norms(model, x), torch.stack(expected))


# --- margin_gradient_norms ---------------------------------------------------------------------------------------


def test_margin_gradient_of_a_linear_model_is_the_row_difference_of_the_top_two_classes():
    torch.manual_seed(2)
    lin = nn.Linear(5, 4).double()
    x = torch.randn(9, 5, dtype=torch.float64)
    top2 = torch.topk(lin(x), 2, dim=1).indices
    expected = (lin.weight[top2[:, 0]] - lin.weight[top2[:, 1]]).norm(dim=1)
    torch.testing.assert_close(margin_gradient_norms(lin, x, batch_size=4), expected.detach())


def test_margin_gradient_matches_finite_differences_and_is_at_most_sqrt2_times_the_jacobian_norm():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 2)).double()
    x = torch.randn(6, 2, dtype=torch.float64)
    got = margin_gradient_norms(net, x)
    h = 1e-6
    for i in range(6):
        sign = 1.0 if net(x[i : i + 1])[0, 1] > net(x[i : i + 1])[0, 0] else -1.0

        def m(z, sign=sign):
            out = net(z.unsqueeze(0))[0]
            return sign * (out[1] - out[0])

        fd = torch.stack([(m(x[i] + h * e) - m(x[i] - h * e)) / (2 * h) for e in torch.eye(2, dtype=torch.float64)])
        assert got[i].item() == pytest.approx(fd.norm().item(), rel=1e-6)
    assert (got <= 2**0.5 * input_jacobian_norms(net, x) * (1 + 1e-12)).all()


def test_margin_gradient_needs_two_logits():
    with pytest.raises(ValueError, match="K >= 2"):
        margin_gradient_norms(nn.Linear(2, 1), torch.zeros(3, 2))


# --- boundary_distances ------------------------------------------------------------------------------------------


def _grid(n1=41, n2=37):
    return np.meshgrid(np.linspace(-2, 2, n1), np.linspace(-1.5, 1.5, n2), indexing="xy")


@settings(max_examples=40, deadline=None)
@given(
    angle=st.floats(0, 2 * np.pi),
    offset=st.floats(-0.8, 0.8),
)
def test_distance_to_a_straight_boundary_is_the_point_line_distance(angle, offset):
    x1, x2 = _grid()
    a = np.array([np.cos(angle), np.sin(angle)])
    margin = a[0] * x1 + a[1] * x2 - offset
    exact = np.abs(margin)  # distance to the line a·x = offset, ‖a‖ = 1
    got = boundary_distances(x1, x2, margin).distances
    step = max(4 / 40, 3 / 36)
    # the crossings lie on the line: never closer than the truth; and at most one grid step farther where the foot of
    # the perpendicular lies inside the grid (elsewhere the nearest boundary point on the grid is farther)
    assert (got >= exact - 1e-9).all()
    f1, f2 = x1 - margin * a[0], x2 - margin * a[1]
    inside = (np.abs(f1) <= 2 - step) & (np.abs(f2) <= 1.5 - step)
    assert (got[inside] <= np.sqrt(exact[inside] ** 2 + step**2) + 1e-9).all()


def test_distance_to_a_circle_against_the_exact_distance():
    x1, x2 = _grid(81, 61)
    r = np.hypot(x1, x2)
    got = boundary_distances(x1, x2, r - 1.0)
    exact = np.abs(r - 1.0)
    assert np.abs(np.hypot(*got.crossings.T) - 1.0).max() < 0.01  # crossings lie on the circle, up to its curvature
    assert np.abs(got.distances - exact).max() < 0.03  # ~ half the spacing of the crossings along the circle


def test_boundary_distances_bad_input():
    x1, x2 = _grid(5, 4)
    with pytest.raises(ValueError, match="one sign"):
        boundary_distances(x1, x2, x1 + 10)
    with pytest.raises(ValueError, match="one shape"):
        boundary_distances(x1, x2, x1[:, :3])
    with pytest.raises(ValueError, match="finite"):
        boundary_distances(x1, x2, np.where(x1 > 0, np.nan, x1))
