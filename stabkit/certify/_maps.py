"""Simplex maps of the logits for LVM-RS: softmax and sparsemax at a grid of temperatures.

LVM-RS smooths ``s(τ z)`` instead of the argmax of the logits ``z``. This module holds the maps, their published
temperature grid and their Lipschitz constants; :meth:`stabkit.certify.smoothing.Smooth.sample` records their
statistics and :func:`stabkit.certify.smoothing.lvm_certify` certifies with them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, get_args

import numpy as np
import torch

__all__ = ["MAP_KINDS", "MAP_LIPSCHITZ", "TEMPERATURES", "MapKind", "check_map_kinds", "simplex_maps", "sparsemax"]

#: Temperature grid of the official LVM-RS code: {1} ∪ linspace(0.1, 50, 100) ∪ {1e7}.
TEMPERATURES = np.array([1.0, *np.linspace(0.1, 50.0, 100), 1e7])
MapKind = Literal["softmax", "sparsemax"]
MAP_KINDS: tuple[str, ...] = get_args(MapKind)
#: ℓ2 Lipschitz bound of one output coordinate of each map: a softmax row of the Jacobian is p_c (e_c - p), of
#: norm at most √2/4 < 1/2; sparsemax is a Euclidean projection, its Jacobian rows have norm at most 1.
MAP_LIPSCHITZ = {"softmax": 0.5, "sparsemax": 1.0}


def check_map_kinds(kinds: Iterable[MapKind]) -> tuple[MapKind, ...]:
    """Check that ``kinds`` is a non-empty sequence of names from ``MAP_KINDS``; return it as a tuple."""
    kinds = tuple(kinds)
    if not kinds or any(k not in MAP_KINDS for k in kinds):
        raise ValueError(f"map kinds must be a non-empty subset of {MAP_KINDS}, got {kinds!r}")
    return kinds


def sparsemax(z: torch.Tensor, *, dim: int = -1) -> torch.Tensor:
    """Euclidean projection of ``z`` onto the probability simplex, along ``dim``.

    ``sparsemax(z) = argmin_{p ∈ Δ} ‖p − z‖²`` = ``max(z − θ, 0)`` with the threshold θ found from the sorted
    entries; unlike softmax it returns exact zeros.

    Shape:
        z: any; the result has the same shape and sums to 1 along ``dim``.

    References:
        Martins & Astudillo, "From Softmax to Sparsemax", ICML 2016 (arXiv 1602.02068), Algorithm 1.
    """
    z = z.transpose(dim, -1)
    # shift-invariant: subtracting the max keeps 1 + z_(1) > z_(1) exact for huge logits (τ = 1e7 in float32)
    z = z - z.max(dim=-1, keepdim=True).values
    zs, _ = torch.sort(z, dim=-1, descending=True)  # (..., C)
    k = torch.arange(1, z.shape[-1] + 1, device=z.device, dtype=z.dtype)
    cumsum = zs.cumsum(dim=-1)
    # support size: the largest k with 1 + k z_(k) > Σ_{j≤k} z_(j) (always true for k = 1)
    support = (1 + k * zs > cumsum).sum(dim=-1, keepdim=True).clamp_min(1)  # (..., 1)
    theta = (cumsum.gather(-1, support - 1) - 1) / support.to(z.dtype)
    return (z - theta).clamp_min(0).transpose(dim, -1)


def simplex_maps(
    logits: torch.Tensor, *, temperatures: torch.Tensor, kinds: tuple[MapKind, ...] = MAP_KINDS
) -> torch.Tensor:
    """Every map of ``kinds`` applied to ``τ·logits`` for every temperature τ.

    Args:
        logits: a batch of logit vectors.
        temperatures: the temperatures τ (e.g. ``torch.as_tensor(TEMPERATURES)``).
        kinds: names of the maps, from ``MAP_KINDS``.

    Returns:
        The maps' values, each row on the probability simplex, in the dtype of ``logits``.

    Shape:
        logits: ``(m, C)``; temperatures: ``(T,)``; result: ``(m, K, T, C)`` with K = ``len(kinds)``.
    """
    scaled = logits[:, None, :] * temperatures.to(logits)[None, :, None]  # (m, T, C)
    fns = {"softmax": lambda s: torch.softmax(s, dim=-1), "sparsemax": sparsemax}
    return torch.stack([fns[k](scaled) for k in kinds], dim=1)
