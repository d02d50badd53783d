"""Spectral norms of dense and convolutional layers: Gram iteration (certified upper bounds) and the baselines.

Dense: :func:`gram_iteration`, :func:`gram_iteration_bounds`, :func:`power_iteration`, :func:`spectral_norm_exact`,
:func:`spectral_norm_upper`.

Convolutions (kernel (c_out, c_in, kh, kw), input size n or (h, w)): circular padding exact
(:func:`conv_spectral_norm_exact`) and bounded by Gram iteration on the DFT blocks (:func:`conv_gram_iteration`,
:func:`conv_gram_iteration_bounds`); zero padding bounded for any input size by :func:`kernel_gram_iteration` and
:func:`conv_grid_bound`; baselines :func:`conv_power_iteration` (lower), :func:`conv_lipgrid`,
:func:`conv_fantastic_four`; the explicit matrix :func:`conv_matrix` as ground truth for small cases.

Which side of the truth: ``*_gram_iteration``, ``conv_grid_bound``, ``spectral_norm_upper``, ``conv_lipgrid`` and
``conv_fantastic_four`` bound σ1 from above; ``*power_iteration`` from below; ``*_exact`` are exact up to rounding.
"""

from stabkit.norms._conv import (
    conv_fantastic_four,
    conv_gram_iteration,
    conv_gram_iteration_bounds,
    conv_lipgrid,
    conv_matrix,
    conv_power_iteration,
    conv_spectral_norm_exact,
    kernel_gram_iteration,
)
from stabkit.norms._dense import (
    SpectralBounds,
    gram_iteration,
    gram_iteration_bounds,
    power_iteration,
    spectral_norm_exact,
)
from stabkit.norms._grid import conv_grid_bound, spectral_norm_upper

__all__ = [
    "SpectralBounds",
    "conv_fantastic_four",
    "conv_gram_iteration",
    "conv_grid_bound",
    "conv_gram_iteration_bounds",
    "conv_lipgrid",
    "conv_matrix",
    "conv_power_iteration",
    "conv_spectral_norm_exact",
    "kernel_gram_iteration",
    "gram_iteration",
    "gram_iteration_bounds",
    "power_iteration",
    "spectral_norm_exact",
    "spectral_norm_upper",
]
