"""The nbgrader course workflow of the class server (deploy/), end to end without a hub: the deploy's own
configs (classroom.prepare_home, classroom.nbgrader_config) on a temporary course, nbgrader's own commands
(generate_assignment, release_assignment, fetch_assignment, submit, collect, autograde, export), three learners
with their own HOME and config as their server would have them, whose answers are full, partial and blank; the
exported grades are exactly the points of the questions each answered right. The partial one answers the first
question right and the second (attention) by calling bloomlib's reference implementation (the issue's cheat):
the integrity steps in the instructor's autograde (classroom.nbgrader_config) score that question 0.
tests/test_hub.py runs the same workflow through a running hub."""
from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

import grading_harness as harness

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "deploy"))
import classroom  # noqa: E402

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
SOURCE = REPO / "solutions" / "03_apply.ipynb"
ASSIGNMENT = SOURCE.stem
ADMIN = "teacher"
# the answer that calls the reference implementation instead of writing attention
CHEAT = ("from bloomlib import scaled_dot_product_attention as bloomlib_sdpa\n"
         "def scaled_dot_product_attention(Q, K, V, mask=None):\n    return bloomlib_sdpa(Q, K, V, mask=mask)")


# ------------------------------------------------------------------------------------------- grades
def _answers(released: nbformat.NotebookNode, source: nbformat.NotebookNode, keep,
             written: dict[str, str] | None = None) -> nbformat.NotebookNode:
    """The released notebook with the solution's answers to the questions in ``keep``, ``written`` answers to
    others, the rest as released."""
    blank = {harness.gid(c): c.source for c in released.cells if harness.is_answer(c)}
    return harness.fill(released, source, {**{q: s for q, s in blank.items() if q not in keep}, **(written or {})})


def _points(source: nbformat.NotebookNode, questions) -> float:
    tests = {t for q in questions for t in harness.questions(source)[q]}
    return float(sum(c.metadata.nbgrader.get("points", 0) for c in source.cells
                     if harness.is_test(c) and harness.gid(c) in tests))


def _grades(text: str) -> dict[str, tuple[float, float]]:
    """student id -> (score, max_score) from `nbgrader export`'s CSV."""
    return {r["student_id"]: (float(r["score"]), float(r["max_score"])) for r in csv.DictReader(io.StringIO(text))
            if r["assignment"] == ASSIGNMENT}


# -------------------------------------------------------------------------------- without a hub
def _nbgrader(cwd: Path, home: Path, *args: str) -> str:
    """An nbgrader command as a user's server would run it: their HOME, their ~/.jupyter config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTER")}
    env.update(HOME=str(home), PATH=os.pathsep.join([str(BIN), env.get("PATH", "")]))
    proc = subprocess.run([str(BIN / "nbgrader"), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"nbgrader {' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc.stdout + proc.stderr


def test_course_workflow_without_a_hub(tmp_path):
    """Release, fetch, submit (full, partial, blank), collect, autograde, export: nbgrader's own commands with
    the configs the hub writes, on a temporary course."""
    exchange, homes = tmp_path / "exchange", tmp_path / "home"
    course = homes / ADMIN / "course"
    classroom.prepare_home(homes / ADMIN, ADMIN, "instructor", exchange=exchange, course_root=course)
    _nbgrader(course, homes / ADMIN, "generate_assignment", ASSIGNMENT, "--force")
    _nbgrader(course, homes / ADMIN, "release_assignment", ASSIGNMENT, "--force")

    source = nbformat.read(SOURCE, as_version=4)
    questions = list(harness.questions(source))
    assert questions[:2] == ["causal_mask", "scaled_dot_product_attention"], questions
    plan = {"full": questions, "partial": questions[:1], "blank": []}
    written = {"partial": {"scaled_dot_product_attention": CHEAT}}
    for learner, keep in plan.items():
        home = homes / learner
        classroom.prepare_home(home, learner, "learner", exchange=exchange)
        _nbgrader(home, home, "fetch_assignment", ASSIGNMENT)
        path = home / ASSIGNMENT / SOURCE.name
        nbformat.write(_answers(nbformat.read(path, as_version=4), source, keep, written.get(learner)), path)
        assert f"{learner}+{ASSIGNMENT}" in _nbgrader(home, home, "submit", ASSIGNMENT)

    _nbgrader(course, homes / ADMIN, "collect", ASSIGNMENT)
    _nbgrader(course, homes / ADMIN, "autograde", ASSIGNMENT, "--force")
    _nbgrader(course, homes / ADMIN, "export", "--to", "grades.csv")
    grades = _grades((course / "grades.csv").read_text())
    total = _points(source, questions)
    expected = {learner: (_points(source, keep), total) for learner, keep in plan.items()}
    assert grades == expected, f"exported {grades}, expected {expected}"
    # partial: the first answer scores, the attention answer that calls bloomlib scores 0, and says why
    assert 0 < expected["partial"][0] < _points(source, questions[:2]) < total
    graded = nbformat.read(course / "autograded" / "partial" / ASSIGNMENT / SOURCE.name, as_version=4)
    attention = [c for c in graded.cells if harness.is_test(c)
                 and harness.gid(c) in harness.questions(source)["scaled_dot_product_attention"]]
    said = ["".join(o.get("evalue", "") for o in c.outputs) for c in attention]
    assert attention and all("uses bloomlib" in text for text in said), said
