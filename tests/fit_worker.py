"""A tiny training run for the resume and DDP tests of test_train.py (run as a script, also under torchrun).

``python tests/fit_worker.py OUT [--checkpoint CK] [--kill-at K] [--dropout P]`` trains a 5-16-2 MLP with Adam,
the triangular schedule and Gaussian augmentation for 4 epochs of 7 steps (200 examples, batch 32), checkpointing
every 3 steps, and writes the final weights and history to OUT (rank 0). ``--kill-at K`` SIGKILLs the process at
its K-th objective call, i.e. in the middle of a step.
"""

import argparse
import os
import signal

import torch
import torch.nn.functional as F
from torch import nn

from stabkit import distributed
from stabkit.certify import gaussian_augment
from stabkit.train import fit, triangular_lr


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--kill-at", type=int, default=0)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    torch.manual_seed(1)  # the layers initialise from the global RNG (and dropout draws from it)
    net = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Dropout(args.dropout), nn.Linear(16, 2))
    calls = 0

    def objective(model, xb, yb):
        nonlocal calls
        calls += 1
        if calls == args.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return F.cross_entropy(model(xb), yb)

    history = fit(
        net,
        (x, y),
        objective=objective,
        optimizer=torch.optim.Adam(net.parameters(), lr=0.05),
        epochs=args.epochs,
        batch_size=32,
        generator=torch.Generator().manual_seed(2),
        lr_schedule=triangular_lr(),
        augment=gaussian_augment(0.1),
        checkpoint=args.checkpoint,
        checkpoint_every=3,
    )
    if distributed.is_main():
        torch.save({"model": net.state_dict(), "history": history, "world": distributed.world().size}, args.out)


if __name__ == "__main__":
    main()
