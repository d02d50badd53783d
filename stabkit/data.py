"""Data sets used by the notebooks, all returned in one shape: a :class:`Dataset` of tensors.

* ``digits`` (scikit-learn's 8×8 digits, shipped with scikit-learn: no network), ``moons`` and ``circles``
  (synthetic 2-D sets) are the offline defaults that the ``ci`` scale uses.
* ``mnist`` (the official 60 000 / 10 000 split), ``mnist-test`` (the 10 000-image test set alone, re-split by a
  seed; for offline small-scale runs with only the test files at hand) and ``cifar10`` are read from a root folder
  and fetched through pooch with ``download=True``.

Decision (hash checks): CIFAR-10 is checked against the MD5 of the official archive. MNIST mirrors do not all
serve byte-identical ``.gz`` files (some were re-compressed), so an MNIST file is accepted when either the
archive matches the original MD5 or its decompressed IDX content matches the published SHA-256 of the payload.
A file that matches neither is deleted and an error is raised: a corrupted download is never kept.

Images are float32 in [0, 1], shape (N, C, H, W); labels int64, shape (N,).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import sys
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from stabkit._checks import check_positive_int, check_probability, check_tensor, resolve_generator

DATASETS = ("digits", "moons", "circles", "mnist", "mnist-test", "cifar10")
OFFLINE_DATASETS = ("digits", "moons", "circles")

MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
# name -> (md5 of the original .gz archive, sha256 of the decompressed IDX payload or None if not published)
MNIST_FILES = {
    "train-images-idx3-ubyte.gz": ("f68b3c2dcbeaaa9fbdd348bbdeb94873", None),
    "train-labels-idx1-ubyte.gz": ("d53e105ee54ea40749a09fcbcd1e9432", None),
    "t10k-images-idx3-ubyte.gz": (
        "9fb629c4189551a2d022fa330f9573f3",
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    ),
    "t10k-labels-idx1-ubyte.gz": (
        "ec29112dd5afa0611ce80d1b7f02629c",
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    ),
}
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_DIR = "cifar-10-batches-py"


class Dataset(NamedTuple):
    """A train/test split as tensors on the CPU."""

    x_train: torch.Tensor  # (N, C, H, W) images in [0, 1], or (N, 2) points
    y_train: torch.Tensor  # (N,) int64
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    name: str


def load(
    name: str,
    *,
    root: str | os.PathLike = "data",
    download: bool = False,
    n_train: int | None = None,
    n_test: int | None = None,
    test_fraction: float = 0.25,
    noise: float = 0.1,
    generator: torch.Generator | None = None,
) -> Dataset:
    """Load a data set as a deterministic train/test split.

    Args:
        name: one of :data:`DATASETS`.
        root: folder holding ``mnist/`` and ``cifar10/`` (ignored by the offline sets).
        download: fetch missing MNIST / CIFAR-10 files through pooch (needs internet).
        n_train: keep this many training examples (a seeded subset); ``None`` keeps all. For the synthetic
            sets it is the number of points drawn.
        n_test: same for the test split.
        test_fraction: share of the examples held out for test where the data set has no official split
            (digits, moons, circles, mnist-test).
        noise: standard deviation of the Gaussian noise of the synthetic 2-D sets.
        generator: CPU generator for the split, the subsets and the synthetic draws.

    Returns:
        A :class:`Dataset`.

    Raises:
        ValueError: unknown name or invalid sizes.
        FileNotFoundError: MNIST / CIFAR-10 files missing and ``download=False``.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction!r}")
    for label, n in (("n_train", n_train), ("n_test", n_test)):
        if n is not None:
            check_positive_int(label, n)
    gen = resolve_generator(generator, "cpu")
    root = Path(root)

    if name in ("moons", "circles"):
        n_tr = n_train or 500
        n_te = n_test or max(1, round(n_tr * test_fraction / (1 - test_fraction)))
        x, y = _synthetic_2d(name, n_tr + n_te, noise=noise, seed=_int_seed(gen))
        return _split(x, y, n_te, num_classes=2, name=name, generator=gen)

    if name == "digits":
        x, y = _digits()
        n_te = round(len(y) * test_fraction)
        data = _split(x, y, n_te, num_classes=10, name=name, generator=gen)
    elif name == "mnist-test":
        x, y = read_mnist(root, split="test", download=download)
        data = _split(x, y, round(len(y) * test_fraction), num_classes=10, name=name, generator=gen)
    elif name == "mnist":
        x_tr, y_tr = read_mnist(root, split="train", download=download)
        x_te, y_te = read_mnist(root, split="test", download=download)
        data = Dataset(x_tr, y_tr, x_te, y_te, 10, name)
    else:  # cifar10
        x_tr, y_tr = read_cifar10(root, split="train", download=download)
        x_te, y_te = read_cifar10(root, split="test", download=download)
        data = Dataset(x_tr, y_tr, x_te, y_te, 10, name)
    return _subset(data, n_train, n_test, gen)


