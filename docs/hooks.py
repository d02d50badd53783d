"""MkDocs hooks: pages made at build time from the repository's own files, so that they never go stale.

* ``changelog.md`` is ``CHANGELOG.md``.
* ``figures/ci/REPORT.md`` (the reproduction report written by ``make reproduce``) gets a placeholder page when
  it has not been generated yet, so that the site builds on a fresh clone.
* ``scales.md``: the marker ``<!-- runtime-table -->`` becomes the table of expected run times per manifest entry
  and scale, read from ``manifest.yaml``.
* ``full-scale.md`` (running the full scale on GPUs) joins the navigation when it exists.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
REPORT = "figures/ci/REPORT.md"
_PLACEHOLDER = """# Reports (ci scale)

The reproduction report has not been generated in this build: `make reproduce` writes it to
`figures/ci/REPORT.md` (the claims of every notebook with their verdicts, at the ci scale), and the next
`make docs` shows it here.
"""


def on_config(config):
    if (ROOT / "docs" / "full-scale.md").exists():
        nav = config["nav"]
        at = next(i for i, item in enumerate(nav) if "Scales and their cost" in item)
        nav.insert(at + 1, {"Full scale on GPUs": "full-scale.md"})
    return config


def on_files(files, config):
    files.append(File.generated(config, "changelog.md", content=(ROOT / "CHANGELOG.md").read_text()))
    if files.get_file_from_path(REPORT) is None:
        files.append(File.generated(config, REPORT, content=_PLACEHOLDER))
    return files


def runtime_table() -> str:
    manifest = yaml.safe_load((ROOT / "manifest.yaml").read_text())
    entries = manifest.get("entries", manifest) if isinstance(manifest, dict) else {}
    rows = ["| notebook | manifest entry | ci (2 CPU cores) | full | full needs a GPU |", "|---|---|---|---|---|"]
    for key, item in entries.items():
        if not isinstance(item, dict) or "runtime" not in item:
            continue
        runtime = item["runtime"]
        gpu = {True: "yes", False: "no"}.get(item.get("full_needs_gpu"), "")
        cells = [f"`{item.get('notebook', '')}`", f"`{key}`", runtime.get("ci", ""), runtime.get("full", ""), gpu]
        rows.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(rows)


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri == "scales.md":
        return markdown.replace("<!-- runtime-table -->", runtime_table())
    return markdown
