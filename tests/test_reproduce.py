"""The reproduction CLI, on a scratch repository with tiny notebooks (so it runs in seconds)."""

import errno
import json
import os
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
PRESETS = {"ci": {"n": 3}, "full": {"n": 4}}
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
        "    runtime: {ci: 1 s, full: 1 s}\n    full_needs_gpu: false\n"
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
