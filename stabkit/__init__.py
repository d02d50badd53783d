"""stabkit: the reproducible companion to *On the Stability of Neural Networks in Deep Learning* (Delattre, 2025).

Submodules, imported on first use (``import stabkit as sk; sk.norms.gram_iteration(...)``), so that
``import stabkit`` stays cheap:

* :mod:`stabkit.norms` – spectral norms by Gram iteration and the baselines (chapter 3).
* :mod:`stabkit.lipschitz` – network-level Lipschitz bounds.
* :mod:`stabkit.layers`, :mod:`stabkit.models` – Lipschitz-by-design layers and networks (chapters 3b–4).
* :mod:`stabkit.losses`, :mod:`stabkit.attacks` – Lipschitz-margin losses; ℓ2 attacks.
* :mod:`stabkit.certify` – margin certificates and randomized smoothing (chapters 4, 6).
* :mod:`stabkit.curvature` – Hessian spectra, loss smoothing, activation decay, SAM (chapter 5).
* :mod:`stabkit.sensitivity` – input sensitivity of a network at data points (chapter 1).
* :mod:`stabkit.data`, :mod:`stabkit.train` – data sets and the training loop shared by the notebooks (the
  ``[data]`` extra).
* :mod:`stabkit.support`, :mod:`stabkit.reproduce` – notebook support and the reproduction CLI (the
  ``[notebooks]`` extra).

References:
    B. Delattre, *On the Stability of Neural Networks in Deep Learning*, PhD thesis, Université Paris-Dauphine–PSL,
    2025, arXiv:2510.25282.
"""

import importlib

__version__ = "0.1.0"

_SUBMODULES = (
    "attacks",
    "certify",
    "curvature",
    "data",
    "layers",
    "lipschitz",
    "losses",
    "models",
    "norms",
    "reproduce",
    "sensitivity",
    "support",
    "train",
)
__all__ = ["__version__", *_SUBMODULES]


def __getattr__(name: str):
    # PEP 562: `sk.norms` imports stabkit.norms on first access (and caches it as an attribute)
    if name in _SUBMODULES:
        return importlib.import_module(f"stabkit.{name}")
    raise AttributeError(f"module 'stabkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_SUBMODULES])
