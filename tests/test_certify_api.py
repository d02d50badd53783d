"""The certification vocabulary: one core certificate, one method list, no import cycle, clear errors.

The no-cycle check is two-fold: a static import graph of every ``stabkit`` module (imports anywhere in a file,
function-local ones included) must be acyclic, and every ``stabkit.certify`` module must import first in a
fresh interpreter (an import cycle shows up as a partially initialised module in one of the orders).
"""

from __future__ import annotations

import ast
import math
import subprocess
import sys
from pathlib import Path
from typing import get_args

import numpy as np
import pytest
import torch

import stabkit.certify as certify
from stabkit.certify import ABSTAIN, METHODS, Certificate, Method, certified_accuracy, margin, smoothing, stats

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "stabkit"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> tuple[dict[str, set[str]], dict[str, list[int]]]:
    """Edges module -> stabkit modules it imports (anywhere), and the lines of function-local imports."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    local: dict[str, list[int]] = {name: [] for name in files}
    for name, path in files.items():
        tree = ast.parse(path.read_text())
        top_level = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("stabkit"):
                targets = [f"{node.module}.{a.name}" for a in node.names]
                targets = [t if t in files else node.module for t in targets]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("stabkit")]
            else:
                continue
            graph[name].update(t for t in targets if t in files and t != name)
            if targets and id(node) not in top_level and not isinstance(node, ast.Import):
                local[name].append(node.lineno)
    return graph, local


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_import_graph_has_no_cycle():
    graph, _ = _import_graph()
    assert "stabkit.certify._types" in graph and graph["stabkit.certify._types"] == set()  # the ground floor
    assert _find_cycle(graph) is None, f"import cycle: {' -> '.join(_find_cycle(graph))}"


def test_cycle_finder_finds_a_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_certify_has_no_function_local_imports():
    _, local = _import_graph()
    hidden = {name: lines for name, lines in local.items() if name.startswith("stabkit.certify") and lines}
    assert hidden == {}


def test_every_certify_module_imports_first_in_a_fresh_interpreter():
    names = sorted(n for n in _import_graph()[0] if n.startswith("stabkit.certify"))
    # one interpreter (torch and scipy load once); stabkit is unloaded before each module is imported first
    code = (
        "import importlib, sys, torch, scipy.stats\n"
        "for first in sys.argv[1:]:\n"
        "    for m in [m for m in sys.modules if m == 'stabkit' or m.startswith('stabkit.')]:\n"
        "        del sys.modules[m]\n"
        "    importlib.import_module(first)\n"
    )
    run = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]


# --------------------------------------------------------------------- one vocabulary


def test_every_certificate_starts_with_the_core_fields():
    for cls in (smoothing.SmoothCertificate, smoothing.LVMCertificate):
        assert cls._fields[:2] == Certificate._fields
    assert Certificate._fields == ("prediction", "radius")


def test_one_method_list():
    assert METHODS == get_args(Method) == ("cohen", "bonferroni", "max_upper", "cpm", "uncorrected")
    counts = np.array([[60, 30, 10]])
    for method in METHODS:  # every listed method is accepted by both consumers
        stats.class_bounds(counts, counts, alpha=0.01, method=method)
    with pytest.raises(ValueError, match="method must be one of"):
        stats.class_bounds(counts, counts, alpha=0.01, method="wilson")


def test_moved_flat_names_still_resolve_but_are_not_public():
    assert certify.Smooth is smoothing.Smooth and certify.clopper_pearson is stats.clopper_pearson
    assert "Smooth" not in certify.__all__
    with pytest.raises(AttributeError):
        certify.certify  # noqa: B018 - the margin certifier is margin.certify_model now
    assert certify.Certificate is Certificate  # the core type, not the 4-field smoothing certificate


def test_certified_accuracy_reads_every_family():
    g = torch.Generator().manual_seed(0)
    smooth = smoothing.Smooth(torch.nn.Linear(2, 3), num_classes=3, sigma=0.25)
    x = torch.randn(6, 2, generator=g)
    labels = torch.arange(6) % 3
    log = smooth.sample(x, n0=20, n=400, generator=g, temperatures=[1.0, 5.0])
    radii = [0.0, 0.1, 0.5]
    for cert in (
        smooth.certify(x, n0=20, n=400, generator=g),
        smoothing.certify_from_log(log, method="cpm"),
        smoothing.lvm_certify(log),
        margin.margin_certificate(torch.randn(6, 3, generator=g), lipschitz=1.0),
    ):
        acc = certified_accuracy(cert, labels, radii)
        expected = [
            float(((cert.prediction == labels) & ((cert.radius > r) | (r == 0))).double().mean()) for r in radii
        ]
        assert acc.tolist() == pytest.approx(expected)
    abstained = Certificate(torch.full((2,), ABSTAIN), torch.zeros(2))
    assert certified_accuracy(abstained, torch.tensor([0, 1]), [0.0]).tolist() == [0.0]
    with pytest.raises(TypeError, match="prediction"):
        certified_accuracy((1, 2), labels, radii)


# --------------------------------------------------------------------- validation gaps (RELIABILITY D14)


def test_certified_accuracy_refuses_negative_radii_and_empty_batches():
    with pytest.raises(ValueError, match="negative radii"):
        certified_accuracy(Certificate(torch.tensor([0]), torch.tensor([-0.1])), torch.tensor([0]), [0.0])
    with pytest.raises(ValueError, match="NaN"):
        certified_accuracy(Certificate(torch.tensor([0]), torch.tensor([math.nan])), torch.tensor([0]), [0.0])
    empty = Certificate(torch.zeros(0, dtype=torch.int64), torch.zeros(0))
    with pytest.raises(ValueError, match="empty"):
        certified_accuracy(empty, torch.zeros(0, dtype=torch.int64), [0.0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("lipschitz", [1e-300, 1e-40, 1e-20])
def test_tiny_lipschitz_gives_a_finite_radius(dtype, lipschitz):
    logits = torch.tensor([[3.0, 1.0, 0.0]], dtype=dtype)
    cert = margin.margin_certificate(logits, lipschitz=lipschitz)
    assert bool(torch.isfinite(cert.radius).all()) and float(cert.radius) > 1e10
    weight = torch.eye(3, dtype=dtype)
    lln = margin.lln_certificate(logits, weight, lipschitz=lipschitz)
    assert bool(torch.isfinite(lln.radius).all())
    # identical rows keep their documented infinite radius
    assert float(margin.lln_certificate(logits, torch.ones(3, 2, dtype=dtype), lipschitz=lipschitz).radius) == math.inf


def test_radius_unchanged_for_ordinary_constants():
    logits = torch.randn(50, 10, generator=torch.Generator().manual_seed(1))
    for lip in (0.3, 1.0, 7.0):
        top2 = logits.topk(2, dim=1).values
        reference = (top2[:, 0] - top2[:, 1]) / (math.sqrt(2.0) * lip)
        torch.testing.assert_close(margin.margin_certificate(logits, lipschitz=lip).radius, reference)


@pytest.mark.parametrize("n", [math.nan, 2.5, -3, "x"])
def test_bernstein_shift_needs_an_integer_sample_size(n):
    with pytest.raises(ValueError, match="n must"):
        stats.bernstein_shift(0.1, n, alpha=0.01)


@pytest.mark.parametrize(("n", "num_classes"), [(2.7, 2), (2, 2.0), (-1, 2), (3, 0), (True, 2)])
def test_multinomial_outcomes_needs_integers(n, num_classes):
    with pytest.raises(ValueError, match="must be an integer"):
        stats.multinomial_outcomes(n, num_classes)


def test_alpha_that_is_not_a_number_gets_a_clear_error():
    with pytest.raises(ValueError, match="alpha must be a real number"):
        stats.clopper_pearson(3, 10, alpha="x")
