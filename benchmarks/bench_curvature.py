"""Time to the top Hessian eigenvalue of a small CNN: Lanczos (ARPACK) vs power iteration vs PyHessian.

    python benchmarks/bench_curvature.py [--threads 1] [--repeats 3]

A small CNN is trained briefly on scikit-learn's 8×8 digits; the Hessian of the cross-entropy over one batch of
256 w.r.t. all parameters is the operator. The reference top eigenvalue comes from Lanczos on the float64 copy
of the model at tolerance 1e-12. Each solver runs in float32 with its own stopping rule; we report the relative
error it reached, the Hessian-vector products (HVPs) it used, its median wall time, and that time in units of one
gradient evaluation (the target: within 30 gradient-equivalents at relative error ≤ 1e-4). PyHessian's power
iteration is added when ``pyhessian`` is importable.
"""

from __future__ import annotations

import argparse
import copy

import torch
import torch.nn.functional as F
from torch import nn

from stabkit import data, support
from stabkit.curvature import HessianOperator, power_eigenpairs, top_eigenvalues


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, stride=2),  # (B, 16, 4, 4)
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 10),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per solver (median)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    ds = data.load("digits", generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)  # the benchmark script, not the library, seeds the initialisation
    model = small_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    for _ in range(60):  # a short training run, so that the Hessian is that of a network that has learnt
        idx = torch.randint(0, len(ds.y_train), (64,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(ds.x_train[idx]), ds.y_train[idx]).backward()
        opt.step()
    model.eval()
    x, y = ds.x_train[:256], ds.y_train[:256]

    H64 = HessianOperator(copy.deepcopy(model).double(), (x.double(), y))
    exact = float(top_eigenvalues(H64, k=1, tol=1e-12, generator=torch.Generator().manual_seed(9)).eigenvalues[0])
    H = HessianOperator(model, (x, y))  # caches the gradient graph: one HVP = one double-backward

    def gradient():  # the unit of cost: one plain forward + backward through the nn.Module
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()

    t_grad = support.median_time(gradient, repeats=max(10, args.repeats)).seconds
    t_hvp = support.median_time(lambda: H @ H.theta, repeats=max(10, args.repeats)).seconds

    rows = []

    def run(name, fn):
        (value, n_hvp), t = support.median_time(fn, repeats=args.repeats)
        rows.append((name, value, abs(value - exact) / abs(exact), n_hvp, t, t / t_grad))

    def lanczos(tol, n_basis=None):
        def fn():
            gen = torch.Generator().manual_seed(0)
            r = top_eigenvalues(H, k=1, tol=tol, n_basis=n_basis, generator=gen)
            return float(r.eigenvalues[0]), r.n_hvp

        return fn

    def power(tol):
        def fn():
            r = power_eigenpairs(H, k=1, n_iter=1000, tol=tol, generator=torch.Generator().manual_seed(0))
            return float(r.eigenvalues[0]), r.n_hvp

        return fn

    run("Lanczos (eigsh, tol 1e-4, default basis 6)", lanczos(1e-4))
    run("Lanczos (eigsh, tol 1e-6, default basis 6)", lanczos(1e-6))
    run("Lanczos (eigsh, tol 1e-4, basis 10)", lanczos(1e-4, 10))
    run("Lanczos (eigsh, tol 1e-4, basis 20 = ARPACK)", lanczos(1e-4, 20))
    run("power iteration (tol 1e-5)", power(1e-5))
    run("power iteration (tol 1e-7)", power(1e-7))
    try:
        from pyhessian import hessian as pyhessian_hessian  # optional peer

        def pyh():
            torch.manual_seed(0)  # PyHessian draws its start vector from the global RNG
            h = pyhessian_hessian(model, nn.CrossEntropyLoss(), data=(x, y), cuda=False)
            vals, _ = h.eigenvalues(maxIter=1000, tol=1e-5, top_n=1)
            return float(vals[0]), None

        run("PyHessian power iteration (tol 1e-5)", pyh)
    except ImportError:
        pass

    print(support.machine_info())
    n_params = sum(p.numel() for p in model.parameters())
    print(f"small CNN, {n_params} parameters, batch 256 of 8×8 digits; reference λ_max = {exact:.6f} (float64)")
    print(f"one gradient: {t_grad * 1e3:.2f} ms; one HVP: {t_hvp * 1e3:.2f} ms = {t_hvp / t_grad:.2f} gradients")
    header = f"{'solver':46s} {'λ_max':>10s} {'rel. err':>9s} {'HVPs':>5s} {'median s':>9s} {'/ gradient':>10s}"
    print(header)
    print("-" * len(header))
    for name, value, err, n_hvp, t, ratio in rows:
        hv = "-" if n_hvp is None else str(n_hvp)
        print(f"{name:46s} {value:10.6f} {err:9.1e} {hv:>5s} {t:9.3f} {ratio:10.1f}")
    print("ratios: wall time / one gradient evaluation (target ≤ 30 at rel. err ≤ 1e-4)")


if __name__ == "__main__":
    main()
