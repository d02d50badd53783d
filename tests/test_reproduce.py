"""The reproduction CLI, on a scratch repository with tiny notebooks (so it runs in seconds)."""

import base64
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

import nbformat
import pytest

from stabkit import reproduce

ROOT = Path(__file__).resolve().parents[1]

PARAMS = """scale = "ci"  # scale
seed = 0  # seed
device = "cpu"  # device
data_root = "data"  # data"""

SETUP = """import pandas as pd
from stabkit import support
PRESETS = {"ci": {"n": 3}, "cpu": {"n": 3}, "full": {"n": 4}}
ctx = support.setup("00_tiny", globals(), presets=PRESETS, scale=scale, seed=seed, device=device,
                    data_root=data_root)"""


def write_notebook(path: Path, body: str) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell(PARAMS)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(SETUP), nbformat.v4.new_code_cell(body)]
    nbformat.write(nb, path)


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "manifest.yaml").write_text(
        "entries:\n  tiny-table:\n    chapter: 0\n    notebook: 00_tiny\n    title: t\n    outputs: [tiny-table]\n"
        "    runtime: {ci: 1 s, cpu: 1 s, full: 1 s}\n    full_needs_gpu: false\n"
    )
    monkeypatch.setenv("STABKIT_ROOT", str(tmp_path))
    monkeypatch.delenv("STABKIT_FIGURES_DIR", raising=False)
    return tmp_path


GOOD = 'ctx.save_table(pd.DataFrame({"n": [ctx.preset.n], "seed": [seed]}), "tiny-table")\nprint("ok")'


def test_runs_moves_outputs_in_and_is_byte_stable(scratch, capsys):
    write_notebook(scratch / "notebooks" / "00_tiny.ipynb", GOOD)
    assert reproduce.main([]) == 0
    out = capsys.readouterr().out
    assert "00_tiny" in out and "tiny-table" in out and "total" in out
    first = (scratch / "figures" / "ci" / "tiny-table.csv").read_bytes()
    assert first == b"n,seed\n3,0\n"
    assert (scratch / "build" / "ci" / "00_tiny.ipynb").exists()
    assert reproduce.main(["--only", "tiny-table"]) == 0
    assert (scratch / "figures" / "ci" / "tiny-table.csv").read_bytes() == first
    assert reproduce.main(["--scale", "full", "--seed", "7"]) == 0
    assert (scratch / "figures" / "full" / "tiny-table.csv").read_bytes() == b"n,seed\n4,7\n"
    assert (scratch / "figures" / "ci" / "tiny-table.csv").read_bytes() == first  # full never replaces ci


def test_output_dir_takes_the_outputs_and_the_report(scratch, capsys):
    write_notebook(scratch / "notebooks" / "00_tiny.ipynb", GOOD)
    assert reproduce.main(["--scale", "full", "--output-dir", "figures/gpu"]) == 0
    assert (scratch / "figures" / "gpu" / "tiny-table.csv").read_bytes() == b"n,seed\n4,0\n"
    assert (scratch / "figures" / "gpu" / "REPORT.md").exists()
    assert not (scratch / "figures" / "full").exists()
    outside = tempfile.mkdtemp()  # a folder outside the repository works too
    assert reproduce.main(["--output-dir", outside]) == 0
    assert (Path(outside) / "REPORT.md").exists()
    shutil.rmtree(outside)
    assert reproduce.main(["--check", "--output-dir", "x"]) == 1
    assert "--output-dir writes a new run" in capsys.readouterr().err


def test_a_failing_notebook_names_the_cell_and_keeps_old_outputs(scratch, capsys):
    write_notebook(scratch / "notebooks" / "00_tiny.ipynb", GOOD)
    assert reproduce.main([]) == 0
    before = (scratch / "figures" / "ci" / "tiny-table.csv").read_bytes()
    write_notebook(scratch / "notebooks" / "00_tiny.ipynb", GOOD.replace('print("ok")', "1 / 0"))
    assert reproduce.main([]) == 1
    err = capsys.readouterr().err
    assert "notebook 00_tiny failed in cell" in err and "ZeroDivisionError" in err
    assert (scratch / "figures" / "ci" / "tiny-table.csv").read_bytes() == before
    assert not [p for p in (scratch / "build").iterdir() if p.name.startswith(".00_tiny")]


