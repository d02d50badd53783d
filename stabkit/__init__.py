"""stabkit: the reproducible companion to *On the Stability of Neural Networks in Deep Learning* (Delattre, 2025).

Submodules (imported on demand so that ``import stabkit`` stays cheap):

* :mod:`stabkit.norms` – spectral norms by Gram iteration and the baselines (chapter 3).
* :mod:`stabkit.lipschitz` – network-level Lipschitz bounds.
* :mod:`stabkit.layers`, :mod:`stabkit.models` – Lipschitz-by-design layers and networks (chapters 3b–4).
* :mod:`stabkit.curvature` – Hessian spectra, loss smoothing, activation decay, SAM (chapter 5).
* :mod:`stabkit.certify` – margin certificates and randomized smoothing (chapters 4, 6).
* :mod:`stabkit.data`, :mod:`stabkit.train` – data sets and the training loop shared by the notebooks.
* :mod:`stabkit.support`, :mod:`stabkit.reproduce` – notebook support and the reproduction CLI.
"""

__version__ = "0.1.0"
