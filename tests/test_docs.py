"""The docs describe this repository: every path and link they cite exists (anchors included), none cites notes or
files that live outside it, and bench/RESULTS.md indexes every kept result file and is current."""

from __future__ import annotations

import re
from pathlib import Path

from bench import results_index

REPO = Path(__file__).resolve().parent.parent
DOCS = sorted([REPO / "README.md", REPO / "bench" / "README.md", REPO / "bench" / "RESULTS.md",
               *(REPO / "docs").rglob("*.md")])
OUTSIDE = re.compile(r"/work/|/opt/ComfyUI|COMFY_NOTES|ANCHORS\.md|STYLE\.md|comfy_setup_notes")
LINK = re.compile(r"\]\(([^)\s]+)\)")
CODE_PATH = re.compile(r"`((?:bench|tests|docs|sparseflow|kernels|nodes|web|workflows)/[\w./*-]+)`")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    return {_slug(line.lstrip("#")) for line in path.read_text(encoding="utf-8").splitlines() if line.startswith("#")}


def test_docs_cite_nothing_outside_the_repository():
    bad = [f"{d.relative_to(REPO)}:{i}: {line.strip()}" for d in DOCS
           for i, line in enumerate(d.read_text(encoding="utf-8").splitlines(), 1) if OUTSIDE.search(line)]
    assert not bad, "\n".join(bad)


def test_every_link_and_cited_path_exists():
    bad = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for target in LINK.findall(text):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            file, _, anchor = target.partition("#")
            path = (doc.parent / file).resolve() if file else doc
            if not path.exists():
                bad.append(f"{doc.relative_to(REPO)}: link {target}")
            elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
                bad.append(f"{doc.relative_to(REPO)}: no heading for #{anchor} in {path.relative_to(REPO)}")
        for cited in CODE_PATH.findall(text):
            if not list(REPO.glob(cited.rstrip("/"))):
                bad.append(f"{doc.relative_to(REPO)}: cites {cited}")
    assert not bad, "\n".join(bad)


def test_results_index_lists_every_result_file_and_is_current():
    assert results_index.missing_entries() == []
    assert (REPO / "bench" / "RESULTS.md").read_text(encoding="utf-8") == results_index.render(), \
        "bench/RESULTS.md is out of date: run python3 bench/results_index.py"


def test_performance_page_answers_each_question_and_readme_points_into_it():
    anchors = _anchors(REPO / "docs" / "performance.md")
    assert {"kernel-vs-peers", "end-to-end-in-comfyui", "memory", "torchcompile", "gpus", "gpus-users-own"} <= anchors
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert {a for a in re.findall(r"docs/performance\.md#([\w-]+)", readme)} >= {"end-to-end-in-comfyui", "memory",
                                                                                 "torchcompile", "kernel-vs-peers"}
    assert "Version 5" not in readme
