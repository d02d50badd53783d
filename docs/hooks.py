"""MkDocs hooks: pages made at build time from the repository's own files, so that they never go stale.

* ``changelog.md`` is ``CHANGELOG.md``.
* ``figures/ci/REPORT.md`` and ``figures/cpu/REPORT.md`` (the reproduction reports written by ``make reproduce``
  and ``make reproduce SCALE=cpu``) get a placeholder page when not generated yet, so that the site always builds.
* ``scales.md``: the marker ``<!-- runtime-table -->`` becomes the table of expected run times per manifest entry
  and scale, read from ``manifest.yaml``.
* ``full-scale.md`` (running the full scale on GPUs) joins the navigation when it exists.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
REPORTS = {"ci": "figures/ci/REPORT.md", "cpu": "figures/cpu/REPORT.md"}
_PLACEHOLDER = """# Reports ({scale} scale)

The reproduction report has not been generated in this build: `make reproduce SCALE={scale}` writes it to
`figures/{scale}/REPORT.md` (the claims of every notebook with their verdicts, at the {scale} scale), and the next
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
    for scale, report in REPORTS.items():
        if files.get_file_from_path(report) is None:
            files.append(File.generated(config, report, content=_PLACEHOLDER.format(scale=scale)))
    return files


def runtime_table() -> str:
    manifest = yaml.safe_load((ROOT / "manifest.yaml").read_text())
    entries = manifest.get("entries", manifest) if isinstance(manifest, dict) else {}
    rows = [
        "| notebook | manifest entry | ci (2 CPU cores) | cpu (2 CPU cores) | full | full needs a GPU |",
        "|---|---|---|---|---|---|",
    ]
    for key, item in entries.items():
        if not isinstance(item, dict) or "runtime" not in item:
            continue
        runtime = item["runtime"]
        gpu = {True: "yes", False: "no"}.get(item.get("full_needs_gpu"), "")
        cells = [f"`{item.get('notebook', '')}`", f"`{key}`", *(runtime.get(s, "") for s in ("ci", "cpu", "full")), gpu]
        rows.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(rows)


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri == "scales.md":
        return markdown.replace("<!-- runtime-table -->", runtime_table())
    return markdown
