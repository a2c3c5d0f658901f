"""The README and the instructor guide say what the course holds: study times as the lessons declare them, pictures
and links that exist, and the guide's generated tables up to date with the lessons and exercises."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", REPO / "CONTRIBUTING.md", REPO / "docs" / "instructor.md", REPO / "deploy" / "README.md"]


def test_readme_study_times_are_the_lessons_own():
    rows = re.findall(r"^\| `(\d\d_\w+)` \| (\w+) \| (\d+) min \|", (REPO / "README.md").read_text(), re.M)
    declared = {p.stem: nbformat.read(p, as_version=4).metadata["bloomlib"]
                for p in sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))}
    assert [r[0] for r in rows] == list(declared)
    for stem, level, minutes in rows:
        assert (level.lower(), int(minutes)) == (declared[stem]["level"], declared[stem]["study_minutes"]), stem


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(REPO)) for d in DOCS])
def test_every_picture_and_local_link_exists(doc):
    text = doc.read_text()
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [t for t in targets if not re.match(r"[a-z]+://", t)]
    missing = [t for t in local if not (doc.parent / t).exists()]
    assert missing == [], f"{doc.name} links to files that do not exist: {missing}"
    if doc == REPO / "README.md":
        assert sum(t.startswith("docs/images/") for t in local) >= 3, "the README shows the course's screenshots"


def test_instructor_guide_tables_are_up_to_date():
    """docs/instructor.md's agendas, objectives and misconceptions are what scripts/instructor_guide.py writes."""
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "instructor_guide.py"), "--check"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


def test_instructor_guide_lists_every_objective_with_its_graded_cells():
    guide = (REPO / "docs" / "instructor.md").read_text()
    for lesson in sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        for objective in nbformat.read(lesson, as_version=4).metadata["bloomlib"]["objectives"]:
            line = next((l for l in guide.splitlines() if f"**{objective['id']}**" in l), "")
            assert objective["text"] in line and "**none**" not in line, objective["id"]
