"""Curvature of the loss in parameter space (thesis arXiv:2510.25282, chapter 5).

* Hessian-vector products and spectra: :class:`HessianOperator`, :func:`top_eigenvalues` (Lanczos),
  :func:`power_eigenpairs`, :func:`hutchinson_trace`, :func:`slq_density`, :func:`spectral_density`.
* Weierstrass smoothing of the loss: :func:`smoothed_loss` (Monte Carlo), :func:`second_order_smoothed_loss`,
  and the last-layer bounds :func:`last_layer_hessian_bound`, :func:`last_layer_smoothing`,
  :func:`weierstrass_hessian_bound`.
* Regularisers: :class:`ActivationDecay` (an ``objective`` for :func:`stabkit.train.fit`), :class:`SAM`.
* Landscapes: :func:`filter_normalized_direction`, :func:`loss_slice_1d`, :func:`loss_slice_2d`.

All vectors live in one flat space: the chosen parameters (``params=[names]``, default all), flattened in
``model.named_parameters()`` order (:class:`ParameterSpace`).

References:
    Delattre et al., "Activation Decay by Loss Smoothing to Enhance Generalization", ICLR 2025 submission
    (OpenReview InRaT76E2S). The paper has no public code; the method here is reconstructed from its abstract
    and reviews.
"""

from stabkit.curvature._activation_decay import ActivationDecay, Penultimate, penultimate
from stabkit.curvature._functional import ParameterSpace
from stabkit.curvature._hessian import (
    Eigen,
    HessianOperator,
    SpectralDensity,
    TraceEstimate,
    hutchinson_trace,
    power_eigenpairs,
    slq_density,
    spectral_density,
    top_eigenvalues,
)
from stabkit.curvature._landscape import (
    Slice1D,
    Slice2D,
    filter_normalized_direction,
    loss_slice_1d,
    loss_slice_2d,
)
from stabkit.curvature._sam import SAM
from stabkit.curvature._smoothing import (
    LastLayerSmoothing,
    SecondOrderSmoothedLoss,
    SmoothedLoss,
    last_layer_hessian_bound,
    last_layer_smoothing,
    second_order_smoothed_loss,
    smoothed_loss,
    weierstrass_hessian_bound,
)

__all__ = [
    "SAM",
    "ActivationDecay",
    "Eigen",
    "HessianOperator",
    "LastLayerSmoothing",
    "ParameterSpace",
    "Penultimate",
    "SecondOrderSmoothedLoss",
    "Slice1D",
    "Slice2D",
    "SmoothedLoss",
    "SpectralDensity",
    "TraceEstimate",
    "filter_normalized_direction",
    "hutchinson_trace",
    "last_layer_hessian_bound",
    "last_layer_smoothing",
    "loss_slice_1d",
    "loss_slice_2d",
    "penultimate",
    "power_eigenpairs",
    "second_order_smoothed_loss",
    "slq_density",
    "smoothed_loss",
    "spectral_density",
    "top_eigenvalues",
    "weierstrass_hessian_bound",
]