def symmetric_label_noise(
    y: torch.Tensor, rate: float, num_classes: int, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Symmetric label noise: each label is replaced, with probability ``rate``, by one of the other classes.

    The replacement is drawn uniformly among the ``num_classes - 1`` other classes, so a flipped label never keeps
    its class: the expected fraction of changed labels is exactly ``rate``. The input is not modified.

    Args:
        y: integer labels in ``[0, num_classes)``.
        rate: flip probability in [0, 1].
        num_classes: number of classes (at least 2).
        generator: generator on ``y``'s device (``None`` = seeded 0). Two draws per call: the flip mask
            (``torch.rand``), then the class shifts (``torch.randint``).

    Returns:
        The noisy labels, same shape and dtype as ``y``.

    Shape:
        (N,) → (N,).

    Raises:
        ValueError: ``rate`` outside [0, 1], ``num_classes < 2``, or labels outside ``[0, num_classes)``.

    Example:
        >>> y = torch.zeros(6, dtype=torch.int64)
        >>> symmetric_label_noise(y, 0.5, 3, generator=torch.Generator().manual_seed(0)).tolist()
        [2, 0, 2, 2, 2, 0]

    References:
        Label-noise protocol of the activation-decay experiments, thesis ch. 5 (§10.5).
    """
    y = check_tensor("y", y, ndim=1)
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"y must hold integer labels, got dtype {y.dtype}")
    rate = check_probability("rate", rate, open_interval=False)
    check_positive_int("num_classes", num_classes, minimum=2)
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got values in [{int(y.min())}, {int(y.max())}]")
    gen = resolve_generator(generator, y.device)
    flip = torch.rand(len(y), generator=gen, device=y.device) < rate  # (N,)
    # a shift in 1..K-1 (mod K) reaches every other class with the same probability, and never the same one
    shift = torch.randint(1, num_classes, (len(y),), generator=gen, device=y.device, dtype=y.dtype)
    return torch.where(flip, (y + shift) % num_classes, y)


# ----------------------------------------------------------------------------------------------- offline sets
def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits  # ships the data: no network

    bunch = load_digits()
    x = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (1797, 1, 8, 8)
    return x, torch.as_tensor(bunch.target, dtype=torch.int64)


def _synthetic_2d(name: str, n: int, *, noise: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import make_circles, make_moons

    if name == "moons":
        x, y = make_moons(n_samples=n, noise=noise, random_state=seed)
    else:
        x, y = make_circles(n_samples=n, noise=noise, factor=0.5, random_state=seed)
    return torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.int64)


def _int_seed(gen: torch.Generator) -> int:
    # scikit-learn takes an integer seed: draw it from the caller's stream so the set follows the root seed.
    return int(torch.randint(0, 2**31 - 1, (1,), generator=gen))


def _split(x, y, n_test: int, *, num_classes: int, name: str, generator: torch.Generator) -> Dataset:
    perm = torch.randperm(len(y), generator=generator)
    test, train = perm[:n_test], perm[n_test:]
    return Dataset(x[train], y[train], x[test], y[test], num_classes, name)


def _subset(data: Dataset, n_train: int | None, n_test: int | None, gen: torch.Generator) -> Dataset:
    def take(x, y, n):
        if n is None or n >= len(y):
            return x, y
        idx = torch.randperm(len(y), generator=gen)[:n]
        return x[idx], y[idx]

    x_tr, y_tr = take(data.x_train, data.y_train, n_train)
    x_te, y_te = take(data.x_test, data.y_test, n_test)
    return data._replace(x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te)


# ----------------------------------------------------------------------------------------------------- MNIST
def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed): 4-byte magic, one big-endian uint32 per dimension, data."""
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file (magic {raw[:4].hex()})")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(np.int64)
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says shape {tuple(dims)} but holds {data.size} values (truncated file?)")
    return data.reshape(tuple(dims))


def read_mnist(
    root: str | os.PathLike, *, split: str = "train", download: bool = False, base_url: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read MNIST's ``split`` ("train" or "test") from ``root/mnist``; images (N, 1, 28, 28) in [0, 1].

    ``base_url`` (default: ``$STABKIT_MNIST_URL`` or :data:`MNIST_URL`) is the mirror used with ``download=True``.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    prefix = "train" if split == "train" else "t10k"
    names = [f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz"]
    folder = Path(root) / "mnist"
    paths = [fetch_mnist_file(n, folder, download=download, base_url=base_url) for n in names]
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    x = torch.as_tensor(images.copy(), dtype=torch.float32).unsqueeze(1) / 255.0  # (N, 1, 28, 28)
    return x, torch.as_tensor(labels.astype(np.int64))


def fetch_mnist_file(
    name: str, folder: str | os.PathLike, *, download: bool = False, base_url: str | None = None
) -> Path:
    """Return the verified path of one MNIST file, downloading it through pooch if asked.

    Raises:
        FileNotFoundError: the file is missing and ``download`` is False.
        ValueError: the file fails the hash check (it is deleted).
    """
    folder = Path(folder)
    path = folder / name
    if name not in MNIST_FILES:
        raise ValueError(f"unknown MNIST file {name!r}; expected one of {', '.join(MNIST_FILES)}")
    if not path.exists():
        if not download:
            raise FileNotFoundError(
                f"MNIST file {name} not found in {folder.resolve()}. Pass download=True (needs internet; in a "
                f"notebook, download=True is implied by dataset='mnist' at 'full' scale), or copy the IDX .gz "
                f"files {', '.join(MNIST_FILES)} into that folder."
            )
        url = (base_url or os.environ.get("STABKIT_MNIST_URL") or MNIST_URL).rstrip("/") + "/" + name
        _pooch_retrieve(url, None, name, folder)
    _verify_mnist(path)
    return path


def _verify_mnist(path: Path) -> None:
    """Accept the original archive (MD5), or a re-compressed / uncompressed copy whose IDX payload matches the
    published SHA-256. A file that is certainly corrupt (undecodable, wrong header or size, payload hash
    mismatch) is deleted; a well-formed train file that cannot be verified (no payload hash is published for the
    train files) is kept and reported."""
    archive_md5, payload_sha256 = MNIST_FILES[path.name]
    raw = path.read_bytes()
    if hashlib.md5(raw).hexdigest() == archive_md5:
        return
    if raw[:2] == b"\x1f\x8b":
        try:
            payload = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error):  # truncated archive, bad header, damaged deflate stream
            payload = None
    else:
        payload = raw  # an uncompressed IDX file under the .gz name (read_idx reads it)
    if payload is not None and payload_sha256 and hashlib.sha256(payload).hexdigest() == payload_sha256:
        return
    if payload is not None and not payload_sha256 and _idx_shape(payload) == _MNIST_TRAIN_SHAPES[path.name]:
        raise ValueError(
            f"{path} is a well-formed MNIST train file but not the original archive (MD5 differs), and no payload "
            "hash is published for the train files, so it cannot be verified; it was kept. Replace it with the "
            "original (python -m stabkit.data fetch mnist, after deleting it)."
        )
    path.unlink()
    what = "could not be decompressed" if payload is None else "failed its hash check"
    raise ValueError(
        f"{path} {what} (neither the original archive MD5 nor the IDX payload SHA-256 match); the file was "
        "deleted. Download it again (python -m stabkit.data fetch mnist), or from another mirror (STABKIT_MNIST_URL)."
    )


_MNIST_TRAIN_SHAPES = {
    "train-images-idx3-ubyte.gz": (60000, 28, 28),
    "train-labels-idx1-ubyte.gz": (60000,),
    "t10k-images-idx3-ubyte.gz": None,
    "t10k-labels-idx1-ubyte.gz": None,
}


def _idx_shape(payload: bytes) -> tuple[int, ...] | None:
    """The shape an unsigned-byte IDX payload declares, if its size agrees with it; else None."""
    if len(payload) < 4 or payload[:3] != b"\x00\x00\x08":
        return None
    ndim = payload[3]
    if len(payload) < 4 + 4 * ndim:
        return None
    dims = tuple(int(d) for d in np.frombuffer(payload, dtype=">u4", count=ndim, offset=4))
    return dims if len(payload) - 4 - 4 * ndim == int(np.prod(dims)) else None


# -------------------------------------------------------------------------------------------------- CIFAR-10
def read_cifar10(
    root: str | os.PathLike, *, split: str = "train", download: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read CIFAR-10's python batches from ``root/cifar10/cifar-10-batches-py``; images (N, 3, 32, 32) in [0, 1]."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folder = Path(root) / "cifar10"
    batch_dir = folder / CIFAR10_DIR
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    if not all((batch_dir / n).exists() for n in names):
        if not download:
            raise FileNotFoundError(
                f"CIFAR-10 batches not found in {batch_dir.resolve()}. Pass download=True (needs internet), or "
                f"extract cifar-10-python.tar.gz (from {CIFAR10_URL}) into {folder.resolve()}."
            )
        import pooch

        _pooch_retrieve(CIFAR10_URL, f"md5:{CIFAR10_MD5}", "cifar-10-python.tar.gz", folder, pooch.Untar())
    xs, ys = [], []
    for n in names:
        x, y = read_cifar10_batch(batch_dir / n)
        xs.append(x)
        ys.append(y)
    return torch.cat(xs), torch.cat(ys)


def read_cifar10_batch(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor]:
    """Read one CIFAR-10 python batch (a pickled dict with ``b"data"`` (N, 3072) uint8 and ``b"labels"``)."""
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    try:
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (KeyError, TypeError):
        raise ValueError(f"{path} is not a CIFAR-10 python batch (expected keys b'data' and b'labels')") from None
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise ValueError(f"{path}: data of shape {data.shape} with {len(labels)} labels is not a CIFAR-10 batch")
    x = torch.as_tensor(data.reshape(-1, 3, 32, 32), dtype=torch.float32) / 255.0
    return x, torch.as_tensor(labels)


def _pooch_retrieve(url: str, known_hash: str | None, fname: str, folder: Path, processor=None):
    import pooch

    pooch.get_logger().setLevel("WARNING")
    progress = _PROGRESS[0] or os.environ.get("STABKIT_PROGRESS") == "1"
    try:
        return pooch.retrieve(url, known_hash, fname=fname, path=folder, processor=processor, progressbar=progress)
    except ValueError:
        raise  # hash mismatch: pooch already removed the download
    except Exception as exc:  # network errors come from requests / urllib3 under many names
        raise FileNotFoundError(
            f"could not download {url} into {folder.resolve()} ({type(exc).__name__}: {exc}). If this machine is "
            "offline, copy the files there by hand."
        ) from exc


# ----------------------------------------------------------------------------------------------------- fetch
_PROGRESS = [False]  # set by fetch(progress=True); downloads inside notebooks follow $STABKIT_PROGRESS
FETCHABLE = ("mnist", "mnist-test", "cifar10")


def fetch(names: list[str] | tuple[str, ...], *, root: str | os.PathLike = "data", progress: bool = True) -> None:
    """Download and verify the files of data sets (``mnist``, ``mnist-test``, ``cifar10``) into ``root``.

    Files already present are verified, not downloaded again. Offline data sets (digits, moons, circles) need
    nothing and are accepted.

    Raises:
        ValueError: an unknown name, or a file that fails its hash check (deleted unless it is a well-formed
            file that cannot be verified).
        FileNotFoundError: the download failed (offline machine, unreachable mirror).
    """
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        raise ValueError(f"unknown dataset(s) {', '.join(unknown)}; choose among {', '.join(FETCHABLE)}")
    _PROGRESS[0] = progress
    try:
        for name in names:
            if name in ("mnist", "mnist-test"):
                prefixes = ("t10k",) if name == "mnist-test" else ("train", "t10k")
                for f in MNIST_FILES:
                    if f.startswith(prefixes):
                        fetch_mnist_file(f, Path(root) / "mnist", download=True)
            elif name == "cifar10":
                read_cifar10(root, split="test", download=True)
                read_cifar10(root, split="train", download=True)
    finally:
        _PROGRESS[0] = False


def missing_files(name: str, root: str | os.PathLike = "data") -> list[str]:
    """The files of data set ``name`` that are not in ``root`` yet (empty for the offline sets)."""
    root = Path(root)
    if name in ("mnist", "mnist-test"):
        prefixes = ("t10k",) if name == "mnist-test" else ("train", "t10k")
        return [
            str(root / "mnist" / f) for f in MNIST_FILES if f.startswith(prefixes) and not (root / "mnist" / f).exists()
        ]
    if name == "cifar10":
        names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        folder = root / "cifar10" / CIFAR10_DIR
        return [str(folder / n) for n in names if not (folder / n).exists()]
    return []


def main(argv: list[str] | None = None) -> int:
    """``python -m stabkit.data fetch NAME [NAME ...] [--root DIR]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m stabkit.data", description="Fetch the data sets (hash-checked).")
    sub = parser.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fetch", help="download and verify data sets")
    f.add_argument("names", nargs="+", choices=FETCHABLE, metavar="NAME", help=", ".join(FETCHABLE))
    f.add_argument("--root", default="data", help="data folder (default: data)")
    f.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    try:
        fetch(args.names, root=args.root, progress=not args.quiet)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{', '.join(args.names)}: verified in {Path(args.root).resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
