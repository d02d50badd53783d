"""Cost of the ``full``-scale protocols, measured per step here and extrapolated (docs/full-scale.md).

    python -m stabkit.full_scale_cost [--batch 8] [--repeats 3] [--gpu-tflops 10] [--threads 1]

For every heavy network of the ``full`` presets it builds the network at the published size, times a few training
steps (forward, backward, Adam) and noisy forward passes on random CIFAR-10-shaped inputs on this machine, counts
their floating-point operations with ``torch.utils.flop_counter.FlopCounterMode``, and multiplies by the protocol
(epochs × 50 000 training images at batch 256; test points × (n0 + n) noisy samples at batch 10 000); a
Lipschitz layer's per-step weight rescaling is counted once per batch. The GPU column divides the operation
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


def measure(
    batch: int,
    repeats: int,
    gpu_tflops: float,
    protocol_batch: int = 256,
    forward_batch: int = 10_000,
    only: tuple[str, ...] = (),
):
    """Yield one row per network: FLOPs and measured seconds per image, and the protocol's totals.

    A Lipschitz layer recomputes its weight rescaling once per step whatever the batch size, so the FLOPs are
    counted at batch 1 and 2 and split into a fixed part and a per-image part; the protocol's cost is that of its
    own batch (``protocol_batch`` for training, ``forward_batch`` for certification). The measured time at
    ``batch`` is scaled to the protocol's batch by the FLOP ratio.
    """
    g = torch.Generator().manual_seed(0)
    for entry, name, build, epochs, trainings, samples in _nets():
        if only and name not in only:
            continue
        net = build()
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)

        def step(b, net=net, opt=opt):
            x = torch.rand(b, *CIFAR, generator=g)
            y = torch.randint(0, 10, (b,), generator=g)
            net.train()
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(x), y).backward()
            opt.step()

        def forward(b, net=net):
            net.eval()
            with torch.no_grad():
                net(torch.rand(b, *CIFAR, generator=g))

        rows = {}
        for label, fn, big in (("train", step, protocol_batch), ("forward", forward, forward_batch)):
            fn(1)  # warm-up: CPL computes (and caches) its certified eval-mode bound at the first eval forward
            f1, f2 = _flops(lambda fn=fn: fn(1)), _flops(lambda fn=fn: fn(2))
            per_image, fixed = f2 - f1, 2 * f1 - f2
            seconds = _median_time(lambda fn=fn: fn(batch), repeats)
            flops_big = fixed + big * per_image
            rows[label] = (per_image, fixed, flops_big / big, seconds * flops_big / (fixed + batch * per_image) / big)
        steps = trainings * epochs * N_TRAIN  # images seen in training
        total_flops = steps * rows["train"][2] + samples * rows["forward"][2]
        yield dict(
            entry=entry,
            network=name,
            train_gflop_per_image=rows["train"][2] / 1e9,
            train_fixed_gflop=rows["train"][1] / 1e9,
            train_cpu_ms_per_image=1e3 * rows["train"][3],
            forward_gflop_per_sample=rows["forward"][2] / 1e9,
            forward_cpu_ms_per_sample=1e3 * rows["forward"][3],
            protocol=f"{trainings}× {epochs} epochs" + (f" + {samples:.2e} noisy samples" if samples else ""),
            cpu_days=(steps * rows["train"][3] + samples * rows["forward"][3]) / 86_400,
            gpu_hours=total_flops / (gpu_tflops * 1e12) / 3600,
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stabkit.full_scale_cost", description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=4, help="images per timed step (scaled to 256 by FLOPs)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gpu-tflops", type=float, default=10.0, help="assumed sustained GPU rate, TFLOP/s")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", nargs="*", default=(), help="network names to measure (default: all)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"# full_scale_cost: torch {torch.__version__}, {platform.machine()}, threads {torch.get_num_threads()}, ")
    print(f"# batch {args.batch}, median of {args.repeats}; GPU column = FLOPs / {args.gpu_tflops:g} TFLOP/s (assumed)")
    head = f"{'entry':38s} {'network':16s} {'train GF/img':>12s} {'fixed GF':>9s} {'ms/img':>8s} {'fwd GF':>8s}"
    head += f" {'ms/smp':>8s}"
    print(head + f" {'CPU days':>9s} {'GPU h':>7s}  protocol")
    rows = []
    for r in measure(args.batch, args.repeats, args.gpu_tflops, only=tuple(args.only)):
        rows.append(r)
        print(
            f"{r['entry']:38s} {r['network']:16s} {r['train_gflop_per_image']:12.3f} {r['train_fixed_gflop']:9.2f} "
            f"{r['train_cpu_ms_per_image']:8.1f} "
            f"{r['forward_gflop_per_sample']:8.3f} {r['forward_cpu_ms_per_sample']:8.2f} {r['cpu_days']:9.0f} "
            f"{r['gpu_hours']:7.1f}  {r['protocol']}",
            flush=True,
        )
    total = sum(r["gpu_hours"] for r in rows)
    print(f"# total {total:.0f} GPU-hours at {args.gpu_tflops:g} TFLOP/s; with K GPUs about {math.ceil(total)}/K hours")


if __name__ == "__main__":
    main()
