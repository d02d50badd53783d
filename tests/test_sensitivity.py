import pytest
import torch
from torch import nn

from stabkit.sensitivity import input_jacobian_norms


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
