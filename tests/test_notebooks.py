"""The committed notebooks are readable on GitHub and follow the house rules (STYLE.md)."""

import json
import re
from pathlib import Path

import papermill as pm
import pytest

from stabkit.support import load_manifest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
STANDARD = {"scale", "seed", "device", "data_root"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_are_declared_and_commented(path):
    params = pm.inspect_notebook(str(path))
    assert STANDARD <= set(params), f"{path.name} lacks {STANDARD - set(params)}"
    for name, info in params.items():
        assert info["help"], f"{path.name}: parameter {name} has no comment"
    assert params["scale"]["default"] == '"ci"', "the stored default must be the cheap scale"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_outputs_are_clean(path):
    nb = json.loads(path.read_text())
    assert "papermill" not in nb["metadata"]
    text = json.dumps([_without_images(c.get("outputs", [])) for c in nb["cells"]])
    assert not re.search(r"/(work|home|root|tmp|Users)/", text), "absolute path in stored outputs"
    assert not re.search(r"at 0x[0-9a-f]{6,}", text), "memory address in stored outputs"
    assert "%pip" not in json.dumps([c["source"] for c in nb["cells"]])
    errors = [o for c in nb["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors


def test_every_notebook_is_in_the_manifest():
    listed = {e.notebook for e in load_manifest().values()}
    assert {p.stem for p in NOTEBOOKS} == listed


def _without_images(outputs: list) -> list:
    """Outputs with the base64 image payloads left out (they may contain any short string by chance)."""
    return [{**o, "data": {k: v for k, v in o.get("data", {}).items() if not k.startswith("image/")}} for o in outputs]


def test_stored_notebooks_stay_small():
    # figures are stored inline (PNG at 150 dpi); the whole set must stay light enough for a clone and GitHub
    sizes = {p.name: p.stat().st_size for p in NOTEBOOKS}
    assert sum(sizes.values()) < 15e6, sizes
    assert max(sizes.values()) < 5e6, sizes
