"""Train a thesis network from the command line, in one process or under ``torchrun`` (see docs/full-scale.md).

    python -m stabkit.train_net --dataset cifar10 --arch sll --size s --epochs 1000 --out runs/sll-s
    torchrun --nproc_per_node=4 -m stabkit.train_net --device cuda ... --out runs/sll-s

The run writes ``OUT/checkpoint.pt`` (the run state of :func:`stabkit.train.fit`: killed and restarted with the
same command, it resumes exactly), then ``OUT/model.pt`` (weights and the configuration to rebuild the network,
read by :func:`load_trained` and ``python -m stabkit.sample_logs``) and ``OUT/history.json``. ``--arch`` is a
:class:`~stabkit.models.LipschitzNet` layer type (``sll``, ``cpl``, ``aol``, ``sr``, ``plain``) with a size
preset of :data:`stabkit.models.SIZES`, or ``small-cnn`` (:func:`stabkit.models.small_cnn`, the smoothing
notebook's base classifier). ``--sigma`` trains under Gaussian noise (the base classifier of randomized
smoothing). The defaults are the SLL paper's CIFAR-10 protocol (Adam with betas (0.5, 0.9), peak lr 0.01,
triangular schedule, batch 256, offset cross-entropy); the CPL protocol is ``--arch cpl --epochs 200 --lr 1e-3
--betas 0.9 0.999 --loss hinge``.

Reading runs back: :func:`load_runs` loads the networks of a set of runs (one folder per layer type and seed,
:func:`run_folder`) and :func:`run_data` rebuilds the data split each was trained on; the full-scale notebooks use
them (``-p checkpoints=...``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from stabkit import distributed

MODEL_FORMAT = "stabkit.train_net/1"
LOSSES = ("offset-ce", "hinge", "ce")


def derived_generator(seed: int, key: str, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator seeded from ``(seed, key)`` (SHA-256), so that every random stream of a run has its own seed."""
    digest = hashlib.sha256(f"{int(seed)}/{key}".encode()).digest()
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def build_net(config: dict[str, Any], device: torch.device | str = "cpu") -> nn.Module:
    """The network described by a ``model.pt`` configuration (see :func:`load_trained`), freshly initialised."""
    from stabkit.models import LAYER_TYPES, LipschitzNet, small_cnn

    shape, classes = tuple(config["input_shape"]), int(config["num_classes"])
    if config["arch"] == "small-cnn":
        with torch.random.fork_rng(devices=[]):  # small_cnn initialises from the global RNG: keep it untouched
            torch.manual_seed(int(config["seed"]))
            return small_cnn(shape[0], classes, width=int(config["width"])).to(device)
    if config["arch"] not in LAYER_TYPES:
        raise ValueError(f"arch must be one of {(*LAYER_TYPES, 'small-cnn')}, got {config['arch']!r}")
    mean = config.get("mean")
    return LipschitzNet(
        shape,
        classes,
        layer=config["arch"],
        size=config["size"],
        pool=int(config["pool"]),
        kernel_size=int(config["kernel_size"]),
        mean=None if mean is None else torch.tensor(mean),
        device=device,
        generator=derived_generator(config["seed"], "init", device),
    )


