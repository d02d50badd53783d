"""The documentation site builds with warnings as errors (what `make docs` runs), from the stored notebook outputs.

The build takes well under a minute: the notebooks are rendered, never executed (the tutorial notebook is executed
by `make test` under nbval, like the chapter notebooks).
"""

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _require_mkdocs():
    if importlib.util.find_spec("mkdocs") is None:
        if os.environ.get("CI"):
            pytest.fail("mkdocs is not installed; `make install` installs the [docs] extra")
        pytest.skip("mkdocs is not installed (pip install -e '.[docs]')")


def test_site_builds_strict(tmp_path):
    _require_mkdocs()
    site = tmp_path / "site"
    run = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert run.returncode == 0, run.stderr[-4000:]
    api = (site / "api" / "certify" / "index.html").read_text()
    assert "certify_model" in api and "SmoothCertificate" in api and "clopper_pearson" in api
    assert "<table>" in (site / "scales" / "index.html").read_text()  # the run-time table from manifest.yaml
    for notebook in (ROOT / "notebooks").glob("*.ipynb"):
        assert (site / "notebooks" / notebook.stem / "index.html").exists(), notebook.name


def test_tutorial_uses_only_public_api_and_has_stored_outputs():
    nb = json.loads((ROOT / "docs" / "tutorial.ipynb").read_text())
    code = [("".join(c["source"]), c.get("outputs", [])) for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(outputs or "import" in src or "def " in src for src, outputs in code[2:])
    sources = "\n".join(src for src, _ in code)
    assert "stabkit." in sources and not re.search(r"stabkit[\w.]*\._", sources)  # no private module
    assert any(o.get("output_type") == "display_data" for _, outputs in code for o in outputs)  # the figure


def _quick_start(text: str) -> str:
    return re.search(r"```python\n(.*?)```", text, flags=re.DOTALL).group(1)


def test_readme_quick_start_runs_and_the_site_shows_the_same_lines():
    readme = (ROOT / "README.md").read_text()
    code = _quick_start(readme.split("## Use the library in your own code", 1)[1])
    assert code == _quick_start((ROOT / "docs" / "index.md").read_text())
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("tensor(") == 2
