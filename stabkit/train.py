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
from torch import nn

from stabkit._checks import check_positive_int, resolve_generator

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
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Train ``model`` on ``train = (x, y)`` and return the per-epoch history.

    Args:
        model: the network; it stays on its device and the batches are moved to it.
        train: inputs and labels (any device).
        objective: ``objective(model, x, y) -> loss`` (see :func:`supervised`).
        optimizer: any torch optimizer; ``step(closure)`` is called once per batch.
        epochs: number of passes over the data.
        batch_size: mini-batch size.
        generator: CPU generator for the batch order (and for ``augment``, on the model's device: a second
            generator is derived from it there).
        lr_schedule: multiplier of each param group's initial ``lr`` as a function of the training progress in
            [0, 1], updated every step (e.g. :func:`triangular_lr`).
        augment: ``augment(x, generator) -> x`` applied to each batch on the model's device.
        evaluate: ``evaluate(model, epoch) -> dict`` called in eval mode after each epoch (gradients enabled, so it
            may differentiate the model); merged into the history.
        checkpoint: path; model and optimizer states (and the history) are saved there after each epoch,
            atomically.
        progress: show a tqdm bar over the epochs.

    Returns:
        A list of dicts, one per epoch: ``epoch``, mean training ``loss``, ``lr`` at the end of the epoch, and the
        metrics returned by ``evaluate``.
    """
    check_positive_int("epochs", epochs)
    check_positive_int("batch_size", batch_size)
    x, y = train
    gen = resolve_generator(generator, "cpu")
    device = next(model.parameters()).device
    aug_gen = None
    if augment is not None:
        seed = int(torch.randint(0, 2**62, (1,), generator=gen))
        aug_gen = torch.Generator(device=device).manual_seed(seed)
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    steps_per_epoch = -(-len(y) // batch_size)
    total = epochs * steps_per_epoch
    history: list[dict[str, Any]] = []

    epoch_iter = range(1, epochs + 1)
    if progress:
        from tqdm.auto import tqdm

        epoch_iter = tqdm(epoch_iter, desc="epochs")
    step = 0
    for epoch in epoch_iter:
        model.train()
        loss_sum, n_seen = 0.0, 0
        for xb, yb in batches(x, y, batch_size=batch_size, generator=gen):
            xb, yb = xb.to(device), yb.to(device)
            if augment is not None:
                xb = augment(xb, aug_gen)
            if lr_schedule is not None:
                factor = lr_schedule(step / total)
                for group, lr in zip(optimizer.param_groups, base_lrs, strict=True):
                    group["lr"] = lr * factor

            def closure(xb=xb, yb=yb):
                optimizer.zero_grad(set_to_none=True)
                loss = objective(model, xb, yb)
                loss.backward()
                return loss

            loss = optimizer.step(closure).detach()
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"training loss became {loss.item()} at epoch {epoch}, step {step}; lower the learning rate"
                )
            loss_sum += float(loss) * len(yb)
            n_seen += len(yb)
            step += 1
        record: dict[str, Any] = {
            "epoch": epoch,
            "loss": loss_sum / n_seen,
            "lr": optimizer.param_groups[0]["lr"],
        }
        if evaluate is not None:
            model.eval()  # no no_grad here: an evaluation may differentiate (Jacobians, Hessians)
            record.update(evaluate(model, epoch))
        history.append(record)
        if checkpoint is not None:
            _save_checkpoint(Path(checkpoint), model, optimizer, history)
    model.eval()
    return history


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, *, batch_size: int = 1024) -> torch.Tensor:
    """Logits of ``model`` on ``x`` in eval mode, computed in batches on the model's device."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = torch.cat([model(x[i : i + batch_size].to(device)) for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return out


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 1024) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)``, in eval mode."""
    pred = predict(model, x, batch_size=batch_size).argmax(dim=1)
    return float((pred.cpu() == y.cpu()).float().mean())


def _save_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, history) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "history": history}, tmp)
    os.replace(tmp, path)  # a crash mid-write never leaves a truncated checkpoint


def load_checkpoint(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer | None = None):
    """Restore a checkpoint written by :func:`fit`; returns its history."""
    state = torch.load(path, map_location=next(model.parameters()).device, weights_only=False)
    model.load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    return state["history"]
