"""The GPU check in one command: every benchmark, then the manifest entries whose claims need a GPU timing.

Run on a machine with one CUDA GPU: ``python benchmarks/gpu_check.py`` (``make gpu-check``). It prints the GPU
model and torch version, runs ``bench_norms``, ``bench_layers``, ``bench_certify`` and ``bench_curvature`` (each
in its own process, CUDA timings synchronised), saves their outputs under ``figures/gpu/``, then runs
``python -m stabkit.reproduce --scale full --device cuda --output-dir figures/gpu --only gi-dense-convergence
conv-scaling conv-bounds-table resnet18-layers`` (the entries' outputs and REPORT.md under ``figures/gpu/``, next to
the benchmark outputs). ``--smoke`` runs the benchmarks at tiny sizes on the CPU, in seconds, and checks the
reproduce command against the manifest (every id exists, the options parse) without running it: it keeps the
script from rotting before a GPU is lent (a test runs it).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
ENTRIES = ["gi-dense-convergence", "conv-scaling", "conv-bounds-table", "resnet18-layers"]


def benchmarks(device: str, smoke: bool) -> dict[str, list[str]]:
    if smoke:
        return {
            "bench_norms": ["--smoke", "--device", device],
            "bench_layers": ["--device", device, "--batch", "2", "--channels", "4", "--size", "8", "--reps", "1"],
        }
    return {
        "bench_norms": ["--device", device],
        "bench_layers": ["--device", device],
        "bench_certify": [],
        "bench_curvature": [],
    }


def reproduce_command(out: str) -> list[str]:
    """The full-scale CUDA run of the GPU-timed manifest entries, written to ``out``."""
    return [
        *(sys.executable, "-m", "stabkit.reproduce", "--scale", "full", "--device", "cuda"),
        *("--output-dir", out, "--only", *ENTRIES),
    ]


def check_reproduce_command(cmd: list[str]) -> int:
    """Smoke check of ``cmd`` without running it: every ``--only`` id is in the manifest and the options parse."""
    from stabkit.support import load_manifest

    print(f"\n$ {' '.join(cmd)}  # not run in the smoke check")
    missing = [e for e in ENTRIES if e not in load_manifest()]
    if missing:
        print(f"# manifest has no entries {missing}")
        return 1
    # the same options with --list: argparse rejects an unknown option, nothing is executed
    p = subprocess.run([*cmd[:3], "--list", *cmd[3:]], cwd=ROOT, capture_output=True, text=True, timeout=120)
    print(f"# reproduce options {'parse' if p.returncode == 0 else 'rejected: ' + p.stderr[-500:]}")
    return p.returncode


def run(cmd: list[str], out: Path | None, timeout: float) -> int:
    print(f"\n$ {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"# timed out after {timeout:.0f} s")
        return 124
    text = p.stdout + (f"\n# stderr:\n{p.stderr}" if p.returncode else "")
    print(text)
    print(f"# exit {p.returncode}, {time.perf_counter() - t0:.1f} s")
    if out is not None:
        out.write_text(text)
    return p.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny CPU run of the benchmarks only (CI)")
    parser.add_argument("--out", default="figures/gpu", help="folder for the benchmark outputs (default figures/gpu)")
    args = parser.parse_args()
    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device; run with --smoke for the CPU check", file=sys.stderr)
        return 2
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "none (smoke run on CPU)"
    print(f"# GPU: {gpu}; torch {torch.__version__}; CUDA {torch.version.cuda}")
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    failures = 0
    for name, extra in benchmarks(device, args.smoke).items():
        rc = run([sys.executable, f"benchmarks/{name}.py", *extra], out / f"{name}.txt", 120 if args.smoke else 180)
        failures += rc != 0
    cmd = reproduce_command(args.out)
    if args.smoke:
        failures += check_reproduce_command(cmd) != 0
    else:
        failures += run(cmd, out / "reproduce.txt", 420) != 0
    print(f"\n# gpu_check: {failures} failing step(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
