"""Grading a lesson's exercise against its nbgrader source in one kernel, for the lesson tests.

One synthetic source notebook repeats a question's answer and test cells once per variant (grade ids
suffixed ``~k``), so a single `bloomlib grade` run checks the untouched exercise (``~blank``), the solution
against the visible tests only (``~visible``) and against all tests (plain ids), every planted mistake
(``~k``, k its index in the list) and every other correct answer (``~ok{k}``).
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Iterable, NamedTuple

import nbformat
import pytest
from nbformat import NotebookNode

from bloomlib.course import grading

NOT_WRITTEN = "NotImplementedError: this answer is not written yet"


class Mistake(NamedTuple):
    """A wrong answer: the test cell ``test`` must lose points with ``words`` in its feedback (any 4-tuple in
    this order will do)."""
    answer: str
    code: str
    test: str
    words: str


class Accepted(NamedTuple):
    """Another correct answer: every test of its question must give full marks."""
    answer: str
    code: str


def notebook_fixtures(source_path: Path, exercise_path: Path):
    """Module-scoped ``source`` and ``exercise`` fixtures reading these notebooks; assign them to those names."""
    @pytest.fixture(scope="module")
    def source() -> NotebookNode:
        return nbformat.read(source_path, as_version=4)

    @pytest.fixture(scope="module")
    def exercise() -> NotebookNode:
        return nbformat.read(exercise_path, as_version=4)

    return source, exercise


def variant(template: str, correct: dict[str, object], **changes: object) -> str:
    """An answer written from ``template``: its fields filled from ``correct`` with ``changes`` applied."""
    return template.format(**{**correct, **changes})


def edited(source: NotebookNode, answer: str, *pairs: tuple[str, str]) -> str:
    """The solution code of ``answer`` with each (old, new) replacement applied (old must occur in it)."""
    code = solution_code(next(c for c in source.cells if gid(c) == answer))
    for old, new in pairs:
        assert old in code, f"mutation target not found in {answer}: {old!r}"
        code = code.replace(old, new)
    return code


def edit_variants(source: NotebookNode, table) -> tuple[list[Mistake], list[Accepted]]:
    """Rows (answer id, [(old, new), ...], test id or None, words) as Mistakes (the test must lose points with the
    words in its feedback) and, for a test id None, Accepted answers (every test of the answer passes)."""
    mistakes, accepted = [], []
    for answer, pairs, test, words in table:
        code = edited(source, answer, *pairs)
        if test is None:
            accepted.append(Accepted(answer, code))
        else:
            mistakes.append(Mistake(answer, code, test, words))
    return mistakes, accepted


def gid(cell) -> str | None:
    return cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")


def is_answer(cell) -> bool:
    return bool(cell.get("metadata", {}).get("nbgrader", {}).get("solution"))


def is_test(cell) -> bool:
    return bool(cell.get("metadata", {}).get("nbgrader", {}).get("grade"))


def solution_code(cell) -> str:
    return "\n".join(l for l in cell.source.splitlines() if "### BEGIN SOLUTION" not in l and "### END SOLUTION" not in l)


def questions(source: NotebookNode) -> dict[str, list[str]]:
    """answer grade_id -> the grade_ids of the test cells that follow it."""
    out, current = {}, None
    for c in source.cells:
        if is_answer(c):
            current = gid(c)
            out[current] = []
        elif is_test(c) and current:
            out[current].append(gid(c))
    return out


def graded_test_ids(source: NotebookNode) -> list[str]:
    return [t for ts in questions(source).values() for t in ts]


def fill(exercise: NotebookNode, source: NotebookNode, answers: dict[str, str] | None = None) -> NotebookNode:
    """The exercise with every answer written: the solution's code unless ``answers`` gives another."""
    sol = {gid(c): solution_code(c) for c in source.cells if is_answer(c)}
    nb = copy.deepcopy(exercise)
    for c in nb.cells:
        if is_answer(c):
            c.source = (answers or {}).get(gid(c), sol[gid(c)])
    return nb


def cut(nb: NotebookNode, keep: set[str]) -> NotebookNode:
    """The notebook with only the cells whose grade_id is in ``keep``."""
    nb = copy.deepcopy(nb)
    nb.cells = [c for c in nb.cells if gid(c) in keep]
    return nb


