"""The rescalings as torch parametrizations of a user's own layers (``spectral_rescale``, ``aol`` and their removal).

``spectral_rescale(module)`` registers, on ``module.weight``, the map ``W ↦ W diag(d)`` of :class:`SRLinear` /
:class:`SRConv2d` (Note [Gram bound] in ``_common.py``), in the style of
``torch.nn.utils.parametrizations.spectral_norm``: the module keeps its class (``isinstance(m, nn.Linear)`` stays
true), ``module.weight`` is the rescaled weight, ``module.parametrizations.weight.original`` the learned one, and
the layer is 1-Lipschitz in ℓ2 for any original weight. There is no state, so it works unchanged under
``torch.func`` transforms.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from stabkit._checks import check_positive_int

from ._common import conv_gram_bound, gram_bound, unit_scale

_DENSE = (nn.Linear,)
_CONV = (nn.Conv1d, nn.Conv2d, nn.ConvTranspose1d, nn.ConvTranspose2d)


class _SpectralRescale(nn.Module):
    """``W ↦ W diag(d)`` with ``‖W diag(d)‖₂ ≤ 1`` (dense) or ``‖conv(W diag(d))‖₂ ≤ 1`` (per group, conv)."""

    def __init__(self, *, conv: bool, n_iter: int, groups: int) -> None:
        super().__init__()
        self.conv, self.n_iter, self.groups = conv, n_iter, groups

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if not self.conv:
            w, _ = unit_scale(weight)
            return w * gram_bound(w.T @ w, n_iter=self.n_iter).rsqrt()[None, :]
        w4 = weight if weight.ndim == 4 else weight.unsqueeze(-2)  # a 1-D kernel is a 1×k 2-D one
        blocks = []
        for block in w4.chunk(self.groups, dim=0):  # groups: a block-diagonal operator, each block rescaled
            b, _ = unit_scale(block)
            d = conv_gram_bound(b.transpose(0, 1), n_iter=self.n_iter).rsqrt()  # KᵀK: the input side
            blocks.append(b * d[None, :, None, None])
        return torch.cat(blocks, dim=0).reshape(weight.shape)


def _check_module(module: nn.Module, name: str) -> bool:
    """True for a convolution, False for a Linear; a clear error for anything else."""
    if not isinstance(module, _DENSE + _CONV):
        raise ValueError(
            f"the rescaling parametrizations apply to nn.Linear, nn.Conv1d/2d and nn.ConvTranspose1d/2d, got "
            f"{type(module).__name__}"
        )
    if name != "weight" or not isinstance(getattr(module, name, None), torch.Tensor):
        raise ValueError(f"module {type(module).__name__} has no parameter {name!r} to rescale (use 'weight')")
    if isinstance(module, _CONV) and module.padding_mode != "zeros":
        k = module.kernel_size
        p = module.padding
        exact_circular = (
            module.padding_mode == "circular"
            and not isinstance(p, str)
            and all(ki % 2 == 1 and pi == (ki - 1) // 2 for ki, pi in zip(k, p, strict=True))
        )
        if not exact_circular:
            raise ValueError(
                f"padding_mode={module.padding_mode!r} (padding {p}) copies pixels, which multiplies the norm: the "
                "rescaled layer would not be 1-Lipschitz; use zero padding (or circular padding (k - 1)/2)"
            )
    return isinstance(module, _CONV)


def spectral_rescale(module: nn.Module, name: str = "weight", *, n_iter: int = 3) -> nn.Module:
    """Make a user's ``nn.Linear`` / convolution 1-Lipschitz in ℓ2 by Spectral Rescaling of its weight.

    Registers the parametrization ``W ↦ W diag(t^(-1/2))`` (input side, Note [Gram bound] in ``_common.py``) with
    ``torch.nn.utils.parametrize``; ``n_iter = 1`` is AOL. A convolution is rescaled through its Gram kernel, which
    holds for every input size, stride and dilation with zero padding (per group for grouped convolutions; a
    transposed convolution through the convolution it is the adjoint of). The guarantee is read by
    :func:`stabkit.lipschitz.layer_bounds` (bound 1) and :func:`export_plain` bakes the rescaled weight in.

    Args:
        module: an ``nn.Linear``, ``nn.Conv1d/2d`` or ``nn.ConvTranspose1d/2d``.
        name: the parameter to rescale (only ``"weight"``).
        n_iter: Gram-power steps T ≥ 1 (1 = AOL; larger is tighter and dearer).

    Returns:
        The same module, parametrized.

    Raises:
        ValueError: another module type, a padding mode that copies pixels (reflect, replicate, circular other
            than (k − 1)/2), bad ``n_iter``.

    Example:
        >>> layer = spectral_rescale(nn.Linear(8, 4), n_iter=2)
        >>> bool(torch.linalg.matrix_norm(layer.weight.detach(), 2) <= 1)
        True

    References:
        Delattre, Barthélemy, Allauzen, arXiv 2402.00240; Prach & Lampert, ECCV 2022, arXiv 2208.03160; thesis
        (arXiv:2510.25282) ch. 3b–4.
    """
    conv = _check_module(module, name)
    n_iter = check_positive_int("n_iter", n_iter)
    if is_rescaled(module, name):
        raise ValueError(f"{type(module).__name__}.{name} is already rescaled; remove_spectral_rescale it first")
    groups = getattr(module, "groups", 1)
    parametrize.register_parametrization(module, name, _SpectralRescale(conv=conv, n_iter=n_iter, groups=groups))
    return module


def aol(module: nn.Module, name: str = "weight") -> nn.Module:
    """AOL rescaling (Prach & Lampert 2022) of a user's layer: :func:`spectral_rescale` with ``n_iter=1``.

    Args:
        module: an ``nn.Linear``, ``nn.Conv1d/2d`` or ``nn.ConvTranspose1d/2d``.
        name: the parameter to rescale (only ``"weight"``).

    Returns:
        The same module, parametrized.

    Raises:
        ValueError: as :func:`spectral_rescale`.
    """
    return spectral_rescale(module, name, n_iter=1)


def is_rescaled(module: nn.Module, name: str = "weight") -> bool:
    """Whether the last parametrization of ``module.<name>`` is a stabkit rescaling (so the layer is 1-Lipschitz)."""
    if not parametrize.is_parametrized(module, name):
        return False
    return isinstance(module.parametrizations[name][-1], _SpectralRescale)


def remove_spectral_rescale(module: nn.Module, name: str = "weight", *, keep_rescaled: bool = True) -> nn.Module:
    """Remove the rescaling of :func:`spectral_rescale` / :func:`aol` from ``module.<name>``.

    Args:
        module: a module rescaled by :func:`spectral_rescale` or :func:`aol`.
        name: the rescaled parameter.
        keep_rescaled: keep the current rescaled weight as the plain parameter (the function is unchanged, and
            stays 1-Lipschitz until trained further); ``False`` restores the original, unconstrained weight.

    Returns:
        The same module, with its original class.

    Raises:
        ValueError: the module is not rescaled, or it carries other parametrizations on ``name`` too (remove
            them with ``torch.nn.utils.parametrize.remove_parametrizations``).
    """
    if not is_rescaled(module, name):
        raise ValueError(f"{type(module).__name__}.{name} has no stabkit rescaling to remove")
    if len(module.parametrizations[name]) != 1:
        raise ValueError(
            f"{type(module).__name__}.{name} carries other parametrizations too; remove them with "
            "torch.nn.utils.parametrize.remove_parametrizations"
        )
    parametrize.remove_parametrizations(module, name, leave_parametrized=keep_rescaled)
    return module
