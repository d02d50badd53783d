"""The certification vocabulary shared by every certifier: ``ABSTAIN``, :class:`Certificate`, :data:`Method`.

This module is the ground floor of :mod:`stabkit.certify`: it imports nothing from the package, so every family
(margin, randomized smoothing, LVM-RS) and every consumer (:func:`stabkit.certify.certified_accuracy`) can use it
without import cycles.

Every certifier returns a NamedTuple whose first two fields are ``prediction`` and ``radius``, as in
:class:`Certificate`; a family adds its own fields after them (:class:`stabkit.certify.smoothing.SmoothCertificate`
adds ``p_a, p_b``, :class:`stabkit.certify.smoothing.LVMCertificate` the map it chose). Code that consumes
certificates reads ``cert.prediction`` and ``cert.radius`` (or :func:`as_certificate`) and works for all of them.
"""

from __future__ import annotations

from typing import Literal, NamedTuple, get_args

import torch

__all__ = ["ABSTAIN", "Certificate", "METHODS", "Method", "as_certificate"]

#: The prediction of a certifier that abstains (returns no class); its radius is 0.
ABSTAIN = -1

#: Multiple-testing methods that turn class counts into the bounds ``p_a, p_b`` of a randomized-smoothing
#: certificate (:func:`stabkit.certify.stats.class_bounds`, :func:`stabkit.certify.smoothing.certify_from_log`).
Method = Literal["cohen", "bonferroni", "max_upper", "cpm", "uncorrected"]
METHODS: tuple[str, ...] = get_args(Method)


class Certificate(NamedTuple):
    """Prediction and certified ℓ2 radius of each input: the fields every certificate starts with.

    Attributes:
        prediction: ``(B,)`` int64, the certified class, or ``ABSTAIN`` (-1) where the certifier abstains.
        radius: ``(B,)`` certified ℓ2 radius: no input within this distance of ``x`` changes the prediction
            (with probability ``1 - alpha`` for the randomized certifiers); 0 where the certifier abstains,
            ``inf`` where no other class can ever win, never negative.
    """

    prediction: torch.Tensor
    radius: torch.Tensor


def as_certificate(certificate: object) -> Certificate:
    """The core :class:`Certificate` of any family's certificate (its ``prediction`` and ``radius`` fields).

    Args:
        certificate: a :class:`Certificate` or any certificate NamedTuple of :mod:`stabkit.certify`.

    Returns:
        ``Certificate(prediction, radius)``.

    Raises:
        TypeError: if ``certificate`` has no ``prediction`` and ``radius`` tensors.

    Example:
        >>> cert = Certificate(torch.tensor([1]), torch.tensor([0.5]))
        >>> as_certificate(cert) == cert
        True
    """
    prediction = getattr(certificate, "prediction", None)
    radius = getattr(certificate, "radius", None)
    if not isinstance(prediction, torch.Tensor) or not isinstance(radius, torch.Tensor):
        raise TypeError(
            f"expected a certificate with tensor fields `prediction` and `radius` (e.g. stabkit.certify.Certificate), "
            f"got {type(certificate).__name__}"
        )
    return Certificate(prediction, radius)
