"""Export trained Lipschitz layers to plain torch (Note [export]).

Note [export]
-------------
``export_plain`` returns a model made only of torch's own classes, so that it loads with ``torch.load`` where
stabkit is not installed and compiles with ``torch.export``. Each stabkit module owns its export: an ``export()``
method returning plain torch modules with the same eval-mode function (duck-typed: any module with ``export()``
takes part, so the set of layers stays open). Rescaled layers and LLN become ``nn.Linear``/``nn.Conv2d`` with the
effective weight; residual layers (SLL, CPL, :class:`Residual`) and the parameter-free blocks (MaxMin, GroupSort,
PaddingChannels, ScaledAvgPool2d) become small ``torch.fx.GraphModule`` s, whose pickles hold only their generated
code and their torch submodules. Modules without ``export()`` are copied with their exported children.
"""

from __future__ import annotations

import copy
import operator

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.utils import parametrize


class Residual(nn.Module):
    """``x + body(x)``: a residual block (its Lipschitz bound is ``1 + L(body)``).

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

    def export(self) -> nn.Module:
        """Plain-torch form: a ``torch.fx.GraphModule`` computing ``x + body(x)`` with the exported body."""
        return residual_graph(export_plain(self.body))


def residual_graph(body: nn.Module) -> fx.GraphModule:
    """``x + body(x)`` as a ``torch.fx.GraphModule`` whose only submodule is ``body`` (plain torch)."""
    root = nn.Module()
    root.body = body
    graph = fx.Graph()
    x = graph.placeholder("x")
    graph.output(graph.call_function(operator.add, (x, graph.call_module("body", (x,)))))
    return fx.GraphModule(root, graph, class_name="Residual")


def traced(module: nn.Module, name: str) -> fx.GraphModule:
    """``torch.fx.symbolic_trace`` of a plain-torch helper module (its class is not kept in the result)."""
    graph = fx.Tracer().trace(module)
    for node in graph.nodes:  # postponed annotations are strings, which torch.save cannot name: drop them
        node.type = None
    return fx.GraphModule(nn.Module(), graph, class_name=name)


# The plain helpers below are traced by torch.fx and never saved; they call torch functions only (a traced
# ``call_method`` node pickles with a global that torch.save cannot name).
class _MaxMinPlain(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[self.dim]
        h = n // 2
        a, b = torch.narrow(x, self.dim, 0, h), torch.narrow(x, self.dim, h, h)
        rest = torch.narrow(x, self.dim, 2 * h, n - 2 * h)
        return torch.cat([torch.maximum(a, b), torch.minimum(a, b), rest], dim=self.dim)


class _GroupSortPlain(nn.Module):
    def __init__(self, group_size: int, dim: int) -> None:
        super().__init__()
        self.group_size, self.dim = group_size, dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = torch.unflatten(torch.movedim(x, self.dim, -1), -1, (-1, self.group_size))
        return torch.movedim(torch.flatten(torch.sort(g, dim=-1, descending=True)[0], -2), -1, self.dim)


class _PadChannelsPlain(nn.Module):
    def __init__(self, out_channels: int) -> None:
        super().__init__()
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.movedim(F.pad(torch.movedim(x, 1, -1), (0, self.out_channels - x.shape[1])), -1, 1)


class _ScaledAvgPlain(nn.Module):
    def __init__(self, kernel_size: tuple[int, int]) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.scale = float((kernel_size[0] * kernel_size[1]) ** 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.mul(F.avg_pool2d(x, self.kernel_size), self.scale)


def _like(t: torch.Tensor) -> dict:
    return {"device": t.device, "dtype": t.dtype}


def residual_linear(weight: torch.Tensor, bias: torch.Tensor | None, w_out: torch.Tensor) -> fx.GraphModule:
    """``x − relu(A x + b) @ w_out`` as ``x + Linear(−w_outᵀ)(relu(Linear(A, b)(x)))`` (plain torch)."""
    with torch.no_grad():
        inner, feats = weight.shape
        first = nn.Linear(feats, inner, bias=bias is not None, **_like(weight))
        second = nn.Linear(inner, feats, bias=False, **_like(weight))
        first.weight.copy_(weight)
        if bias is not None:
            first.bias.copy_(bias)
        second.weight.copy_(-w_out.T)
    return residual_graph(nn.Sequential(first, nn.ReLU(), second))


def residual_conv(
    weight: torch.Tensor, bias: torch.Tensor | None, w_out: torch.Tensor, padding: tuple[int, int]
) -> fx.GraphModule:
    """``x − conv_transpose2d(relu(conv2d(x, K) + b), w_out)`` with two ``nn.Conv2d`` (odd kernels, padding k//2)."""
    # conv_transpose2d(z, W, padding=p) == conv2d(z, flip(W)ᵀ, padding=k − 1 − p), and k − 1 − p = p for odd k
    with torch.no_grad():
        inner, c, kh, kw = weight.shape
        kwargs = {"kernel_size": (kh, kw), "padding": padding, **_like(weight)}
        first = nn.Conv2d(c, inner, bias=bias is not None, **kwargs)
        second = nn.Conv2d(inner, c, bias=False, **kwargs)
        first.weight.copy_(weight)
        if bias is not None:
            first.bias.copy_(bias)
        second.weight.copy_(-w_out.transpose(0, 1).flip(2, 3))
    return residual_graph(nn.Sequential(first, nn.ReLU(), second))


def plain_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    with torch.no_grad():
        out = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, **_like(weight))
        out.weight.copy_(weight)
        if bias is not None:
            out.bias.copy_(bias)
    return out


