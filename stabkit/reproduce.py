"""Regenerate the thesis's figures and tables: ``python -m stabkit.reproduce`` (what ``make reproduce`` runs).

Each selected manifest entry's notebook is executed once with papermill; the executed copy is kept under
``build/<scale>/``. A notebook writes into a temporary folder, and its files are moved into the tracked references
``figures/<scale>/`` only when it succeeds, so a failed run never destroys earlier outputs. The run ends with a table
of what was regenerated, where, and how long each notebook took.

Examples::

    python -m stabkit.reproduce --list
    python -m stabkit.reproduce                      # every entry at the ci scale
    python -m stabkit.reproduce --only gi-overflow   # one figure (its notebook runs whole)
    python -m stabkit.reproduce --scale full --device cuda
    python -m stabkit.reproduce --only cpl-sll-aol-table -p dataset=mnist -p download=true
    python -m stabkit.reproduce --check              # a fresh ci run against figures/ci/, within tolerances
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

from stabkit.support import SCALE_DATASETS, SCALES, load_manifest, reference_dir, repo_root

# papermill adds these; they change every run and would make the stored notebooks noisy.
_VOLATILE_METADATA = ("papermill", "execution")
# parameters the CLI sets itself (its own options), and environment variables a run sets for its kernels
_STANDARD_PARAMS = ("scale", "seed", "device", "data_root")
_ENV_KEYS = ("STABKIT_FIGURES_DIR", "STABKIT_PROGRESS", "STABKIT_DOWNLOAD")


class ReproductionError(RuntimeError):
    """A notebook failed, or the request was invalid."""


def main(argv: list[str] | None = None) -> int:
    summary = __doc__.split("\n\n")[0].replace("``", "`")
    parser = argparse.ArgumentParser(prog="python -m stabkit.reproduce", description=summary)
    parser.add_argument("--scale", default="ci", help=f"one of {', '.join(SCALES)} (default: ci)")
    parser.add_argument("--only", nargs="+", metavar="ID", help="manifest ids to regenerate (default: all)")
    parser.add_argument("--list", action="store_true", help="print the manifest as a table and exit")
    parser.add_argument("--markdown", action="store_true", help="with --list: a Markdown table (the README's)")
    parser.add_argument("--device", default="cpu", help="torch device passed to the notebooks (default: cpu)")
    parser.add_argument("--seed", type=int, default=0, help="root seed (default: 0)")
    parser.add_argument("--data-root", default="data", help="data folder, relative to the repository root")
    parser.add_argument(
        "-p", "--param", action="append", default=[], metavar="KEY=VALUE", help="extra notebook parameter"
    )
    parser.add_argument(
        "--store-outputs",
        action="store_true",
        help="copy the executed notebooks (ci scale, default parameters) back into notebooks/",
    )
    parser.add_argument(
        "--progress",
        action="store_true",
        help="show cell progress and the notebooks' output, and library progress bars",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="compare a fresh run (into build/<scale>/check/, or --from DIR) with the references figures/<scale>/ "
        "within the manifest's tolerances; exit 1 when a number leaves its tolerance",
    )
    parser.add_argument("--from", dest="from_dir", metavar="DIR", help="with --check: compare DIR instead of running")
    parser.add_argument(
        "--spread",
        nargs="+",
        metavar="DIR",
        help="print how far the outputs in the DIRs (and the references) differ, with suggested tolerances",
    )
    parser.add_argument(
        "--output-dir",
        metavar="DIR",
        help="write the outputs and REPORT.md into DIR instead of the references figures/<scale>/ "
        "(e.g. figures/gpu for a GPU run of the full scale; relative to the repository root)",
    )
    parser.add_argument("--report", action="store_true", help="only rewrite figures/<scale>/REPORT.md")
    args = parser.parse_args(argv)
    try:  # SIGTERM unwinds like Ctrl-C, so temporary folders are removed (only possible in the main thread)
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:
        previous = None
    try:
        repo_root()
    except FileNotFoundError:
        print(
            "error: python -m stabkit.reproduce needs the stabkit repository checkout (notebooks/, manifest.yaml): "
            "run it inside a clone, or set STABKIT_ROOT to one",
            file=sys.stderr,
        )
        return 1
    try:
        if args.list:
            print(manifest_markdown() if args.markdown else manifest_table())
            return 0
        if args.scale not in SCALES:
            raise ReproductionError(f"unknown scale {args.scale!r}; choose one of {', '.join(SCALES)}")
        if args.from_dir and not args.check:
            raise ReproductionError("--from DIR goes with --check")
        if args.spread:
            print(spread_table([Path(d) for d in args.spread], scale=args.scale, only=args.only))
            return 0
        if args.report:
            path = write_report(args.scale)
            print(f"wrote {path.relative_to(repo_root())}")
            return 0
        extra = dict(_parse_param(p) for p in args.param)
        output_dir = None
        if args.output_dir:
            if args.check or args.store_outputs:
                raise ReproductionError(
                    "--output-dir writes a new run: it goes with neither --check nor --store-outputs"
                )
            output_dir = Path(args.output_dir)
            output_dir = output_dir if output_dir.is_absolute() else repo_root() / output_dir
        if args.check:
            if extra or args.seed != 0 or args.store_outputs:
                raise ReproductionError("--check compares with the references: use it with default parameters only")
            if args.from_dir:
                new_dir = Path(args.from_dir).resolve()
            else:
                new_dir = repo_root() / "build" / args.scale / "check"
                shutil.rmtree(new_dir, ignore_errors=True)
                reproduce(scale=args.scale, only=args.only, device=args.device, dest=new_dir, progress=args.progress)
            diffs = compare_outputs(new_dir, reference_dir(args.scale), scale=args.scale, only=args.only)
            print(check_table(diffs))
            return 0 if all(d.ok for d in diffs) else 1
        results = reproduce(
            scale=args.scale,
            only=args.only,
            device=args.device,
            seed=args.seed,
            data_root=args.data_root,
            extra=extra,
            store_outputs=args.store_outputs,
            dest=output_dir,
            progress=args.progress,
        )
        path = write_report(args.scale, output_dir)
        print(f"report: {_shown(path)}", file=sys.stderr)
    except ReproductionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: previous figures are untouched", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    print(results_table(results))
    return 0


def _shown(path: Path) -> Path:
    """``path`` relative to the repository when inside it (``--output-dir`` may point anywhere)."""
    return path.relative_to(repo_root()) if path.is_relative_to(repo_root()) else path


def _terminate(signum, frame):
    raise KeyboardInterrupt


def manifest_table() -> str:
    """The manifest as a text table."""
    rows = [("id", "ch", "notebook", "outputs", "ci", "cpu", "full", "GPU", "published")]
    for e in _chapter_order(load_manifest()):
        rows.append(
            (
                e.id,
                e.chapter,
                e.notebook,
                ", ".join(e.outputs),
                e.runtime["ci"],
                e.runtime["cpu"],
                e.runtime["full"],
                "yes" if e.full_needs_gpu else "no",
                (e.published or "")[:40],
            )
        )
    return _format_rows(rows)


def manifest_markdown() -> str:
    """The manifest as the Markdown table of the README (a test keeps the README in sync)."""
    lines = [
        "| id | ch | notebook | what | ci | cpu | full | GPU for full | timed | published |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in _chapter_order(load_manifest()):
        gpu = "yes" if e.full_needs_gpu else "no"
        timed = "yes" if e.timed else ""
        row = [f"`{e.id}`", e.chapter, f"`{e.notebook}`", e.title, *(e.runtime[s] for s in SCALES), gpu, timed]
        lines.append(_md_row([*row, e.published or ""]))
    return "\n".join(lines)


def _md(text: object) -> str:
    """One Markdown table cell: ``|`` escaped (also inside code spans, as GFM requires), no line breaks."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _md_row(cells: list) -> str:
    return "| " + " | ".join(_md(c) for c in cells) + " |"


