"""Notebook support: parameters, seeds, presets, paths, figures, tables, claims and provenance.

A notebook's setup cell calls :func:`setup`, which validates the papermill parameters and returns a
:class:`Context`; everything random in the notebook comes from ``ctx.generator(key)``, everything it writes goes
through ``ctx.save_table`` / ``ctx.save_figure``, and the numbers a reader checks leave it as claims
(``ctx.claim`` / ``ctx.save_claims``) with a verdict computed from the numbers.

Decisions:

* Seeds: a root seed and a string key give a 63-bit seed through SHA-256 (stable across Python runs and
  machines, unlike ``hash()``), so adding an experiment never shifts the random streams of the others.
* Outputs of a run by hand (papermill, "Run All" in JupyterLab) go to ``build/<scale>/figures/``, never into the
  tracked references. ``$STABKIT_FIGURES_DIR``, when set, overrides the folder: the reproduce CLI points it at a
  temporary folder and moves the files into the references ``figures/<scale>/`` only when the notebook succeeds,
  and the test suite points it at a scratch folder.
* Figures are byte-stable: fixed metadata, no dates (``SOURCE_DATE_EPOCH``), Agg backend, TrueType fonts in PDF.
  In a Jupyter kernel, ``save_figure`` also displays the PNG bytes it wrote, so the notebook shows exactly the
  file on disk.
* The provenance record (``<notebook>.provenance.json`` beside the figures) holds what varies between runs
  (git commit and dirty flag, library versions, thread count, CPU/GPU model, wall time), so that the figures
  themselves do not.
* Claims: ``"match"`` claims compare with a published number within ``atol + rtol·|published|`` (or the
  published number inside our interval); ``">"`` / ``"<"`` claims compare with a threshold, and an interval that
  straddles it is "not significant at this scale" rather than a verdict either way.
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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch

SCALES = ("ci", "cpu", "full")
# The image data set a notebook's ``dataset=None`` stands for, per scale (``full``: the preset's ``dataset`` key,
# since the published data differ by chapter). ``cpu`` uses the real 28×28 MNIST test images (10 000, split by
# ``stabkit.data.load``), which ``python -m stabkit.data fetch mnist-test`` downloads (2 MB, hash-checked).
SCALE_DATASETS = {"ci": "digits", "cpu": "mnist-test"}
VERDICTS = ("reproduced", "not significant at this scale", "contradicted", "not comparable")
PROVENANCE_PACKAGES = ("numpy", "scipy", "matplotlib", "pandas", "papermill")
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


def figures_dir(scale: str = "ci") -> Path:
    """Where a notebook run at ``scale`` writes its figures, tables and claims.

    ``$STABKIT_FIGURES_DIR`` when set (the reproduce CLI's staging folder, or the test suite's scratch folder),
    else ``<root>/build/<scale>/figures``: a run by hand never overwrites the tracked references
    (:func:`reference_dir`).
    """
    if env := os.environ.get("STABKIT_FIGURES_DIR"):
        return Path(env)
    return repo_root() / "build" / _check_scale(scale) / "figures"


def reference_dir(scale: str = "ci") -> Path:
    """The tracked reference outputs of ``scale``: ``<root>/figures/<scale>`` (written by the reproduce CLI only)."""
    return repo_root() / "figures" / _check_scale(scale)


def _check_scale(scale: str) -> str:
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    return scale


# --------------------------------------------------------------------------------------------------- manifest
class Tolerance(NamedTuple):
    """How far a fresh run's numbers may move from the committed references (``reproduce --check``).

    A number passes when ``|new - ref| <= atol + rtol·|ref|``, with the column's own ``(rtol, atol)`` where
    ``columns`` names it; text columns must be equal; columns in ``ignore`` are not compared. ``fraction`` is the
    share of a column's cells allowed to fail that (per-example outputs of trained or sampled models, where a few
    predictions flip or a radius drops to 0 on another CPU).
    """

    kind: Literal["deterministic", "statistical"]  # statistical: sampled or trained numbers (looser, per column)
    rtol: float
    atol: float
    columns: dict[str, tuple[float, float]]  # column -> (rtol, atol)
    ignore: tuple[str, ...]
    fraction: float = 0.0


DEFAULT_TOLERANCE = Tolerance("deterministic", 1e-6, 1e-9, {}, (), 0.0)


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
    tolerance: Tolerance = DEFAULT_TOLERANCE  # of `reproduce --check` (not applied to timed entries)


def load_manifest(path: str | os.PathLike | None = None) -> dict[str, ManifestEntry]:
    """Read ``manifest.yaml`` into ``{id: ManifestEntry}``, checking every field."""
    import yaml

    path = Path(path) if path else repo_root() / "manifest.yaml"
    raw = yaml.safe_load(path.read_text()) or {}
    entries = raw.get("entries")
    if not isinstance(entries, dict):
        raise ValueError(f"{path}: expected a mapping 'entries: {{id: {{...}}}}'")
    unknown_top = set(raw) - {"entries", "default_tolerance"}
    if unknown_top:
        raise ValueError(f"{path}: unknown top-level key(s) {', '.join(sorted(unknown_top))}")
    default = _tolerance(raw.get("default_tolerance") or {}, DEFAULT_TOLERANCE, f"{path}: default_tolerance")
    manifest, stems = {}, {}
    required = {"chapter", "notebook", "title", "outputs", "runtime", "full_needs_gpu"}
    for key, item in entries.items():
        missing = required - set(item or {})
        if missing:
            raise ValueError(f"{path}: entry {key!r} lacks {', '.join(sorted(missing))}")
        unknown = set(item) - required - {"published", "timed", "tolerance"}
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
            tolerance=_tolerance(item.get("tolerance") or {}, default, f"{path}: entry {key!r} tolerance"),
        )
    return manifest


def _tolerance(raw: dict, base: Tolerance, where: str) -> Tolerance:
    """Parse a manifest ``tolerance`` mapping over ``base`` (unspecified keys keep ``base``'s values)."""
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a mapping {{rtol, atol, kind, columns, ignore}}")
    unknown = set(raw) - {"rtol", "atol", "kind", "columns", "ignore", "fraction"}
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")

    def number(x, name):
        if isinstance(x, bool) or not isinstance(x, int | float | str):
            raise ValueError(f"{where}: {name} must be a non-negative number, got {x!r}")
        try:
            v = float(x)  # YAML reads 1e-6 (no dot) as a string
        except ValueError:
            raise ValueError(f"{where}: {name} must be a non-negative number, got {x!r}") from None
        if not v >= 0:
            raise ValueError(f"{where}: {name} must be a non-negative number, got {x!r}")
        return v

    kind = raw.get("kind", base.kind)
    if kind not in ("deterministic", "statistical"):
        raise ValueError(f"{where}: kind must be 'deterministic' or 'statistical', got {kind!r}")
    rtol = number(raw.get("rtol", base.rtol), "rtol")
    atol = number(raw.get("atol", base.atol), "atol")
    columns = {}
    for col, spec in (raw.get("columns") or {}).items():
        if not isinstance(spec, dict) or not set(spec) <= {"rtol", "atol"}:
            raise ValueError(f"{where}: columns.{col} must be a mapping with rtol and/or atol")
        columns[str(col)] = (number(spec.get("rtol", rtol), f"columns.{col}.rtol"),
                             number(spec.get("atol", atol), f"columns.{col}.atol"))  # fmt: skip
    ignore = raw.get("ignore", list(base.ignore))
    if not isinstance(ignore, list) or not all(isinstance(c, str) for c in ignore):
        raise ValueError(f"{where}: ignore must be a list of column names")
    fraction = number(raw.get("fraction", base.fraction), "fraction")
    if fraction > 1:
        raise ValueError(f"{where}: fraction is a share of cells, in [0, 1], got {fraction}")
    return Tolerance(kind, rtol, atol, columns, tuple(ignore), fraction)


# ------------------------------------------------------------------------------------------------------ seeds
def derive_seed(seed: int, key: str) -> int:
    """A 63-bit seed from a root seed and a string key (SHA-256, stable across runs and machines)."""
    digest = hashlib.sha256(f"{int(seed)}/{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


# ----------------------------------------------------------------------------------------------------- claims
class Claim(NamedTuple):
    """A claim of the paper checked against our number, with the verdict the numbers give.

    ``verdict`` is one of :data:`VERDICTS`; ``reason`` says why (the tolerance or threshold that decided, or why
    the numbers are not comparable).
    """

    entry: str  # manifest id the claim belongs to
    statement: str  # the paper's claim in one sentence
    value: float  # our number
    interval: tuple[float, float] | None  # (low, high) uncertainty of `value`; None: deterministic
    uncertainty: str  # how the interval was made
    published: float | None  # the published number, if any
    expect: Literal["match", ">", "<"]
    threshold: float
    rtol: float
    atol: float
    scale: str  # the scale the notebook ran at
    verdict: str
    reason: str


CLAIM_COLUMNS = (
    "entry",
    "statement",
    "published",
    "value",
    "low",
    "high",
    "uncertainty",
    "expect",
    "threshold",
    "rtol",
    "atol",
    "scale",
    "verdict",
    "reason",
)


def judge(
    value: float,
    *,
    interval: tuple[float, float] | None = None,
    published: float | None = None,
    expect: Literal["match", ">", "<"] = "match",
    threshold: float = 0.0,
    rtol: float = 0.0,
    atol: float = 0.0,
    not_comparable: str | None = None,
) -> tuple[str, str]:
    """The verdict of a claim and the reason, from the numbers alone (see :meth:`Context.claim`).

    Returns:
        ``(verdict, reason)`` with ``verdict`` one of :data:`VERDICTS`.
    """
    if not_comparable:
        return "not comparable", str(not_comparable)
    if expect == "match":
        tol = atol + rtol * abs(published)
        diff = abs(value - published)
        if diff <= tol:
            return "reproduced", f"|ours − published| = {diff:.3g} ≤ {tol:.3g}"
        if interval is not None and interval[0] <= published <= interval[1]:
            return "reproduced", "published value inside our interval"
        where = "outside our interval and " if interval is not None else ""
        return "contradicted", f"{where}|ours − published| = {diff:.3g} > {tol:.3g}"
    above = expect == ">"
    low, high = interval if interval is not None else (value, value)
    side = ">" if above else "<"
    if (low > threshold) if above else (high < threshold):
        what = "whole interval" if interval is not None else "value"
        return "reproduced", f"{what} {side} {threshold:.4g}"
    if (high <= threshold) if above else (low >= threshold):
        what = "whole interval" if interval is not None else "value"
        return "contradicted", f"{what} {'≤' if above else '≥'} {threshold:.4g}"
    return "not significant at this scale", f"interval [{low:.4g}, {high:.4g}] contains {threshold:.4g}"


def _real(name: str, x: Any, *, allow_none: bool = False) -> float | None:
    if x is None and allow_none:
        return None
    if isinstance(x, bool) or not hasattr(x, "__float__"):
        raise ValueError(f"{name} must be a real number, got {x!r}")
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real number, got {x!r}") from None
    if v != v:
        raise ValueError(f"{name} is NaN; a claim needs a number (record why it is missing with not_comparable=...)")
    return v


def binomial_interval(k: int, n: int, *, confidence: float = 0.95) -> tuple[float, float]:
    """Clopper–Pearson (exact) interval of a proportion ``k / n``.

    Args:
        k: successes, ``0 <= k <= n``.
        n: trials, ``n >= 1``.
        confidence: coverage of the interval, in (0, 1).

    Returns:
        ``(low, high)`` bounds of the proportion.

    Raises:
        ValueError: ``k`` or ``n`` not integers in range, or ``confidence`` outside (0, 1).

    References:
        Clopper & Pearson, *The use of confidence or fiducial limits illustrated in the case of the binomial*,
        Biometrika 1934.
    """
    import numpy as np
    from scipy.stats import binomtest

    for name, v in (("k", k), ("n", n)):
        if isinstance(v, bool) or not isinstance(v, int | np.integer):
            raise ValueError(f"{name} must be an integer, got {v!r}")
    k, n = int(k), int(n)
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    _check_confidence(confidence)
    ci = binomtest(k, n).proportion_ci(confidence_level=confidence, method="exact")
    return float(ci.low), float(ci.high)


def bootstrap_interval(
    samples: Sequence[float],
    *,
    statistic: Callable = None,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int,
) -> tuple[float, float]:
    """Bootstrap confidence interval of ``statistic(samples)`` (BCa, percentile where BCa is undefined).

    Memory stays bounded for large samples (resamples and the BCa jackknife are evaluated in batches: 50 000
    samples peak at 0.4 GB instead of 18 GB); the time of BCa's jackknife grows as n² (n statistics of n − 1
    samples; 50 000 samples of the mean: ~30 s on one core).

    Args:
        samples: one-dimensional finite samples (at least 2).
        statistic: a function of a 1-D array (``numpy.mean`` when ``None``); it may take ``axis``.
        confidence: coverage of the interval, in (0, 1).
        n_resamples: bootstrap resamples.
        seed: seed of the resampling (the interval is reproducible; the global RNG is never used).

    Returns:
        ``(low, high)``.

    Raises:
        ValueError: fewer than two samples, non-finite samples, or invalid options.

    References:
        Efron, *Better bootstrap confidence intervals*, JASA 1987 (BCa).
    """
    import numpy as np
    from scipy.stats import bootstrap

    statistic = np.mean if statistic is None else statistic
    x = np.asarray(samples, dtype=float).ravel()
    if x.size < 2 or not np.isfinite(x).all():
        raise ValueError(f"need at least 2 finite samples, got {x.size} (non-finite: {int((~np.isfinite(x)).sum())})")
    _check_confidence(confidence)
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int) or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer, got {n_resamples!r}")
    if np.all(x == x[0]):
        v = float(statistic(x))
        return v, v
    import warnings

    # resamples (and BCa's jackknife) in batches of ≤ 2^22 numbers: memory O(2^22), not O(n · max(n, n_resamples))
    # (50 000 samples took 18 GB unbatched); scipy draws the same resamples whatever the batch
    batch = max(1, (1 << 22) // x.size)
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # BCa on degenerate resamples warns and returns NaN: fall back
            res = bootstrap(
                (x,),
                statistic,
                confidence_level=confidence,
                n_resamples=n_resamples,
                batch=batch,
                method=method,
                rng=np.random.default_rng(seed),
            )
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if np.isfinite(low) and np.isfinite(high):
            return low, high
    raise ValueError("the bootstrap interval is undefined for these samples")


def seed_interval(values: Sequence[float]) -> tuple[float, tuple[float, float]]:
    """Mean and min–max range over seeds: ``(mean, (low, high))``.

    Raises:
        ValueError: no values, or a non-finite value.
    """
    import numpy as np

    x = np.asarray(values, dtype=float).ravel()
    if x.size < 1 or not np.isfinite(x).all():
        raise ValueError(f"need at least one finite value per seed, got {list(x)}")
    return float(x.mean()), (float(x.min()), float(x.max()))


def _check_confidence(confidence: float) -> None:
    if isinstance(confidence, bool) or not isinstance(confidence, float | int) or not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")


def claims_frame(claims: Sequence[Claim]):
    """The claims as a pandas DataFrame with the columns :data:`CLAIM_COLUMNS` (the ``.claims.csv`` layout)."""
    import pandas as pd

    rows = [
        {
            **{k: getattr(c, k) for k in CLAIM_COLUMNS if k not in ("low", "high")},
            "low": c.interval[0] if c.interval is not None else None,
            "high": c.interval[1] if c.interval is not None else None,
        }
        for c in claims
    ]
    return pd.DataFrame(rows, columns=list(CLAIM_COLUMNS))


def format_claims(claims: Sequence[Claim]) -> str:
    """A plain-text table of claims: entry, statement, published, ours (with interval), verdict."""
    if not claims:
        return "no claims recorded"
    rows = [("entry", "claim", "published", "ours", "verdict")]
    for c in claims:
        rows.append((c.entry, c.statement, _fmt(c.published), _fmt_value(c), c.verdict))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(x.ljust(w) for x, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.4g}"


def _fmt_value(c: Claim) -> str:
    text = f"{c.value:.4g}"
    if c.interval is not None:
        text += f" [{c.interval[0]:.4g}, {c.interval[1]:.4g}]"
    if c.expect != "match":
        text += f" ({c.expect} {c.threshold:.4g})"
    return text


# ---------------------------------------------------------------------------------------------------- context
class Context:
    """What a notebook's setup returns: validated parameters, the preset, seeds and output helpers.

    Attributes:
        progress: whether the notebook should show the library's progress bars (``fit(progress=...)``): the
            preset key ``progress``, or ``$STABKIT_PROGRESS=1`` (set by ``reproduce --progress``).
        figures_dir: where this run writes (see :func:`figures_dir`).
    """

    def __init__(self, notebook: str, params: dict[str, Any], preset: dict[str, Any], stems: set[str]):
        self.notebook = notebook
        self.params = params
        self.scale: str = params["scale"]
        self.seed: int = params["seed"]
        self.device = torch.device(params["device"])
        self.data_root = repo_root() / params["data_root"]
        #: the image data set of this run (``dataset=None`` resolved to the scale's, see :data:`SCALE_DATASETS`)
        self.dataset: str | None = params.get("dataset")
        self.preset = types.SimpleNamespace(**preset)
        self.progress: bool = bool(preset.get("progress", False)) or os.environ.get("STABKIT_PROGRESS") == "1"
        self._stems = stems
        self._entries = {e.id for e in load_manifest().values() if e.notebook == notebook}
        self._outputs: list[str] = []
        self._claims: dict[tuple[str, str], Claim] = {}
        self._run_info: dict[str, Any] | None = None
        self._start = time.perf_counter()
        self._cpu_start = time.process_time()  # CPU time of the kernel, all threads: the cost on a quiet machine

    @property
    def figures_dir(self) -> Path:
        """Where this run writes its outputs."""
        return figures_dir(self.scale)

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

    def checkpoint_path(self, key: str) -> Path:
        """Where a long training run named ``key`` keeps its checkpoint (pass it to ``fit(checkpoint=...)``).

        ``build/<scale>/checkpoints/<notebook>/<key>-<hash>.pt``, where the hash covers the notebook's parameters
        (seed, dataset, ...): a rerun with the same parameters resumes, a run with other parameters starts
        afresh. The folder is created; the file is not.
        """
        if not isinstance(key, str) or not key.strip():
            raise ValueError(f"checkpoint key must be a non-empty string, got {key!r}")
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in key.strip())
        digest = hashlib.sha256(json.dumps(self.params, sort_keys=True, default=str).encode()).hexdigest()[:10]
        folder = repo_root() / "build" / self.scale / "checkpoints" / self.notebook
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{safe}-{digest}.pt"

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
        path = self.figures_dir / f"{stem}.csv"
        _atomic_write(path, df.to_csv(index=False, float_format="%.8g", lineterminator="\n").encode())
        self._record(path.name)

    def load_table(self, stem: str):
        """Read back a table written by :meth:`save_table`."""
        import pandas as pd

        self._check_stem(stem)
        return pd.read_csv(self.figures_dir / f"{stem}.csv")

    def save_figure(self, fig, stem: str) -> None:
        """Save ``fig`` as ``<stem>.png`` and ``<stem>.pdf``, byte-stable, show the PNG in a kernel, close ``fig``.

        In a Jupyter kernel (Lab, papermill, nbval) the PNG bytes just written are displayed under the cell, so
        the notebook shows exactly the file on disk; elsewhere nothing is shown. Returns nothing.
        """
        import io

        import matplotlib.pyplot as plt

        self._check_stem(stem)
        png = b""
        for ext, meta in (
            ("png", {"Software": None}),
            ("pdf", {"Creator": None, "Producer": None, "CreationDate": None}),
        ):
            buf = io.BytesIO()
            fig.savefig(buf, format=ext, dpi=150, metadata=meta, bbox_inches="tight")
            path = self.figures_dir / f"{stem}.{ext}"
            _atomic_write(path, buf.getvalue())
            self._record(path.name)
            if ext == "png":
                png = buf.getvalue()
        plt.close(fig)
        _display_png(png)

    def claim(
        self,
        entry: str,
        statement: str,
        value: float,
        *,
        interval: tuple[float, float] | None = None,
        uncertainty: str = "",
        published: float | None = None,
        expect: Literal["match", ">", "<"] = "match",
        threshold: float = 0.0,
        rtol: float = 0.0,
        atol: float = 0.0,
        not_comparable: str | None = None,
    ) -> Claim:
        """Record a claim of the paper with our number, and return it with its verdict.

        Args:
            entry: the manifest id the claim belongs to (one of this notebook's entries).
            statement: the paper's claim in one sentence.
            value: our number.
            interval: ``(low, high)`` uncertainty of ``value`` (:func:`binomial_interval`,
                :func:`bootstrap_interval`, :func:`seed_interval`); ``None`` for a deterministic number.
            uncertainty: how the interval was made, e.g. ``"95% Clopper-Pearson, n=449"``; required with one.
            published: the published number, if any (required for ``expect="match"``).
            expect: ``"match"``: ``value`` agrees with ``published``; ``">"`` / ``"<"``: ``value`` is above /
                below ``threshold``.
            threshold: the threshold of ``">"`` / ``"<"``.
            rtol, atol: tolerance of ``"match"``: reproduced when ``|value - published| <= atol +
                rtol·|published|`` or ``published`` lies in ``interval``; contradicted otherwise.
            not_comparable: a reason why our number cannot be compared (verdict ``"not comparable"``).

        Returns:
            The :class:`Claim`. For ``">"`` / ``"<"`` with an interval: reproduced if the whole interval is on
            the claimed side, contradicted if it is all on the other side, otherwise not significant at this
            scale; without an interval the value decides. Recording the same (entry, statement) again replaces
            the earlier claim (a cell re-run in Lab).

        Raises:
            ValueError: an entry of another notebook, an empty statement, a NaN number, an invalid interval or
                tolerance, or ``"match"`` without a published number.
        """
        if entry not in self._entries:
            raise ValueError(
                f"claim entry {entry!r} is not a manifest entry of notebook {self.notebook!r} "
                f"(its entries: {', '.join(sorted(self._entries))})"
            )
        if not isinstance(statement, str) or not statement.strip():
            raise ValueError("a claim needs its statement: the paper's claim in one sentence")
        if expect not in ("match", ">", "<"):
            raise ValueError(f"expect must be 'match', '>' or '<', got {expect!r}")
        if not_comparable is not None and (not isinstance(not_comparable, str) or not not_comparable.strip()):
            raise ValueError("not_comparable must be a non-empty reason string (or None)")
        value = _real("value", value)
        published = _real("published", published, allow_none=True)
        threshold = _real("threshold", threshold)
        rtol, atol = _real("rtol", rtol), _real("atol", atol)
        if rtol < 0 or atol < 0:
            raise ValueError(f"rtol and atol must be non-negative, got rtol={rtol}, atol={atol}")
        if interval is not None:
            if len(interval) != 2:
                raise ValueError(f"interval must be (low, high), got {interval!r}")
            low, high = _real("interval low", interval[0]), _real("interval high", interval[1])
            if low > high:
                raise ValueError(f"interval low {low} is above high {high}")
            interval = (low, high)
            if not uncertainty:
                raise ValueError("an interval needs its uncertainty text, e.g. '95% Clopper-Pearson, n=449'")
        if expect == "match" and published is None and not_comparable is None:
            raise ValueError(
                "expect='match' needs the published number; use expect='>' / '<' with a threshold, or "
                "not_comparable='why'"
            )
        verdict, reason = judge(
            value,
            interval=interval,
            published=published,
            expect=expect,
            threshold=threshold,
            rtol=rtol,
            atol=atol,
            not_comparable=not_comparable,
        )
        claim = Claim(
            entry=entry,
            statement=statement.strip(),
            value=value,
            interval=interval,
            uncertainty=str(uncertainty),
            published=published,
            expect=expect,
            threshold=threshold,
            rtol=rtol,
            atol=atol,
            scale=self.scale,
            verdict=verdict,
            reason=reason,
        )
        self._claims[(entry, claim.statement)] = claim
        return claim

    @property
    def claims(self) -> list[Claim]:
        """The claims recorded so far, in order."""
        return list(self._claims.values())

    def save_claims(self) -> None:
        """Print the claims table and write ``<notebook>.claims.csv`` beside the figures (a notebook's last cell)."""
        import pandas as pd

        claims = self.claims
        frame = claims_frame(claims) if claims else pd.DataFrame(columns=list(CLAIM_COLUMNS))
        path = self.figures_dir / f"{self.notebook}.claims.csv"
        _atomic_write(path, frame.to_csv(index=False, float_format="%.8g", lineterminator="\n").encode())
        self._record(path.name)
        print(format_claims(claims))

    def _record(self, name: str) -> None:
        if name not in self._outputs:
            self._outputs.append(name)
        if self._run_info is None:
            self._run_info = run_info(self.device)
        record = {
            "notebook": self.notebook,
            "parameters": self.params,
            "outputs": self._outputs,
            **self._run_info,
            "wall_time_s": round(time.perf_counter() - self._start, 1),
            "cpu_time_s": round(time.process_time() - self._cpu_start, 1),
        }
        _atomic_write(
            self.figures_dir / f"{self.notebook}.provenance.json", (json.dumps(record, indent=1) + "\n").encode()
        )


def run_info(device: str | torch.device = "cpu") -> dict[str, Any]:
    """What identifies a run: git commit and dirty flag, Python, torch and library versions, threads, machine."""
    from importlib import metadata

    device = torch.device(device)
    versions = {}
    for name in PROVENANCE_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    commit, dirty = _git_state()
    return {
        "git_commit": commit,
        "git_dirty": dirty,
        "python": platform.python_version(),
        "torch": torch.__version__,
        **versions,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "cpu": _cpu_model() or platform.processor() or platform.machine(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
    }


def _display_png(png: bytes) -> None:
    """Show PNG bytes under the running cell when inside a Jupyter kernel (no-op elsewhere)."""
    if not _in_kernel():
        return
    from IPython import display

    display.display(display.Image(data=png, format="png"))


def _in_kernel() -> bool:
    """Whether the code runs in a Jupyter kernel (Lab, papermill, nbval), not a terminal IPython or script."""
    if "IPython" not in sys.modules:  # never import IPython just to find out
        return False
    from IPython import get_ipython

    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


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
        presets: ``{"ci": {...}, "cpu": {...}, "full": {...}}`` (every scale of :data:`SCALES`); the chosen one
            becomes ``ctx.preset``. One key is applied here: ``threads``, when present and positive, sets
            torch's intra-op thread count (``torch.set_num_threads``; tiny models run fastest on one thread of a
            shared CPU); 0 or absent leaves torch's default. It is a process-wide setting, so a notebook never
            sets it itself.
            ``progress`` (bool) becomes ``ctx.progress``: whether the notebook shows the library's progress bars
            (typically off at ci, on above). ``download`` (bool), the notebook's permission to fetch MNIST /
            CIFAR-10, is forced on by ``$STABKIT_DOWNLOAD=1`` (what ``reproduce -p download=true`` sets).
        scale, seed, device, data_root: the standard parameters.
        **extra: the notebook's other parameters. ``dataset`` is checked against :data:`stabkit.data.DATASETS`;
            ``dataset=None`` means the scale's data set: the preset's ``dataset`` key, else
            :data:`SCALE_DATASETS` (``ctx.dataset`` holds the resolved name).

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
    for key in ("progress", "download"):
        if key in presets[scale] and not isinstance(presets[scale][key], bool):
            raise ValueError(f"preset key {key} must be True or False, got {presets[scale][key]!r}")
    if "dataset" in extra and extra["dataset"] is None:
        extra["dataset"] = params["dataset"] = presets[scale].get("dataset", SCALE_DATASETS.get(scale))
        if extra["dataset"] is None:
            raise ValueError(
                f"dataset=None at scale {scale!r}: the {scale} preset must name its data set (key dataset)"
            )
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
    preset = dict(presets[scale])
    if os.environ.get("STABKIT_DOWNLOAD") == "1" and "download" in preset:
        preset["download"] = True
    return Context(notebook, params, preset, stems)


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
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600 files
        os.replace(tmp, path)
    except BaseException:  # a full disk or an interrupt leaves neither a half file nor the temporary one
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _git_state() -> tuple[str | None, bool | None]:
    """(HEAD commit, whether tracked files differ from it); None where git or the checkout is missing."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args], cwd=repo_root(), capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout if out.returncode == 0 else None

    commit = (git("rev-parse", "HEAD") or "").strip() or None
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return commit, (bool(status.strip()) if status is not None else None)


class Timing(NamedTuple):
    """What :func:`median_time` measured."""

    value: Any  # what the warm-up call returned
    seconds: float  # median wall time of one call


def median_time(
    fn,
    *,
    repeats: int = 5,
    device: str | torch.device | None = None,
    clock: Literal["wall", "thread"] = "wall",
) -> Timing:
    """Median wall time of ``fn()`` over ``repeats`` calls after one warm-up call (for notebooks and benchmarks).

    On a CUDA ``device`` the clock waits for the GPU before and after each call. ``clock="thread"`` measures the CPU
    time of the calling thread instead (``time.thread_time``): with one torch thread (``torch.set_num_threads(1)``)
    that is the work done, unaffected by other processes sharing the CPU; not for CUDA. The library's own functions
    never time themselves; timings belong to notebooks (in tables marked ``timed`` in the manifest) and benchmarks.
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive integer, got {repeats!r}")
    if clock not in ("wall", "thread"):
        raise ValueError(f"clock must be 'wall' or 'thread', got {clock!r}")
    cuda = device is not None and torch.device(device).type == "cuda"
    if cuda and clock == "thread":
        raise ValueError("clock='thread' measures CPU time: use the wall clock on a CUDA device")
    now = time.perf_counter if clock == "wall" else time.thread_time
    value = fn()
    times = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        start = now()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(now() - start)
    times.sort()
    mid = len(times) // 2
    return Timing(value, times[mid] if len(times) % 2 else (times[mid - 1] + times[mid]) / 2)


class MemoryPeak(NamedTuple):
    """What :func:`peak_memory` measured."""

    value: Any  # what the call returned
    peak_bytes: int  # largest number of bytes held by tensors allocated during the call


@contextlib.contextmanager
def _quiet_profiler():
    """Keep the profiler's own log lines out of the output, pass every other line on to stderr.

    libkineto prints a start/stop line per profile, and c10 warns that blocks allocated before the profile are not
    tracked (expected here: see :func:`peak_memory`), both on the process's file descriptors 1 and 2 (which a
    notebook kernel shows), so they are redirected to a temporary file for the duration.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 1)
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            tmp.seek(0)
            noise = ("SyncActivityProfilerHandler", "allocated before the profiling started")
            for line in tmp.read().decode(errors="replace").splitlines():
                if line.strip() and not any(n in line for n in noise):
                    print(line, file=sys.stderr)


def peak_memory(fn, *, device: str | torch.device | None = None) -> MemoryPeak:
    """Peak tensor memory that one call of ``fn()`` allocates above what was live before it (notebooks, benchmarks).

    On a CUDA ``device``: ``torch.cuda.max_memory_allocated`` after resetting the peak, minus the memory allocated
    before the call. On the CPU, where torch keeps no allocator statistics, the call runs under ``torch.profiler``
    with ``profile_memory=True``: every allocation is recorded as the self memory of the operator that made it and
    every free as a ``[memory]`` event; the peak is the largest running sum of these in time order. It counts the
    tensors of torch's CPU allocator (activations, gradients, workspaces of the operators), not Python objects.
    Tensors that ``fn`` returns are still live at the end and count.
    """
    cuda = device is not None and torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        value = fn()
        torch.cuda.synchronize(device)
        return MemoryPeak(value, int(torch.cuda.max_memory_allocated(device) - before))
    from torch.profiler import ProfilerActivity, profile  # lazy: the profiler is heavy to import

    with _quiet_profiler(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        value = fn()
    events = sorted(
        (e for e in prof.events() if e.self_cpu_memory_usage != 0), key=lambda e: (e.time_range.start, e.id)
    )
    running, peak = 0, 0
    for e in events:
        running += e.self_cpu_memory_usage
        peak = max(peak, running)
    return MemoryPeak(value, int(peak))


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
