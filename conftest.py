"""Test-wide set-up (repository root, so it also applies to the notebooks under nbval): outputs of notebook
runs go to a scratch folder, never into figures/. ``make test`` names that folder (``build/ci/nbval-figures``) and,
after pytest, compares it with ``figures/ci/`` (``python -m stabkit.reproduce --check --from ...``), so the
notebooks run once for both nbval and the tolerance check."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
# Set at import time, before nbval starts any kernel (kernels inherit the environment).
os.environ.setdefault("STABKIT_FIGURES_DIR", tempfile.mkdtemp(prefix="stabkit-test-figures-"))
os.environ.setdefault("STABKIT_ROOT", str(ROOT))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The MNIST test files of ``../shared/data`` (or ``$STABKIT_SHARED_DATA``); skipped where absent."""
    path = Path(os.environ.get("STABKIT_SHARED_DATA", ROOT.parent / "shared" / "data"))
    if not (path / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"MNIST test files not found in {path} (only the project's own machines have ../shared/data)")
    return path


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """The unit tests use small tensors: one intra-op thread is faster than two there (no synchronisation) and
    immune to a loaded machine, where two threads on two shared cores slowed some tests 10-100x."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
