"""Deterministic ℓ2 certificates from a Lipschitz bound (thesis arXiv:2510.25282, chapters 2 and 4).

One forward pass of a network with a known Lipschitz constant gives a certified radius per input: the margin
certificate (Tsuzuku et al., arXiv 1802.04034) and its last-layer-normalised refinement (LLN, Singla et al.,
ICLR 2022). :func:`certify_model` picks the right one for a model and reads the model's guarantee;
:func:`soundness_audit` attacks every certified point inside its own ball to check the guarantee empirically.
All of them return the core :class:`stabkit.certify.Certificate`.

Example:
    >>> import torch
    >>> from stabkit.certify import margin
    >>> cert = margin.margin_certificate(torch.tensor([[3.0, 1.0, 0.0]]), lipschitz=1.0)
    >>> round(cert.radius.item(), 4)
    1.4142
"""

from stabkit.certify._audit import AuditResult as AuditResult
from stabkit.certify._audit import soundness_audit as soundness_audit
from stabkit.certify._margin import certify_model as certify_model
from stabkit.certify._margin import lln_certificate as lln_certificate
from stabkit.certify._margin import margin_certificate as margin_certificate
from stabkit.certify._margin import network_lipschitz as network_lipschitz

__all__ = [
    "AuditResult",
    "certify_model",
    "lln_certificate",
    "margin_certificate",
    "network_lipschitz",
    "soundness_audit",
]
