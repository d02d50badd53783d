"""The project's metadata agrees with itself: environment.yml and pyproject.toml, the Makefile, one version."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

import stabkit

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
EXTRAS = PROJECT["optional-dependencies"]


def _name(req: str) -> str:
    return re.split(r"[<>=!~ \[]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_core_dependencies_are_what_the_library_needs():
    assert {_name(r) for r in PROJECT["dependencies"]} == {"torch", "numpy", "scipy"}
    assert set(EXTRAS) == {"data", "notebooks", "lab", "docs", "test"}


def test_environment_yml_agrees_with_pyproject():
    wanted = PROJECT["dependencies"] + [r for extra in ("data", "notebooks", "lab", "test") for r in EXTRAS[extra]]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]
    conda = [d for d in env if isinstance(d, str) and _name(d) not in ("python", "pip")]
    pip = next(d["pip"] for d in env if isinstance(d, dict))
    listed = {re.sub(r"\s+", "", d) for d in conda} | {d for d in pip if not d.startswith("-e")}
    by_name = {_name(d): d for d in listed}
    assert set(by_name) == {_name(r) for r in wanted}
    for req in wanted:
        if _name(req) != "torch":  # torch is pinned in both set-ups, and stated as a range in pyproject
            assert by_name[_name(req)].replace(" ", "") == req.replace(" ", ""), req
    assert by_name["torch"] == "torch==2.13.0"
    assert '-e ".[test,data,notebooks,lab,docs]"' in pip


def test_makefile_pins_torch_in_the_same_pip_command_as_the_project():
    makefile = (ROOT / "Makefile").read_text()
    assert "TORCH_SPEC ?= torch==2.13.0" in makefile
    assert re.search(r'pip install[^\n]*"\$\(TORCH_SPEC\)"[^\n]*-e "\.\[test,data,notebooks,docs\]"', makefile)


def test_one_version():
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["dynamic"]["version"] == {
        "attr": "stabkit.__version__"
    }
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert citation["version"] == stabkit.__version__
    assert f"## [{stabkit.__version__}]" in (ROOT / "CHANGELOG.md").read_text()
    assert f"version = {{{stabkit.__version__}}}" in (ROOT / "README.md").read_text()  # the BibTeX entry
    assert (ROOT / "stabkit" / "py.typed").exists()


def test_import_stabkit_is_light_and_submodules_load_on_first_use():
    code = (
        "import sys, stabkit as sk\n"
        "assert 'torch' not in sys.modules, 'import stabkit must not import torch'\n"
        "assert sk.norms.gram_iteration and sk.certify.margin.certify_model and sk.curvature.top_eigenvalues\n"
        "assert 'torch' in sys.modules and 'stabkit.layers' not in sys.modules\n"
        "assert 'norms' in dir(sk)\n"
        "try:\n"
        "    sk.nonexistent\n"
        "except AttributeError as e:\n"
        "    assert 'nonexistent' in str(e)\n"
        "else:\n"
        "    raise SystemExit('no AttributeError')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
