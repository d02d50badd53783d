"""The statistics of randomized smoothing (thesis arXiv:2510.25282, chapters 6 and 6b): intervals and radii.

Confidence bounds on class probabilities from counts (Clopper–Pearson, empirical Bernstein, Bonferroni, the
class-partitioning method CPM of Delattre et al., arXiv 2504.02412) and the certified radii built from them
(Cohen's ``R_mono``/``R_multi``, the Lipschitz-aware radii, the smoothed-Lipschitz bound). Everything works on
numpy arrays and broadcasts over leading axes, so one call treats every test point of a
:class:`stabkit.certify.smoothing.SmoothingLog`.

Example:
    >>> from stabkit.certify import stats
    >>> p_a = stats.clopper_pearson(99_000, 100_000, alpha=0.001, sided="lower").low
    >>> round(stats.radius_mono(p_a, sigma=0.25), 4)
    0.5725
"""

from stabkit.certify._counterexample import empirical_margin_event_probability as empirical_margin_event_probability
from stabkit.certify._intervals import ClassBounds as ClassBounds
from stabkit.certify._intervals import CPMBounds as CPMBounds
from stabkit.certify._intervals import Criterion as Criterion
from stabkit.certify._intervals import Interval as Interval
from stabkit.certify._intervals import Sided as Sided
from stabkit.certify._intervals import bernstein_interval as bernstein_interval
from stabkit.certify._intervals import bernstein_shift as bernstein_shift
from stabkit.certify._intervals import bonferroni_bounds as bonferroni_bounds
from stabkit.certify._intervals import certificate_validity_probability as certificate_validity_probability
from stabkit.certify._intervals import class_bounds as class_bounds
from stabkit.certify._intervals import clopper_pearson as clopper_pearson
from stabkit.certify._intervals import cpm_bounds as cpm_bounds
from stabkit.certify._intervals import cpm_buckets as cpm_buckets
from stabkit.certify._intervals import multinomial_outcomes as multinomial_outcomes
from stabkit.certify._radii import LipMethod as LipMethod
from stabkit.certify._radii import SmoothedConstant as SmoothedConstant
from stabkit.certify._radii import local_lipschitz as local_lipschitz
from stabkit.certify._radii import radius_mono as radius_mono
from stabkit.certify._radii import radius_mono_lip as radius_mono_lip
from stabkit.certify._radii import radius_multi as radius_multi
from stabkit.certify._radii import radius_multi_lip as radius_multi_lip
from stabkit.certify._radii import ramp_offset as ramp_offset
from stabkit.certify._radii import smoothed_lipschitz_bound as smoothed_lipschitz_bound

__all__ = [
    "CPMBounds",
    "ClassBounds",
    "Criterion",
    "Interval",
    "LipMethod",
    "Sided",
    "SmoothedConstant",
    "bernstein_interval",
    "bernstein_shift",
    "bonferroni_bounds",
    "certificate_validity_probability",
    "empirical_margin_event_probability",
    "class_bounds",
    "clopper_pearson",
    "cpm_bounds",
    "cpm_buckets",
    "local_lipschitz",
    "multinomial_outcomes",
    "radius_mono",
    "radius_mono_lip",
    "radius_multi",
    "radius_multi_lip",
    "ramp_offset",
    "smoothed_lipschitz_bound",
]
