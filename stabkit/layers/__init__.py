"""Lipschitz-by-design layers (thesis chapters 3b–4).

Every layer here is 1-Lipschitz in ℓ2 by construction (``LinearNormalized`` has its own constant, see its
docstring); the guaranteed constant is the class attribute ``lipschitz`` (or ``lipschitz_constant()``).

* Rescaled (no state): :class:`AOLLinear`, :class:`AOLConv2d`, :class:`SRLinear`, :class:`SRConv2d`.
* Residual: :class:`SLLLinear`, :class:`SLLConv2d` (``n_iter > 1``: residual SR with learnable q),
  :class:`CPLLinear`, :class:`CPLConv2d` (certified eval step, Note [CPL norm] in ``_cpl.py``).
* Building blocks: :class:`PaddingChannels`, :class:`ScaledAvgPool2d`, :class:`MaxMin`, :class:`GroupSort`,
  :class:`LinearNormalized` (LLN last layer).
* Deployment: :func:`export_plain` turns a trained model into plain ``nn.Linear``/``nn.Conv2d`` (+ ReLU,
  :class:`Residual`) with the same outputs.
"""

from ._basic import GroupSort, LinearNormalized, MaxMin, PaddingChannels, ScaledAvgPool2d
from ._cpl import CPLConv2d, CPLLinear, conv_norm_bound, dense_norm_bound
from ._export import Residual, export_plain
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
    "conv_norm_bound",
    "dense_norm_bound",
    "export_plain",
]
