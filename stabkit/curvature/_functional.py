"""Evaluate a model's loss as a pure function of (a subset of) its parameters.

Everything in :mod:`stabkit.curvature` works on *flat* parameter vectors: the chosen parameters, flattened and
concatenated in the model's ``named_parameters`` order. Hessian eigenvectors, Hutchinson probes, smoothing
noise and landscape directions all live in that one space, so an eigenvector can be used directly as a slice
direction. The model is never modified: perturbed parameters go through :func:`torch.func.functional_call`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from stabkit._checks import check_tensor

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Data = tuple[torch.Tensor, torch.Tensor] | Iterable[tuple[torch.Tensor, torch.Tensor]]


class ParameterSpace:
    """The flat vector space of the chosen parameters of ``model``.

    Args:
        model: the network.
        params: names of the parameters to use (as in ``model.named_parameters()``, e.g. ``["fc.weight"]``);
            ``None`` takes every parameter that requires grad.

    Raises:
        ValueError: an unknown name, or no parameter selected.
    """

    def __init__(self, model: nn.Module, params: Sequence[str] | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        named = dict(model.named_parameters())
        if params is None:
            names = [n for n, p in named.items() if p.requires_grad]
        else:
            if isinstance(params, str):
                raise ValueError(
                    f"params must be a list of parameter names, got the string {params!r}; write params=[{params!r}]"
                )
            names = list(params)
            unknown = [n for n in names if n not in named]
            if unknown:
                raise ValueError(f"unknown parameter names {unknown}; the model has {list(named)}")
            # keep the model's order, so that the layout does not depend on how the caller listed them
            chosen = set(names)
            names = [n for n in named if n in chosen]
        if not names:
            raise ValueError("no parameter selected: the model has no parameter that requires grad")
        self.model = model
        self.names = names
        self.shapes = [named[n].shape for n in names]
        self.numels = [named[n].numel() for n in names]
        self.dim = sum(self.numels)
        first = named[names[0]]
        self.dtype = first.dtype
        self.device = first.device

    def current(self) -> torch.Tensor:
        """The chosen parameters now, as one detached flat vector. Shape: ``(dim,)``."""
        named = dict(self.model.named_parameters())
        return torch.cat([named[n].detach().reshape(-1) for n in self.names])

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split a flat vector ``(dim,)`` into ``{name: tensor of the parameter's shape}``."""
        if flat.shape != (self.dim,):
            raise ValueError(f"expected a flat vector of shape ({self.dim},), got {tuple(flat.shape)}")
        parts = torch.split(flat, self.numels)
        return {n: p.reshape(s) for n, p, s in zip(self.names, parts, self.shapes, strict=True)}

    def flatten(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        """Concatenate ``{name: tensor}`` into a flat vector ``(dim,)`` in this space's order."""
        return torch.cat([tensors[n].reshape(-1) for n in self.names])

    def loss(self, flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn) -> torch.Tensor:
        """``loss_fn(model(x; θ), y)`` with the chosen parameters set to ``flat`` and the others frozen.

        Buffers are passed as copies, so that a forward pass never changes the model's running statistics.
        """
        frozen = {n: p.detach() for n, p in self.model.named_parameters() if n not in set(self.names)}
        buffers = {n: b.clone() for n, b in self.model.named_buffers()}
        state = {**frozen, **buffers, **self.unflatten(flat)}
        logits = torch.func.functional_call(self.model, state, (x,))
        return loss_fn(logits, y)


def check_functional_model(model: nn.Module) -> None:
    """Refuse a model whose loss is not a deterministic function of its parameters (train-mode BatchNorm/Dropout)."""
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.training and m.p > 0:
            raise ValueError(
                f"module {name!r} is a Dropout in training mode: the loss would be random (masks drawn from "
                "torch's global RNG), so Hessians and landscapes would be noise; call model.eval() first"
            )
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats:
            raise ValueError(
                f"module {name!r} is a BatchNorm in training mode: its batch statistics would make the loss "
                "depend on the batch composition and its running statistics would be updated; "
                "call model.eval() first"
            )


def iterate_data(data: Any, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
    """Normalise ``data`` (one ``(x, y)`` batch or an iterable of batches) into ``[(x, y, weight)]``.

    The weights are ``len(x) / N``, so that a mean-reduced loss summed over batches with these weights is the
    mean over the whole data set.
    """
    if isinstance(data, tuple | list) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        batches = [tuple(data)]
    else:
        try:
            batches = [tuple(b) for b in data]
        except TypeError:
            msg = "data must be an (x, y) tuple of tensors or an iterable of (x, y) batches"
            raise TypeError(msg) from None
        if not batches:
            raise ValueError("data is empty: give at least one (x, y) batch")
    checked = []
    for b in batches:
        if len(b) < 2:
            raise TypeError("each batch must be an (x, y) pair")
        x, y = b[0], b[1]
        check_tensor("x", x, min_ndim=1)
        check_tensor("y", y, min_ndim=1)
        if len(x) != len(y):
            raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
        if len(x) > 0:  # an empty batch adds nothing to a mean over the data (and its own mean loss is NaN)
            checked.append((x, y))
    total = sum(len(x) for x, _ in checked)
    if total == 0:
        raise ValueError("data has no examples (every batch is empty): give at least one (x, y) pair")
    return [(x.to(device), y.to(device), len(x) / total) for x, y in checked]


def dataset_loss(
    space: ParameterSpace, flat: torch.Tensor, data: Any, *, loss_fn: LossFn = F.cross_entropy
) -> torch.Tensor:
    """Mean loss over ``data`` at parameters ``flat`` (no grad). Returns a 0-dim tensor."""
    with torch.no_grad():
        batches = iterate_data(data, space.device)
        return sum(w * space.loss(flat, x, y, loss_fn) for x, y, w in batches)  # type: ignore[return-value]