def reproduce(
    *,
    scale: str = "ci",
    only: list[str] | None = None,
    device: str = "cpu",
    seed: int = 0,
    data_root: str = "data",
    extra: dict | None = None,
    store_outputs: bool = False,
    dest: Path | None = None,
    progress: bool = False,
) -> list[dict]:
    """Run the notebooks of the selected manifest entries; return one result row per notebook.

    Outputs go into ``dest`` (default: the references ``figures/<scale>/``). ``progress`` shows papermill's cell
    progress and the notebooks' output, and sets ``$STABKIT_PROGRESS=1`` for the library's progress bars.
    """
    if scale not in SCALES:
        raise ReproductionError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    extra = extra or {}
    if store_outputs and (scale != "ci" or extra or seed != 0 or device != "cpu"):
        raise ReproductionError("--store-outputs stores the reference ci run: use it with default parameters only")
    manifest = load_manifest()
    if only:
        unknown = [i for i in only if i not in manifest]
        if unknown:
            raise ReproductionError(
                f"unknown manifest id(s) {', '.join(unknown)}; `python -m stabkit.reproduce --list` shows them"
            )
    selected = [manifest[i] for i in (only or manifest)]
    notebooks = sorted({e.notebook for e in selected})  # NN_topic names: chapter order

    for key in _STANDARD_PARAMS:
        if key in extra:
            raise ReproductionError(
                f"-p {key}=... is not allowed: use --{key.replace('_', '-')} (the outputs are filed by it)"
            )

    download = extra.pop("download", False) if "download" in extra else False
    if not isinstance(download, bool):
        raise ReproductionError(f"-p download must be true or false, got {download!r}")

    import papermill as pm

    handler = None
    if progress:  # log_output sends the notebooks' output to papermill's logger: show it on stderr
        import logging

        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("      %(message)s"))
        logging.getLogger("papermill").addHandler(handler)
        logging.getLogger("papermill").setLevel(logging.INFO)
    try:
        return _run(pm, notebooks, manifest, scale, seed, device, data_root, extra, download, store_outputs, dest,
                    progress)  # fmt: skip
    finally:
        if handler is not None:
            logging.getLogger("papermill").removeHandler(handler)


