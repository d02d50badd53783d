"""Certified robustness (thesis arXiv:2510.25282, chapters 4, 6 and 6b), in one vocabulary.

Every certifier returns a NamedTuple that starts with the fields of :class:`Certificate` (``prediction``,
``radius``), and :func:`certified_accuracy` reads any of them. The families live in submodules:

* :mod:`stabkit.certify.margin` – Lipschitz-margin and LLN certificates of a network, in one forward pass
  (chapter 4): ``margin.certify_model(model, x)``, and the soundness audit that attacks certified points.
* :mod:`stabkit.certify.smoothing` – randomized smoothing (chapter 6): :class:`~stabkit.certify.smoothing.Smooth`,
  sampling logs, certification of a log with any ``method`` (:data:`Method`), LVM-RS.
* :mod:`stabkit.certify.stats` – the statistics behind it (chapter 6b): Clopper–Pearson, Bernstein, Bonferroni and
  CPM bounds; Cohen's and the Lipschitz-aware radii; the smoothed-Lipschitz bound.

Example:
    >>> import torch
    >>> from stabkit import certify
    >>> cert = certify.margin.margin_certificate(torch.tensor([[3.0, 1.0], [0.0, 2.0]]), lipschitz=1.0)
    >>> certify.certified_accuracy(cert, torch.tensor([0, 0]), [0.0, 1.0]).tolist()
    [0.5, 0.5]
"""

from stabkit.certify import margin, smoothing, stats
from stabkit.certify._margin import certified_accuracy
from stabkit.certify._types import ABSTAIN, METHODS, Certificate, Method, as_certificate

__all__ = [
    "ABSTAIN",
    "METHODS",
    "Certificate",
    "Method",
    "as_certificate",
    "certified_accuracy",
    "margin",
    "smoothing",
    "stats",
]

# Until the other branches of the 0.1 development cycle have moved to the submodules, the names that used to live
# in this flat namespace still resolve here (not listed in __all__ or in the documentation). Two do not come
# back: `certify` (now `margin.certify_model`) and the 4-field smoothing `Certificate` (now
# `smoothing.SmoothCertificate`; `Certificate` is the core type).
_MOVED = {name: module for module in (margin, smoothing, stats) for name in module.__all__}


def __getattr__(name: str):
    module = _MOVED.get(name)
    if module is None:
        raise AttributeError(f"module 'stabkit.certify' has no attribute {name!r}")
    return getattr(module, name)
