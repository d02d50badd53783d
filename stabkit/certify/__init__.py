"""Certified robustness: margin certificates and randomized smoothing (thesis chapters 4, 6, 6b)."""

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
