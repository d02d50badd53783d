"""Cost of the ``full``-scale protocols, measured per step here and extrapolated (docs/full-scale.md).

    python -m stabkit.full_scale_cost [--batch 8] [--repeats 3] [--gpu-tflops 10] [--threads 1]

For every heavy network of the ``full`` presets it builds the network at the published size, times a few training
steps (forward, backward, Adam) and noisy forward passes on random CIFAR-10-shaped inputs on this machine, counts
their floating-point operations with ``torch.utils.flop_counter.FlopCounterMode``, and multiplies by the protocol
(epochs × 50 000 training images; test points × (n0 + n) noisy samples). The GPU column divides the operation
count by an assumed sustained rate (``--gpu-tflops``): an estimate, not a measurement.
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time

import torch
import torch.nn.functional as F

CIFAR = (3, 32, 32)
N_TRAIN = 50_000


def _nets():
    from stabkit.models import LipschitzNet, small_cnn

    def lip(kind):
        return lambda: LipschitzNet(CIFAR, 10, layer=kind, size="s", pool=4)

    def cnn():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return small_cnn(3, 10, width=64)

    # (entry, network, build, epochs per training, trainings, certified samples)
    return [
        ("cpl-sll-aol-table", "CPL-S", lip("cpl"), 200, 1, 0),
        ("cpl-sll-aol-table", "SLL-S", lip("sll"), 1000, 1, 0),
        ("cpl-sll-aol-table", "AOL-S", lip("aol"), 1000, 1, 0),
        ("cpl-sll-aol-table", "SR-S", lip("sr"), 1000, 1, 0),
        ("rs-certified-curves, rs-lvm-tradeoff", "small CNN w64", cnn, 90, 3, 3 * 500 * 100_100),
        ("rs-certified-curves, rs-lvm-tradeoff", "SLL-S (RS base)", lip("sll"), 90, 3, 3 * 500 * 100_100),
    ]


def _flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up (and CPL's first power iteration)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(batch: int, repeats: int, gpu_tflops: float) -> list[dict]:
    """One row per network: measured seconds and FLOPs per image, and the protocol's totals."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, *CIFAR, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    rows = []
    for entry, name, build, epochs, trainings, samples in _nets():
        net = build()
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)

        def step(net=net, opt=opt):
            net.train()
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(x), y).backward()
            opt.step()

        def forward(net=net):
            net.eval()
            with torch.no_grad():
                net(x + 0.25 * torch.randn(x.shape, generator=g))

        train_s, train_f = _median_time(step, repeats) / batch, _flops(step) / batch
        fwd_s, fwd_f = _median_time(forward, repeats) / batch, _flops(forward) / batch
        steps = trainings * epochs * N_TRAIN
        total_flops = steps * train_f + samples * fwd_f
        rows.append(
            dict(
                entry=entry,
                network=name,
                train_gflop_per_image=train_f / 1e9,
                train_cpu_ms_per_image=1e3 * train_s,
                forward_gflop_per_sample=fwd_f / 1e9,
                forward_cpu_ms_per_sample=1e3 * fwd_s,
                protocol=f"{trainings}× {epochs} epochs" + (f" + {samples:.2e} noisy samples" if samples else ""),
                cpu_days=(steps * train_s + samples * fwd_s) / 86_400,
                gpu_hours=total_flops / (gpu_tflops * 1e12) / 3600,
            )
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stabkit.full_scale_cost", description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8, help="images per measured step (costs scale with it)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gpu-tflops", type=float, default=10.0, help="assumed sustained GPU rate, TFLOP/s")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = measure(args.batch, args.repeats, args.gpu_tflops)
    print(f"# full_scale_cost: torch {torch.__version__}, {platform.machine()}, threads {torch.get_num_threads()}, ")
    print(f"# batch {args.batch}, median of {args.repeats}; GPU column = FLOPs / {args.gpu_tflops:g} TFLOP/s (assumed)")
    head = f"{'entry':38s} {'network':16s} {'train GF/img':>12s} {'ms/img':>8s} {'fwd GF':>8s} {'ms/smp':>8s}"
    print(head + f" {'CPU days':>9s} {'GPU h':>7s}  protocol")
    for r in rows:
        print(
            f"{r['entry']:38s} {r['network']:16s} {r['train_gflop_per_image']:12.3f} "
            f"{r['train_cpu_ms_per_image']:8.1f} "
            f"{r['forward_gflop_per_sample']:8.3f} {r['forward_cpu_ms_per_sample']:8.2f} {r['cpu_days']:9.0f} "
            f"{r['gpu_hours']:7.1f}  {r['protocol']}"
        )
    total = sum(r["gpu_hours"] for r in rows)
    print(f"# total {total:.0f} GPU-hours at {args.gpu_tflops:g} TFLOP/s; with K GPUs about {math.ceil(total)}/K hours")


if __name__ == "__main__":
    main()
