"""Certified robustness: margin certificates and randomized smoothing (thesis chapters 4, 6, 6b).

The implementations live in private modules, one per family; this module re-exports the public names.

* Lipschitz-margin certificates (chapter 4): :func:`certify`, margin and LLN radii, certified accuracy, and
  :func:`soundness_audit` (attacks every certified point within its radius).
* Randomized smoothing (chapter 6): :class:`Smooth` (PREDICT / CERTIFY), sampling logs, LVM-RS.
* Its statistics (chapter 6b): Clopper–Pearson, Bernstein, Bonferroni, CPM intervals; Cohen and Lipschitz-aware
  radii; the smoothed-Lipschitz bound.
"""

# --- randomized-smoothing statistics: intervals and radii ---
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

__all__ = [
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

# --- randomized smoothing: sampling, PREDICT/CERTIFY, logs, LVM-RS ---
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

# --- Lipschitz-margin certificates and their soundness audit ---
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
