"""`bloomlib progress`: every exercise graded and summed up by Bloom level; missing, untouched and broken notebooks
are reported as such (never as a zero), and the objectives not met are those of the failing graded cells."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

import grading_harness as harness
from bloomlib.course import progress

REPO = Path(__file__).resolve().parent.parent
KV_WITHOUT_2 = harness.edited(nbformat.read(REPO / "solutions" / "04_analyze.ipynb", 4), "kv_cache_bytes",
                              ("return 2 * ", "return "))


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    """solutions/ with lessons 01, 04, 05 and 06; the learner's folder: 01 untouched, 04 with one slip (the K-and-V
    factor 2 left out of the KV-cache bytes), 05 missing, 06 not a notebook."""
    root = tmp_path_factory.mktemp("course")
    solutions, mine = root / "solutions", root / "mine"
    solutions.mkdir(), mine.mkdir()
    for name in ("01_remember", "04_analyze", "05_evaluate", "06_create"):
        shutil.copy(REPO / "solutions" / f"{name}.ipynb", solutions)
    shutil.copy(REPO / "exercises" / "01_remember.ipynb", mine)
    source = nbformat.read(solutions / "04_analyze.ipynb", 4)
    nbformat.write(harness.fill(nbformat.read(REPO / "exercises" / "04_analyze.ipynb", 4), source,
                                {"kv_cache_bytes": KV_WITHOUT_2}), mine / "04_analyze.ipynb")
    (mine / "06_create.ipynb").write_text("{ this is not json")
    return solutions, mine


@pytest.fixture(scope="module")
def rows(course):
    solutions, mine = course
    return {r.notebook: r for r in progress.course_progress(mine, solutions_dir=solutions)}


def test_each_state_is_reported_as_itself_never_as_zero(rows):
    assert {n: r.status for n, r in rows.items()} == {"01_remember.ipynb": "not started", "04_analyze.ipynb": "graded",
                                                      "05_evaluate.ipynb": "missing", "06_create.ipynb": "broken"}
    assert rows["06_create.ipynb"].message.startswith("06_create.ipynb: NotJSONError: Notebook does not appear")
    assert [r.level for r in rows.values()] == ["remember", "analyze", "evaluate", "create"]


def test_objectives_not_met_are_those_of_the_failing_graded_cells(rows):
    """The slip fails the KV-cache tests only; the source names 04.3 on them, so 04.3 alone is not met."""
    source = nbformat.read(REPO / "solutions" / "04_analyze.ipynb", 4)
    kv_objectives = {o for c in source.cells if harness.gid(c) in ("test_kv_cache_bytes", "test_kv_cache_gqa")
                     for o in c.metadata["bloomlib"]["objectives"]}
    r = rows["04_analyze.ipynb"]
    assert [o.id for o in r.not_met] == sorted(kv_objectives) == ["04.3"]
    assert r.not_met[0].text.startswith("Break the KV cache")
    assert (r.score, r.max_score) == (11, 12)


def test_json_and_table_from_the_command(course):
    solutions, mine = course
    cmd = [str(Path(sys.executable).parent / "bloomlib"), "progress", str(mine), "--solutions", str(solutions)]
    out = subprocess.run(cmd + ["--json"], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert [(d["notebook"], d["status"], d["score"]) for d in data] == [
        ("01_remember.ipynb", "not started", 0), ("04_analyze.ipynb", "graded", 11),
        ("05_evaluate.ipynb", "missing", 0), ("06_create.ipynb", "broken", 0)]
    table = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO).stdout.splitlines()
    assert table[1].split()[:3] == ["remember", "01_remember.ipynb", "not"]
    assert any(line.split()[:3] == ["analyze", "04_analyze.ipynb", "11/12"] for line in table)
    assert any(line.strip().startswith("04.3 Break the KV cache") for line in table)
    assert any("could not be graded:" in line for line in table)
    assert table[-1] == "1 of 4 exercises graded: 11/12 points marked automatically"


def test_a_folder_that_does_not_exist_is_a_clear_error(tmp_path, capsys):
    assert progress.main([str(tmp_path / "nope")]) == 2
    assert "no folder" in capsys.readouterr().err


def test_the_lesson_view_grades_only_when_pressed_and_shows_the_same_rows(course, rows):
    solutions, mine = course
    view = progress.ProgressView(mine, solutions_dir=solutions)
    assert view.rows == [] and view.table.value == "", "nothing is graded before the button is pressed"
    view.button.click()
    assert [(r.notebook, r.status, r.score) for r in view.rows] == [(r.notebook, r.status, r.score) for r in rows.values()]
    assert view.status.value == "1 of 4 exercises graded: 11/12 points marked automatically."
    assert view.table.value.count("<tr>") == 5 and "<b>04.3</b> Break the KV cache" in view.table.value
