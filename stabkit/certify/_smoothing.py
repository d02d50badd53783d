"""Randomized smoothing: Monte-Carlo sampling of a smoothed classifier, PREDICT and CERTIFY.

The expensive part of randomized smoothing is the forward passes on noisy copies of the inputs; the confidence
intervals and radii computed from the resulting counts cost nothing in comparison. So sampling and certifying
are separate here: :meth:`Smooth.sample` records, per test point, the class counts of the selection (``n0``)
and estimation (``n``) samples and, on request, the statistics LVM-RS needs (per-map means and variances over
a grid of temperatures); the record is a :class:`SmoothingLog` that can be written to disk (:func:`save_log`)
and certified later with any method (:func:`certify_from_log`, :func:`stabkit.certify.smoothing.lvm_certify`)
without sampling again. :meth:`Smooth.certify` is the two steps chained with Cohen's protocol.

Note [noise stream]: the noisy samples of all test points form one stream, point after point (``n0`` selection
samples of every point first, then ``n`` estimation samples of every point), cut into forward batches of
``batch_size`` rows that may span several test points. Small models are then never evaluated on tiny batches,
and the noise drawn for a test point depends only on the generator's state, the input shape, ``batch_size``
and the point's position in ``x``: the same generator state and ``batch_size`` give the same certificate.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from scipy import stats

from stabkit._checks import (
    check_choice,
    check_positive_float,
    check_positive_int,
    check_probability,
    check_tensor,
    resolve_generator,
)
from stabkit.certify._intervals import class_bounds
from stabkit.certify._maps import MapKind, check_map_kinds, simplex_maps
from stabkit.certify._radii import radius_multi
from stabkit.certify._types import ABSTAIN, METHODS, Method

#: The settings of Cohen et al.'s CERTIFY experiments (arXiv 1902.02918): n0 = 100, n = 100 000, alpha = 0.001.
DEFAULT_N0 = 100
DEFAULT_N = 100_000
DEFAULT_ALPHA = 0.001


class SmoothCertificate(NamedTuple):
    """Randomized-smoothing certificates of a batch of test points; the first two fields are those of
    :class:`stabkit.certify.Certificate`.

    Attributes:
        prediction: (B,) int64, the smoothed classifier's class, or ``ABSTAIN`` (-1).
        radius: (B,) float64, certified ℓ2 radius; 0 where the certifier abstains.
        p_a: (B,) float64, lower confidence bound on the top class's probability under noise.
        p_b: (B,) float64, upper confidence bound on the runner-up's probability (``1 - p_a`` for the
            one-class radius R_mono, where the runner-up is all other classes together).
    """

    prediction: torch.Tensor
    radius: torch.Tensor
    p_a: torch.Tensor
    p_b: torch.Tensor


class SmoothingLog(NamedTuple):
    """Everything certification needs from the noisy forward passes of a batch of test points.

    Counts are over the argmax of the base classifier's logits. The ``mean_*``/``var_*`` arrays are ``None``
    unless the log was sampled with ``temperatures``; their map axis follows ``map_kinds`` and their
    temperature axis ``temperatures``. Variances are unbiased (divided by ``n - 1``).

    Attributes:
        sigma: noise standard deviation.
        n0, n: number of selection and estimation samples per point.
        labels: (B,) int64 true labels, -1 where unknown.
        counts_selection: (B, C) int64 class counts of the ``n0`` selection samples.
        counts_estimation: (B, C) int64 class counts of the ``n`` estimation samples.
        temperatures: (T,) float64 temperature grid, or ``None``.
        map_kinds: names of the simplex maps (``("softmax", "sparsemax")``), or ``None``.
        mean_selection, var_selection: (B, K, T, C) float64 per-class mean and variance of ``map(T z)`` over
            the selection samples, or ``None``.
        mean_estimation, var_estimation: the same over the estimation samples, or ``None``.
    """

    sigma: float
    n0: int
    n: int
    labels: np.ndarray
    counts_selection: np.ndarray
    counts_estimation: np.ndarray
    temperatures: np.ndarray | None = None
    map_kinds: tuple[str, ...] | None = None
    mean_selection: np.ndarray | None = None
    var_selection: np.ndarray | None = None
    mean_estimation: np.ndarray | None = None
    var_estimation: np.ndarray | None = None

    @property
    def num_classes(self) -> int:
        return int(self.counts_estimation.shape[1])

    @property
    def n_points(self) -> int:
        return int(self.counts_estimation.shape[0])

    def subset(self, index: np.ndarray | slice) -> SmoothingLog:
        """The log of a subset of the test points (``index`` into the batch axis)."""
        per_point = ("labels", "counts_selection", "counts_estimation")
        per_point += ("mean_selection", "var_selection", "mean_estimation", "var_estimation")
        return self._replace(**{k: getattr(self, k)[index] for k in per_point if getattr(self, k) is not None})


class _Accumulator:
    """Per-point running sums of one sample stream (counts, and map sums for LVM-RS), kept on the device."""

    def __init__(self, n_points, num_classes, device, temperatures, map_kinds):
        self.counts = torch.zeros(n_points * num_classes, dtype=torch.int64, device=device)
        self.num_classes = num_classes
        self.temperatures = temperatures  # (T,) float64 tensor on device, or None
        self.map_kinds = map_kinds
        if temperatures is not None:
            shape = (n_points, len(map_kinds), len(temperatures), num_classes)
            self.sum1 = torch.zeros(shape, dtype=torch.float64, device=device)
            self.sum2 = torch.zeros(shape, dtype=torch.float64, device=device)

    def add(self, point: torch.Tensor, logits: torch.Tensor) -> None:
        # point: (m,) test-point index of each row; logits: (m, C)
        flat = point * self.num_classes + logits.argmax(dim=1)
        self.counts.scatter_add_(0, flat, torch.ones_like(flat))
        if self.temperatures is not None:
            # (m, K, T, C) in float64: the sums of squares over 1e5 samples must not lose the variance
            s = simplex_maps(logits.double(), temperatures=self.temperatures, kinds=self.map_kinds)
            self.sum1.index_add_(0, point, s)
            self.sum2.index_add_(0, point, s * s)

    def finish(self, n: int):
        counts = self.counts.view(-1, self.num_classes).cpu().numpy()
        if self.temperatures is None:
            return counts, None, None
        mean = self.sum1 / n
        # unbiased variance from the running sums; clamp the tiny negative values left by rounding
        var = ((self.sum2 - n * mean * mean) / max(n - 1, 1)).clamp_min_(0.0)
        return counts, mean.cpu().numpy(), var.cpu().numpy()


class Smooth:
    """The Gaussian-smoothed classifier ``g(x) = argmax_c P_{δ~N(0,σ²I)}(f(x+δ) = c)`` of a base ``f``.

    ``predict`` returns ``g(x)`` or abstains, and is wrong with probability at most ``alpha``; ``certify``
    returns ``g(x)`` and a radius ``R`` such that, with probability at least ``1 - alpha`` over the noise,
    ``g`` is constant on the ℓ2 ball of radius ``R`` around ``x``. Both take a batch of test points and
    evaluate the base classifier on batches that mix the noisy copies of several points (Note [noise stream]).

    Args:
        model: base classifier, maps a batch ``(m, *input_shape)`` to logits ``(m, num_classes)``. It is put
            in eval mode while sampling and restored afterwards.
        num_classes: number of classes C.
        sigma: noise standard deviation σ.
        exact_linear: if ``model`` is a ``torch.nn.Linear``, draw its noisy logits directly: ``W(x+δ) + b`` is
            Gaussian with mean ``Wx + b`` and covariance ``σ² W Wᵀ``, so C normal draws per sample replace d
            draws and a d×C product (same distribution, different random numbers than the generic path).

    Example:
        >>> smooth = Smooth(torch.nn.Linear(2, 3), num_classes=3, sigma=0.5)
        >>> cert = smooth.certify(torch.zeros(4, 2), n0=10, n=1000, alpha=0.001)
        >>> cert.prediction.shape, cert.radius.shape
        (torch.Size([4]), torch.Size([4]))

    References:
        Cohen, Rosenfeld, Kolter, "Certified Adversarial Robustness via Randomized Smoothing", ICML 2019
        (arXiv 1902.02918); thesis arXiv:2510.25282, ch. 6.
    """

    ABSTAIN = ABSTAIN

    def __init__(self, model: Callable, num_classes: int, sigma: float, *, exact_linear: bool = True):
        if not callable(model):
            raise TypeError(f"model must be callable (a torch.nn.Module), got {type(model).__name__}")
        self.model = model
        self.num_classes = check_positive_int("num_classes", num_classes, minimum=2)
        self.sigma = check_positive_float("sigma", sigma)
        self.exact_linear = bool(exact_linear) and isinstance(model, torch.nn.Linear)

    # ------------------------------------------------------------------ sampling
    def _check_x(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor("x", x, min_ndim=2)
        if not x.is_floating_point():
            raise ValueError(f"x must be a floating-point tensor, got dtype {x.dtype}")
        if x.shape[0] == 0:
            raise ValueError("x is an empty batch; pass at least one test point, shape (B, *input_shape)")
        return x

    def _logits(self, xb: torch.Tensor) -> torch.Tensor:
        logits = self.model(xb)
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(
                f"model must return logits of shape (batch, {self.num_classes}), got {tuple(logits.shape)}; "
                "check num_classes"
            )
        return logits

    def _stream(self, x, n, batch_size, generator, accumulators):
        """Feed ``n`` noisy samples per point of ``x`` to the accumulators, ``batch_size`` rows a batch."""
        n_points, shape = x.shape[0], x.shape[1:]
        total = n_points * n
        if self.exact_linear:
            weight = self.model.weight.detach().to(torch.float64)  # (C, d)
            # square root of W Wᵀ by eigendecomposition (Cholesky fails when rank W < C)
            evals, evecs = torch.linalg.eigh(weight @ weight.T)
            root = (evecs * evals.clamp_min(0).sqrt()).to(x.dtype)  # (C, C), root @ root.T = W Wᵀ
            clean = self._logits(x)  # (B, C)
        for start in range(0, total, batch_size):
            stop = min(start + batch_size, total)
            point = torch.arange(start, stop, device=x.device) // n  # (m,) test point of each row
            if self.exact_linear:
                eps = torch.randn((stop - start, self.num_classes), generator=generator, device=x.device)
                # (m, C); not torch.addmm: its float64 kernel is ~100x slower here on CPU
                logits = clean[point] + self.sigma * (eps.to(x.dtype) @ root.T)
            else:
                noise = torch.randn((stop - start, *shape), generator=generator, device=x.device, dtype=x.dtype)
                logits = self._logits(noise.mul_(self.sigma).add_(x[point]))  # (m, C)
            accumulators.add(point, logits)

    def sample(
        self,
        x: torch.Tensor,
        *,
        n0: int = DEFAULT_N0,
        n: int = DEFAULT_N,
        batch_size: int = 1024,
        generator: torch.Generator | None = None,
        labels: torch.Tensor | np.ndarray | None = None,
        temperatures: torch.Tensor | np.ndarray | None = None,
        map_kinds: tuple[MapKind, ...] = ("softmax", "sparsemax"),
    ) -> SmoothingLog:
        """Run the noisy forward passes once and record what certification needs.

        Args:
            x: test points, batch first.
            n0: selection samples per point (0 allowed: certifiers that need no selection).
            n: estimation samples per point.
            batch_size: rows per forward pass; a batch may hold samples of several points.
            generator: noise source, on ``x.device``; ``None`` means a fresh generator seeded with 0.
            labels: optional true labels, stored in the log.
            temperatures: if given, also record per-class means and variances of the simplex maps
                ``map_kinds`` at these temperatures (LVM-RS); ``stabkit.certify.smoothing.TEMPERATURES`` is the
                published grid. Costs ``2·K·T·C`` float64 operations per sample.
            map_kinds: simplex maps recorded with ``temperatures``.

        Returns:
            A :class:`SmoothingLog` (numpy arrays on the CPU).

        Shape:
            x: ``(B, *input_shape)``; labels: ``(B,)``.
        """
        x = self._check_x(x)
        n0 = check_positive_int("n0", n0, minimum=0)
        n = check_positive_int("n", n)
        batch_size = check_positive_int("batch_size", batch_size)
        generator = resolve_generator(generator, x.device)
        n_points = x.shape[0]
        if labels is None:
            labels_np = np.full(n_points, -1, dtype=np.int64)
        else:
            labels_np = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels, dtype=np.int64)
            if labels_np.shape != (n_points,):
                raise ValueError(f"labels must have shape ({n_points},), got {labels_np.shape}")
        temps = None
        if temperatures is not None:
            map_kinds = check_map_kinds(map_kinds)
            temps = torch.as_tensor(np.asarray(temperatures, dtype=np.float64), device=x.device).reshape(-1)
            if temps.numel() == 0 or not bool((temps > 0).all()) or not bool(torch.isfinite(temps).all()):
                raise ValueError("temperatures must be a non-empty list of finite positive numbers")
        selection = _Accumulator(n_points, self.num_classes, x.device, temps, map_kinds)
        estimation = _Accumulator(n_points, self.num_classes, x.device, temps, map_kinds)
        training = getattr(self.model, "training", False)
        if hasattr(self.model, "eval"):
            self.model.eval()
        try:
            with torch.no_grad():
                if n0 > 0:
                    self._stream(x, n0, batch_size, generator, selection)
                self._stream(x, n, batch_size, generator, estimation)
        finally:
            if training:
                self.model.train()
        counts0, mean0, var0 = selection.finish(n0)
        counts, mean, var = estimation.finish(n)
        return SmoothingLog(
            sigma=self.sigma,
            n0=n0,
            n=n,
            labels=labels_np,
            counts_selection=counts0,
            counts_estimation=counts,
            temperatures=None if temps is None else temps.cpu().numpy(),
            map_kinds=None if temps is None else tuple(map_kinds),
            mean_selection=mean0 if n0 > 0 else None,
            var_selection=var0 if n0 > 0 else None,
            mean_estimation=mean,
            var_estimation=var,
        )

    # ------------------------------------------------------------------ PREDICT / CERTIFY
    def predict(
        self,
        x: torch.Tensor,
        *,
        n: int = DEFAULT_N,
        alpha: float = DEFAULT_ALPHA,
        batch_size: int = 1024,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Predict ``g(x)``, abstaining unless a two-sided binomial test separates the top two classes.

        With probability at least ``1 - alpha`` the returned class is ``g(x)`` (or ``ABSTAIN``): the top two
        counts ``k1 ≥ k2`` are compared by ``scipy.stats.binomtest(k1, k1 + k2, 0.5)``, abstaining if its
        p-value exceeds ``alpha``.

        Args:
            x: test points, batch first.
            n: noisy samples per point.
            alpha: failure probability.
            batch_size: rows per forward pass.
            generator: noise source on ``x.device`` (``None``: seeded with 0).

        Returns:
            (B,) int64 tensor on ``x.device``: classes, or ``ABSTAIN``.

        References:
            Hung et al., "Rank verification for exponential families", arXiv 1610.03944 (the test);
            Cohen et al., ICML 2019, PREDICT.
        """
        alpha = check_probability("alpha", alpha)
        log = self.sample(x, n0=0, n=n, batch_size=batch_size, generator=generator)
        prediction = np.full(log.n_points, ABSTAIN, dtype=np.int64)
        for i, counts in enumerate(log.counts_estimation):
            top2 = np.argsort(counts, kind="stable")[::-1][:2]
            k1, k2 = int(counts[top2[0]]), int(counts[top2[1]])
            if stats.binomtest(k1, k1 + k2, p=0.5).pvalue <= alpha:
                prediction[i] = top2[0]
        return torch.from_numpy(prediction).to(x.device)

    def certify(
        self,
        x: torch.Tensor,
        *,
        n0: int = DEFAULT_N0,
        n: int = DEFAULT_N,
        alpha: float = DEFAULT_ALPHA,
        batch_size: int = 1024,
        generator: torch.Generator | None = None,
    ) -> SmoothCertificate:
        """Cohen et al.'s CERTIFY: guess the top class on ``n0`` samples, bound its probability on ``n`` more.

        With probability at least ``1 - alpha`` over the noise, a point not abstained on has ``g(x) =
        prediction`` and ``g`` constant on the ℓ2 ball of radius ``radius = σ Φ⁻¹(p_a)``, where ``p_a`` is the
        one-sided Clopper–Pearson lower bound on the top class's probability; abstains when ``p_a ≤ ½``. The
        radius is a lower bound on the smoothed classifier's true robust radius (with that probability). For
        other interval methods, sample once with :meth:`sample` and use :func:`certify_from_log`.

        Args:
            x: test points, batch first.
            n0: selection samples per point.
            n: estimation samples per point.
            alpha: failure probability.
            batch_size: rows per forward pass.
            generator: noise source on ``x.device`` (``None``: seeded with 0).

        Returns:
            :class:`SmoothCertificate` of tensors on ``x.device``.

        Shape:
            x: ``(B, *input_shape)``; every field of the result: ``(B,)``.

        References:
            Cohen, Rosenfeld, Kolter, ICML 2019 (arXiv 1902.02918), Theorem 1 and CERTIFY; thesis
            arXiv:2510.25282, ch. 6.
        """
        alpha = check_probability("alpha", alpha)
        n0 = check_positive_int("n0", n0)
        log = self.sample(x, n0=n0, n=n, batch_size=batch_size, generator=generator)
        cert = certify_from_log(log, alpha=alpha, method="cohen")
        return SmoothCertificate(*(t.to(x.device) for t in cert))


