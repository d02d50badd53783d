"""Lipschitz-by-design layers (thesis chapters 3b–4).

Every layer here is 1-Lipschitz in ℓ2 by construction (``LinearNormalized`` has its own constant, see its
docstring) and states its guarantee through one method, ``lipschitz_bound()`` (read by
:func:`stabkit.lipschitz.layer_bounds`; CPL's holds in eval mode). The class attribute ``lipschitz`` is kept for
:func:`stabkit.certify.network_lipschitz`.

* Rescaled (no state): :class:`AOLLinear`, :class:`AOLConv2d`, :class:`SRLinear`, :class:`SRConv2d`.
* Residual: :class:`SLLLinear`, :class:`SLLConv2d` (``n_iter > 1``: residual SR with learnable q),
  :class:`CPLLinear`, :class:`CPLConv2d` (certified eval step, Note [CPL norm] in ``_cpl.py``).
* Building blocks: :class:`PaddingChannels`, :class:`ScaledAvgPool2d`, :class:`MaxMin`, :class:`GroupSort`,
  :class:`LinearNormalized` (LLN last layer).
* For a user's own layers: :func:`spectral_rescale` / :func:`aol` (torch parametrizations of ``nn.Linear`` and
  convolutions, removed by :func:`remove_spectral_rescale`).
* Deployment: :func:`export_plain` turns a trained model into plain torch (``nn.Linear``/``nn.Conv2d``, ReLU,
  ``torch.fx`` graphs for residual sums; each layer's ``export()``) with the same outputs, loadable without
  stabkit.
"""

from ._basic import GroupSort, LinearNormalized, MaxMin, PaddingChannels, ScaledAvgPool2d
from ._cpl import CPLConv2d, CPLLinear
from ._export import Residual, export_plain
from ._parametrize import aol, is_rescaled, remove_spectral_rescale, spectral_rescale
from ._rescaled import AOLConv2d, AOLLinear, SRConv2d, SRLinear
from ._sll import SLLConv2d, SLLLinear

__all__ = [
    "AOLConv2d",
    "AOLLinear",
    "CPLConv2d",
    "CPLLinear",
    "GroupSort",
    "LinearNormalized",
    "MaxMin",
    "PaddingChannels",
    "Residual",
    "SLLConv2d",
    "SLLLinear",
    "SRConv2d",
    "SRLinear",
    "ScaledAvgPool2d",
    "aol",
    "export_plain",
    "is_rescaled",
    "remove_spectral_rescale",
    "spectral_rescale",
]
