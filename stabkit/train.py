"""The one training loop of stabkit: plain PyTorch, deterministic, closure-based.

Every chapter trains through :func:`fit`. The regularisers plug in through the ``objective(model, x, y)``
callable (activation decay, Lipschitz penalties), data augmentation through ``augment(x, generator)`` (Gaussian
noise for randomized smoothing), and optimizers that evaluate the loss twice (SAM) through
``optimizer.step(closure)``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from stabkit import distributed
from stabkit._checks import check_positive_int, resolve_generator

#: Version tag of the run-state files written by :func:`fit` (Note [exact resume]).
CHECKPOINT_FORMAT = "stabkit.fit/2"

Objective = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def supervised(loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Objective:
    """Adapt a loss on logits, ``loss_fn(logits, y)``, to the ``objective(model, x, y)`` form of :func:`fit`."""

    def objective(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return loss_fn(model(x), y)

    return objective


def batches(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int,
    generator: torch.Generator | None = None,
    shuffle: bool = True,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield mini-batches of ``(x, y)``; the order is drawn from ``generator`` (a CPU generator)."""
    check_positive_int("batch_size", batch_size)
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
    order = torch.randperm(len(y), generator=resolve_generator(generator, "cpu")) if shuffle else None
    for start in range(0, len(y), batch_size):
        idx = order[start : start + batch_size] if order is not None else slice(start, start + batch_size)
        yield x[idx], y[idx]


def triangular_lr(*, peak_at: float = 0.4, end_at: float = 0.8, floor: float = 0.05) -> Callable[[float], float]:
    """The triangular schedule of the SLL/CPL papers, as a multiplier of the peak learning rate.

    0 → 1 linearly until ``peak_at`` (fraction of training), 1 → ``floor`` until ``end_at``, then ``floor`` → 0.
    The defaults (2/5, 4/5, 1/20) are the papers'.
    """
    if not 0 < peak_at < end_at < 1:
        raise ValueError(f"need 0 < peak_at < end_at < 1, got peak_at={peak_at}, end_at={end_at}")

    def multiplier(progress: float) -> float:
        if progress <= peak_at:
            return progress / peak_at
        if progress <= end_at:
            return 1 + (floor - 1) * (progress - peak_at) / (end_at - peak_at)
        return floor * max(0.0, 1 - progress) / (1 - end_at)

    return multiplier


def _model_device(model: nn.Module, what: str) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    if what == "fit":
        raise ValueError("model has no parameters, so fit has nothing to train; pass an nn.Module with parameters")
    return torch.device("cpu")


class _DDP(torch.nn.parallel.DistributedDataParallel):
    """DistributedDataParallel that lets an objective reach the wrapped module's attributes (``model.foo``)."""

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("module"), name)


def _settings(x, y, epochs, batch_size) -> dict[str, Any]:
    return {"epochs": epochs, "batch_size": batch_size, "n_examples": len(y), "input_shape": tuple(x.shape[1:])}


