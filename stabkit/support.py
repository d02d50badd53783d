"""Notebook support: parameters, seeds, presets, paths, figures, tables and provenance.

A notebook's setup cell calls :func:`setup`, which validates the papermill parameters and returns a
:class:`Context`; everything random in the notebook comes from ``ctx.generator(key)``, everything it writes goes
through ``ctx.save_table`` / ``ctx.save_figure``.

Decisions:

* Seeds: a root seed and a string key give a 63-bit seed through SHA-256 (stable across Python runs and
  machines, unlike ``hash()``), so adding an experiment never shifts the random streams of the others.
* Outputs go to ``figures/`` at the repository root, or to ``$STABKIT_FIGURES_DIR`` when set: the reproduce CLI
  points it at a temporary folder and moves the files in only when the notebook succeeds, and the test suite
  points it at a scratch folder.
* Figures are byte-stable: fixed metadata, no dates (``SOURCE_DATE_EPOCH``), Agg backend, TrueType fonts in PDF.
* The provenance record (``<notebook>.provenance.json`` beside the figures) holds what varies between runs
  (git commit, versions, wall time), so that the figures themselves do not.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any, NamedTuple

import torch

SCALES = ("ci", "full")
PAGE_WIDTH_IN = 6.3  # text width of the thesis page (16 cm): figure sizes derive from it
_IPYTHON_NAMES = {"In", "Out", "get_ipython", "exit", "quit", "open"}


# ------------------------------------------------------------------------------------------------------ paths
def repo_root() -> Path:
    """The repository root: ``$STABKIT_ROOT``, else the first folder upwards holding ``manifest.yaml``."""
    if env := os.environ.get("STABKIT_ROOT"):
        return Path(env).resolve()
    for start in (Path.cwd(), Path(__file__).resolve().parent):
        for folder in (start, *start.parents):
            if (folder / "manifest.yaml").is_file():
                return folder
    raise FileNotFoundError(
        "cannot find the stabkit repository (no manifest.yaml above the working directory); run from inside "
        "the repository or set STABKIT_ROOT"
    )


def figures_dir() -> Path:
    """Where figures and tables are written: ``$STABKIT_FIGURES_DIR`` or ``<root>/figures``."""
    return Path(os.environ.get("STABKIT_FIGURES_DIR") or repo_root() / "figures")


# --------------------------------------------------------------------------------------------------- manifest
class ManifestEntry(NamedTuple):
    """One regenerated item of the thesis (a figure, a table or a number)."""

    id: str
    chapter: str
    notebook: str
    title: str
    outputs: tuple[str, ...]  # stems written under figures/
    runtime: dict[str, str]  # expected runtime per scale
    full_needs_gpu: bool
    published: str | None  # the published number it is compared with, if any
    timed: bool  # shows wall-clock measurements: differs between runs (every other output is byte-stable)


def load_manifest(path: str | os.PathLike | None = None) -> dict[str, ManifestEntry]:
    """Read ``manifest.yaml`` into ``{id: ManifestEntry}``, checking every field."""
    import yaml

    path = Path(path) if path else repo_root() / "manifest.yaml"
    raw = yaml.safe_load(path.read_text()) or {}
    entries = raw.get("entries")
    if not isinstance(entries, dict):
        raise ValueError(f"{path}: expected a mapping 'entries: {{id: {{...}}}}'")
    manifest, stems = {}, {}
    required = {"chapter", "notebook", "title", "outputs", "runtime", "full_needs_gpu"}
    for key, item in entries.items():
        missing = required - set(item or {})
        if missing:
            raise ValueError(f"{path}: entry {key!r} lacks {', '.join(sorted(missing))}")
        unknown = set(item) - required - {"published", "timed"}
        if unknown:
            raise ValueError(f"{path}: entry {key!r} has unknown fields {', '.join(sorted(unknown))}")
        if set(item["runtime"]) != set(SCALES):
            raise ValueError(f"{path}: entry {key!r} needs a runtime for each scale {SCALES}")
        for stem in item["outputs"]:
            if stem in stems:
                raise ValueError(f"{path}: output stem {stem!r} is claimed by {stems[stem]!r} and {key!r}")
            stems[stem] = key
        manifest[key] = ManifestEntry(
            id=key,
            chapter=str(item["chapter"]),
            notebook=item["notebook"],
            title=item["title"],
            outputs=tuple(item["outputs"]),
            runtime=dict(item["runtime"]),
            full_needs_gpu=bool(item["full_needs_gpu"]),
            published=item.get("published"),
            timed=bool(item.get("timed", False)),
        )
    return manifest


# ------------------------------------------------------------------------------------------------------ seeds
def derive_seed(seed: int, key: str) -> int:
    """A 63-bit seed from a root seed and a string key (SHA-256, stable across runs and machines)."""
    digest = hashlib.sha256(f"{int(seed)}/{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


# ---------------------------------------------------------------------------------------------------- context
class Context:
    """What a notebook's setup returns: validated parameters, the preset, seeds and output helpers."""

    def __init__(self, notebook: str, params: dict[str, Any], preset: dict[str, Any], stems: set[str]):
        self.notebook = notebook
        self.params = params
        self.scale: str = params["scale"]
        self.seed: int = params["seed"]
        self.device = torch.device(params["device"])
        self.data_root = repo_root() / params["data_root"]
        self.preset = types.SimpleNamespace(**preset)
        self._stems = stems
        self._outputs: list[str] = []
        self._start = time.perf_counter()

    def generator(self, key: str, *, device: str | torch.device | None = None) -> torch.Generator:
        """A torch generator on the notebook's device (or ``device``), seeded from (root seed, key)."""
        dev = torch.device(device) if device is not None else self.device
        return torch.Generator(device=dev).manual_seed(derive_seed(self.seed, key))

    @contextlib.contextmanager
    def seeded(self, key: str):
        """Seed torch's global RNG from (root seed, key) inside the block, and restore it after.

        For code that draws from the global RNG by design, such as the default initialisation of ``nn.Linear``
        and ``nn.Conv2d``: ``with ctx.seeded("model/init"): net = build()``. stabkit's own functions never
        draw from it.
        """
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.seed, key))
            yield

    def numpy_rng(self, key: str):
        """A numpy ``Generator`` seeded from (root seed, key)."""
        import numpy as np

        return np.random.default_rng(derive_seed(self.seed, key))

    def _check_stem(self, stem: str) -> None:
        if stem not in self._stems:
            raise ValueError(
                f"output stem {stem!r} is not declared for notebook {self.notebook!r} in manifest.yaml "
                f"(declared: {', '.join(sorted(self._stems)) or 'none'}); add it to the entry's outputs"
            )

    def save_table(self, df, stem: str) -> None:
        """Write the numbers behind a figure as ``<stem>.csv`` (so the figure can be redrawn without recomputing).

        Returns nothing, so that a notebook cell ending with it displays nothing (no paths in stored outputs).
        """
        self._check_stem(stem)
        path = figures_dir() / f"{stem}.csv"
        _atomic_write(path, df.to_csv(index=False, float_format="%.8g", lineterminator="\n").encode())
        self._record(path.name)

    def load_table(self, stem: str):
        """Read back a table written by :meth:`save_table`."""
        import pandas as pd

        self._check_stem(stem)
        return pd.read_csv(figures_dir() / f"{stem}.csv")

    def save_figure(self, fig, stem: str) -> None:
        """Save ``fig`` as ``<stem>.png`` and ``<stem>.pdf``, byte-stable, and close it. Prints and returns nothing."""
        import io

        import matplotlib.pyplot as plt

        self._check_stem(stem)
        for ext, meta in (
            ("png", {"Software": None}),
            ("pdf", {"Creator": None, "Producer": None, "CreationDate": None}),
        ):
            buf = io.BytesIO()
            fig.savefig(buf, format=ext, dpi=150, metadata=meta, bbox_inches="tight")
            path = figures_dir() / f"{stem}.{ext}"
            _atomic_write(path, buf.getvalue())
            self._record(path.name)
        plt.close(fig)

    def _record(self, name: str) -> None:
        if name not in self._outputs:
            self._outputs.append(name)
        record = {
            "notebook": self.notebook,
            "parameters": self.params,
            "outputs": self._outputs,
            "git_commit": _git_commit(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "platform": platform.platform(),
            "device": str(self.device)
            + (f" ({torch.cuda.get_device_name(self.device)})" if self.device.type == "cuda" else ""),
            "wall_time_s": round(time.perf_counter() - self._start, 1),
        }
        _atomic_write(
            figures_dir() / f"{self.notebook}.provenance.json", (json.dumps(record, indent=1) + "\n").encode()
        )


def setup(
    notebook: str,
    namespace: dict[str, Any] | None = None,
    *,
    presets: dict[str, dict[str, Any]],
    scale: str,
    seed: int,
    device: str,
    data_root: str,
    **extra: Any,
) -> Context:
    """Validate a notebook's parameters and return its :class:`Context`.

    Args:
        notebook: the notebook's name without extension (``"01_sensitivity"``); its manifest entries give the
            stems it may write.
        namespace: the notebook's ``globals()``. Every public name in it must be a declared parameter: papermill
            only warns about an unknown parameter and injects it anyway, so a typo (``sacle="full"``) would
            otherwise run the default silently.
        presets: ``{"ci": {...}, "full": {...}}``; the chosen one becomes ``ctx.preset``. One key is applied
            here: ``threads``, when present and positive, sets torch's intra-op thread count
            (``torch.set_num_threads``; tiny models run fastest on one thread of a shared CPU); 0 or absent
            leaves torch's default. It is a process-wide setting, so a notebook never sets it itself.
        scale, seed, device, data_root: the standard parameters.
        **extra: the notebook's other parameters (``dataset`` is checked against :data:`stabkit.data.DATASETS`).

    Raises:
        ValueError: an unknown parameter, an invalid value, or a notebook absent from the manifest.
    """
    params = dict(scale=scale, seed=seed, device=device, data_root=data_root, **extra)
    if namespace is not None:
        unknown = sorted(
            k
            for k, v in namespace.items()
            if not k.startswith("_")
            and k not in _IPYTHON_NAMES
            and k not in params
            and k not in ("PRESETS",)
            and not isinstance(v, types.ModuleType)
            and not callable(v)
        )
        if unknown:
            raise ValueError(
                f"unknown notebook parameter(s) {', '.join(unknown)} for {notebook}; "
                f"known parameters: {', '.join(params)}"
            )
    if scale not in presets:
        raise ValueError(f"unknown scale {scale!r}; choose one of {', '.join(presets)}")
    if set(presets) != set(SCALES):
        raise ValueError(f"presets must define exactly the scales {SCALES}, got {tuple(presets)}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r} is not a torch device; use e.g. 'cpu' or 'cuda'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "device='cuda' but torch sees no GPU; run with device='cpu', or install a CUDA build of torch "
            "(make reproduce TORCH_SPEC=torch)"
        )
    if not isinstance(data_root, str) or not data_root:
        raise ValueError(f"data_root must be a non-empty string (a folder), got {data_root!r}")
    threads = presets[scale].get("threads", 0)
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise ValueError(f"preset key threads must be a non-negative integer (0 = torch's default), got {threads!r}")
    if "dataset" in extra:
        from stabkit.data import DATASETS

        if extra["dataset"] not in DATASETS:
            raise ValueError(f"unknown dataset {extra['dataset']!r}; choose one of {', '.join(DATASETS)}")

    manifest = load_manifest()
    stems = {s for e in manifest.values() if e.notebook == notebook for s in e.outputs}
    if not stems:
        raise ValueError(f"notebook {notebook!r} has no entry in manifest.yaml")

    import matplotlib

    matplotlib.use("Agg")  # non-interactive: identical output in Jupyter, papermill and CI
    os.environ.setdefault("SOURCE_DATE_EPOCH", "0")
    _set_style()
    if threads:
        torch.set_num_threads(threads)
    return Context(notebook, params, presets[scale], stems)


# ---------------------------------------------------------------------------------------------------- figures
def figure(*, width: str | float = "full", aspect: float = 0.62, nrows: int = 1, ncols: int = 1, **kwargs):
    """A matplotlib figure sized from the page width: ``width`` is "full", "half" or a fraction of it."""
    import matplotlib.pyplot as plt

    frac = {"full": 1.0, "half": 0.5}.get(width, width) if isinstance(width, str) else width
    if not isinstance(frac, float | int) or not 0 < frac <= 1:
        raise ValueError(f"width must be 'full', 'half' or a fraction in (0, 1], got {width!r}")
    w = PAGE_WIDTH_IN * frac
    return plt.subplots(nrows, ncols, figsize=(w, w * aspect), layout="constrained", **kwargs)


def _set_style() -> None:
    import matplotlib as mpl

    mpl.rcParams.update(
        {
            "pdf.fonttype": 42,
            "ps.fonttype": 42,
            "svg.hashsalt": "stabkit",
            "font.size": 8,
            "axes.titlesize": 9,
            "axes.labelsize": 8,
            "legend.fontsize": 7,
            "xtick.labelsize": 7,
            "ytick.labelsize": 7,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "figure.dpi": 100,
        }
    )


# ---------------------------------------------------------------------------------------------------- helpers
def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o644)  # mkstemp creates 0600 files
    os.replace(tmp, path)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=repo_root(),
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


class Timing(NamedTuple):
    """What :func:`median_time` measured."""

    value: Any  # what the warm-up call returned
    seconds: float  # median wall time of one call


def median_time(fn, *, repeats: int = 5, device: str | torch.device | None = None) -> Timing:
    """Median wall time of ``fn()`` over ``repeats`` calls after one warm-up call (for notebooks and benchmarks).

    On a CUDA ``device`` the clock waits for the GPU before and after each call. The library's own functions never
    time themselves; timings belong to notebooks (in tables marked ``timed`` in the manifest) and benchmarks.
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive integer, got {repeats!r}")
    cuda = device is not None and torch.device(device).type == "cuda"
    value = fn()
    times = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    times.sort()
    mid = len(times) // 2
    return Timing(value, times[mid] if len(times) % 2 else (times[mid - 1] + times[mid]) / 2)


def machine_info() -> str:
    """One line naming the machine, for benchmarks: CPU or GPU model, threads, torch version."""
    if torch.cuda.is_available():
        dev = torch.cuda.get_device_name(0)
    else:
        dev = platform.processor() or _cpu_model() or platform.machine()
    return f"{dev} | torch {torch.__version__} | {torch.get_num_threads()} threads | Python {sys.version.split()[0]}"


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None