# ---------------------------------------------------------------------- certification from a log
def certify_from_log(log: SmoothingLog, *, alpha: float = DEFAULT_ALPHA, method: Method = "cohen") -> SmoothCertificate:
    """Certify every point of a log with one multiple-testing method, without sampling again.

    The top class is the argmax of the selection counts; the bounds come from the estimation counts
    (:func:`stabkit.certify.stats.class_bounds`), and the radius is ``R_multi = σ/2 (Φ⁻¹(p_a) − Φ⁻¹(p_b))``, which is
    Cohen's ``R_mono = σ Φ⁻¹(p_a)`` when ``p_b = 1 − p_a``. Abstain when it is not positive. Methods, each
    valid with probability at least ``1 - alpha`` per point except ``"uncorrected"``:

    * ``"cohen"``: one-sided Clopper–Pearson ``p_a`` at ``alpha``, ``p_b = 1 − p_a`` (Cohen et al. 2019).
    * ``"bonferroni"``: every class at ``alpha / C``; ``p_b`` the largest upper bound of the other classes.
    * ``"max_upper"``: ``p_a`` and the largest other upper bound, each at ``alpha / 2``.
    * ``"cpm"``: class partitioning of the selection counts into buckets, ``alpha / #buckets`` (Delattre et
      al. 2025).
    * ``"uncorrected"``: ``p_a`` and the upper bounds at ``alpha`` each: can fail with probability up to
      ``2 alpha``; kept to show what the corrections buy.

    Args:
        log: a :class:`SmoothingLog` with selection counts (``n0 > 0``).
        alpha: failure probability.
        method: one of ``stabkit.certify.METHODS`` (the values of the ``Method`` literal).

    Returns:
        :class:`SmoothCertificate` of CPU tensors, one entry per point.

    Raises:
        ValueError: unknown ``method``, or a log without selection counts.

    References:
        Cohen et al., ICML 2019; Delattre, Caillon, Barthélemy, Fagnou, Allauzen, "Bridging the Theoretical
        Gap in Randomized Smoothing", AISTATS 2025 (arXiv 2504.02412); thesis arXiv:2510.25282, ch. 6.
    """
    alpha = check_probability("alpha", alpha)
    check_choice("method", method, METHODS)
    if log.n0 == 0:
        raise ValueError("certify_from_log selects the top class on selection samples: sample with n0 > 0")
    bounds = class_bounds(log.counts_selection, log.counts_estimation, alpha=alpha, method=method)
    p_a = np.asarray(bounds.p_a, dtype=np.float64).reshape(-1)  # (B,)
    p_b = np.asarray(bounds.p_b, dtype=np.float64).reshape(-1)
    radius = np.asarray(radius_multi(p_a, p_b, sigma=log.sigma), dtype=np.float64).reshape(-1)
    certified = np.isfinite(radius) & (radius > 0)
    prediction = np.where(certified, np.asarray(bounds.top_class).reshape(-1), ABSTAIN).astype(np.int64)
    radius = np.where(certified, radius, 0.0)
    return SmoothCertificate(*(torch.from_numpy(a) for a in (prediction, radius, p_a, p_b)))


