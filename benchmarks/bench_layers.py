"""Train-step time and memory of the Lipschitz conv layers against a plain ``nn.Conv2d``.

One step = forward + backward + SGD step on a batch of 32 × 64 channels × 32 × 32 with 3×3 kernels. The input
requires a gradient, as for a layer in the middle of a network (a plain conv step then does 3
convolution-sized operations, an SLL/CPL step 6). All layers are timed round-robin in one process so
that load on a shared machine hits them alike; the table gives medians and ratios to the plain conv.

Memory: on CUDA, ``torch.cuda.max_memory_allocated`` during a step (minus what was allocated before); on CPU,
the bytes of the tensors saved for backward by one forward pass (what a layer adds to the activation memory of
a network), counted once per storage.

Usage: ``python benchmarks/bench_layers.py [--device cuda] [--reps 15] [--threads N]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from stabkit.layers import AOLConv2d, CPLConv2d, SLLConv2d, SRConv2d
from stabkit.support import machine_info


def peer_layers(c: int) -> dict[str, nn.Module]:
    """orthogonium's SLL and AOL convs, when the package is importable (optional)."""
    out: dict[str, nn.Module] = {}
    try:
        from orthogonium.layers.conv.SLL import SDPBasedLipschitzResBlock

        out["orthogonium SLL"] = SDPBasedLipschitzResBlock(c, inner_dim_factor=1, kernel_size=3)
    except Exception:  # noqa: BLE001 - optional peer, any failure means "not available"
        pass
    try:
        from orthogonium.layers.conv.AOL.aol import AOLConv2d as PeerAOL

        out["orthogonium AOL"] = PeerAOL(c, c, kernel_size=3, padding=1)
    except Exception:  # noqa: BLE001
        pass
    return out


def make_layers(c: int, device: torch.device) -> dict[str, nn.Module]:
    g = torch.Generator(device=device).manual_seed(0)
    layers = {
        "nn.Conv2d": nn.Conv2d(c, c, 3, padding=1),
        "SLLConv2d": SLLConv2d(c, c, 3, device=device, generator=g),
        "CPLConv2d": CPLConv2d(c, c, 3, device=device, generator=g),
        "AOLConv2d": AOLConv2d(c, c, 3, device=device, generator=g),
        "SRConv2d(n_iter=2)": SRConv2d(c, c, 3, n_iter=2, device=device, generator=g),
        **peer_layers(c),
    }
    return {k: v.to(device).train() for k, v in layers.items()}


def make_step(layer: nn.Module, x: torch.Tensor, target: torch.Tensor, *, input_grad: bool = True):
    opt = torch.optim.SGD(layer.parameters(), lr=1e-4)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        xi = x.detach().requires_grad_(input_grad)
        loss = (layer(xi) * target).sum()  # a linear loss: its backward adds nothing of note
        loss.backward()
        opt.step()

    return step


def saved_bytes(layer: nn.Module, x: torch.Tensor) -> int:
    """Bytes saved for backward by one forward pass, counted once per storage."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x.detach().requires_grad_(True))
    return sum(seen.values())


def cuda_peak(step, device: torch.device) -> int:
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reps", type=int, default=15, help="timed steps per layer (after 3 warm-up steps)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument(
        "--no-input-grad", action="store_true", help="input without gradient, as for the first layer of a network"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    g = torch.Generator(device=device).manual_seed(0)
    shape = (args.batch, args.channels, args.size, args.size)
    x = torch.randn(shape, generator=g, device=device)
    target = torch.randn(shape, generator=g, device=device)
    layers = make_layers(args.channels, device)
    input_grad = not args.no_input_grad
    steps = {name: make_step(layer, x, target, input_grad=input_grad) for name, layer in layers.items()}

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for step in steps.values():  # warm-up
        for _ in range(3):
            step()
    sync()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.reps):  # round-robin: contention hits every layer alike
        for name, step in steps.items():
            sync()
            t0 = time.perf_counter()
            step()
            sync()
            times[name].append(time.perf_counter() - t0)

    memory = {}
    for name, layer in layers.items():
        memory[name] = cuda_peak(steps[name], device) if device.type == "cuda" else saved_bytes(layer, x)

    print(f"{machine_info()} | device {device}")
    print(f"train step (forward + backward + SGD), batch {shape}, 3x3, input grad {input_grad}; {args.reps} reps")
    mem_label = "peak MiB" if device.type == "cuda" else "saved MiB"
    print(f"{'layer':<22}{'median ms':>11}{'min ms':>9}{'ratio':>8}{mem_label:>11}{'mem ratio':>11}")
    ref_t = statistics.median(times["nn.Conv2d"])
    ref_m = memory["nn.Conv2d"]
    for name in steps:
        med = statistics.median(times[name])
        print(
            f"{name:<22}{1e3 * med:>11.1f}{1e3 * min(times[name]):>9.1f}{med / ref_t:>8.2f}"
            f"{memory[name] / 2**20:>11.1f}{memory[name] / ref_m:>11.2f}"
        )
    print("targets (issue 3): SLLConv2d <= 2.1x, CPLConv2d <= 2.2x, AOLConv2d <= 1.1x")


if __name__ == "__main__":
    main()