def suffixed(cell, suffix) -> NotebookNode:
    cell = copy.deepcopy(cell)
    if gid(cell):
        cell.metadata.nbgrader["grade_id"] = f"{gid(cell)}~{suffix}"
    return cell


def graded_pair(source: NotebookNode, exercise: NotebookNode, mistakes: Iterable[Mistake],
                accepted: Iterable[Accepted] = (), extra_code: str = "",
                needs: dict[str, list[str]] | None = None) -> tuple[NotebookNode, NotebookNode]:
    """(source, submission) of the one-kernel run described in the module docstring. ``extra_code`` runs after
    the solution (e.g. a sys.path line for a fake library); ``needs`` maps an answer to the answers whose solution
    code must run before each of its copies (a question that calls another question's function)."""
    cells = {gid(c): c for c in source.cells if gid(c)}
    qs, needs = questions(source), needs or {}
    filled = fill(exercise, source)
    src_cells = [suffixed(c, "blank") for c in source.cells] + [suffixed(c, "visible") for c in exercise.cells]
    sub_cells = [suffixed(c, "blank") for c in exercise.cells] + [suffixed(c, "visible") for c in filled.cells]
    src_cells += copy.deepcopy(source.cells)
    sub_cells += filled.cells
    if extra_code:
        src_cells.append(nbformat.v4.new_code_cell(extra_code))
        sub_cells.append(nbformat.v4.new_code_cell(extra_code))
    variants = [(k, answer, code) for k, (answer, code, *_) in enumerate(mistakes)]
    variants += [(f"ok{k}", answer, code) for k, (answer, code) in enumerate(accepted)]
    for suffix, answer, code in variants:
        if answer in needs:
            correct = "\n\n".join(solution_code(cells[a]) for a in needs[answer])
            src_cells.append(nbformat.v4.new_code_cell(correct))
            sub_cells.append(nbformat.v4.new_code_cell(correct))
        for g in [answer] + qs[answer]:
            src_cells.append(suffixed(cells[g], suffix))
            sub_cells.append(suffixed(cells[g], suffix))
            if g == answer:
                sub_cells[-1].source = textwrap.dedent(code).strip()
    src_cells, sub_cells = copy.deepcopy(src_cells), copy.deepcopy(sub_cells)
    for cell_list in (src_cells, sub_cells):  # copies of one cell would share an id (nbformat warns)
        for i, cell in enumerate(cell_list):
            cell["id"] = f"cell-{i}"
    return (nbformat.v4.new_notebook(cells=src_cells, metadata=source.metadata),
            nbformat.v4.new_notebook(cells=sub_cells, metadata=source.metadata))


def grade_variants(source: NotebookNode, exercise: NotebookNode, mistakes: Iterable[Mistake],
                   accepted: Iterable[Accepted] = (), extra_code: str = "",
                   needs: dict[str, list[str]] | None = None, timeout: float = 120) -> dict[str, dict]:
    """Grade the pair from graded_pair with `bloomlib grade`'s own function: question id -> its result."""
    src, sub = graded_pair(source, exercise, mistakes, accepted, extra_code, needs)
    return {q["id"]: q for q in grading.grade_notebook(sub, source=src, timeout=timeout)["questions"]}


# ------------------------------------------------------------------------------------------ lessons
def assert_lesson_house_rules(lesson_path: Path, verbs: list[str]) -> None:
    """Intro (objectives, study time, prerequisites), objectives led by a Bloom verb of the level, a summary that
    says how to grade the exercise, slide metadata on every cell, seeds and threads fixed first, outputs committed,
    plots titled and backed by an assert."""
    nb = nbformat.read(lesson_path, as_version=4)
    intro, summary = nb.cells[0].source, "\n".join(c.source for c in nb.cells[-3:] if c.cell_type == "markdown")
    assert "Learning objectives" in intro and "study time" in intro.lower() and "Prerequisites" in intro
    first_words = [o["text"].split()[0].lower().strip(",") for o in nb.metadata["bloomlib"]["objectives"]]
    assert 4 <= len(first_words) <= 8 and set(first_words) <= set(verbs), first_words
    assert "Summary" in summary and f"bloomlib grade exercises/{lesson_path.name}" in summary
    assert all(c.metadata.get("slideshow", {}).get("slide_type") for c in nb.cells)
    first_code = next(c.source for c in nb.cells if c.cell_type == "code")
    assert "bloomlib.seed_everything(0)" in first_code and "torch.set_num_threads(2)" in first_code
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.execution_count is not None, "commit lessons executed, with their outputs"
            if "plt.subplots" in cell.source or "plot_attention(" in cell.source:
                assert "assert " in cell.source, cell.source[:80]
                assert "plt.show()" in cell.source or "with_alt_text(" in cell.source, cell.source[:80]
                assert ".set(title=" in cell.source or "set_title" in cell.source or "plot_attention(" in cell.source


