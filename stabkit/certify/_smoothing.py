"""Randomized smoothing: Monte-Carlo sampling of a smoothed classifier, PREDICT and CERTIFY.

The expensive part of randomized smoothing is the forward passes on noisy copies of the inputs; the confidence
intervals and radii computed from the resulting counts cost nothing in comparison. So sampling and certifying
are separate here: :meth:`Smooth.sample` records, per test point, the class counts of the selection (``n0``)
and estimation (``n``) samples and, on request, the statistics LVM-RS needs (per-map means and variances over
a grid of temperatures); the record is a :class:`SmoothingLog` that can be written to disk (:func:`save_log`)
and certified later with any method (:func:`certify_from_log`, :func:`stabkit.certify.smoothing.lvm_certify`)
without sampling again. :meth:`Smooth.certify` is the two steps chained with Cohen's protocol.

Note [noise stream]: the noise of a test point depends only on the root seed (one draw from the ``generator``
passed to :meth:`Smooth.sample`), the point's global index (``indices``, by default its position in ``x``), the
stage (selection or estimation), the input shape and dtype, ``n0``/``n`` and the device type, never on which
points are sampled together, on the batch size or on the worker. Each point's ``n`` samples of a stage are cut
into blocks of ``noise_block_rows(row size)`` rows; block ``j`` is drawn in one call from a generator seeded with
a SplitMix64 hash of ``(root, index, stage, j)``. Forward batches of ``batch_size`` rows are then filled from
consecutive blocks and may span several test points, so small models are never evaluated on tiny batches. A
test set split across workers (each sampling its points with their global ``indices`` and the same seeded
generator) therefore gives the same counts as one process; :func:`merge_logs` joins the workers' logs. The
counts are integers and the LVM-RS sums are accumulated row by row in stream order, so on the CPU they are
identical too; on GPUs the float sums use atomics and may differ in the last bits, and a backend whose forward
depends on the batch composition (cuDNN's algorithm choice) may move a logit by one rounding step.
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
        indices: (B,) int64 global index of each point (Note [noise stream]), or ``None`` for a hand-made log.
        seed: root seed of the noise stream, or ``None`` for a hand-made log.
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
    indices: np.ndarray | None = None
    seed: int | None = None

    @property
    def num_classes(self) -> int:
        return int(self.counts_estimation.shape[1])

    @property
    def n_points(self) -> int:
        return int(self.counts_estimation.shape[0])

    def subset(self, index: np.ndarray | slice) -> SmoothingLog:
        """The log of a subset of the test points (``index`` into the batch axis)."""
        per_point = ("labels", "counts_selection", "counts_estimation")
        per_point += ("mean_selection", "var_selection", "mean_estimation", "var_estimation", "indices")
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

    def add_block(self, point: int, logits: torch.Tensor) -> None:
        # every row of `logits` (m, C) belongs to test point `point`
        c = self.num_classes
        self.counts[point * c : (point + 1) * c] += torch.bincount(logits.argmax(dim=1), minlength=c)
        if self.temperatures is not None:
            s = simplex_maps(logits.double(), temperatures=self.temperatures, kinds=self.map_kinds)
            self.sum1[point] += s.sum(dim=0)
            self.sum2[point] += (s * s).sum(dim=0)

    def finish(self, n: int):
        counts = self.counts.view(-1, self.num_classes).cpu().numpy()
        if self.temperatures is None:
            return counts, None, None
        mean = self.sum1 / n
        # unbiased variance from the running sums; clamp the tiny negative values left by rounding
        var = ((self.sum2 - n * mean * mean) / max(n - 1, 1)).clamp_min_(0.0)
        return counts, mean.cpu().numpy(), var.cpu().numpy()


_MASK64 = (1 << 64) - 1
_STAGES = {"selection": 1, "estimation": 2}
#: Numbers per noise block (Note [noise stream]): big enough that drawing a block costs more than seeding it.
NOISE_BLOCK_NUMBERS = 1 << 18


def noise_block_rows(row_numel: int) -> int:
    """Rows per noise block for samples of ``row_numel`` numbers (Note [noise stream]): 16 to 4096."""
    return int(min(4096, max(16, NOISE_BLOCK_NUMBERS // max(1, int(row_numel)))))


def _splitmix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def block_seed(root: int, index: int, stage: str, block: int) -> int:
    """Seed of noise block ``block`` of test point ``index`` in ``stage`` (Note [noise stream]); 63 bits."""
    h = _splitmix64(int(root) & _MASK64)
    for word in (int(index), _STAGES[stage], int(block)):
        h = _splitmix64(h ^ (word & _MASK64))
    return h >> 1


def _root_seed(generator: torch.Generator) -> int:
    """The stream's root seed: one draw from the caller's generator (so equal generator states, equal streams)."""
    return int(torch.randint(0, 2**63 - 1, (1,), generator=generator, device=generator.device).item())


def _check_indices(indices, n_points: int) -> np.ndarray:
    if indices is None:
        return np.arange(n_points, dtype=np.int64)
    arr = np.asarray(indices.cpu() if isinstance(indices, torch.Tensor) else indices)
    if arr.shape != (n_points,) or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        raise ValueError(f"indices must be {n_points} integers (one global index per point of x), got {arr!r}")
    arr = arr.astype(np.int64)
    if (arr < 0).any() or len(np.unique(arr)) != n_points:
        raise ValueError("indices must be distinct non-negative integers (the points' global indices)")
    return arr


def _affine_weight(model: object) -> Callable[[], torch.Tensor] | None:
    """The linear part of an affine ``model``, or ``None`` when the model is not recognisably affine.

    Affine means a ``torch.nn.Linear``, or a ``torch.nn.Sequential`` (nested or not) of ``Linear`` and
    ``Identity`` modules, with ``Flatten(start_dim=1, end_dim=-1)`` modules at most in front of the first
    ``Linear`` and chained layers' sizes matching. Returns a function giving the product ``W = W_k ⋯ W_1``
    (C × d, float64) of the current weights (read at each call, so training in between is seen). Anything
    else (activations, convolutions, dropout, custom modules) gives ``None``: the generic path.
    """
    layers: list[torch.nn.Linear] = []

    def walk(m) -> bool:
        if isinstance(m, torch.nn.Sequential):
            return all(walk(child) for child in m)
        if isinstance(m, torch.nn.Linear):
            if layers and layers[-1].out_features != m.in_features:
                return False
            layers.append(m)
            return True
        if isinstance(m, torch.nn.Flatten):  # only in front of the first Linear, flattening each row whole
            return not layers and (m.start_dim, m.end_dim) == (1, -1)
        return isinstance(m, torch.nn.Identity)

    if not walk(model) or not layers:
        return None

    def weight() -> torch.Tensor:
        w = layers[0].weight.detach().to(torch.float64)
        for layer in layers[1:]:
            w = layer.weight.detach().to(torch.float64) @ w
        return w

    return weight


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
        exact_linear: if ``model`` is affine — a ``torch.nn.Linear``, or a ``torch.nn.Sequential`` (nested or
            not) of ``Linear`` and ``Identity`` modules with ``Flatten()`` at most in front of the first
            ``Linear`` — draw its noisy logits directly: ``W(x+δ) + b`` is Gaussian with mean ``Wx + b`` and
            covariance ``σ² W Wᵀ``, and the argmax only sees the logits up to a common shift, so C − 1 normal
            draws per sample replace d draws and the forward (same distribution of counts and maps, different
            random numbers than the generic path). For a linear model the d draws cost several times its
            forward pass, so only this path runs near the model's own throughput (``benchmarks/bench_certify.py``).
            ``False`` forces the generic path; so does an input whose size is not the first layer's.

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
        self._affine = _affine_weight(model) if exact_linear else None
        self.exact_linear = self._affine is not None

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

    def _linear_root(self, x: torch.Tensor, weight: torch.Tensor):
        """Clean logits and a root ``R`` (C×r) with ``R Rᵀ = P W Wᵀ P``, ``P`` the centring projection.

        ``argmax`` and the simplex maps are invariant to adding a constant to all logits, so only the centred
        logits matter: their covariance ``σ² P W Wᵀ P`` has rank at most ``C − 1``, and C − 1 normal draws per
        sample give exactly the distribution of the argmax (and of the maps) of ``W(x + δ) + b``.
        """
        c = weight.shape[0]  # weight: (C, d) float64, the affine model's linear part
        # orthonormal basis Q (C×(C−1)) of the complement of the all-ones vector
        ones = torch.ones(c, 1, dtype=torch.float64, device=weight.device) / c**0.5
        q = torch.linalg.qr(torch.cat([ones, torch.eye(c, dtype=torch.float64, device=weight.device)], 1))[0]
        q = q[:, 1:c]
        wq = q.T @ weight  # (C−1, d)
        # square root of Qᵀ W Wᵀ Q by eigendecomposition (Cholesky fails when rank W < C − 1)
        evals, evecs = torch.linalg.eigh(wq @ wq.T)
        root = q @ (evecs * evals.clamp_min(0).sqrt())  # (C, C−1)
        return self._logits(x), (self.sigma * root.T).to(x.dtype)

    def _stream(self, x, indices, n, stage, root_seed, batch_size, accumulator):
        """Feed ``n`` noisy samples of ``stage`` per point of ``x`` to ``accumulator`` (Note [noise stream])."""
        device, dtype = x.device, x.dtype
        gen = torch.Generator(device=device)
        weight = self._affine() if self.exact_linear else None  # from the model's current parameters
        if weight is not None and weight.shape[1] == x[0].numel():
            clean, scaled_root = self._linear_root(x, weight)  # (B, C), (C−1, C)
            rows = noise_block_rows(scaled_root.shape[0])
            for p, index in enumerate(indices.tolist()):
                for j, start in enumerate(range(0, n, rows)):
                    gen.manual_seed(block_seed(root_seed, index, stage, j))
                    eps = torch.randn(
                        (min(rows, n - start), scaled_root.shape[0]), generator=gen, device=device, dtype=dtype
                    )
                    accumulator.add_block(p, (eps @ scaled_root).add_(clean[p]))  # not addmm: slow in float64
            return
        shape = x.shape[1:]
        rows = noise_block_rows(x[0].numel())
        noisy = torch.empty((batch_size, *shape), device=device, dtype=dtype)  # x + σδ, filled block by block
        point = torch.empty(batch_size, dtype=torch.int64, device=device)
        fill = 0
        for p, index in enumerate(indices.tolist()):
            xp = x[p]
            for j, start in enumerate(range(0, n, rows)):
                m = min(rows, n - start)
                gen.manual_seed(block_seed(root_seed, index, stage, j))
                if m <= batch_size - fill:  # the block fits: draw it in place (same numbers as a fresh tensor)
                    noisy[fill : fill + m].normal_(0.0, self.sigma, generator=gen).add_(xp)
                    point[fill : fill + m] = p
                    fill += m
                else:
                    block = torch.empty((m, *shape), device=device, dtype=dtype).normal_(0.0, self.sigma, generator=gen)
                    done = 0
                    while done < m:
                        take = min(m - done, batch_size - fill)
                        if fill == 0 and take == batch_size:  # a whole forward batch inside the block: no copy
                            point.fill_(p)
                            accumulator.add(point, self._logits(block[done : done + take].add_(xp)))
                            done += take
                            continue
                        torch.add(block[done : done + take], xp, out=noisy[fill : fill + take])
                        point[fill : fill + take] = p
                        fill, done = fill + take, done + take
                        if fill == batch_size:
                            accumulator.add(point, self._logits(noisy))
                            fill = 0
                if fill == batch_size:
                    accumulator.add(point, self._logits(noisy))
                    fill = 0
        if fill:
            accumulator.add(point[:fill], self._logits(noisy[:fill]))

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
        indices: torch.Tensor | np.ndarray | None = None,
    ) -> SmoothingLog:
        """Run the noisy forward passes once and record what certification needs.

        The noise of each point depends only on the generator's state, the point's global index, ``n0``, ``n``
        and the input's shape, dtype and device type (Note [noise stream]): a test set split across workers, each
        sampling its share with the global ``indices`` and an equally seeded generator, gives the logs of one
        process, which :func:`merge_logs` joins.

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
            indices: global index of each point of ``x`` in the whole test set (distinct, non-negative);
                ``None`` means ``0 … B−1``.

        Returns:
            A :class:`SmoothingLog` (numpy arrays on the CPU) with ``indices`` and the root ``seed``.

        Shape:
            x: ``(B, *input_shape)``; labels, indices: ``(B,)``.
        """
        x = self._check_x(x)
        n0 = check_positive_int("n0", n0, minimum=0)
        n = check_positive_int("n", n)
        batch_size = check_positive_int("batch_size", batch_size)
        generator = resolve_generator(generator, x.device)
        n_points = x.shape[0]
        indices_np = _check_indices(indices, n_points)
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
            root = _root_seed(generator)
            with torch.no_grad():
                if n0 > 0:
                    self._stream(x, indices_np, n0, "selection", root, batch_size, selection)
                self._stream(x, indices_np, n, "estimation", root, batch_size, estimation)
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
            indices=indices_np,
            seed=root,
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
        indices: torch.Tensor | np.ndarray | None = None,
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
            indices: global indices of the points (see :meth:`sample`).

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
        log = self.sample(x, n0=n0, n=n, batch_size=batch_size, generator=generator, indices=indices)
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
_LOG_OPTIONAL_SCALARS = ("seed",)
_LOG_ARRAYS = (
    "labels",
    "counts_selection",
    "counts_estimation",
    "temperatures",
    "mean_selection",
    "var_selection",
    "mean_estimation",
    "var_estimation",
    "indices",
)


def save_log(log: SmoothingLog, path: str | Path) -> Path:
    """Write a :class:`SmoothingLog` to a compressed ``.npz`` file (no pickled objects); return the path."""
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"log files are .npz archives; got {path.name!r}")
    arrays = {k: np.asarray(getattr(log, k)) for k in _LOG_SCALARS}
    arrays.update(
        {k: np.asarray(getattr(log, k), dtype=np.int64) for k in _LOG_OPTIONAL_SCALARS if getattr(log, k) is not None}
    )
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
        seed = int(data["seed"]) if "seed" in data else None
        return SmoothingLog(
            sigma=float(data["sigma"]), n0=int(data["n0"]), n=int(data["n"]), map_kinds=kinds, seed=seed, **fields
        )


def merge_logs(logs, *, n_points: int | None = None) -> SmoothingLog:
    """Join the log shards of several workers into the log of the whole test set, in global-index order.

    Every shard must come from the same sampling settings (σ, ``n0``, ``n``, number of classes, temperatures and
    maps, root seed) and carry its points' global ``indices``; together they must cover ``0 … n_points − 1``
    exactly once. Certifying the merged log gives the certificates of one process sampling the whole set
    (Note [noise stream]).

    Args:
        logs: :class:`SmoothingLog` objects or paths of files written by :func:`save_log`.
        n_points: size of the test set; ``None``: the number of points in the shards.

    Returns:
        A :class:`SmoothingLog` whose point ``i`` has global index ``i``.

    Raises:
        ValueError: no shard, a shard without indices or seed, different settings, or points missing or
            sampled twice.
    """
    shards = [load_log(item) if isinstance(item, str | Path) else item for item in logs]
    if not shards:
        raise ValueError("merge_logs needs at least one log shard")
    first = shards[0]

    def settings(log: SmoothingLog):
        temps = None if log.temperatures is None else tuple(np.asarray(log.temperatures).tolist())
        return (float(log.sigma), int(log.n0), int(log.n), log.num_classes, temps, log.map_kinds, log.seed)

    names = ("sigma", "n0", "n", "num_classes", "temperatures", "map_kinds", "seed")
    for k, log in enumerate(shards):
        if log.indices is None or log.seed is None:
            raise ValueError(f"shard {k} has no global indices or seed: sample it with Smooth.sample(..., indices=...)")
        if settings(log) != settings(first):
            diff = [
                f"{n}: {a!r} vs {b!r}" for n, a, b in zip(names, settings(first), settings(log), strict=True) if a != b
            ]
            raise ValueError(f"shard {k} was sampled with other settings than shard 0 ({'; '.join(diff)})")
    indices = np.concatenate([np.asarray(log.indices, dtype=np.int64) for log in shards])
    total = len(indices) if n_points is None else int(n_points)
    counts = np.bincount(indices[(indices >= 0) & (indices < total)], minlength=total)
    twice, missing = np.flatnonzero(counts > 1), np.flatnonzero(counts == 0)
    outside = indices[(indices < 0) | (indices >= total)]
    if len(twice) or len(missing) or len(outside):
        raise ValueError(
            f"the shards must cover points 0 … {total - 1} exactly once: sampled twice {twice[:10].tolist()}, "
            f"missing {missing[:10].tolist()}, out of range {outside[:10].tolist()} (first 10 of each)"
        )
    order = np.argsort(indices, kind="stable")
    per_point = ("labels", "counts_selection", "counts_estimation")
    per_point += ("mean_selection", "var_selection", "mean_estimation", "var_estimation")
    merged = {
        k: np.concatenate([getattr(log, k) for log in shards])[order]
        for k in per_point
        if getattr(first, k) is not None
    }
    return first._replace(indices=indices[order], **merged)


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
