"""The few ``torch.distributed`` facts stabkit needs: which rank this is, of how many, and the rank's device.

Nothing here schedules work: processes are started by ``torchrun`` (or ``torch.multiprocessing``), which sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous variables. :func:`init_from_env` turns those into a
process group (NCCL on CUDA, Gloo on CPU) when there is more than one process; without them everything runs in
one process and :func:`world` is ``(0, 1)``.
"""

from __future__ import annotations

import argparse
import os
from typing import NamedTuple

import torch
import torch.distributed as dist


class World(NamedTuple):
    """This process's place among the workers: ``rank`` in ``range(size)``."""

    rank: int
    size: int


def world() -> World:
    """Rank and number of processes of the initialised process group, ``(0, 1)`` when there is none."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World(0, 1)


def is_main() -> bool:
    """Whether this process is rank 0 (the one that logs and writes files)."""
    return world().rank == 0


def local_device(kind: str = "cuda") -> torch.device:
    """The device of this process: ``cuda:LOCAL_RANK`` when ``kind`` is ``"cuda"``, else the CPU.

    Args:
        kind: ``"cuda"`` or ``"cpu"`` (``"auto"``: CUDA when available).

    Raises:
        ValueError: unknown kind, or ``"cuda"`` without a CUDA device.
    """
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cpu":
        return torch.device("cpu")
    if kind != "cuda":
        raise ValueError(f"device kind must be 'cpu', 'cuda' or 'auto', got {kind!r}")
    if not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no CUDA device; use --device cpu")
    index = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def init_from_env(device: torch.device | str = "cpu") -> World:
    """Join the process group that ``torchrun`` describes in the environment, if any; return :func:`world`.

    Does nothing when a group already exists or when ``WORLD_SIZE`` is unset or 1. The backend is NCCL for a
    CUDA ``device`` and Gloo otherwise.
    """
    if not dist.is_available() or dist.is_initialized():
        return world()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return world()
    backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return world()


def add_launch_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options every torchrun-launchable command shares (read back by :func:`launch`).

    They are ``--seed``, ``--device``, ``--threads`` and ``--no-progress``.
    """
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="cpu, cuda (cuda:LOCAL_RANK under torchrun) or auto")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--no-progress", action="store_true")


def launch(args: argparse.Namespace) -> tuple[torch.device, World]:
    """Apply ``--threads``, take this rank's device from ``--device`` and join the process group (if any)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = local_device(args.device)
    return device, init_from_env(device)


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    if world().size > 1:
        dist.barrier()


def shard(n: int, *, rank: int | None = None, size: int | None = None) -> range:
    """The contiguous block of ``range(n)`` that ``rank`` of ``size`` handles (sizes differ by at most one).

    Defaults to this process's rank and world size.
    """
    here = world()
    rank = here.rank if rank is None else int(rank)
    size = here.size if size is None else int(size)
    if size < 1 or not 0 <= rank < size:
        raise ValueError(f"need 0 <= rank < size, got rank={rank}, size={size}")
    base, extra = divmod(int(n), size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))