def test_invalid_parameter_value_is_reported(scratch, capsys):
    write_notebook(scratch / "notebooks" / "00_tiny.ipynb", GOOD)
    assert reproduce.main(["--seed", "-3"]) == 1
    assert "seed must be a non-negative integer" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--only", "no-such-id"], "unknown manifest id(s) no-such-id"),
        (["--scale", "huge"], "unknown scale 'huge'"),
        (["-p", "dataset=mnist"], "has no parameter(s) dataset"),
        (["--store-outputs", "--seed", "3"], "default parameters only"),
        (["--scale", "ci", "-p", "scale=full"], "-p scale=... is not allowed: use --scale"),
        (["-p", "seed=2"], "use --seed"),
    ],
)
def test_bad_requests_fail_clearly(scratch, capsys, argv, message):
    write_notebook(scratch / "notebooks" / "00_tiny.ipynb", GOOD)
    assert reproduce.main(argv) == 1
    assert message in capsys.readouterr().err
    assert not (scratch / "figures").exists()


def test_missing_output_is_an_error(scratch, capsys):
    write_notebook(scratch / "notebooks" / "00_tiny.ipynb", 'print("forgot to save")')
    assert reproduce.main([]) == 1
    assert "did not write tiny-table" in capsys.readouterr().err


def test_store_outputs_strips_volatile_metadata(scratch):
    write_notebook(scratch / "notebooks" / "00_tiny.ipynb", GOOD)
    assert reproduce.main(["--store-outputs"]) == 0
    nb = json.loads((scratch / "notebooks" / "00_tiny.ipynb").read_text())
    assert "papermill" not in nb["metadata"]
    assert not any("injected-parameters" in c["metadata"].get("tags", []) for c in nb["cells"])
    assert any(o.get("text") == ["ok\n"] for c in nb["cells"] for o in c.get("outputs", []))


def test_list_prints_the_real_manifest(capsys, monkeypatch):
    monkeypatch.setenv("STABKIT_ROOT", str(ROOT))
    assert reproduce.main(["--list"]) == 0
    out = capsys.readouterr().out
    assert "sensitivity-input" in out and "01_sensitivity" in out


def test_every_manifest_entry_has_a_verdict_in_each_committed_scale(monkeypatch):
    # issue: a reader must find, for every entry, a verdict computed from numbers (figures/<scale>/*.claims.csv)
    import pandas as pd

    monkeypatch.setenv("STABKIT_ROOT", str(ROOT))
    manifest = reproduce.load_manifest()
    for scale in ("ci", "cpu"):
        folder = ROOT / "figures" / scale
        if scale != "ci" and not folder.exists():
            continue
        claimed = {e for f in folder.glob("*.claims.csv") for e in pd.read_csv(f)["entry"]}
        ran = {e.id for e in manifest.values() if (folder / f"{e.notebook}.claims.csv").exists()}
        assert ran == set(manifest) or scale != "ci", f"notebooks without claims at ci: {set(manifest) - ran}"
        assert ran <= claimed, f"entries without a claim at {scale}: {sorted(ran - claimed)}"


def test_readme_lists_the_manifest(monkeypatch):
    monkeypatch.setenv("STABKIT_ROOT", str(ROOT))
    readme = (ROOT / "README.md").read_text()
    section = readme.split("<!-- manifest-table -->\n", 1)[1].split("\n<!-- /manifest-table -->", 1)[0]
    assert section == reproduce.manifest_markdown(), (
        "README's manifest table is stale: regenerate it with `python -m stabkit.reproduce --list --markdown`"
    )


def test_a_hand_run_of_a_notebook_writes_under_build(scratch):
    write_notebook(scratch / "notebooks" / "00_tiny.ipynb", GOOD)
    import papermill as pm

    pm.execute_notebook(
        str(scratch / "notebooks" / "00_tiny.ipynb"),
        str(scratch / "out.ipynb"),
        parameters={"seed": 1},
        cwd=str(scratch / "notebooks"),
        kernel_name="python3",
        progress_bar=False,
    )
    assert (scratch / "build" / "ci" / "figures" / "tiny-table.csv").read_bytes() == b"n,seed\n3,1\n"
    assert not (scratch / "figures").exists()


