"""Argument validation shared by the whole package.

Every public function validates its inputs with these helpers so that bad input gives one kind of message:
what was wrong, and what to do about it. The scalar checks return the value as a Python number; the array checks
(:func:`check_counts`, :func:`check_probabilities`) return float64 numpy arrays, for the statistics of
:mod:`stabkit.certify.stats`, which work on numpy arrays of counts and broadcast.
"""

from __future__ import annotations

import math
from collections.abc import Collection

import numpy as np
import torch


def check_tensor(name: str, x: object, *, min_ndim: int = 0, ndim: int | None = None) -> torch.Tensor:
    """Check that ``x`` is a tensor of the right rank with finite values; return it."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(x.shape)}")
    if x.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimensions, got shape {tuple(x.shape)}")
    if (x.is_floating_point() or x.is_complex()) and not bool(torch.isfinite(x).all()):
        raise ValueError(
            f"{name} contains NaN or infinite values; check the weights (e.g. a diverged training run) "
            "before computing bounds on them"
        )
    return x


def check_positive_int(name: str, value: object, *, minimum: int = 1) -> int:
    """Check that ``value`` is an int ``>= minimum`` (bools are refused); return it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _real(name: str, value: object, what: str) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be {what}, got {value!r}")
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be {what}, got {value!r}") from None


def check_positive_float(name: str, value: object, *, allow_zero: bool = False, allow_inf: bool = False) -> float:
    """Check that ``value`` is a real number > 0 (``>= 0`` with ``allow_zero``), finite unless ``allow_inf``."""
    v = _real(name, value, "a real number")
    if not (v >= 0 if allow_zero else v > 0) or math.isnan(v) or (v == math.inf and not allow_inf):
        bound = ">= 0" if allow_zero else "> 0"
        finite = "" if allow_inf else "finite "
        extra = " (math.inf allowed)" if allow_inf else ""
        raise ValueError(f"{name} must be a {finite}number {bound}{extra}, got {value!r}")
    return v


def check_probability(name: str, value: object, *, open_interval: bool = True) -> float:
    """Check that ``value`` lies in (0, 1) (or [0, 1]); return it as float."""
    interval = "(0, 1)" if open_interval else "[0, 1]"
    v = _real(name, value, f"a real number in {interval}")
    ok = 0.0 < v < 1.0 if open_interval else 0.0 <= v <= 1.0
    if not ok:
        example = " (e.g. 0.001)" if name == "alpha" else ""
        raise ValueError(f"{name} must lie in {interval}{example}, got {value!r}")
    return v


def check_choice(name: str, value: object, choices: Collection[str]) -> str:
    """Check that ``value`` is one of the option strings ``choices``; return it."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def check_int_valued(name: str, value: object, *, minimum: int = 0) -> np.ndarray:
    """Check that ``value`` (a number or an array) holds integers ``>= minimum``, as int or integral float.

    Returns:
        The values as a float64 array (0-d for a scalar), so that they broadcast with other statistics.
    """
    a = check_counts(name, value)
    if np.any(a < minimum):
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return a


def check_counts(name: str, x: object) -> np.ndarray:
    """Check that ``x`` holds non-negative integer counts (ints, or floats with integral values); float64 array."""
    a = np.asarray(x)
    if a.dtype == bool or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise ValueError(f"{name} must hold non-negative integer counts, got dtype {a.dtype}")
    a = a.astype(np.float64)
    if not np.all(np.isfinite(a)) or np.any(a < 0) or np.any(a != np.round(a)):
        bad = a[~(np.isfinite(a) & (a >= 0) & (a == np.round(a)))].ravel()[:3]
        raise ValueError(f"{name} must hold non-negative integer counts (no NaN, no fractions), got {bad.tolist()}")
    return a


def check_probabilities(name: str, p: object) -> np.ndarray:
    """Check that ``p`` (a number or an array) holds probabilities in [0, 1]; return a float64 array."""
    try:
        a = np.asarray(p, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a probability in [0, 1] (a confidence bound), got {p!r}") from None
    if np.any(np.isnan(a)) or np.any(a < 0) or np.any(a > 1):
        raise ValueError(f"{name} must be a probability in [0, 1] (a confidence bound), got {p!r}")
    return a


def scalar_or_array(x: object) -> np.ndarray | float:
    """The return convention of the numpy statistics: a Python float for 0-d input, a float64 array otherwise."""
    x = np.asarray(x, dtype=np.float64)
    return float(x) if x.ndim == 0 else x


def is_transformed(t: torch.Tensor) -> bool:
    """True if ``t`` is a torch.func wrapper or a torch.func transform is running (write no state, and reach no
    numpy or scipy code: a wrapper has no storage)."""
    return (
        bool(torch._C._functorch.is_functorch_wrapped_tensor(t))
        or torch._C._functorch.peek_interpreter_stack() is not None
    )


def resolve_generator(generator: torch.Generator | None, device: torch.device | str) -> torch.Generator:
    """Return the generator to draw from on ``device``.

    stabkit never draws from torch's global RNG. ``None`` means a fresh generator seeded with 0, so that a call
    without a generator is still deterministic. A generator on another device than the data is an error, since
    drawing on one device and copying to another would give different numbers on CPU and GPU.
    """
    device = torch.device(device)
    if generator is None:
        return torch.Generator(device=device).manual_seed(0)
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if generator.device.type != device.type:
        raise ValueError(
            f"generator is on {generator.device} but the data is on {device}; "
            f"create it with torch.Generator(device={str(device)!r})"
        )
    return generator