def fit(
    model: nn.Module,
    train: tuple[torch.Tensor, torch.Tensor],
    *,
    objective: Objective,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    batch_size: int,
    generator: torch.Generator | None = None,
    lr_schedule: Callable[[float], float] | None = None,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    evaluate: Callable[[nn.Module, int], dict[str, Any]] | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool = True,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Train ``model`` on ``train = (x, y)`` and return the per-epoch history; resumable and DDP-ready.

    Resuming (Note [exact resume]): with ``checkpoint`` set, the run state is written there atomically after
    every epoch (and every ``checkpoint_every`` steps): model, optimizer, the step reached (hence the epoch and
    the learning-rate schedule position), the partial epoch's loss sums, and every random state that decides
    what comes next: ``generator`` at the start of the epoch (the batch order is redrawn from it and the batches
    already done are skipped), the augmentation generator, and torch's global RNG (CPU, and CUDA on a CUDA
    model: dropout draws from it). If the file exists when ``fit`` starts and ``resume`` is true, training
    continues from it, so a killed run restarted with the same command ends with the same weights as an
    uninterrupted one (bit-identical in one process on the CPU). A checkpoint written with other ``epochs``,
    ``batch_size`` or data size is refused.

    Distributed (Note [DDP fit]): under ``torchrun`` (``WORLD_SIZE > 1``) ``fit`` joins the process group
    (:func:`stabkit.distributed.init_from_env`: NCCL for a CUDA model, Gloo on CPU) and wraps the model in
    ``DistributedDataParallel``. Every rank draws the same global batch order from ``generator``; each global
    batch of ``batch_size`` rows is split into contiguous per-rank parts (sizes differ by at most one) and the
    local loss is weighted by ``world_size · local / global`` so that DDP's gradient average is the gradient of
    the global batch's mean loss. ``augment`` is applied to the whole global batch on every rank before the
    split, so the noise does not depend on the number of ranks. The results equal a one-process run up to
    the rounding of the gradient all-reduce. Checkpoints and the progress bar are rank 0's; ``evaluate`` runs
    on every rank (on the unwrapped model). The objective receives the DDP wrapper (attribute access falls
    through to the wrapped module) and must call it at most once per backward.

    Args:
        model: the network; it stays on its device and the batches are moved to it (under torchrun with CUDA,
            put it on :func:`stabkit.distributed.local_device` first).
        train: inputs and labels (any device), at least one example.
        objective: ``objective(model, x, y) -> loss``, a mean over the batch (see :func:`supervised`).
        optimizer: any torch optimizer; ``step(closure)`` is called once per batch.
        epochs: number of passes over the data.
        batch_size: mini-batch size (the global one under torchrun).
        generator: CPU generator for the batch order (and for ``augment``, on the model's device: a second
            generator is derived from it there).
        lr_schedule: multiplier of each param group's initial ``lr`` as a function of the training progress in
            [0, 1], updated every step (e.g. :func:`triangular_lr`).
        augment: ``augment(x, generator) -> x`` applied to each batch on the model's device.
        evaluate: ``evaluate(model, epoch) -> dict`` called in eval mode after each epoch (gradients enabled, so it
            may differentiate the model); merged into the history.
        checkpoint: path of the run-state file (see above); ``None``: no checkpoint, no resume.
        checkpoint_every: also write the checkpoint every this many optimizer steps within an epoch.
        resume: continue from ``checkpoint`` if it exists (``False``: start over and overwrite it).
        progress: show a tqdm bar over the epochs (rank 0 only).

    Returns:
        A list of dicts, one per epoch: ``epoch``, mean training ``loss``, ``lr`` at the end of the epoch, and the
        metrics returned by ``evaluate``.

    Raises:
        ValueError: bad sizes, empty data, a model without parameters, or a checkpoint of another run.
        FloatingPointError: the training loss became NaN or infinite.
    """
    check_positive_int("epochs", epochs)
    check_positive_int("batch_size", batch_size)
    if checkpoint_every is not None:
        check_positive_int("checkpoint_every", checkpoint_every)
    x, y = train
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
    if len(y) == 0:
        raise ValueError("train is empty (0 examples); pass at least one (x, y) pair")
    device = _model_device(model, "fit")
    gen = resolve_generator(generator, "cpu")
    rank, world_size = distributed.init_from_env(device)
    aug_gen = None
    if augment is not None:
        seed = int(torch.randint(0, 2**62, (1,), generator=gen))
        aug_gen = torch.Generator(device=device).manual_seed(seed)
    steps_per_epoch = -(-len(y) // batch_size)
    total = epochs * steps_per_epoch
    settings = _settings(x, y, epochs, batch_size)

    history: list[dict[str, Any]] = []
    step, loss_sum, n_seen = 0, 0.0, 0
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    path = None if checkpoint is None else Path(checkpoint)
    if path is not None and resume and path.exists():
        state = _load_run_state(path, settings, device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history, step, loss_sum, n_seen = state["history"], state["step"], state["loss_sum"], state["n_seen"]
        base_lrs = state["base_lrs"]
        if rank > 0:  # the stored partial sums are global: rank 0 carries them
            loss_sum, n_seen = 0.0, 0
        gen.set_state(state["generator"])
        if aug_gen is not None:
            aug_gen.set_state(state["augment_generator"].to(aug_gen.get_state().device))
        _set_global_rng(state, rank, world_size, device)
    epoch_state = gen.get_state()  # the generator at the start of the epoch containing `step`

    net: nn.Module = model
    if world_size > 1:
        net = _DDP(model, device_ids=[device] if device.type == "cuda" else None)

    def save() -> None:
        rng = _global_rng(device, world_size)
        sums = (loss_sum, n_seen)
        if world_size > 1:  # the partial epoch's loss sums of all ranks (rank 0 carries them on resume)
            t = torch.tensor(sums, dtype=torch.float64, device=device)
            dist.all_reduce(t)
            sums = (float(t[0]), int(t[1]))
        if path is not None and rank == 0:
            run_state = {
                "format": CHECKPOINT_FORMAT,
                "settings": settings,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "history": history,
                "step": step,
                "loss_sum": sums[0],
                "n_seen": sums[1],
                "base_lrs": base_lrs,
                "generator": epoch_state,
                "augment_generator": None if aug_gen is None else aug_gen.get_state(),
                "world_size": world_size,
                **rng,
            }
            _atomic_save(run_state, path)
        distributed.barrier()

    first_epoch = step // steps_per_epoch + 1
    epoch_iter = range(first_epoch, epochs + 1)
    if progress and rank == 0:
        from tqdm.auto import tqdm

        epoch_iter = tqdm(epoch_iter, desc="epochs", initial=first_epoch - 1, total=epochs)
    for epoch in epoch_iter:
        model.train()
        epoch_state = gen.get_state()
        order = torch.randperm(len(y), generator=gen)  # the draw of `batches`: same order, same generator use
        for i in range(step - (epoch - 1) * steps_per_epoch, steps_per_epoch):  # skip the batches already done
            idx = order[i * batch_size : (i + 1) * batch_size]
            xb, yb = x[idx].to(device), y[idx].to(device)
            if augment is not None:
                xb = augment(xb, aug_gen)
            weight = None
            if world_size > 1:
                n_global = len(yb)
                part = torch.tensor_split(torch.arange(n_global), world_size)[rank]
                if len(part) == 0:  # fewer rows than ranks: this rank contributes a zero gradient
                    part, weight = torch.arange(1), 0.0
                else:
                    weight = world_size * len(part) / n_global
                xb, yb = xb[part.to(xb.device)], yb[part.to(yb.device)]
            if lr_schedule is not None:
                factor = lr_schedule(step / total)
                for group, lr in zip(optimizer.param_groups, base_lrs, strict=True):
                    group["lr"] = lr * factor

            def closure(xb=xb, yb=yb, weight=weight):
                optimizer.zero_grad(set_to_none=True)
                loss = objective(net, xb, yb)
                (loss if weight is None else loss * weight).backward()
                return loss

            loss = optimizer.step(closure).detach()
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"training loss became {loss.item()} at epoch {epoch}, step {step}; lower the learning rate"
                )
            n_local = len(yb) if weight != 0.0 else 0
            loss_sum += float(loss) * n_local
            n_seen += n_local
            step += 1
            if checkpoint_every is not None and step % checkpoint_every == 0 and step % steps_per_epoch != 0:
                save()
        if world_size > 1:
            sums = torch.tensor([loss_sum, float(n_seen)], dtype=torch.float64, device=device)
            dist.all_reduce(sums)
            loss_sum, n_seen = float(sums[0]), int(sums[1])
        record: dict[str, Any] = {
            "epoch": epoch,
            "loss": loss_sum / n_seen,
            "lr": optimizer.param_groups[0]["lr"],
        }
        if evaluate is not None:
            model.eval()  # no no_grad here: an evaluation may differentiate (Jacobians, Hessians)
            record.update(evaluate(model, epoch))
        history.append(record)
        loss_sum, n_seen = 0.0, 0
        epoch_state = gen.get_state()
        if path is not None:
            save()
    model.eval()
    return history


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, *, batch_size: int = 1024) -> torch.Tensor:
    """Logits of ``model`` on ``x`` in eval mode, computed in batches on the model's device."""
    device = _model_device(model, "predict")
    was_training = model.training
    model.eval()
    out = torch.cat([model(x[i : i + batch_size].to(device)) for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return out


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 1024) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)``, in eval mode."""
    pred = predict(model, x, batch_size=batch_size).argmax(dim=1)
    return float((pred.cpu() == y.cpu()).float().mean())


def _atomic_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # a crash mid-write never leaves a truncated checkpoint


def _global_rng(device: torch.device, world_size: int) -> dict[str, Any]:
    """torch's global RNG states (dropout draws from them), one per rank."""
    own = {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}
    if world_size == 1:
        return {"global_rng": [own]}
    gathered: list[Any] = [None] * world_size
    dist.all_gather_object(gathered, own)
    return {"global_rng": gathered}


def _set_global_rng(state: dict[str, Any], rank: int, world_size: int, device: torch.device) -> None:
    states = state.get("global_rng")
    if not states or len(states) != world_size:  # resumed with another number of ranks: keep the fresh state
        return
    own = states[rank]
    torch.set_rng_state(own["cpu"])
    if device.type == "cuda" and own["cuda"] is not None:
        torch.cuda.set_rng_state(own["cuda"], device)


def _load_run_state(path: Path, settings: dict[str, Any], device: torch.device) -> dict[str, Any]:
    state = torch.load(path, map_location=device, weights_only=False)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path} is not a run state written by this version of stabkit.train.fit; "
            "pass resume=False to start over (it will be overwritten) or choose another checkpoint path"
        )
    if state["settings"] != settings:
        raise ValueError(
            f"{path} was written by another run ({state['settings']}, this one is {settings}); "
            "pass resume=False to start over or choose another checkpoint path"
        )
    state["generator"] = state["generator"].cpu()
    return state


def load_checkpoint(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer | None = None):
    """Restore the model (and optimizer) of a checkpoint written by :func:`fit`; returns its history."""
    state = torch.load(path, map_location=_model_device(model, "load"), weights_only=False)
    model.load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    return state["history"]