def export_plain(module: nn.Module) -> nn.Module:
    """Return a copy of ``module`` made only of plain torch modules, computing the same eval-mode function.

    Every module with an ``export()`` method (every stabkit layer, :class:`Residual`,
    :class:`stabkit.models.LipschitzNet`) is replaced by what it returns: ``nn.Linear``/``nn.Conv2d`` with the
    effective weight for rescaled and LLN layers, a ``torch.fx.GraphModule`` for residual layers (CPL with its
    certified eval step, Note [CPL norm] in ``_cpl.py``) and for the parameter-free blocks (Note [export]). Other
    modules are copied with their exported children (their own classes are kept: a user's container class stays).
    The input module is not modified; the copy is in eval mode with no gradient state. Outputs agree up to
    floating-point rounding (scales are folded into the weights). The result pickles and loads with torch alone,
    and ``torch.export.export`` accepts it.

    Args:
        module: a stabkit layer or any module containing them.

    Returns:
        The exported module (eval mode).

    Example:
        >>> from stabkit.layers import SLLLinear
        >>> plain = export_plain(SLLLinear(4, 8).eval())
        >>> type(plain).__module__.startswith("stabkit")
        False
    """
    with torch.no_grad():
        export = getattr(module, "export", None)
        if callable(export):
            return export().eval()
        if parametrize.is_parametrized(module):  # a user's layer with parametrizations: its original class,
            cls = parametrize.type_before_parametrizations(module)  # with the parametrized tensors baked in
            new = cls.__new__(cls)
            new.__dict__ = {k: copy.copy(v) for k, v in module.__dict__.items()}
            baked = {name: getattr(module, name) for name in module.parametrizations}
        else:
            new = copy.copy(module)
            baked = {}
        new._modules = {
            name: None if c is None else export_plain(c)
            for name, c in module._modules.items()
            if not baked or name != "parametrizations"
        }
        new._parameters = {
            k: None if v is None else nn.Parameter(v.detach().clone(), v.requires_grad)
            for k, v in {**module._parameters, **baked}.items()
        }
        new._buffers = {k: None if v is None else v.detach().clone() for k, v in module._buffers.items()}
        new.__dict__.pop("_bound_cache", None)
        return new.eval()
