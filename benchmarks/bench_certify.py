"""Certification throughput of randomized smoothing vs the raw forward passes it is made of.

Randomized smoothing evaluates the base classifier on n noisy copies of every test point: its physical floor is
the batched forward throughput of the model. This script measures, in one process and on the same models,

* ``forward``: ``model(batch)`` on pre-built batches (samples/s) — the floor;
* ``noise + forward``: the floor plus the Gaussian draws, what any sampler must at least do;
* ``sample``: ``Smooth.sample`` of several points (noise generation + forward + counting);
* ``previous stream``: the same with the noise stream stabkit used before it was made batching-invariant (one
  ``torch.randn`` per forward batch; the exact-linear path drew C normals per sample); its ``ours/theirs``
  column is the new stream's speed over the previous one's;
* ``certify``: ``Smooth.certify`` (the same plus selection samples and Clopper–Pearson);
* ``lvm sample``: ``Smooth.sample`` recording the LVM-RS statistics of the published 204 maps;
* ``locuslab``: ``Smooth.certify`` of locuslab/smoothing's ``code/core.py`` (Cohen et al.'s reference code),
  when ``STABKIT_LOCUSLAB_SMOOTHING`` names a local checkout of that repository. Two shims make it run on a
  CPU with a modern SciPy, without touching its file: ``scipy.stats.binom_test`` (removed in SciPy 1.12) is
  supplied from ``binomtest``, ``statsmodels``' ``proportion_confint`` from the Beta quantiles when statsmodels
  is absent, and its noise, drawn with ``device='cuda'``, is drawn on the input's device.

for a small CNN and a linear model (``Flatten`` + ``Linear``) on 8×8 single-channel inputs (scikit-learn digits
size), 10 classes. The linear model runs twice: on the exact path ``Smooth`` takes for affine models (C − 1
normals per sample in logit space) and on the generic path (``exact_linear=False``: 64 input-space normals per
sample, which cost several times the forward, so its ``noise + forward`` row bounds any input-space sampler).
Ratios are ours / forward (target ≥ 0.9 for the CNN; ≥ 0.5 for the linear model) and ours / locuslab (target
≥ 1.0). Each measure is timed alternately with
what it is compared with, on the same number of samples (medians over repeats after a warm-up), so that both
see the same load on a shared CPU.

Run: ``PYTHONPATH=$PWD python benchmarks/bench_certify.py [--threads 1] [--n 10000] [--repeats 5]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from stabkit.certify.smoothing import TEMPERATURES, Smooth

SIGMA = 0.5
NUM_CLASSES = 10


def small_cnn() -> torch.nn.Module:
    g = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, padding=1, stride=2),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(32 * 4 * 4, NUM_CLASSES),
    )
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return model.eval()


def linear() -> torch.nn.Linear:
    g = torch.Generator().manual_seed(1)
    model = torch.nn.Linear(64, NUM_CLASSES)
    with torch.no_grad():
        model.weight.copy_(0.2 * torch.randn(model.weight.shape, generator=g))
        model.bias.zero_()
    return model.eval()


def paired(fn, floor, repeats: int) -> tuple[float, float]:
    """Median times of ``fn`` and ``floor``, measured alternately so that both see the same CPU contention."""
    fn(), floor()  # warm-up
    t_fn, t_floor = [], []
    for _ in range(repeats):
        for f, out in ((floor, t_floor), (fn, t_fn)):
            start = time.perf_counter()
            f()
            out.append(time.perf_counter() - start)
    return statistics.median(t_fn), statistics.median(t_floor)


def load_locuslab(checkout: str):
    """Import ``code/core.py`` of a locuslab/smoothing checkout with the CPU / modern-SciPy shims."""
    path = Path(checkout) / "code" / "core.py"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: STABKIT_LOCUSLAB_SMOOTHING must name the repository root")
    if not hasattr(stats, "binom_test"):
        stats.binom_test = lambda k, n, p=0.5: stats.binomtest(int(k), int(n), p).pvalue
    if importlib.util.find_spec("statsmodels") is None:

        def proportion_confint(count, nobs, alpha=0.05, method="beta"):
            assert method == "beta"
            low = stats.beta.ppf(alpha / 2, count, nobs - count + 1) if count > 0 else 0.0
            high = stats.beta.ppf(1 - alpha / 2, count + 1, nobs - count) if count < nobs else 1.0
            return low, high

        proportion = types.ModuleType("statsmodels.stats.proportion")
        proportion.proportion_confint = proportion_confint
        for name, module in (
            ("statsmodels", types.ModuleType("statsmodels")),
            ("statsmodels.stats", types.ModuleType("statsmodels.stats")),
            ("statsmodels.stats.proportion", proportion),
        ):
            sys.modules.setdefault(name, module)
    spec = importlib.util.spec_from_file_location("locuslab_core", path)
    core = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(core)

    class _TorchOnInputDevice(types.SimpleNamespace):
        """``torch`` as core.py sees it, except that ``randn_like(..., device='cuda')`` stays on the input's
        device (the global RNG, as in the original)."""

        def __getattr__(self, name):
            return getattr(torch, name)

        @staticmethod
        def randn_like(t, device=None, **kwargs):
            return torch.randn_like(t, **kwargs)

    core.torch = _TorchOnInputDevice()
    return core


def bench_model(name, model, x, *, n, n0, batch_size, repeats, locuslab, lvm_points, exact_linear=True):
    """Rows (model, measure, samples/s, ratio to the forward floor, ratio to locuslab) for one model.

    Every measure is timed alternately with the floor doing the same number of samples: ``model(batch)`` on
    pre-built batches of ``batch_size`` rows.
    """
    rows = []
    n_points = x.shape[0]
    batch = x[:1].expand(batch_size, *x.shape[1:]).contiguous()
    gen = torch.Generator().manual_seed(3)

    def floor_for(samples):
        def run():
            with torch.no_grad():
                for _ in range(max(1, round(samples / batch_size))):
                    model(batch)

        return run

    def noise_forward(samples):
        # the floor plus the Gaussian draws: what any sampler must at least do
        def run():
            with torch.no_grad():
                for _ in range(max(1, round(samples / batch_size))):
                    model(torch.randn(batch.shape, generator=gen).mul_(SIGMA).add_(batch))

        return run

    def add(label, fn, samples, reps=repeats):
        t, t_floor = paired(fn, floor_for(samples), reps)
        rate, floor = samples / t, samples / t_floor
        rows.append((name, label, rate, rate / floor, None))
        return rate, floor

    smooth = Smooth(model, NUM_CLASSES, SIGMA, exact_linear=exact_linear)
    total = n_points * n
    _, floor = add("noise + forward", noise_forward(total), total)
    rows.insert(0, (name, "forward (floor)", floor, 1.0, None))
    add("stabkit sample", lambda: smooth.sample(x, n0=0, n=n, batch_size=batch_size), total)
    # the batching-invariant stream against the previous one, timed alternately (ours/theirs = new/previous)
    t_new, t_old = paired(
        lambda: smooth.sample(x, n0=0, n=n, batch_size=batch_size),
        lambda: previous_stream_sample(smooth, x, n=n, batch_size=batch_size, generator=gen),
        repeats,
    )
    rows.append((name, "previous stream sample", total / t_old, total / t_old / floor, t_old / t_new))
    add("stabkit certify", lambda: smooth.certify(x, n0=n0, n=n, batch_size=batch_size), n_points * (n0 + n))
    if locuslab is not None and x.ndim == 4:
        # core.py certifies one point per call; compare on the same two points, timed alternately with ours
        core_smooth = locuslab.Smooth(model, NUM_CLASSES, SIGMA)
        pts = x[:2]
        t_ours, t_ref = paired(
            lambda: smooth.certify(pts, n0=n0, n=n, batch_size=batch_size),
            lambda: [core_smooth.certify(xi, n0, n, 0.001, batch_size) for xi in pts],
            max(1, repeats // 2),
        )
        samples = len(pts) * (n0 + n)
        rows.append((name, "locuslab core.py certify", samples / t_ref, samples / t_ref / floor, t_ref / t_ours))
    add(
        f"stabkit lvm sample ({len(smooth_maps())} maps)",
        lambda: smooth.sample(x[:lvm_points], n0=0, n=n, batch_size=batch_size, temperatures=TEMPERATURES),
        lvm_points * n,
        max(1, repeats // 2),
    )
    return rows


def previous_stream_sample(smooth: Smooth, x: torch.Tensor, *, n: int, batch_size: int, generator) -> np.ndarray:
    """Counts from the noise stream stabkit used before it was made batching-invariant (the baseline).

    One ``torch.randn`` per forward batch, the rows of consecutive points in one stream: the noise of a point
    depended on its position in ``x`` and on ``batch_size``. The exact-linear path drew ``C`` normals per sample
    through a square root of ``W Wᵀ``.
    """
    from stabkit.certify._smoothing import _Accumulator

    acc = _Accumulator(x.shape[0], smooth.num_classes, x.device, None, None)
    total = x.shape[0] * n
    with torch.no_grad():
        if smooth.exact_linear:
            weight = smooth._affine()  # the product of the affine model's weights (float64)
            evals, evecs = torch.linalg.eigh(weight @ weight.T)
            root = (evecs * evals.clamp_min(0).sqrt()).to(x.dtype)
            clean = smooth.model(x)
        for start in range(0, total, batch_size):
            stop = min(start + batch_size, total)
            point = torch.arange(start, stop, device=x.device) // n
            if smooth.exact_linear:
                eps = torch.randn((stop - start, smooth.num_classes), generator=generator, device=x.device)
                logits = clean[point] + smooth.sigma * (eps.to(x.dtype) @ root.T)
            else:
                noise = torch.randn((stop - start, *x.shape[1:]), generator=generator, dtype=x.dtype)
                logits = smooth.model(noise.mul_(smooth.sigma).add_(x[point]))
            acc.add(point, logits)
    return acc.finish(n)[0]


def smooth_maps():
    return [(k, t) for k in ("softmax", "sparsemax") for t in TEMPERATURES]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: stable on a busy CPU)")
    parser.add_argument("--n", type=int, default=10_000, help="estimation samples per point")
    parser.add_argument("--n0", type=int, default=100, help="selection samples per point")
    parser.add_argument("--points", type=int, default=8, help="test points certified together")
    parser.add_argument("--batch-size", type=int, default=1000, help="rows per forward pass")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    checkout = os.environ.get("STABKIT_LOCUSLAB_SMOOTHING")
    locuslab = load_locuslab(checkout) if checkout else None
    torch.manual_seed(0)  # locuslab's core.py draws its noise from torch's global RNG; ours never does

    g = torch.Generator().manual_seed(2)
    images = torch.rand(args.points, 1, 8, 8, generator=g)
    common = dict(
        n=args.n, n0=args.n0, batch_size=args.batch_size, repeats=args.repeats, locuslab=locuslab, lvm_points=2
    )
    rows = bench_model("small CNN", small_cnn(), images, **common)
    lin = torch.nn.Sequential(torch.nn.Flatten(), linear())  # affine: Smooth draws its logits in logit space
    rows += bench_model("linear (exact path)", lin, images, **common)
    rows += bench_model("linear (generic path)", lin, images, exact_linear=False, **common)

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    print(f"# bench_certify: torch {torch.__version__}, numpy {np.__version__}, CPU {cpu}")
    print(
        f"# threads {torch.get_num_threads()}, os.cpu_count {os.cpu_count()}, sigma {SIGMA}, n {args.n}, "
        f"n0 {args.n0}, points {args.points}, batch {args.batch_size}, median of {args.repeats}"
    )
    print(f"# locuslab core.py: {checkout or 'not set (STABKIT_LOCUSLAB_SMOOTHING)'}")
    header = f"{'model':28s} {'measure':30s} {'samples/s':>12s} {'/ floor':>10s} {'ours/theirs':>11s}"
    print(header)
    print("-" * len(header))
    for model, measure, rate, vs_forward, vs_ref in rows:
        ref = "" if vs_ref is None else f"{vs_ref:.2f}"
        print(f"{model:28s} {measure:30s} {rate:12.0f} {vs_forward:10.2f} {ref:>11s}")


if __name__ == "__main__":
    main()