# ---------------------------------------------------------------------- log files
_LOG_SCALARS = ("sigma", "n0", "n")
_LOG_ARRAYS = (
    "labels",
    "counts_selection",
    "counts_estimation",
    "temperatures",
    "mean_selection",
    "var_selection",
    "mean_estimation",
    "var_estimation",
)


def save_log(log: SmoothingLog, path: str | Path) -> Path:
    """Write a :class:`SmoothingLog` to a compressed ``.npz`` file (no pickled objects); return the path."""
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"log files are .npz archives; got {path.name!r}")
    arrays = {k: np.asarray(getattr(log, k)) for k in _LOG_SCALARS}
    arrays.update({k: getattr(log, k) for k in _LOG_ARRAYS if getattr(log, k) is not None})
    if log.map_kinds is not None:
        arrays["map_kinds"] = np.array(log.map_kinds, dtype=str)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)  # atomic: an interrupted run never leaves half a log behind
    return path


def load_log(path: str | Path) -> SmoothingLog:
    """Read a log written by :func:`save_log`."""
    with np.load(Path(path), allow_pickle=False) as data:
        fields = {k: data[k] for k in _LOG_ARRAYS if k in data}
        kinds = tuple(str(s) for s in data["map_kinds"]) if "map_kinds" in data else None
        return SmoothingLog(sigma=float(data["sigma"]), n0=int(data["n0"]), n=int(data["n"]), map_kinds=kinds, **fields)


# ---------------------------------------------------------------------- training
def gaussian_augment(sigma: float) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    """Gaussian data augmentation ``x ↦ x + σ δ`` for training a base classifier of randomized smoothing.

    Plug it into ``stabkit.train.fit(..., augment=gaussian_augment(sigma))``: training under the same noise as
    certification is what makes the base classifier accurate on noisy inputs (Cohen et al. 2019, §4).

    Args:
        sigma: noise standard deviation (train at the σ you certify with).

    Returns:
        ``augment(x, generator) -> x + σ·N(0, I)``, the noise drawn from ``generator`` on ``x.device``.

    References:
        Cohen et al., ICML 2019; Lecuyer et al., S&P 2019.
    """
    sigma = check_positive_float("sigma", sigma)

    def augment(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        g = resolve_generator(generator, x.device)
        return x + sigma * torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)

    augment.sigma = sigma  # type: ignore[attr-defined]
    return augment
