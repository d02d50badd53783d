"""Sample randomized-smoothing logs for a trained network, in one process or under ``torchrun``.

    python -m stabkit.sample_logs --model runs/cnn/model.pt --dataset cifar10 --sigma 0.25 --out logs/cnn-0.25.npz
    torchrun --nproc_per_node=4 -m stabkit.sample_logs --device cuda ... --out logs/cnn-0.25.npz

The certified points are every ``--every``-th test image (the first ``--n-points`` of them; Cohen et al.
certify every 20th CIFAR-10 test image). They are cut into chunks of ``--chunk`` consecutive points; chunk ``i``
is sampled by rank ``i mod K`` with the points' global indices and writes ``OUT.parts/points-A-B.npz``; when all
are there rank 0 joins them with :func:`stabkit.certify._smoothing.merge_logs` into ``OUT`` (a
:class:`~stabkit.certify.SmoothingLog` file, see :func:`~stabkit.certify.load_log`). The noise of a point depends
only on ``--seed``, its index, ``--n0`` and ``--n`` (Note [noise stream]), so the log is the same for any number
of ranks, and a killed run restarted with the same command (any K) keeps the chunks already written. ``--lvm``
also records the LVM-RS statistics over the published temperature grid.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from stabkit import distributed


def _part_path(out: Path, start: int, stop: int) -> Path:
    return out.with_name(out.name + ".parts") / f"points-{start:06d}-{stop:06d}.npz"


def _check_part(log, args: argparse.Namespace, root_seed: int) -> None:
    found = (log.sigma, log.n0, log.n, log.seed, log.temperatures is not None)
    wanted = (args.sigma, args.n0, args.n_samples, root_seed, bool(args.lvm))
    if found != wanted:
        raise ValueError(
            f"a part file of {args.out} was sampled with other settings (sigma, n0, n, seed, lvm) = {found}, "
            f"this command asks for {wanted}; delete the folder {args.out}.parts or choose another --out"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m stabkit.sample_logs", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="model.pt written by python -m stabkit.train_net")
    parser.add_argument("--out", required=True, help="log file (.npz)")
    parser.add_argument("--dataset", default=None, help="default: the data set the model was trained on")
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--download", action="store_true")
    parser.add_argument("--sigma", type=float, required=True)
    parser.add_argument("--n0", type=int, default=100)
    parser.add_argument("--n-samples", type=int, default=100_000, help="estimation samples per point (N)")
    parser.add_argument("--every", type=int, default=20, help="certify every k-th test point")
    parser.add_argument("--n-points", type=int, default=None, help="at most this many points (default: all)")
    parser.add_argument("--chunk", type=int, default=10, help="points per part file (the unit of resumption)")
    parser.add_argument("--batch-size", type=int, default=10_000, help="rows per forward pass")
    parser.add_argument("--lvm", action="store_true", help="record LVM-RS statistics (published temperatures)")
    distributed.add_launch_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    """Run the command line; returns the path of the merged log."""
    from stabkit import data
    from stabkit.certify._smoothing import _root_seed
    from stabkit.certify.smoothing import TEMPERATURES, Smooth, load_log, merge_logs, save_log
    from stabkit.train_net import derived_generator, load_trained

    args = parse_args(argv)
    out = Path(args.out)
    if out.suffix != ".npz":
        raise ValueError(f"--out must name a .npz file, got {out.name!r}")
    for name in ("every", "chunk", "batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    device, (rank, size) = distributed.launch(args)
    net, config = load_trained(args.model, device)
    ds = data.load(
        args.dataset or config["dataset"],
        root=args.data_root,
        download=args.download and rank == 0,
        generator=derived_generator(config["seed"], "data"),
    )
    x, y = ds.x_test[:: args.every], ds.y_test[:: args.every]
    if args.n_points is not None:
        x, y = x[: args.n_points], y[: args.n_points]
    smooth = Smooth(net, ds.num_classes, args.sigma)
    root_seed = _root_seed(derived_generator(args.seed, "noise", device))
    chunks = [(a, min(a + args.chunk, len(y))) for a in range(0, len(y), args.chunk)]
    mine = [c for i, c in enumerate(chunks) if i % size == rank]
    if rank == 0 and not args.no_progress:
        from tqdm.auto import tqdm

        mine = tqdm(mine, desc=f"points (rank 0 of {size})", unit="chunk")
    for start, stop in mine:
        part = _part_path(out, start, stop)
        if part.exists():  # written by an earlier, interrupted run (save_log is atomic)
            _check_part(load_log(part), args, root_seed)
            continue
        log = smooth.sample(
            x[start:stop].to(device),
            n0=args.n0,
            n=args.n_samples,
            batch_size=args.batch_size,
            labels=y[start:stop],
            temperatures=TEMPERATURES if args.lvm else None,
            indices=np.arange(start, stop),
            generator=derived_generator(args.seed, "noise", device),
        )
        save_log(log, part)
    distributed.barrier()
    if rank == 0:
        merged = merge_logs([load_log(_part_path(out, a, b)) for a, b in chunks], n_points=len(y))
        save_log(merged, out)
        print(f"wrote {out} ({merged.n_points} points, sigma {merged.sigma}, n0 {merged.n0}, n {merged.n})")
    distributed.barrier()
    return out


if __name__ == "__main__":
    main()
