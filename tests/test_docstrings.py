"""Docstrings that are self-contained and unbroken.

* No orphan fragments: a formatter that re-wraps text at the wrong width leaves 1–3-word lines in the middle of a
  paragraph ("in float32 the / Frobenius norm / overflows"). The check flags a short line between two long lines
  of the same paragraph that does not end a sentence.
* No references to ``THESIS.md`` or "the spec": a user of the library does not have them; docstrings cite papers
  (arXiv id, section or equation) and the thesis as arXiv:2510.25282.

``PENDING`` lists the files still known to fail a check when this test was written (owned by other branches of
the same release); the lead empties it as they merge. A file in ``PENDING`` that passes makes the test fail, so the
list can only shrink.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "stabkit").rglob("*.py"))

PENDING = {
    "orphans": set(),
    "references": set(),
}

_LIST_OR_HEADER = re.compile(r"^(\*|-|\d+\.|>>>|\.\.\.|[A-Z][A-Za-z ]*:$|\w+( \(.*\))?: )")


def _docstrings(text: str):
    """(first line number, docstring) of the module, every class and every function."""
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                yield node.body[0].lineno, doc


def orphan_lines(doc: str) -> list[str]:
    """Short lines (1–3 words) inside a paragraph of long lines that do not end a sentence."""
    lines = doc.splitlines()
    found = []
    for prev, line, nxt in zip(lines, lines[1:], lines[2:], strict=False):
        text = line.strip()
        if not 1 <= len(text.split()) <= 3 or len(prev.strip()) < 60 or len(nxt.strip()) < 40:
            continue
        if text.endswith((".", ":", ";", "!", "?")) or _LIST_OR_HEADER.match(nxt.strip()):
            continue
        found.append(text)
    return found


def test_orphan_detector_catches_a_bad_rewrap_and_passes_good_text():
    bad = (
        "Note [rescaling]: the squared matrices of the iteration grow like ``σ₁^(2^k)``, so in float32 the\n"
        "Frobenius norm\n"
        "overflows after a handful of iterations; every iterate is divided by its norm and the\n"
    )
    assert orphan_lines(bad) == ["Frobenius norm"]
    good = (
        "Args:\n"
        "    x: the points, batch first; a longer description that runs over more than one line of text,\n"
        "        and ends here.\n"
        "    n: an integer.\n"
        "    alpha: failure probability, the same for every test point of the batch, in (0, 1).\n"
    )
    assert orphan_lines(good) == []


def _check(path: str, kind: str) -> list[str]:
    text = (ROOT / path).read_text()
    if kind == "references":
        return [f"line {i}" for i, line in enumerate(text.splitlines(), 1) if re.search(r"THESIS|the spec\b", line)]
    return [f"line {start}: {frag!r}" for start, doc in _docstrings(text) for frag in orphan_lines(doc)]


@pytest.mark.parametrize("kind", ["orphans", "references"])
def test_docstrings_are_unbroken_and_self_contained(kind):
    failures = {path: problems for path in FILES if (problems := _check(path, kind))}
    assert set(failures) - PENDING[kind] == set(), {p: failures[p] for p in set(failures) - PENDING[kind]}
    fixed = PENDING[kind] - set(failures)
    assert not fixed, f"{sorted(fixed)} pass now: remove them from PENDING[{kind!r}]"
