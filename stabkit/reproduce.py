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
    python -m stabkit.reproduce --only cpl-sll-aol-table -p dataset=mnist
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

from stabkit.support import SCALES, load_manifest, reference_dir, repo_root

# papermill adds these; they change every run and would make the stored notebooks noisy.
_VOLATILE_METADATA = ("papermill", "execution")
# parameters the CLI sets itself (its own options), and environment variables a run sets for its kernels
_STANDARD_PARAMS = ("scale", "seed", "device", "data_root")
_ENV_KEYS = ("STABKIT_FIGURES_DIR",)


class ReproductionError(RuntimeError):
    """A notebook failed, or the request was invalid."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stabkit.reproduce", description=__doc__.split("\n\n")[0])
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
        extra = dict(_parse_param(p) for p in args.param)
        results = reproduce(
            scale=args.scale,
            only=args.only,
            device=args.device,
            seed=args.seed,
            data_root=args.data_root,
            extra=extra,
            store_outputs=args.store_outputs,
        )
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


def _terminate(signum, frame):
    raise KeyboardInterrupt


def manifest_table() -> str:
    """The manifest as a text table."""
    rows = [("id", "ch", "notebook", "outputs", "ci", "full", "GPU", "published")]
    for e in _chapter_order(load_manifest()):
        rows.append(
            (
                e.id,
                e.chapter,
                e.notebook,
                ", ".join(e.outputs),
                e.runtime["ci"],
                e.runtime["full"],
                "yes" if e.full_needs_gpu else "no",
                (e.published or "")[:40],
            )
        )
    return _format_rows(rows)


def manifest_markdown() -> str:
    """The manifest as the Markdown table of the README (a test keeps the README in sync)."""
    lines = [
        "| id | ch | notebook | what | ci | full | GPU for full | timed | published |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in _chapter_order(load_manifest()):
        gpu = "yes" if e.full_needs_gpu else "no"
        timed = "yes" if e.timed else ""
        row = [f"`{e.id}`", e.chapter, f"`{e.notebook}`", e.title, e.runtime["ci"], e.runtime["full"], gpu, timed]
        lines.append("| " + " | ".join([*row, e.published or ""]) + " |")
    return "\n".join(lines)


def reproduce(
    *,
    scale: str = "ci",
    only: list[str] | None = None,
    device: str = "cpu",
    seed: int = 0,
    data_root: str = "data",
    extra: dict | None = None,
    store_outputs: bool = False,
) -> list[dict]:
    """Run the notebooks of the selected manifest entries; return one result row per notebook."""
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

    import papermill as pm

    root = repo_root()
    nb_dir, out_dir = root / "notebooks", reference_dir(scale)
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
        executed = build / f"{nb}.ipynb"
        print(f"[{i}/{len(notebooks)}] {nb} ({scale}) ...", file=sys.stderr, flush=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{nb}-", dir=root / "build"))
        env_before = {k: os.environ.get(k) for k in _ENV_KEYS}
        os.environ["STABKIT_FIGURES_DIR"] = str(tmp)
        start = time.perf_counter()
        try:
            try:
                pm.execute_notebook(
                    str(src),
                    str(executed),
                    parameters=params,
                    cwd=str(nb_dir),
                    kernel_name="python3",
                    progress_bar=False,
                    log_output=False,
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
        where = f"figures/{scale}/"
        results.append({"notebook": nb, "ids": ids, "files": len(files), "where": where, "seconds": seconds})
        print(f"      done in {seconds:.1f} s", file=sys.stderr, flush=True)
    return results


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


def _chapter_order(manifest: dict) -> list:
    """Entries sorted by notebook (NN_topic: chapter order), keeping the manifest's order within a notebook."""
    return sorted(manifest.values(), key=lambda e: e.notebook)  # sorted() is stable


def _parse_param(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ReproductionError(f"parameter {text!r} is not of the form KEY=VALUE")
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
