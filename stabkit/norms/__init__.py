"""Spectral norms of dense and convolutional layers: Gram iteration (certified upper bounds) and the baselines.

One entry point: :func:`spectral_norm_bound` returns a certified upper bound within a requested relative precision
by the cheapest method (Gram iteration with early stopping, or the exact method) and says which it used.

Dense: :func:`gram_iteration`, :func:`gram_iteration_bounds`, :func:`power_iteration`, :func:`spectral_norm_exact`,
:func:`spectral_norm_upper`.

Convolutions (kernel (c_out, c_in, kh, kw), input size n or (h, w)): circular padding exact
(:func:`conv_spectral_norm_exact`) and bounded by Gram iteration on the DFT blocks (:func:`conv_gram_iteration`,
:func:`conv_gram_iteration_bounds`); zero padding bounded for any input size by :func:`kernel_gram_iteration` and
:func:`conv_grid_bound`; baselines :func:`conv_power_iteration` (lower), :func:`conv_lipgrid`,
:func:`conv_fantastic_four`; the explicit matrix :func:`conv_matrix` as ground truth for small cases.

Which side of the truth: ``spectral_norm_bound``, ``*gram_iteration*``, ``kernel_gram_iteration``,
``conv_grid_bound``, ``spectral_norm_upper`` and ``conv_lipgrid`` are certified upper bounds, float32 included
(rounding is accounted for, Note [certified rounding] in ``_dense.py``); ``conv_fantastic_four`` is an *estimate*
(power iterations approach σ1 from below) unless called with ``certified=True``; ``*power_iteration`` are lower
estimates; ``*_exact`` are exact up to rounding.
"""

from stabkit.norms._auto import NormBound, spectral_norm_bound
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
    "NormBound",
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
    "spectral_norm_bound",
    "spectral_norm_exact",
    "spectral_norm_upper",
]
