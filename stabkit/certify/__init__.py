"""Certified robustness: deterministic Lipschitz-margin certificates and randomized smoothing (chapters 4, 6).

Each block of re-exports below belongs to one family of certificates; the implementations live in private
modules (``_margin``, ``_audit``, …).
"""

# --- Lipschitz-margin certificates and their soundness audit (chapter 4) ---
from stabkit.certify._audit import AuditResult, soundness_audit
from stabkit.certify._margin import (
    MarginCertificate,
    certified_accuracy,
    certify,
    lln_certificate,
    margin_certificate,
    network_lipschitz,
)

__all__ = [
    # Lipschitz-margin certificates (chapter 4)
    "AuditResult",
    "MarginCertificate",
    "certified_accuracy",
    "certify",
    "lln_certificate",
    "margin_certificate",
    "network_lipschitz",
    "soundness_audit",
]
