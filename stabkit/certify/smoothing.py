"""Randomized smoothing (thesis arXiv:2510.25282, chapter 6): sampling, PREDICT / CERTIFY, logs, LVM-RS.

:class:`Smooth` is the Gaussian-smoothed classifier of Cohen et al. (arXiv 1902.02918). Sampling (the expensive
part) and certification (statistics on the counts) are separate: :meth:`Smooth.sample` records a
:class:`SmoothingLog`, which :func:`certify_from_log` certifies with any multiple-testing ``method`` (see
:data:`stabkit.certify.Method`) and :func:`lvm_certify` with the Lipschitz–variance–margin trade-off of LVM-RS
(Delattre et al., arXiv 2309.16883). The statistics behind them are in :mod:`stabkit.certify.stats`.

Example:
    >>> import torch
    >>> from stabkit.certify import smoothing
    >>> smooth = smoothing.Smooth(torch.nn.Linear(2, 3), num_classes=3, sigma=0.5)
    >>> log = smooth.sample(torch.zeros(4, 2), n0=10, n=1000)
    >>> cert = smoothing.certify_from_log(log, alpha=0.001, method="cpm")
    >>> cert.radius.shape
    torch.Size([4])
"""

from stabkit.certify._lvm import SELECTIONS as SELECTIONS
from stabkit.certify._lvm import LVMCertificate as LVMCertificate
from stabkit.certify._lvm import Selection as Selection
from stabkit.certify._lvm import lvm_certify as lvm_certify
from stabkit.certify._lvm_maps import MapRadii as MapRadii
from stabkit.certify._lvm_maps import lvm_map_radii as lvm_map_radii
from stabkit.certify._maps import MAP_KINDS as MAP_KINDS
from stabkit.certify._maps import MAP_LIPSCHITZ as MAP_LIPSCHITZ
from stabkit.certify._maps import TEMPERATURES as TEMPERATURES
from stabkit.certify._maps import MapKind as MapKind
from stabkit.certify._maps import simplex_maps as simplex_maps
from stabkit.certify._maps import sparsemax as sparsemax
from stabkit.certify._smoothing import Smooth as Smooth
from stabkit.certify._smoothing import SmoothCertificate as SmoothCertificate
from stabkit.certify._smoothing import SmoothingLog as SmoothingLog
from stabkit.certify._smoothing import certify_from_log as certify_from_log
from stabkit.certify._smoothing import gaussian_augment as gaussian_augment
from stabkit.certify._smoothing import load_log as load_log
from stabkit.certify._smoothing import merge_logs as merge_logs
from stabkit.certify._smoothing import save_log as save_log

__all__ = [
    "LVMCertificate",
    "MAP_KINDS",
    "MAP_LIPSCHITZ",
    "MapKind",
    "MapRadii",
    "SELECTIONS",
    "Selection",
    "Smooth",
    "SmoothCertificate",
    "SmoothingLog",
    "TEMPERATURES",
    "certify_from_log",
    "gaussian_augment",
    "load_log",
    "lvm_certify",
    "lvm_map_radii",
    "merge_logs",
    "save_log",
    "simplex_maps",
    "sparsemax",
]