def test_outputs_move_across_file_systems_and_a_read_only_target_is_reported(scratch, capsys, monkeypatch):
    write_notebook(scratch / "notebooks" / "00_tiny.ipynb", GOOD)
    real_replace = os.replace

    def no_cross_device(src, dst):  # what a figures/ on another mount does
        if Path(src).parent != Path(dst).parent:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", no_cross_device)
    assert reproduce.main([]) == 0
    assert (scratch / "figures" / "ci" / "tiny-table.csv").read_bytes() == b"n,seed\n3,0\n"
    monkeypatch.setattr(os, "replace", real_replace)
    before = (scratch / "figures" / "ci" / "tiny-table.csv").read_bytes()
    real_mkstemp = tempfile.mkstemp

    def read_only(*args, dir=None, **kwargs):  # what a read-only figures/ does (root ignores chmod)
        if dir is not None and Path(dir) == scratch / "figures" / "ci":
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    write_notebook(scratch / "notebooks" / "00_tiny.ipynb", GOOD.replace("ctx.preset.n", "99"))
    assert reproduce.main([]) == 1
    assert "cannot write the outputs into figures/ci/ (Permission denied)" in capsys.readouterr().err
    assert (scratch / "figures" / "ci" / "tiny-table.csv").read_bytes() == before
    assert not [p for p in (scratch / "build").iterdir() if p.name.startswith(".00_tiny")]


