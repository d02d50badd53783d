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

:func:`read_logs` and :func:`load_base_model` are the other end: a notebook given ``-p logs=…`` and
``-p checkpoints=…`` reads the files this command and ``python -m stabkit.train_net`` wrote (names:
:func:`log_name`), checked against its own settings.
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


# ---------------------------------------------------------------------- what the notebooks read
def log_name(dataset: str, net: str, sigma: float) -> str:
    """File name of the sampling log of base network ``net`` at noise ``sigma``: ``<dataset>-<net>-sigma<σ>.npz``.

    ``σ`` is written as Python prints a float (``0.25``, ``0.5``, ``1.0``), as a shell loop ``for s in 0.25 0.5
    1.0`` does (docs/full-scale.md).
    """
    return f"{dataset}-{net}-sigma{float(sigma)}.npz"


def _model_folder(checkpoints: str | Path, net: str, sigma: float) -> Path:
    """Where ``python -m stabkit.train_net`` wrote base network ``net`` trained at noise ``sigma``."""
    return Path(checkpoints) / f"{net}-sigma{float(sigma)}"


def _sample_command(path: Path, net: str, sigma: float, *, checkpoints, n0, n, every, n_points, lvm) -> str:
    model = _model_folder(checkpoints, net, sigma) / "model.pt"
    return (
        f"python -m stabkit.sample_logs --model {model} --sigma {float(sigma)} --n0 {n0} --n-samples {n} "
        f"--every {every} --n-points {n_points}{' --lvm' if lvm else ''} --out {path}"
    )


def read_logs(
    folder: str | Path,
    runs,
    *,
    dataset: str,
    n0: int,
    n: int,
    n_points: int,
    every: int,
    labels=None,
    lvm: bool = True,
    checkpoints: str | Path = "runs",
) -> dict:
    """Read and check the sampling logs a notebook certifies instead of sampling itself.

    For every ``(net, sigma)`` of ``runs`` the file ``folder/log_name(dataset, net, sigma)`` must be a log written
    by this command (or :func:`stabkit.certify.smoothing.save_log`) with the notebook's settings: noise ``sigma``,
    ``n0`` selection and ``n`` estimation samples, the LVM-RS statistics when ``lvm``, and exactly the points
    ``0 … n_points − 1`` (checked by :func:`stabkit.certify.smoothing.merge_logs`) with the given ``labels``.

    Args:
        folder: the folder of the logs (``-p logs=…`` of a notebook).
        runs: ``(net, sigma)`` pairs, ``net`` the name in the file (``"cnn"``, ``"sll"``).
        dataset: data set name, the first part of the file name.
        n0, n: selection and estimation samples per point the notebook expects.
        n_points: number of certified points; every ``every``-th test image.
        every: the stride over the test set (for the error messages' command).
        labels: the true labels of the certified points, or None (not checked).
        lvm: whether the logs must hold the LVM-RS statistics (``--lvm``).
        checkpoints: folder of the models (``<net>-sigma<σ>/model.pt``), for the error messages' command.

    Returns:
        ``{(net, sigma): SmoothingLog}``.

    Raises:
        FileNotFoundError: a log is missing (the message gives the command that writes it).
        ValueError: a log sampled with other settings, without LVM statistics, on other points, or not covering
            every point exactly once.
    """
    from stabkit.certify.smoothing import load_log, merge_logs

    folder = Path(folder)
    expected = None if labels is None else np.asarray(labels, dtype=np.int64)
    out = {}
    for net, sigma in runs:
        path = folder / log_name(dataset, net, sigma)
        command = _sample_command(
            path, net, sigma, checkpoints=checkpoints, n0=n0, n=n, every=every, n_points=n_points, lvm=lvm
        )
        if not path.is_file():
            raise FileNotFoundError(f"no sampling log {path}; write it with\n  {command}")
        log = load_log(path)
        found = dict(sigma=float(log.sigma), n0=int(log.n0), n=int(log.n))
        wanted = dict(sigma=float(sigma), n0=int(n0), n=int(n))
        if found != wanted:
            raise ValueError(
                f"{path} was sampled with {found}, the notebook expects {wanted}; re-sample with\n  {command}"
            )
        if lvm and (log.temperatures is None or log.mean_estimation is None):
            raise ValueError(f"{path} has no LVM-RS statistics (sampled without --lvm); re-sample with\n  {command}")
        try:
            log = merge_logs([log], n_points=n_points)
        except ValueError as err:
            raise ValueError(f"{path}: {err}; re-sample with\n  {command}") from None
        if expected is not None and not np.array_equal(log.labels, expected):
            raise ValueError(
                f"{path} was sampled on other test points than the notebook certifies (labels differ: another "
                f"data set, --every or --n-points); re-sample with\n  {command}"
            )
        out[(net, float(sigma))] = log
    return out


def load_base_model(checkpoints: str | Path, net: str, sigma: float, *, dataset: str, input_shape, device="cpu"):
    """The base classifier ``checkpoints/<net>-sigma<σ>/model.pt`` written by ``python -m stabkit.train_net``.

    Checks that it was trained on ``dataset`` under Gaussian noise ``sigma`` for inputs of ``input_shape``.

    Returns:
        ``(model, config)`` as :func:`stabkit.train_net.load_trained` (eval mode).

    Raises:
        FileNotFoundError: no such model (the message gives the command's output folder).
        ValueError: a model trained on another data set, at another σ or for another input shape.
    """
    from stabkit.train_net import load_trained

    run = _model_folder(checkpoints, net, sigma)
    path = run / "model.pt"
    if not path.is_file():
        raise FileNotFoundError(
            f"no model {path}; train it with python -m stabkit.train_net --dataset {dataset} --sigma {float(sigma)} "
            f"... --out {run} (docs/full-scale.md gives the full command)"
        )
    model, config = load_trained(path, device)
    found = (config.get("dataset"), float(config.get("sigma", 0.0)), tuple(config.get("input_shape", ())))
    wanted = (dataset, float(sigma), tuple(int(s) for s in input_shape))
    if found != wanted:
        raise ValueError(f"{path} was trained with (dataset, sigma, input_shape) = {found}, expected {wanted}")
    return model, config


if __name__ == "__main__":
    main()
