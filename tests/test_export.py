"""Export to plain torch (issue: layers for a user's own model): torch-only load, equality, torch.export."""

from __future__ import annotations

import io
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

from stabkit.layers import (
    GroupSort,
    MaxMin,
    PaddingChannels,
    Residual,
    ScaledAvgPool2d,
    export_plain,
)
from stabkit.models import LAYER_TYPES, LipschitzNet

TORCH_ONLY = """
import sys
sys.modules["stabkit"] = None  # any import of stabkit now fails: the files must load with torch alone
import torch
for stem in sys.argv[1:]:
    model = torch.load(stem + ".model.pt", weights_only=False)
    torch.save(model(torch.load(stem + ".x.pt")), stem + ".y.pt")
"""


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def only_torch_classes(model: nn.Module) -> None:
    for m in model.modules():
        mod = type(m).__module__
        assert not mod.startswith("stabkit"), type(m)
        assert mod.startswith("torch") or isinstance(m, torch.fx.GraphModule), type(m)


def test_exported_nets_load_with_torch_alone_and_are_equal(tmp_path):
    cases = {}
    for layer in LAYER_TYPES:
        for input_shape in ((1, 8, 8), (5,)):
            net = LipschitzNet(input_shape, 3, layer=layer, size="tiny", mean=0.1, std=0.5, generator=gen(0)).eval()
            x = torch.randn(4, *input_shape, generator=gen(1))
            plain = export_plain(net)
            only_torch_classes(plain)
            torch.testing.assert_close(plain(x), net(x), rtol=1e-6, atol=1e-6)
            buf = io.BytesIO()
            torch.save(plain, buf)
            assert b"stabkit" not in buf.getvalue(), layer
            stem = str(tmp_path / f"{layer}{len(input_shape)}")
            with open(stem + ".model.pt", "wb") as f:
                f.write(buf.getvalue())
            torch.save(x, stem + ".x.pt")
            cases[stem] = net(x).detach()
    res = subprocess.run([sys.executable, "-I", "-c", TORCH_ONLY, *cases], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    for stem, expected in cases.items():
        torch.testing.assert_close(torch.load(stem + ".y.pt"), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("layer", ["sll", "cpl", "aol"])
def test_torch_export_accepts_the_exported_net(layer):
    net = LipschitzNet((1, 8, 8), 3, layer=layer, size="tiny", generator=gen(0)).eval()
    x = torch.randn(2, 1, 8, 8, generator=gen(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = torch.export.export(export_plain(net), (x,))
    torch.testing.assert_close(ep.module()(x), net(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "block",
    [MaxMin(), MaxMin(dim=-1), GroupSort(3), PaddingChannels(6), ScaledAvgPool2d(2), ScaledAvgPool2d((2, 1))],
    ids=lambda b: repr(b),
)
def test_parameter_free_blocks_export_to_plain_torch(block):
    x = torch.randn(2, 3, 4, 6, generator=gen(2))
    plain = export_plain(block)
    only_torch_classes(plain)
    torch.testing.assert_close(plain(x), block(x))


def test_residual_exports_its_body():
    body = nn.Sequential(nn.Linear(4, 4), MaxMin())
    plain = export_plain(Residual(body))
    only_torch_classes(plain)
    x = torch.randn(3, 4, generator=gen(3))
    torch.testing.assert_close(plain(x), x + body(x))


def test_export_is_duck_typed():
    class Mine(nn.Module):
        def forward(self, x):
            return 2 * x

        def export(self):
            return nn.Identity()

    assert isinstance(export_plain(nn.Sequential(Mine()))[0], nn.Identity)
