"""Argument validation shared by the whole package.

Every public function validates its inputs with these helpers so that bad input gives one kind of message:
what was wrong, and what to do about it.
"""

from __future__ import annotations

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


def check_positive_float(name: str, value: object, *, allow_zero: bool = False) -> float:
    """Check that ``value`` is a finite real number > 0 (or >= 0 with ``allow_zero``); return it as float."""
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real number, got {value!r}") from None
    if not (v >= 0 if allow_zero else v > 0) or v != v or v == float("inf"):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return v


def check_probability(name: str, value: object, *, open_interval: bool = True) -> float:
    """Check that ``value`` lies in (0, 1) (or [0, 1]); return it as float."""
    v = float(value)  # type: ignore[arg-type]
    ok = 0.0 < v < 1.0 if open_interval else 0.0 <= v <= 1.0
    if not ok:
        interval = "(0, 1)" if open_interval else "[0, 1]"
        raise ValueError(f"{name} must lie in {interval}, got {value!r}")
    return v


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