def load_trained(path: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild and load a network written by ``python -m stabkit.train_net`` (``OUT/model.pt``), in eval mode.

    Returns:
        ``(model, config)``: the network on ``device`` and the configuration it was trained with (including
        ``history``).

    Raises:
        ValueError: the file is not a ``model.pt`` of this module.
    """
    state = torch.load(Path(path), map_location=device, weights_only=False)
    if not isinstance(state, dict) or state.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path} is not a model file written by python -m stabkit.train_net")
    net = build_net(state["config"], device)
    net.load_state_dict(state["state_dict"])
    return net.eval(), {**state["config"], "history": state["history"]}


def _objective(loss: str, logit_scale: float):
    from stabkit.losses import multiclass_hinge, offset_cross_entropy
    from stabkit.train import supervised

    if loss == "offset-ce":
        return supervised(offset_cross_entropy)
    if loss == "hinge":
        return supervised(multiclass_hinge)
    return supervised(lambda z, y: F.cross_entropy(logit_scale * z, y))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m stabkit.train_net", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="run folder: checkpoint.pt, model.pt, history.json")
    parser.add_argument("--dataset", default="cifar10", help="a name of stabkit.data.DATASETS")
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--download", action="store_true", help="fetch MNIST / CIFAR-10 if missing")
    parser.add_argument("--n-train", type=int, default=None, help="train on a seeded subset of this size")
    parser.add_argument("--arch", default="sll", help="sll, cpl, aol, sr, plain (LipschitzNet) or small-cnn")
    parser.add_argument("--size", default="s", help="LipschitzNet size: tiny, xs, s, m, l, xl")
    parser.add_argument("--pool", type=int, default=4)
    parser.add_argument("--kernel-size", type=int, default=3)
    parser.add_argument("--width", type=int, default=64, help="small-cnn width")
    parser.add_argument("--no-center", action="store_true", help="no input centring (LipschitzNet on images)")
    parser.add_argument("--epochs", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=256, help="global batch size (split over the ranks)")
    parser.add_argument("--lr", type=float, default=0.01, help="peak learning rate of Adam")
    parser.add_argument("--betas", type=float, nargs=2, default=(0.5, 0.9))
    parser.add_argument("--schedule", choices=("triangular", "constant"), default="triangular")
    parser.add_argument("--loss", choices=LOSSES, default="offset-ce")
    parser.add_argument("--logit-scale", type=float, default=1.0, help="temperature of --loss ce")
    parser.add_argument("--sigma", type=float, default=0.0, help="Gaussian augmentation σ (0: none)")
    parser.add_argument("--checkpoint-every", type=int, default=None, help="also checkpoint every N steps")
    distributed.add_launch_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    """Run the command line; returns the path of ``model.pt``."""
    from stabkit import data
    from stabkit.certify.smoothing import gaussian_augment
    from stabkit.train import accuracy, fit, triangular_lr

    args = parse_args(argv)
    device, (rank, size) = distributed.launch(args)
    out = Path(args.out)
    ds = data.load(
        args.dataset,
        root=args.data_root,
        download=args.download and rank == 0,
        n_train=args.n_train,
        generator=derived_generator(args.seed, "data"),
    )
    shape = tuple(ds.x_train.shape[1:])
    center = len(shape) == 3 and args.arch != "small-cnn" and not args.no_center
    mean = ds.x_train.mean(dim=(0, 2, 3)).tolist() if center else None  # centring only: keeps L = 1
    config = {
        "arch": args.arch,
        "size": args.size,
        "pool": args.pool,
        "kernel_size": args.kernel_size,
        "width": args.width,
        "input_shape": list(shape),
        "num_classes": ds.num_classes,
        "mean": mean,
        "seed": args.seed,
        "dataset": args.dataset,
        "n_train": args.n_train,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "betas": list(args.betas),
        "schedule": args.schedule,
        "loss": args.loss,
        "logit_scale": args.logit_scale,
        "sigma": args.sigma,
    }
    net = build_net(config, device)
    history = fit(
        net,
        (ds.x_train, ds.y_train),
        objective=_objective(args.loss, args.logit_scale),
        optimizer=torch.optim.Adam(net.parameters(), lr=args.lr, betas=tuple(args.betas)),
        epochs=args.epochs,
        batch_size=args.batch_size,
        generator=derived_generator(args.seed, "batches"),
        lr_schedule=triangular_lr() if args.schedule == "triangular" else None,
        augment=gaussian_augment(args.sigma) if args.sigma > 0 else None,
        checkpoint=out / "checkpoint.pt",
        checkpoint_every=args.checkpoint_every,
        progress=not args.no_progress,
    )
    model_path = out / "model.pt"
    if rank == 0:
        from stabkit.train import _atomic_save

        config["test_accuracy"] = accuracy(net, ds.x_test, ds.y_test)
        config["world_size"] = size
        _atomic_save(
            {"format": MODEL_FORMAT, "config": config, "state_dict": net.state_dict(), "history": history}, model_path
        )
        (out / "history.json").write_text(json.dumps(history, indent=1))
        print(f"wrote {model_path} (test accuracy {config['test_accuracy']:.4f})")
    distributed.barrier()
    return model_path


# ------------------------------------------------------------------------------------- trained runs on disk
class TrainedRun(NamedTuple):
    """A network written by ``python -m stabkit.train_net`` and the configuration it was trained with."""

    model: nn.Module
    config: dict


def run_folder(arch: str, seed: int) -> str:
    """Name of the run folder of ``arch`` trained from ``seed``: ``"<arch>-seed<seed>"`` (see :func:`load_runs`)."""
    return f"{arch}-seed{int(seed)}"


def load_runs(
    root: str | os.PathLike,
    archs: Sequence[str],
    seeds: Sequence[int],
    *,
    dataset: str,
    device: torch.device | str = "cpu",
) -> dict[tuple[str, int], TrainedRun]:
    """Load the networks of a set of ``python -m stabkit.train_net`` runs, one per (layer type, seed).

    Run ``(arch, seed)`` lives in ``root/<arch>-seed<seed>/`` (:func:`run_folder`), written by
    ``python -m stabkit.train_net --arch <arch> --seed <seed> --dataset <dataset> --out root/<arch>-seed<seed>``
    (docs/full-scale.md gives the protocol options). Every file is checked before any is used: a missing one, or
    one trained with another architecture, seed or data set, is an error.

    Args:
        root: the folder of the runs.
        archs: layer types (``--arch``), e.g. ``("cpl", "sll")``.
        seeds: root seeds (``--seed``) of the runs.
        dataset: the data set the runs must have been trained on (``--dataset``).
        device: where to load the networks.

    Returns:
        ``{(arch, seed): TrainedRun(model, config)}``, the models in eval mode; ``config`` is the run's
        configuration (see :func:`load_trained`), whose ``seed``, ``dataset`` and ``n_train``
        give its data split (:func:`run_data`).

    Raises:
        FileNotFoundError: ``root`` or some ``model.pt`` is missing (the message gives the commands that write them).
        ValueError: a run was trained with another architecture, seed or data set than asked for.
    """
    root = Path(root)
    wanted = [(str(a), int(s)) for a in archs for s in seeds]
    if not wanted:
        raise ValueError("archs and seeds must name at least one run")
    missing = [(a, s) for a, s in wanted if not (root / run_folder(a, s) / "model.pt").is_file()]
    if missing:
        commands = "\n".join(
            f"  python -m stabkit.train_net --dataset {dataset} --arch {a} --seed {s} --out {root / run_folder(a, s)}"
            for a, s in missing
        )
        raise FileNotFoundError(
            f"{len(missing)} of {len(wanted)} trained runs missing under {root} (no <run>/model.pt); write them with\n"
            f"{commands}\n(add the protocol's options, docs/full-scale.md; under torchrun for several GPUs)"
        )
    runs = {}
    for a, s in wanted:
        path = root / run_folder(a, s) / "model.pt"
        model, config = load_trained(path, device)
        got = {"arch": config.get("arch"), "seed": config.get("seed"), "dataset": config.get("dataset")}
        if got != {"arch": a, "seed": s, "dataset": dataset}:
            raise ValueError(f"{path} was trained with {got}, expected arch={a!r}, seed={s}, dataset={dataset!r}")
        runs[a, s] = TrainedRun(model, config)
    return runs


def run_data(config: dict, *, root: str | os.PathLike = "data", download: bool = False):
    """The data split a ``python -m stabkit.train_net`` run trained on (its train and test parts).

    Data sets without an official split (digits, ``mnist-test``, the synthetic ones) are split by a generator that
    ``train_net`` derives from the run's seed: a notebook evaluating a loaded run must use this split, not its
    own, or its test points may be training points of the run.

    Args:
        config: a run's configuration (:class:`TrainedRun` ``.config``).
        root, download: as :func:`stabkit.data.load`.

    Returns:
        The :class:`stabkit.data.Dataset` of the run.
    """
    from stabkit import data

    return data.load(
        config["dataset"],
        root=root,
        download=download,
        n_train=config["n_train"],
        generator=derived_generator(config["seed"], "data"),
    )


if __name__ == "__main__":
    main()
