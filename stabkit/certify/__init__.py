"""Certified robustness: margin certificates and randomized smoothing (thesis chapters 4, 6, 6b).

Each block of re-exports below belongs to one family of certificates (and one branch); the implementations
live in private modules.
"""

# --- randomized-smoothing statistics: intervals and radii (branch rsstats) ---
from stabkit.certify._intervals import (
    ClassBounds,
    CPMBounds,
    Interval,
    bernstein_interval,
    bernstein_shift,
    bonferroni_bounds,
    certificate_validity_probability,
    class_bounds,
    clopper_pearson,
    cpm_bounds,
    cpm_buckets,
    multinomial_outcomes,
)
from stabkit.certify._radii import (
    local_lipschitz,
    radius_mono,
    radius_mono_lip,
    radius_multi,
    radius_multi_lip,
    ramp_offset,
    smoothed_lipschitz_bound,
)

__all__ = [  # rsstats names; other branches extend this list
    "ClassBounds",
    "CPMBounds",
    "Interval",
    "bernstein_interval",
    "bernstein_shift",
    "bonferroni_bounds",
    "certificate_validity_probability",
    "class_bounds",
    "clopper_pearson",
    "cpm_bounds",
    "cpm_buckets",
    "multinomial_outcomes",
    "local_lipschitz",
    "radius_mono",
    "radius_mono_lip",
    "radius_multi",
    "radius_multi_lip",
    "ramp_offset",
    "smoothed_lipschitz_bound",
]
# --- end rsstats ---

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

__all__ += [
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

# --- Lipschitz-margin certificates and their soundness audit, chapter 4 (branch lipcert) ---
from stabkit.certify._audit import AuditResult, soundness_audit  # noqa: E402
from stabkit.certify._margin import (  # noqa: E402
    MarginCertificate,
    certified_accuracy,
    certify,
    lln_certificate,
    margin_certificate,
    network_lipschitz,
)

__all__ += [
    "AuditResult",
    "MarginCertificate",
    "certified_accuracy",
    "certify",
    "lln_certificate",
    "margin_certificate",
    "network_lipschitz",
    "soundness_audit",
]
# --- end lipcert ---