def _run(pm, notebooks, manifest, scale, seed, device, data_root, extra, download, store_outputs, dest, progress):
    root = repo_root()
    nb_dir, out_dir = root / "notebooks", Path(dest) if dest is not None else reference_dir(scale)
    build = root / "build" / scale
    build.mkdir(parents=True, exist_ok=True)
    results = []
    for i, nb in enumerate(notebooks, 1):
        src = nb_dir / f"{nb}.ipynb"
        if not src.exists():
            raise ReproductionError(f"manifest names notebook {nb!r} but {src.relative_to(root)} does not exist")
        declared = pm.inspect_notebook(str(src))
        params = {"scale": scale, "seed": seed, "device": device, "data_root": data_root, **extra}
        undeclared = [k for k in params if k not in declared]
        if undeclared:
            if set(undeclared) <= set(extra):
                raise ReproductionError(
                    f"notebook {nb} has no parameter(s) {', '.join(undeclared)}; it declares {', '.join(declared)}"
                )
            for k in undeclared:  # a standard parameter the notebook does not use
                params.pop(k)
        if "dataset" in declared:
            dataset = params.get("dataset", declared["dataset"]["default"])
            dataset = SCALE_DATASETS.get(scale) if dataset in ("None", None) else dataset.strip("\"'")
            if dataset is not None:  # at full, dataset=None is the notebook preset's, which downloads itself
                _ensure_data(nb, dataset, root / params.get("data_root", data_root), download, scale, root)
        executed = build / f"{nb}.ipynb"
        print(f"[{i}/{len(notebooks)}] {nb} ({scale}) ...", file=sys.stderr, flush=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{nb}-", dir=root / "build"))
        env_before = {k: os.environ.get(k) for k in _ENV_KEYS}
        os.environ["STABKIT_FIGURES_DIR"] = str(tmp)
        if progress:
            os.environ["STABKIT_PROGRESS"] = "1"
        if download:
            os.environ["STABKIT_DOWNLOAD"] = "1"  # the notebook's preset key `download` (see support.setup)
        start = time.perf_counter()
        try:
            try:
                pm.execute_notebook(
                    str(src),
                    str(executed),
                    parameters=params,
                    cwd=str(nb_dir),
                    kernel_name="python3",
                    progress_bar=progress,
                    log_output=progress,
                )
            except pm.PapermillExecutionError as exc:
                raise ReproductionError(
                    f"notebook {nb} failed in cell {exc.exec_count} ({exc.ename}: {exc.evalue}). The executed "
                    f"notebook is at {executed.relative_to(root)}; previous figures are untouched."
                ) from None
            finally:
                for k, v in env_before.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
            seconds = time.perf_counter() - start
            expected = {s for e in manifest.values() if e.notebook == nb for s in e.outputs}
            produced = {p.name.split(".")[0] for p in tmp.iterdir() if not p.name.startswith(".")}
            missing = sorted(expected - produced)
            if missing:
                raise ReproductionError(
                    f"notebook {nb} ran but did not write {', '.join(missing)}; previous figures are untouched"
                )
            files = sorted(p for p in tmp.iterdir() if not p.name.startswith("."))
            _move_into(files, out_dir, root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # every exit path: success, error, Ctrl-C, SIGTERM (see main)
        if store_outputs:
            store_notebook(executed, src)
        ids = [e.id for e in manifest.values() if e.notebook == nb]
        where = f"{out_dir.relative_to(root)}/" if out_dir.is_relative_to(root) else f"{out_dir}/"
        results.append({"notebook": nb, "ids": ids, "files": len(files), "where": where, "seconds": seconds})
        print(f"      done in {seconds:.1f} s", file=sys.stderr, flush=True)
    return results


def _ensure_data(nb: str, dataset: str, data_root: Path, download: bool, scale: str, root: Path) -> None:
    """Fetch the data set first when asked (progress bar, hash checks), or stop before the run when its files are
    missing and the notebook would not download them (ci presets do not; cpu fetches the 2 MB MNIST test set)."""
    from stabkit import data

    missing = data.missing_files(dataset, data_root) if dataset in data.DATASETS else []
    if not missing:
        return
    if download or scale == "cpu":
        try:
            data.fetch([dataset], root=data_root)
        except (ValueError, FileNotFoundError) as exc:
            raise ReproductionError(f"could not fetch {dataset} for {nb}: {exc}") from None
    elif scale != "full":
        where = data_root.relative_to(root) if data_root.is_relative_to(root) else data_root
        raise ReproductionError(
            f"notebook {nb} needs {dataset}, whose files are not in {where}/ ({len(missing)} missing). Add "
            f"-p download=true, or run `python -m stabkit.data fetch {dataset} --root {where}` first."
        )


def _move_into(files: list[Path], out_dir: Path, root: Path) -> None:
    """Move finished outputs into ``out_dir``, each file atomically, also across file systems.

    Every file is first copied next to its destination (same file system, so the final ``os.replace`` is
    atomic); a destination that cannot be written is reported before any reference file changes.
    """
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        staged = []
        try:
            for p in files:
                fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{p.name}.")
                os.close(fd)
                shutil.copyfile(p, tmp)
                os.chmod(tmp, 0o644)
                staged.append((tmp, out_dir / p.name))
        except BaseException:
            for tmp, _ in staged:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            raise
        for tmp, dest in staged:
            os.replace(tmp, dest)
    except OSError as exc:
        where = out_dir.relative_to(root) if out_dir.is_relative_to(root) else out_dir
        raise ReproductionError(
            f"cannot write the outputs into {where}/ ({exc.strerror or exc}); check that it is writable. "
            "Previous figures are untouched."
        ) from None


def store_notebook(executed: Path, dest: Path) -> None:
    """Copy an executed notebook to ``dest`` without papermill's volatile metadata and injected cell."""
    nb = json.loads(executed.read_text())
    nb["cells"] = [c for c in nb["cells"] if "injected-parameters" not in c.get("metadata", {}).get("tags", [])]
    for key in _VOLATILE_METADATA:
        nb["metadata"].pop(key, None)
    for cell in nb["cells"]:
        for key in _VOLATILE_METADATA:
            cell.get("metadata", {}).pop(key, None)
    dest.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")


def results_table(results: list[dict]) -> str:
    """The closing table: what was regenerated, where, and how long each notebook took."""
    rows = [("notebook", "ids", "files", "where", "time")]
    for r in results:
        rows.append((r["notebook"], ", ".join(r["ids"]), str(r["files"]), r["where"], f"{r['seconds']:.1f} s"))
    total = sum(r["seconds"] for r in results)
    rows.append(("total", "", str(sum(r["files"] for r in results)), "", f"{total:.1f} s"))
    return _format_rows(rows)


# ------------------------------------------------------------------------------------------------------ report
def write_report(scale: str, folder: Path | None = None) -> Path:
    """Write ``REPORT.md`` from the outputs and claims of ``scale`` in ``folder`` (default: the references
    ``figures/<scale>/``); return its path."""
    ref = reference_dir(scale) if folder is None else Path(folder)
    ref.mkdir(parents=True, exist_ok=True)
    path = ref / "REPORT.md"
    _atomic_text(path, report_markdown(scale, ref))
    return path


def report_markdown(scale: str, folder: Path | None = None) -> str:
    """The results report of ``scale`` (outputs read from ``folder``, default ``figures/<scale>/``): per chapter
    and manifest entry, the figure, its caption, the claims (published vs ours, with the verdict) and the
    provenance line of its notebook."""
    import pandas as pd

    ref = reference_dir(scale) if folder is None else Path(folder)
    manifest = load_manifest()
    claims: dict[str, pd.DataFrame] = {}
    provenance: dict[str, dict] = {}
    for nb in sorted({e.notebook for e in manifest.values()}):
        if (ref / f"{nb}.claims.csv").exists():
            claims[nb] = pd.read_csv(ref / f"{nb}.claims.csv", keep_default_na=False, na_values=[""])
        if (ref / f"{nb}.provenance.json").exists():
            provenance[nb] = json.loads((ref / f"{nb}.provenance.json").read_text())
    counts: dict[str, int] = {}
    for df in claims.values():
        for v in df["verdict"]:
            counts[v] = counts.get(v, 0) + 1
    lines = [
        f"# Reproduction report: `{scale}` scale",
        "",
        f"Regenerated by `python -m stabkit.reproduce --scale {scale}` (this file is written by it; do not edit).",
        f"`python -m stabkit.reproduce --check --scale {scale}` compares a fresh run with these files within the",
        "tolerances of `manifest.yaml`.",
        "",
        "Claims: "
        + (", ".join(f"{n} {v}" for v, n in sorted(counts.items())) if counts else "none recorded yet")
        + ".",
    ]
    if scale == "ci":
        lines += ["", "`ci` runs on 2 CPU cores with small offline data: the patterns compare with the papers, the "
                  "absolute numbers mostly do not (see the verdicts)."]  # fmt: skip
    elif scale == "cpu":
        lines += ["", "`cpu` runs on 2 CPU cores in under an hour, on the real 28×28 MNIST test images (split "
                  "deterministically) and the synthetic sets, with several seeds: differences are judged against "
                  "their intervals; the published numbers (CIFAR-10, GPU) are printed beside ours."]  # fmt: skip
    lines += _verdict_summary(manifest, claims, provenance, scale)
    chapter = None
    for e in _chapter_order(manifest):
        if e.chapter != chapter:
            chapter = e.chapter
            lines += ["", f"## Chapter {chapter}"]
        lines += ["", f"### `{e.id}`", ""]
        produced = [stem for stem in e.outputs if any(ref.glob(f"{stem}.*"))]
        if not produced:
            lines += [f"*Not produced at the `{scale}` scale yet.* {e.title}"]
            continue
        for stem in produced:
            if (ref / f"{stem}.png").exists():
                lines += [f"![{stem}]({stem}.png)", ""]
        lines += [f"*{e.title}.*" if not e.title.endswith(".") else f"*{e.title}*"]
        files = [
            f"[{stem}.{ext}]({stem}.{ext})"
            for stem in produced
            for ext in ("csv", "pdf")
            if (ref / f"{stem}.{ext}").exists()
        ]
        if files:
            lines += ["", "Data: " + ", ".join(files) + (" (timed: wall-clock measurements)" if e.timed else "")]
        if e.published:
            lines += ["", f"Published: {e.published}"]
        df = claims.get(e.notebook)
        rows = df[df["entry"] == e.id] if df is not None else None
        if rows is not None and len(rows):
            lines += ["", "| claim | published | ours | uncertainty | verdict |", "|---|---|---|---|---|"]
            for r in rows.itertuples(index=False):
                ours = _num(r.value)
                if pd.notna(r.low):
                    ours += f" [{_num(r.low)}, {_num(r.high)}]"
                if r.expect != "match":
                    ours += f" (claim: {r.expect} {_num(r.threshold)})"
                verdict = f"**{r.verdict}**" if r.verdict == "contradicted" else r.verdict
                verdict += f" ({r.reason})" if isinstance(r.reason, str) and r.reason else ""
                unc = r.uncertainty if isinstance(r.uncertainty, str) and r.uncertainty else "deterministic"
                lines.append(_md_row([r.statement, _num(r.published), ours, unc, verdict]))
        else:
            lines += ["", "No claims recorded for this entry."]
        if e.notebook in provenance:
            lines += ["", f"<sub>{_md_inline(provenance_line(provenance[e.notebook]))}</sub>"]
    return "\n".join(lines) + "\n"


_SHORT_VERDICTS = {
    "reproduced": "reproduced",
    "not significant at this scale": "not significant",
    "contradicted": "contradicted",
    "not comparable": "not comparable",
}


def _verdict_summary(manifest: dict, claims: dict, provenance: dict, scale: str) -> list[str]:
    """The report's overview: per manifest entry, how many of its claims got each verdict, and the run time."""
    lines = ["", "## Verdicts by entry", "", "| entry | ch | " + " | ".join(_SHORT_VERDICTS.values()) + " |"]
    lines.append("|---|---|" + "---|" * len(_SHORT_VERDICTS))
    for e in _chapter_order(manifest):
        df = claims.get(e.notebook)
        verdicts = list(df.loc[df["entry"] == e.id, "verdict"]) if df is not None else []
        cells = [str(verdicts.count(v)) if verdicts else "—" for v in _SHORT_VERDICTS]
        lines.append(_md_row([f"[`{e.id}`](#{e.id})", e.chapter, *cells]))
    walls = {nb: rec.get("wall_time_s") for nb, rec in provenance.items() if rec.get("wall_time_s") is not None}
    cpus = {nb: rec.get("cpu_time_s") for nb, rec in provenance.items() if rec.get("cpu_time_s") is not None}
    if walls:
        total = sum(walls.values())
        per = ", ".join(
            f"{nb} {w:.0f} s" + (f" (CPU {cpus[nb]:.0f} s)" if nb in cpus else "") for nb, w in sorted(walls.items())
        )
        cpu = f"; CPU time {sum(cpus.values()) / 60:.1f} min" if len(cpus) == len(walls) else ""
        lines += [
            "",
            f"Notebook time at `{scale}` (provenance records): wall {total / 60:.1f} min in all{cpu} ({per}). The CPU "
            "time of a notebook's kernel is what it costs on a quiet machine; the wall time grows with other load.",
        ]
    return lines


def provenance_line(record: dict) -> str:
    """One line identifying the run that produced a notebook's outputs."""
    commit = (record.get("git_commit") or "unknown")[:10]
    dirty = {True: " (dirty)", False: "", None: ""}.get(record.get("git_dirty"), "")
    params = record.get("parameters", {})
    libs = ", ".join(
        f"{k} {record[k]}" for k in ("python", "torch", "numpy", "scipy", "matplotlib", "pandas", "papermill")
        if record.get(k)
    )  # fmt: skip
    machine = record.get("gpu") or record.get("cpu") or record.get("platform", "")
    threads = f", {record['torch_threads']} torch threads" if record.get("torch_threads") else ""
    wall = f", {record['wall_time_s']} s" if record.get("wall_time_s") is not None else ""
    return (
        f"Provenance: {record.get('notebook', '?')} at commit {commit}{dirty}; "
        + ", ".join(f"{k}={v}" for k, v in params.items())
        + f"; {machine}{threads}; {libs}{wall}"
    )


def _md_inline(text: str) -> str:
    return text.replace("<", "&lt;").replace(">", "&gt;")


def _num(x) -> str:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return "—"
    return "—" if v != v else f"{v:.4g}"


def _atomic_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------------- check
class Difference(NamedTuple):
    """How one column of one output moved between a fresh run and the reference."""

    entry: str
    file: str
    column: str  # "" for a whole-file problem (missing file, other shape or columns)
    max_abs: float  # largest |new - ref| (numbers), or the number of differing cells (text)
    max_rel: float  # largest |new - ref| / |ref| over cells with ref != 0
    used: float  # largest |new - ref| / (atol + rtol·|ref|): > 1 leaves the tolerance
    tolerance: str  # what it was compared with
    ok: bool
    note: str = ""


def compare_outputs(
    new_dir: Path, ref_dir: Path, *, scale: str = "ci", only: list[str] | None = None, exact: bool = False
) -> list[Difference]:
    """Compare every non-timed CSV of the selected entries in ``new_dir`` with the one in ``ref_dir``.

    Numbers pass within the entry's manifest tolerance (``exact``: with zero tolerance, for measuring spread),
    text must be equal, and a file missing on either side fails. Timed entries are skipped.
    """
    import numpy as np
    import pandas as pd

    manifest = load_manifest()
    if only:
        unknown = [i for i in only if i not in manifest]
        if unknown:
            raise ReproductionError(f"unknown manifest id(s) {', '.join(unknown)}")
    if not ref_dir.is_dir() or not any(ref_dir.glob("*.csv")):
        raise ReproductionError(
            f"no reference outputs in {ref_dir}: the {scale} scale has not been committed yet "
            f"(`python -m stabkit.reproduce --scale {scale}` writes them)"
        )
    if not new_dir.is_dir():
        raise ReproductionError(f"{new_dir} is not a folder of outputs")
    diffs = []
    for e in _chapter_order(manifest):
        if (only and e.id not in only) or e.timed:
            continue
        tol = e.tolerance
        for stem in e.outputs:
            ref_path, new_path = ref_dir / f"{stem}.csv", new_dir / f"{stem}.csv"
            if not ref_path.exists() and not new_path.exists():
                continue  # a figure-only stem
            file = ref_path.name
            if not ref_path.exists() or not new_path.exists():
                side = "the reference" if not ref_path.exists() else "the fresh run"
                diffs.append(Difference(e.id, file, "", np.nan, np.nan, np.inf, "", False, f"missing in {side}"))
                continue
            ref, new = pd.read_csv(ref_path), pd.read_csv(new_path)
            if list(ref.columns) != list(new.columns) or len(ref) != len(new):
                note = f"shape {new.shape} vs {ref.shape}" if len(ref) != len(new) else "other columns"
                diffs.append(Difference(e.id, file, "", np.nan, np.nan, np.inf, "", False, note))
                continue
            for col in ref.columns:
                if col in tol.ignore:
                    continue
                rtol, atol = (0.0, 0.0) if exact else tol.columns.get(col, (tol.rtol, tol.atol))
                fraction = 0.0 if exact else tol.fraction
                text = f"rtol {rtol:g}, atol {atol:g}" + (f", {fraction:.0%} of cells" if fraction else "")
                a, b = new[col], ref[col]
                if pd.api.types.is_numeric_dtype(a) and pd.api.types.is_numeric_dtype(b):
                    a, b = a.to_numpy(dtype=float), b.to_numpy(dtype=float)
                    special = ~(np.isfinite(a) & np.isfinite(b))
                    bad_special = special & ~((np.isnan(a) & np.isnan(b)) | (a == b))
                    fin = ~special
                    d, r = np.abs(a[fin] - b[fin]), np.abs(b[fin])
                    max_abs = float(d.max()) if d.size else 0.0
                    rel = d[r > 0] / r[r > 0]
                    max_rel = float(rel.max()) if rel.size else 0.0
                    with np.errstate(divide="ignore", invalid="ignore"):
                        ratio = np.where(d > 0, d / (atol + rtol * r), 0.0)
                    used = float(ratio.max()) if ratio.size else 0.0
                    n_out = int((ratio > 1).sum() + bad_special.sum())
                    note = f"{int(bad_special.sum())} NaN/inf in other places" if bad_special.any() else ""
                else:
                    a_text = np.array(["" if pd.isna(x) else str(x) for x in a], dtype=object)
                    b_text = np.array(["" if pd.isna(x) else str(x) for x in b], dtype=object)
                    n_out = int((a_text != b_text).sum())
                    max_abs, max_rel, used = float(n_out), np.nan, (np.inf if n_out else 0.0)
                    text = "equal text" + (f", {fraction:.0%} of cells" if fraction else "")
                    note = f"{n_out} cells differ" if n_out else ""
                ok = n_out <= fraction * len(ref)
                if n_out and ok and fraction:
                    note = (note + "; " if note else "") + f"{n_out}/{len(ref)} cells outside, allowed"
                diffs.append(Difference(e.id, file, str(col), max_abs, max_rel, used, text, ok, note))
    diffs += _compare_claims(new_dir, ref_dir, manifest, only=only, exact=exact)
    return diffs


def _compare_claims(new_dir: Path, ref_dir: Path, manifest: dict, *, only, exact: bool) -> list[Difference]:
    """Our value of every claim of a non-timed entry, within the entry's tolerance; a changed verdict is noted."""
    import numpy as np
    import pandas as pd

    diffs = []
    for nb in sorted({e.notebook for e in manifest.values() if not only or e.id in only}):
        ref_path, new_path = ref_dir / f"{nb}.claims.csv", new_dir / f"{nb}.claims.csv"
        if not ref_path.exists():
            continue  # claims not committed yet for this notebook
        if not new_path.exists():
            diffs.append(
                Difference(nb, ref_path.name, "", np.nan, np.nan, np.inf, "", False, "missing in the fresh run")
            )
            continue
        ref, new = (pd.read_csv(p).set_index(["entry", "statement"]) for p in (ref_path, new_path))
        for (entry, statement), r in ref.iterrows():
            e = manifest.get(entry)
            if e is None or e.timed or (only and entry not in only):
                continue
            label = f"claim: {statement[:40]}"
            if (entry, statement) not in new.index:
                diffs.append(
                    Difference(entry, ref_path.name, label, np.nan, np.nan, np.inf, "", False, "claim missing")
                )
                continue
            n = new.loc[(entry, statement)]
            tol = e.tolerance
            rtol, atol = (0.0, 0.0) if exact else (tol.rtol, tol.atol)
            d = abs(float(n["value"]) - float(r["value"]))
            ref_v = abs(float(r["value"]))
            used = d / (atol + rtol * ref_v) if d > 0 else 0.0
            note = f"verdict {r['verdict']} → {n['verdict']}" if n["verdict"] != r["verdict"] else ""
            diffs.append(
                Difference(entry, ref_path.name, label, d, d / ref_v if ref_v else 0.0, used,
                           f"rtol {rtol:g}, atol {atol:g}", used <= 1.0, note)
            )  # fmt: skip
    return diffs


def check_table(diffs: list[Difference]) -> str:
    """What moved and by how much (unchanged columns are counted, not listed), and the verdict line."""
    moved = [d for d in diffs if not d.ok or d.max_abs > 0 or d.note]
    failed = [d for d in diffs if not d.ok]
    rows = [("entry", "file", "column", "max |Δ|", "max rel", "used", "tolerance", "status")]
    for d in moved:
        status = "ok" if d.ok else "OUT OF TOLERANCE"
        rows.append(
            (d.entry, d.file, d.column, _num(d.max_abs), _num(d.max_rel), _num(d.used), d.tolerance,
             status + (f" ({d.note})" if d.note else ""))
        )  # fmt: skip
    files = len({d.file for d in diffs})
    summary = (
        f"{len(diffs)} columns of {files} files compared: {len(diffs) - len(moved)} identical, "
        f"{len(moved) - len(failed)} moved within tolerance, {len(failed)} out of tolerance"
    )
    return (_format_rows(rows) + "\n" if len(rows) > 1 else "") + summary


def spread_table(dirs: list[Path], *, scale: str = "ci", only: list[str] | None = None) -> str:
    """The largest difference of every moved column between runs, with a suggested manifest tolerance per entry
    (per-column atol: twice the largest move, rounded up).

    One folder is compared with the references ``figures/<scale>/``; several folders (runs on other machines,
    thread counts or CPU code paths) are compared with each other, pair by pair.
    """

    pairs = [(d, reference_dir(scale)) for d in dirs] if len(dirs) == 1 else [
        (a, b) for i, a in enumerate(dirs) for b in dirs[i + 1 :]
    ]  # fmt: skip
    worst: dict[tuple[str, str, str], tuple[float, float]] = {}
    for new, ref in pairs:
        for diff in compare_outputs(new, ref, scale=scale, only=only, exact=True):
            if (diff.max_abs == 0 and not diff.note) or diff.note.startswith("missing"):
                continue
            key = (diff.entry, diff.file, diff.column)
            a, r = worst.get(key, (0.0, 0.0))
            worst[key] = (max(a, _nz(diff.max_abs)), max(r, _nz(diff.max_rel)))
    if not worst:
        return f"no output moved between {' and '.join(str(a) + ' / ' + str(b) for a, b in pairs)}"
    rows = [("entry", "file", "column", "max |Δ|", "max rel")]
    per_entry: dict[str, dict[str, float]] = {}
    for (entry, file, col), (a, r) in sorted(worst.items()):
        rows.append((entry, file, col, _num(a), _num(r)))
        per_entry.setdefault(entry, {})[col] = a
    lines = [
        _format_rows(rows),
        "",
        "suggested tolerances (manifest.yaml; atol = twice the largest move, rounded up to 1, 2 or 5 × 10^k; a column",
        "whose text or flags changed needs `fraction`, the share of its cells allowed to differ):",
    ]
    for entry, cols in per_entry.items():
        spec = ", ".join(f"{c}: {{atol: {_nice_up(2 * a):g}}}" for c, a in cols.items() if a > 0)
        lines.append(f"  {entry}: tolerance: {{kind: statistical, columns: {{{spec}}}}}")
    return "\n".join(lines)


def _nice_up(x: float) -> float:
    """The smallest 1, 2 or 5 × 10^k at or above ``x``."""
    import math

    if x <= 0:
        return 0.0
    k = math.floor(math.log10(x))
    for m in (1, 2, 5, 10):
        if m * 10**k >= x * (1 - 1e-12):
            return float(f"{m * 10**k:.1g}")
    return 10.0 ** (k + 1)


def _nz(x: float) -> float:
    return 0.0 if x != x else float(x)


def _chapter_order(manifest: dict) -> list:
    """Entries sorted by notebook (NN_topic: chapter order), keeping the manifest's order within a notebook."""
    return sorted(manifest.values(), key=lambda e: e.notebook)  # sorted() is stable


def _parse_param(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ReproductionError(f"parameter {text!r} is not of the form KEY=VALUE")
    if value.lower() in ("true", "false"):  # -p download=true, as on a command line
        return key, value.lower() == "true"
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value  # a bare word is a string


def _format_rows(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
