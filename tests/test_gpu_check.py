"""The GPU check script runs end to end in its tiny CPU mode (so it cannot rot before a GPU is lent)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_smoke_runs_on_cpu(tmp_path):
    out = tmp_path / "gpu"
    p = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--smoke", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "# GPU:" in p.stdout
    text = (out / "bench_norms.txt").read_text()
    assert "spectral_norm_bound(method='auto')" in text
    assert (out / "bench_layers.txt").exists()
    # the GPU run writes its entries next to the benchmarks, and the smoke run checked that command
    assert f"--output-dir {out}" in p.stdout
    assert "# reproduce options parse" in p.stdout
