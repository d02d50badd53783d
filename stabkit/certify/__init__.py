"""Certified robustness: margin certificates and randomized smoothing (thesis chapters 4 and 6)."""

# --- randomized smoothing: sampling, PREDICT/CERTIFY, logs, LVM-RS (rssmooth) ---
from stabkit.certify._lvm import (
    MAP_KINDS,
    MAP_LIPSCHITZ,
    SELECTIONS,
    TEMPERATURES,
    LVMCertificate,
    lvm_certify,
    simplex_maps,
    sparsemax,
)
from stabkit.certify._smoothing import (
    ABSTAIN,
    INTERVALS,
    Certificate,
    Smooth,
    SmoothingLog,
    certify_from_log,
    gaussian_augment,
    load_log,
    save_log,
)

__all__ = [
    # randomized smoothing (rssmooth)
    "ABSTAIN",
    "INTERVALS",
    "MAP_KINDS",
    "MAP_LIPSCHITZ",
    "SELECTIONS",
    "TEMPERATURES",
    "Certificate",
    "LVMCertificate",
    "Smooth",
    "SmoothingLog",
    "certify_from_log",
    "gaussian_augment",
    "load_log",
    "lvm_certify",
    "save_log",
    "simplex_maps",
    "sparsemax",
]
# --- end randomized smoothing (rssmooth) ---