# ------------------------------------------------------------------------------------------ the checks
def assert_graded_as_planned(graded: dict[str, dict], source: NotebookNode, mistakes: list[Mistake],
                             accepted: list[Accepted], total_points: int) -> None:
    """Full marks for the solution (worth ``total_points``), 0 for every blank test, every mistake caught with its
    words, every accepted answer at full marks, no hidden source in any feedback."""
    assert_full_marks(graded, source)
    assert sum(graded[t]["max_score"] for t in graded_test_ids(source)) == total_points
    assert [graded[f"{t}~blank"] for t in graded_test_ids(source) if graded[f"{t}~blank"]["score"] != 0] == []
    for k in range(len(mistakes)):
        assert_mistake_loses_points(graded, mistakes, k)
    for k in range(len(accepted)):
        assert_accepted(graded, source, accepted, k)
    assert_no_hidden_source(graded, source, more_than=10)


def objectives_of(cell) -> list[str]:
    """The objectives a graded cell names (its metadata bloomlib.objectives)."""
    return cell.get("metadata", {}).get("bloomlib", {}).get("objectives", [])


def assert_graded_cells_name_objectives(source: NotebookNode, objectives: set[str]) -> None:
    """Every graded cell names objectives of its lesson (metadata bloomlib.objectives), and together they name all."""
    named = {gid(c): objectives_of(c) for c in source.cells if is_test(c)}
    assert [(g, o) for g, o in named.items() if not o or not set(o) <= objectives] == []
    assert {o for os_ in named.values() for o in os_} == objectives


CHECK_CELL = "check_my_notebook"  # grade_id of an exercise's last cell, which grades the saved copy


def assert_check_cell_closes(source: NotebookNode, exercise: NotebookNode, name: str) -> None:
    """The last code cell of both notebooks is the locked, read-only "check my notebook" cell for ``name``, and the
    only code cell that names bloomlib."""
    for nb in (source, exercise):
        cell = [c for c in nb.cells if c.cell_type == "code"][-1]
        meta = cell.metadata.nbgrader
        assert (meta["grade_id"], meta["grade"], meta["solution"], meta["locked"]) == (CHECK_CELL, False, False, True)
        assert "nbval-ignore-output" in cell.metadata.get("tags", [])
        assert f'check_my_notebook("{name}")' in cell.source
        assert "Done?" in nb.cells[nb.cells.index(cell) - 1].source
    assert_no_bloomlib_in_code(source, exercise, allowed=(CHECK_CELL,))


def assert_cli_grades_blank_zero(exercise_path: Path, total_points: float, manual_points: float = 0) -> None:
    """`bloomlib grade --json` on the untouched exercise: 0 of ``total_points``, every question with feedback."""
    proc = subprocess.run([str(Path(sys.executable).parent / "bloomlib"), "grade", str(exercise_path), "--json"],
                          capture_output=True, text=True, timeout=300, cwd=exercise_path.parent)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert (result["notebook"], result["score"], result["max_score"]) == (exercise_path.name, 0, total_points)
    assert result["manual_max_score"] == manual_points
    assert all(q["score"] == 0 and q["feedback"] for q in result["questions"])