def test_interrupted_runs_leave_no_temporary_folder(scratch, capsys, monkeypatch):
    write_notebook(scratch / "notebooks" / "00_tiny.ipynb", GOOD)
    import papermill as pm

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pm, "execute_notebook", interrupted)
    assert reproduce.main([]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert not [p for p in (scratch / "build").iterdir() if p.name.startswith(".00_tiny")]
    assert not (scratch / "figures").exists()


def test_outside_a_checkout_it_says_so_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("STABKIT_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(reproduce, "repo_root", lambda: (_ for _ in ()).throw(FileNotFoundError("no manifest")))
    assert reproduce.main(["--list"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs the stabkit repository checkout" in err


CLAIMS = (
    GOOD
    + """
ctx.claim("tiny-table", "n | the preset size is 3", ctx.preset.n, published=3.0)
ctx.claim("tiny-table", "above one", 0.8, interval=(0.5, 1.2), uncertainty="min-max over 3 seeds", expect=">",
          threshold=1.0)
ctx.save_claims()"""
)


def test_report_has_the_claims_escaped_and_the_provenance(scratch):
    write_notebook(scratch / "notebooks" / "00_tiny.ipynb", CLAIMS)
    assert reproduce.main([]) == 0
    report = (scratch / "figures" / "ci" / "REPORT.md").read_text()
    assert report.startswith("# Reproduction report: `ci` scale")
    assert "## Chapter 0" in report and "### `tiny-table`" in report and "[tiny-table.csv](tiny-table.csv)" in report
    assert "| n \\| the preset size is 3 | 3 | 3 | deterministic | reproduced (" in report
    assert (
        "| above one | — | 0.8 [0.5, 1.2] (claim: > 1) | min-max over 3 seeds | not significant at this scale" in report
    )
    assert "Claims: 1 not significant at this scale, 1 reproduced." in report
    assert "| [`tiny-table`](#tiny-table) | 0 | 1 | 1 | 0 | 0 |" in report  # the verdicts-by-entry overview
    assert "Notebook time at `ci` (provenance records): wall" in report and "CPU time" in report
    assert "Provenance: 00_tiny at commit" in report and "numpy " in report
    # the claims also leave the notebook as data
    claims = (scratch / "figures" / "ci" / "00_tiny.claims.csv").read_text()
    assert claims.splitlines()[0].startswith("entry,statement,published,value,low,high")


def test_check_passes_on_a_rerun_and_fails_when_a_number_leaves_its_tolerance(scratch, capsys):
    write_notebook(scratch / "notebooks" / "00_tiny.ipynb", GOOD)
    assert reproduce.main([]) == 0
    capsys.readouterr()
    assert reproduce.main(["--check"]) == 0
    assert "2 identical, 0 moved within tolerance, 0 out of tolerance" in capsys.readouterr().out
    assert (scratch / "build" / "ci" / "check" / "tiny-table.csv").exists()  # the fresh run is not a reference
    ref = scratch / "figures" / "ci" / "tiny-table.csv"
    ref.write_text("n,seed\n3.000001,0\n")  # within the default tolerance (rtol 1e-6)
    assert reproduce.main(["--check", "--from", str(scratch / "build" / "ci" / "check")]) == 0
    assert "moved within tolerance" in capsys.readouterr().out
    ref.write_text("n,seed\n3.1,0\n")
    assert reproduce.main(["--check", "--from", str(scratch / "build" / "ci" / "check")]) == 1
    out = capsys.readouterr().out
    assert "OUT OF TOLERANCE" in out and "tiny-table.csv" in out and "0.1" in out
    # a per-entry tolerance in the manifest lets it pass
    manifest = scratch / "manifest.yaml"
    manifest.write_text(manifest.read_text() + "    tolerance: {kind: statistical, columns: {n: {rtol: 0.05}}}\n")
    assert reproduce.main(["--check", "--from", str(scratch / "build" / "ci" / "check")]) == 0
    ref.write_text("n,other\n3,0\n")
    assert reproduce.main(["--check", "--from", str(scratch / "build" / "ci" / "check")]) == 1
    assert "other columns" in capsys.readouterr().out


def test_spread_prints_the_moves_and_a_suggested_tolerance(scratch, capsys, tmp_path):
    write_notebook(scratch / "notebooks" / "00_tiny.ipynb", GOOD)
    assert reproduce.main([]) == 0
    other = tmp_path / "other"
    other.mkdir()
    (other / "tiny-table.csv").write_text("n,seed\n3.003,0\n")
    capsys.readouterr()
    assert reproduce.main(["--spread", str(other)]) == 0
    out = capsys.readouterr().out
    assert "tiny-table.csv" in out and "0.001" in out
    assert "tiny-table: tolerance: {kind: statistical, columns: {n: {atol: 0.01}}}" in out
    assert [reproduce._nice_up(x) for x in (0.0031, 0.014, 1.0, 6e-7)] == [0.005, 0.02, 1.0, 1e-6]


def test_check_needs_references(scratch, capsys):
    write_notebook(scratch / "notebooks" / "00_tiny.ipynb", GOOD)
    assert reproduce.main(["--check", "--from", str(scratch)]) == 1
    assert "no reference outputs" in capsys.readouterr().err


def test_markdown_table_escapes_pipes(monkeypatch):
    monkeypatch.setenv("STABKIT_ROOT", str(ROOT))
    for line in reproduce.manifest_markdown().splitlines():
        unescaped = line.replace("\\|", "").count("|")
        assert unescaped == 11, line  # 10 columns


DATA_PARAMS = PARAMS + '\ndataset = "digits"  # data'
DATA_SETUP = SETUP.replace('{"n": 3}', '{"n": 3, "download": False}').replace(
    "data_root=data_root)", "data_root=data_root, dataset=dataset)"
)
DATA_BODY = 'ctx.save_table(pd.DataFrame({"download": [ctx.preset.download]}), "tiny-table")'


def write_data_notebook(path: Path) -> None:
    write_notebook(path, DATA_BODY)
    nb = nbformat.read(path, as_version=4)
    nb.cells[0].source, nb.cells[1].source = DATA_PARAMS, DATA_SETUP
    nbformat.write(nb, path)


def test_missing_data_stops_before_the_run_and_download_true_fetches_first(scratch, capsys, monkeypatch):
    from stabkit import data

    write_data_notebook(scratch / "notebooks" / "00_tiny.ipynb")
    assert reproduce.main(["-p", "dataset=mnist-test"]) == 1
    err = capsys.readouterr().err
    assert "needs mnist-test, whose files are not in data/ (2 missing)" in err and "-p download=true" in err
    assert "00_tiny (ci) ..." not in err  # stopped before running anything
    fetched = []

    def fake_fetch(names, *, root, progress=True):  # what a download does, without the network
        fetched.append((tuple(names), Path(root)))
        (Path(root) / "mnist").mkdir(parents=True, exist_ok=True)
        for f in data.MNIST_FILES:
            (Path(root) / "mnist" / f).write_bytes(b"")

    monkeypatch.setattr(data, "fetch", fake_fetch)
    assert reproduce.main(["-p", "dataset=mnist-test", "-p", "download=true"]) == 0
    assert fetched == [(("mnist-test",), scratch / "data")]
    shutil.rmtree(scratch / "data")
    assert reproduce.main(["--scale", "cpu", "-p", "dataset=mnist-test"]) == 0  # cpu fetches its 2 MB itself
    assert fetched[-1] == (("mnist-test",), scratch / "data")
    # the notebook's preset key `download` is switched on for the run
    assert (scratch / "figures" / "ci" / "tiny-table.csv").read_text() == "download\nTrue\n"
    assert reproduce.main(["-p", "download=maybe"]) == 1
    assert "-p download must be true or false" in capsys.readouterr().err


FIGURE = (
    GOOD
    + """
fig, ax = support.figure()
ax.plot([0, 1], [1, 0])
ctx.save_figure(fig, "tiny-table")"""
)


def test_stored_notebooks_show_the_saved_figure_inline(scratch):
    write_notebook(scratch / "notebooks" / "00_tiny.ipynb", FIGURE)
    assert reproduce.main(["--store-outputs"]) == 0
    nb = json.loads((scratch / "notebooks" / "00_tiny.ipynb").read_text())
    images = [
        o["data"]["image/png"] for c in nb["cells"] for o in c.get("outputs", []) if "image/png" in o.get("data", {})
    ]
    png = (scratch / "figures" / "ci" / "tiny-table.png").read_bytes()
    assert len(images) == 1 and base64.b64decode(images[0]) == png  # exactly the file on disk


def test_a_statistical_tolerance_allows_a_share_of_flipped_cells(scratch):
    manifest = scratch / "manifest.yaml"
    manifest.write_text(manifest.read_text() + "    tolerance: {kind: statistical, rtol: 0.01, fraction: 0.1}\n")
    ref, new = scratch / "figures" / "ci", scratch / "new"
    ref.mkdir(parents=True)
    new.mkdir()
    rows = [(i, f"{i}.0", "True") for i in range(10)]
    (ref / "tiny-table.csv").write_text("i,radius,correct\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows))

    def write(flips, nan=False):
        out = [
            (a, "0.0" if 0 < k <= flips else b, "False" if 0 < k <= flips else c) for k, (a, b, c) in enumerate(rows)
        ]
        if nan:
            out[5] = (5, "nan", "True")
        (new / "tiny-table.csv").write_text("i,radius,correct\n" + "".join(f"{a},{b},{c}\n" for a, b, c in out))
        return {d.column: d for d in reproduce.compare_outputs(new, ref)}

    assert all(d.ok for d in write(0).values())
    one = write(1)  # one of ten examples flips: within 10 %
    assert one["radius"].ok and one["correct"].ok and "1/10 cells outside, allowed" in one["correct"].note
    two = write(2)
    assert not two["radius"].ok and not two["correct"].ok
    assert not write(1, nan=True)["radius"].ok  # a NaN where the reference has a number counts as a flip


def test_check_compares_claim_values_and_notes_changed_verdicts(scratch, capsys):
    write_notebook(scratch / "notebooks" / "00_tiny.ipynb", CLAIMS)
    assert reproduce.main([]) == 0
    fresh = scratch / "fresh"
    fresh.mkdir()
    for p in (scratch / "figures" / "ci").glob("*.csv"):
        shutil.copy(p, fresh / p.name)
    claims = fresh / "00_tiny.claims.csv"
    claims.write_text(claims.read_text().replace(",0.8,", ",0.9,").replace("not significant at this scale", "x"))
    capsys.readouterr()
    assert reproduce.main(["--check", "--from", str(fresh)]) == 1
    out = capsys.readouterr().out
    assert "claim: above one" in out and "OUT OF TOLERANCE (verdict not significant at this scale → x)" in out


def test_progress_shows_cells_and_output_and_turns_library_bars_on(scratch, capsys):
    write_notebook(scratch / "notebooks" / "00_tiny.ipynb", GOOD + '\nprint("progress", ctx.progress)')
    assert reproduce.main(["--progress"]) == 0
    err = capsys.readouterr().err
    assert "progress True" in err  # the notebook's output, streamed (log_output), with ctx.progress on
    assert "Executing" in err  # papermill's cell progress bar
    assert "STABKIT_PROGRESS" not in os.environ  # restored after the run
