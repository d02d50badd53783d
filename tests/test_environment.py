"""environment.yml (conda users) lists the same dependencies as pyproject.toml."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[<>=!~ \[]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_agrees_with_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pyproject = {r for r in project["dependencies"] + project["optional-dependencies"]["test"]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]
    conda = [d for d in env if isinstance(d, str) and _name(d) not in ("python", "pip")]
    pip = next(d["pip"] for d in env if isinstance(d, dict))
    listed = {re.sub(r"\s+", "", d) for d in conda} | {d for d in pip if not d.startswith("-e")}
    by_name = {_name(d): d for d in listed}
    assert set(by_name) == {_name(r) for r in pyproject}
    for req in pyproject:
        if _name(req) != "torch":  # torch is pinned in both set-ups, and stated as a range in pyproject
            assert by_name[_name(req)].replace(" ", "") == req.replace(" ", ""), req
    assert by_name["torch"] == "torch==2.13.0"


def test_makefile_pins_torch_in_the_same_pip_command_as_the_project():
    makefile = (ROOT / "Makefile").read_text()
    assert "TORCH_SPEC ?= torch==2.13.0" in makefile
    assert re.search(r'pip install[^\n]*"\$\(TORCH_SPEC\)"[^\n]*-e "\.\[test\]"', makefile)