def assert_no_bloomlib_in_code(*notebooks: NotebookNode, allowed: tuple[str, ...] = ()) -> None:
    """No code cell mentions bloomlib (except the cells whose grade_id is in ``allowed``, e.g. the
    "check_my_notebook" cell): the exercise is answered with torch, math and numpy alone."""
    for nb in notebooks:
        for cell in nb.cells:
            assert cell.cell_type != "code" or "bloomlib" not in cell.source or gid(cell) in allowed, gid(cell)


def assert_full_marks(graded: dict[str, dict], source: NotebookNode, suffix: str = "") -> None:
    """Every test of the solution (or of the variants with ``suffix``) scores full marks without feedback."""
    got = [graded[t + suffix] for t in graded_test_ids(source)]
    assert [q for q in got if q["score"] != q["max_score"] or q["feedback"]] == []


def assert_accepted(graded: dict[str, dict], source: NotebookNode, accepted: list[Accepted], k: int) -> None:
    for t in questions(source)[accepted[k].answer]:
        q = graded[f"{t}~ok{k}"]
        assert q["score"] == q["max_score"] and q["feedback"] == "", q


def assert_blank_scores_zero(graded: dict[str, dict], source: NotebookNode,
                             feedback: dict[str, str] | None = None) -> None:
    """The untouched exercise scores 0 on every test, with NOT_WRITTEN as its feedback, or for a test that
    ``feedback`` names, feedback containing the words given there (an answer that is a variable, not a function)."""
    feedback = feedback or {}
    for t in graded_test_ids(source):
        q = graded[f"{t}~blank"]
        assert q["score"] == 0, q
        assert feedback[t] in q["feedback"] if t in feedback else q["feedback"] == NOT_WRITTEN, q


def assert_mistake_loses_points(graded: dict[str, dict], mistakes: list[Mistake], k: int) -> None:
    _, _, test, words = mistakes[k]
    q = graded[f"{test}~{k}"]
    assert q["score"] < q["max_score"], q
    assert words in q["feedback"], q["feedback"]


def assert_no_hidden_source(graded: dict[str, dict], source: NotebookNode, more_than: int) -> None:
    """No feedback shows a traceback or a line of a hidden test (of which the source has over ``more_than``)."""
    hidden = grading.hidden_lines(source)
    assert len(hidden) > more_than
    for q in graded.values():
        assert "Traceback" not in q["feedback"] and "BEGIN HIDDEN" not in q["feedback"]
        for line in hidden:
            assert line not in q["feedback"], q


# ------------------------------------------------------------------------------------ nbgrader itself
def _nbgrader(course: Path, *args: str) -> None:
    env = dict(os.environ, PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    proc = subprocess.run([str(Path(sys.executable).parent / "nbgrader"), *args], cwd=course, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def nbgrader_release(course: Path, source_path: Path) -> NotebookNode:
    """A fresh nbgrader course in ``course`` (one student, one assignment named after the source's stem):
    ``nbgrader generate_assignment``'s student version of the source."""
    (course / "nbgrader_config.py").write_text(
        'c = get_config()\nc.CourseDirectory.course_id = "transformers"\n'
        'c.CourseDirectory.db_students = [dict(id="student")]\nc.Execute.timeout = 120\n')
    (course / "source" / source_path.stem).mkdir(parents=True)
    nbformat.write(nbformat.read(source_path, as_version=4), course / "source" / source_path.stem / source_path.name)
    _nbgrader(course, "db", "student", "add", "student")
    _nbgrader(course, "generate_assignment", source_path.stem, "--force")
    return nbformat.read(course / "release" / source_path.stem / source_path.name, as_version=4)


def nbgrader_autograde(course: Path, source_path: Path, submission: NotebookNode) -> tuple[float, float]:
    """(raw_score, max_score) of ``nbgrader autograde`` + ``export`` for the course nbgrader_release made."""
    folder = course / "submitted" / "student" / source_path.stem
    folder.mkdir(parents=True)
    nbformat.write(submission, folder / source_path.name)
    _nbgrader(course, "autograde", source_path.stem, "--force")
    _nbgrader(course, "export", "--to", str(course / "grades.csv"))
    rows = (course / "grades.csv").read_text().splitlines()
    header, row = rows[0].split(","), rows[1].split(",")
    return float(row[header.index("raw_score")]), float(row[header.index("max_score")])
