"""Export trained Lipschitz layers to plain torch modules (nn.Linear/nn.Conv2d, ReLU, residual sum)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from ._basic import LinearNormalized
from ._cpl import CPLConv2d, CPLLinear
from ._rescaled import SRConv2d, SRLinear
from ._sll import SLLConv2d, SLLLinear


class Residual(nn.Module):
    """``x + body(x)``: the plain form of an exported residual layer.

    Args:
        body: the residual branch.

    Shape:
        Same as the input.
    """

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _like(t: torch.Tensor) -> dict:
    return {"device": t.device, "dtype": t.dtype}


def _residual_linear(layer: nn.Module, w_out: torch.Tensor) -> Residual:
    # x − relu(A x + b) @ w_out  ==  x + Linear(−w_outᵀ)(relu(Linear(A, b)(x)))
    inner, feats = layer.weight.shape
    first = nn.Linear(feats, inner, bias=layer.bias is not None, **_like(layer.weight))
    second = nn.Linear(inner, feats, bias=False, **_like(layer.weight))
    first.weight.copy_(layer.weight)
    if layer.bias is not None:
        first.bias.copy_(layer.bias)
    second.weight.copy_(-w_out.T)
    return Residual(nn.Sequential(first, nn.ReLU(), second))


def _residual_conv(layer: nn.Module, w_out: torch.Tensor) -> Residual:
    # conv_transpose2d(z, W, padding=p) == conv2d(z, flip(W)ᵀ, padding=k − 1 − p), and k − 1 − p = p for odd k
    inner, c, kh, kw = layer.weight.shape
    kwargs = {"kernel_size": (kh, kw), "padding": layer.padding, **_like(layer.weight)}
    first = nn.Conv2d(c, inner, bias=layer.bias is not None, **kwargs)
    second = nn.Conv2d(inner, c, bias=False, **kwargs)
    first.weight.copy_(layer.weight)
    if layer.bias is not None:
        first.bias.copy_(layer.bias)
    second.weight.copy_(-w_out.transpose(0, 1).flip(2, 3))
    return Residual(nn.Sequential(first, nn.ReLU(), second))


def _convert(m: nn.Module) -> nn.Module | None:
    if isinstance(m, SRLinear):  # AOLLinear too
        out = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, **_like(m.weight))
        out.weight.copy_(m.effective_weight())
    elif isinstance(m, SRConv2d):  # AOLConv2d too
        out = nn.Conv2d(
            m.in_channels,
            m.out_channels,
            m.kernel_size,
            stride=m.stride,
            padding=m.padding,
            bias=m.bias is not None,
            **_like(m.weight),
        )
        out.weight.copy_(m.effective_weight())
    elif isinstance(m, LinearNormalized):
        out = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, **_like(m.weight))
        out.weight.copy_(m.normalized_weight())
    elif isinstance(m, SLLLinear):
        return _residual_linear(m, m.weight * (2.0 / m.gram_diagonal())[:, None])
    elif isinstance(m, SLLConv2d):
        return _residual_conv(m, m.weight * (2.0 / m.gram_diagonal())[:, None, None, None])
    elif isinstance(m, CPLLinear):
        return _residual_linear(m, m.weight * (2.0 / (m.norm_bound() ** 2 + m.eps)))
    elif isinstance(m, CPLConv2d):
        return _residual_conv(m, m.weight * (2.0 / (m.norm_bound() ** 2 + m.eps)))
    else:
        return None
    if m.bias is not None:
        out.bias.copy_(m.bias)
    return out


def export_plain(module: nn.Module) -> nn.Module:
    """Return a copy of ``module`` where every stabkit Lipschitz layer is replaced by plain torch modules.

    The copy computes the same function as ``module`` in eval mode (CPL layers use their certified eval step;
    see Note [CPL norm] in ``_cpl.py``): rescaled layers become ``nn.Linear``/``nn.Conv2d`` with the effective
    weight, residual layers (SLL, CPL) become :class:`Residual` of ``Linear/Conv2d → ReLU → Linear/Conv2d``,
    LLN becomes ``nn.Linear`` with the normalised rows. Parameter-free stabkit modules (``MaxMin``,
    ``GroupSort``, ``PaddingChannels``, ``ScaledAvgPool2d``) are kept. The input module is not modified; the
    copy is in eval mode with no gradient state. Outputs agree up to floating-point rounding (the scale is
    folded into the kernel).

    Args:
        module: a stabkit layer or any module containing them.

    Returns:
        The exported module (eval mode).

    Example:
        >>> plain = export_plain(SLLLinear(4, 8).eval())
        >>> type(plain).__name__
        'Residual'
    """
    with torch.no_grad():
        converted = _convert(module)
        if converted is not None:
            return converted.eval()
        new = copy.copy(module)
        new._modules = {name: export_plain(child) for name, child in module._modules.items()}
        new._parameters = {
            k: None if v is None else nn.Parameter(v.detach().clone(), v.requires_grad)
            for k, v in module._parameters.items()
        }
        new._buffers = {k: None if v is None else v.detach().clone() for k, v in module._buffers.items()}
        return new.eval()
