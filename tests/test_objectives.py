"""bloomlib.course.objectives: every objective of a lesson is assessed by a graded cell and listed with it.

Unit tests on small notebooks built with nbformat (valid by nbformat's own schema), one per problem; that
nbgrader's release (its own preprocessors) keeps the cells' bloomlib metadata; and the course itself: every lesson
from 04 on, and any earlier lesson that declares objectives, against its nbgrader source.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from bloomlib.course import BLOOM_LEVELS, coverage, objective_problems
from bloomlib.course.grading import release_notebook
from bloomlib.course.objectives import section_titles

REPO = Path(__file__).resolve().parents[1]
OBJECTIVES = [{"id": "04.1", "text": "Analyze how attention's cost grows with sequence length.", "sections": ["Objectives"]},
              {"id": "04.2", "text": "Distinguish what a transformer computes in parallel.", "sections": ["Objectives"]}]
GRADED = [("test_fit_power_law", ["04.1"]), ("test_cost_cause", ["04.1", "04.2"]), ("test_parallel", ["04.2"])]
LISTING = ["- **04.1** Analyze how attention's cost grows with sequence length. "
           "(graded: `test_fit_power_law`, `test_cost_cause`)",
           "- **04.2** Distinguish what a transformer computes in parallel. (graded: `test_cost_cause`, "
           "`test_parallel`)"]


def _lesson(objectives=OBJECTIVES, listing=LISTING, level="analyze", minutes=120, **extra):
    meta = {"level": level, "study_minutes": minutes, "objectives": copy.deepcopy(objectives), **extra}
    nb = new_notebook(metadata={"bloomlib": {k: v for k, v in meta.items() if v is not None}})
    nb.cells = [new_markdown_cell("# Lesson 04\n\n## Objectives\n\n" + "\n".join(listing)),
                new_code_cell("from bloomlib.course import Prediction")]
    nbformat.validate(nb)
    return nb


def _nbgrader(grade_id, grade=True, solution=False):
    return {"grade": grade, "grade_id": grade_id, "locked": not solution, "schema_version": 3,
            "solution": solution, "task": False, **({"points": 1} if grade else {})}


def _source(graded=GRADED):
    nb = new_notebook()
    nb.cells = [new_code_cell("x = 1\n### BEGIN SOLUTION\nx = 2\n### END SOLUTION",
                              metadata={"nbgrader": _nbgrader("answer_x", grade=False, solution=True)})]
    for grade_id, objectives in graded:
        meta = {"nbgrader": _nbgrader(grade_id)}
        if objectives is not None:
            meta["bloomlib"] = {"objectives": list(objectives)}
        nb.cells.append(new_code_cell("assert x == 2\n### BEGIN HIDDEN TESTS\nassert x > 1\n### END HIDDEN TESTS",
                                      metadata=meta))
    nbformat.validate(nb)
    return nb


def _one(problems: list[str], pattern: str) -> None:
    hits = [p for p in problems if re.search(pattern, p)]
    assert len(hits) == 1, f"expected one problem matching {pattern!r}, got:\n" + "\n".join(problems)


# -------------------------------------------------------------------------------------------- correct pair
def test_a_correct_pair_has_no_problem_and_its_coverage():
    assert objective_problems(_lesson(), _source()) == []
    assert coverage(_lesson(), _source()) == {"04.1": ["test_fit_power_law", "test_cost_cause"],
                                              "04.2": ["test_cost_cause", "test_parallel"]}


def test_paths_are_accepted_and_named_in_problems(tmp_path):
    lesson, source = tmp_path / "04_analyze.ipynb", tmp_path / "solutions" / "04_analyze.ipynb"
    source.parent.mkdir()
    nbformat.write(_lesson(), lesson)
    nbformat.write(_source(GRADED + [("test_extra", [])]), source)
    assert objective_problems(lesson, source) == [
        "04_analyze.ipynb: graded cell 'test_extra' names no objective (cell metadata bloomlib.objectives, "
        'e.g. ["04.1"])']
    assert coverage(str(lesson), str(source))["04.2"] == ["test_cost_cause", "test_parallel"]


def test_not_a_notebook_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="no such notebook"):
        objective_problems(tmp_path / "missing.ipynb", _source())
    with pytest.raises(ValueError, match="the source notebook must be a notebook"):
        objective_problems(_lesson(), ["not", "a", "notebook"])


def test_plain_json_dicts_work_like_nodes():
    lesson, source = nbformat.writes(_lesson()), nbformat.writes(_source())
    import json

    assert objective_problems(json.loads(lesson), json.loads(source)) == []


# -------------------------------------------------------------------------------------- graded cells
def test_objective_that_no_graded_cell_names():
    graded = [("test_fit_power_law", ["04.1"]), ("test_cost_cause", ["04.1"])]
    listing = [LISTING[0], "- **04.2** Distinguish ... (graded: )"]
    problems = objective_problems(_lesson(listing=listing), _source(graded))
    assert problems == ["the lesson: objective 04.2 is assessed by no graded cell of the source notebook (name it "
                        "in a graded cell's metadata bloomlib.objectives)"]
    assert coverage(_lesson(), _source(graded))["04.2"] == []


@pytest.mark.parametrize("named", [None, []])
def test_graded_cell_that_names_no_objective(named):
    problems = objective_problems(_lesson(), _source(GRADED + [("test_orphan", named)]))
    assert problems == ["the source notebook: graded cell 'test_orphan' names no objective (cell metadata "
                        'bloomlib.objectives, e.g. ["NN.1"])']


def test_graded_cell_that_names_an_unknown_id():
    problems = objective_problems(_lesson(), _source(GRADED + [("test_typo", ["04.1", "04.7"])]))
    _one(problems, r"graded cell 'test_typo' names objective '04\.7', which the lesson does not declare")
    _one(problems, r"objective 04\.1 does not name test_typo")  # it does assess 04.1: the listing must say so
    assert len(problems) == 2, problems


@pytest.mark.parametrize("named", ["04.1", [4.1], {"04.1": True}, [["04.1"]]])
def test_graded_cell_objectives_must_be_a_list_of_ids(named):
    source = _source(GRADED)
    source.cells[1].metadata["bloomlib"]["objectives"] = named
    problems = objective_problems(_lesson(), source)
    _one(problems, r"graded cell 'test_fit_power_law': metadata bloomlib.objectives must be a list of objective ids")


def test_graded_cell_without_grade_id():
    source = _source(GRADED)
    del source.cells[1].metadata["nbgrader"]["grade_id"]
    problems = objective_problems(_lesson(), source)
    _one(problems, "graded cell #1 has no nbgrader grade_id, so nothing can name it")
    assert not any("None" in p for p in problems), problems


def test_only_graded_cells_count_and_a_graded_answer_cell_does():
    source = _source(GRADED)
    source.cells[0].metadata["nbgrader"]["grade_id"] = "answer_x"  # an answer (grade: false) names no objective
    assert objective_problems(_lesson(), source) == []
    source.cells.append(new_code_cell("# manually graded answer", metadata={
        "nbgrader": _nbgrader("answer_essay", grade=True, solution=True), "bloomlib": {"objectives": ["04.2"]}}))
    assert coverage(_lesson(), source)["04.2"] == ["test_cost_cause", "test_parallel", "answer_essay"]
    _one(objective_problems(_lesson(), source), r"objective 04\.2 does not name answer_essay")


# ---------------------------------------------------------------------------------------- the markdown
def test_objective_missing_from_the_markdown():
    problems = objective_problems(_lesson(listing=LISTING[:1]), _source())
    assert problems == ["the lesson: objective 04.2 is not listed in the lesson's markdown (a line "
                        "'- **04.2** <text> (graded: `test_cost_cause`, `test_parallel`)')"]


def test_bold_id_outside_a_list_item_does_not_count():
    listing = [LISTING[0], "As **04.2** says (graded: `test_cost_cause`, `test_parallel`)"]
    _one(objective_problems(_lesson(listing=listing), _source()), r"objective 04\.2 is not listed")


def test_markdown_line_missing_an_assessing_grade_id():
    listing = [LISTING[0], "- **04.2** Distinguish ... (graded: `test_parallel`)"]
    problems = objective_problems(_lesson(listing=listing), _source())
    assert problems == ["the lesson: the markdown line of objective 04.2 does not name test_cost_cause, a graded "
                        "cell that assesses it"]


def test_markdown_line_naming_a_cell_that_does_not_assess_it():
    listing = [LISTING[0], LISTING[1].replace("`test_parallel`", "`test_parallel`, `test_fit_power_law`")]
    _one(objective_problems(_lesson(listing=listing), _source()),
         r"objective 04\.2 names test_fit_power_law, which does not assess it")


def test_markdown_line_without_graded_part():
    listing = [LISTING[0], "- **04.2** Distinguish what a transformer computes in parallel."]
    _one(objective_problems(_lesson(listing=listing), _source()),
         r"objective 04\.2 has no '\(graded: `\.\.\.`\)' naming the cells that assess it "
         r"\(test_cost_cause, test_parallel\)")


def test_objective_listed_twice_and_a_listed_id_not_declared():
    listing = LISTING + [LISTING[1], "- **04.9** Something else (graded: `test_parallel`)"]
    problems = objective_problems(_lesson(listing=listing), _source())
    assert sorted(problems) == sorted(["the lesson: objective 04.2 is listed on 2 markdown lines (once is enough)",
                                       "the lesson: the markdown lists objective 04.9, which the metadata does not "
                                       "declare"])


def test_listing_may_sit_in_any_markdown_cell_and_use_any_bullet():
    nb = _lesson(listing=[LISTING[0]])
    nb.cells.append(new_markdown_cell("Later on:\n\n* " + LISTING[1][2:]))
    assert objective_problems(nb, _source()) == []


# ------------------------------------------------------------------------------------ lesson metadata
def test_lesson_without_objectives():
    for nb in (_lesson(objectives=[], listing=[]), _lesson(objectives=None, listing=[]), new_notebook()):
        problems = objective_problems(nb, _source([]))
        _one(problems, r"the lesson: declares no objectives")
    bare = objective_problems(new_notebook(), _source([]))
    _one(bare, "declares no level")
    _one(bare, "study_minutes must be a positive number of minutes, got None")


def test_duplicate_id():
    twice = OBJECTIVES + [{"id": "04.2", "text": "Again."}]
    _one(objective_problems(_lesson(objectives=twice), _source()), r"objective 04\.2 is declared twice")


@pytest.mark.parametrize("level", ["analyse", "Analyze", "synthesis", 4])
def test_level_not_one_of_blooms_six(level):
    _one(objective_problems(_lesson(level=level), _source()),
         rf"level {re.escape(repr(level))} \(metadata bloomlib.level\) is not one of Bloom's six levels: "
         "remember, understand, apply, analyze, evaluate, create")


def test_every_bloom_level_is_accepted():
    assert BLOOM_LEVELS == ("remember", "understand", "apply", "analyze", "evaluate", "create")
    for level in BLOOM_LEVELS:
        assert objective_problems(_lesson(level=level), _source()) == []


def test_level_must_match_the_file_name(tmp_path):
    lesson = tmp_path / "04_analyze.ipynb"
    nbformat.write(_lesson(level="apply"), lesson)
    assert objective_problems(lesson, _source()) == [
        "04_analyze.ipynb: metadata bloomlib.level is 'apply' but the file name says 'analyze'"]


@pytest.mark.parametrize("minutes", [0, -5, "120", True])
def test_study_minutes_must_be_positive(minutes):
    _one(objective_problems(_lesson(minutes=minutes), _source()), "study_minutes must be a positive number")


def test_ids_must_be_NN_k_of_this_lesson_and_have_text(tmp_path):
    objectives = OBJECTIVES + [{"id": "4.3", "text": "x"}, {"text": "no id"}, {"id": "05.1", "text": "x"},
                               {"id": "04.4", "text": " "}, "04.5"]
    listing = LISTING + ["- **05.1** x (graded: `test_parallel`)", "- **04.4** (graded: `test_parallel`)"]
    graded = GRADED + [("test_more", ["05.1", "04.4", "4.3"])]
    lesson = tmp_path / "04_analyze.ipynb"
    nbformat.write(_lesson(objectives=objectives, listing=listing), lesson)
    problems = objective_problems(lesson, _source(graded))
    for pattern in [r"objective #3 has id '4\.3', not of the form NN\.k \(e\.g\. '04\.3'\)",
                    r"objective #4 has id None",
                    r"objective #7 must be an object \{\"id\": \.\.\., \"text\": \.\.\.}, got '04\.5'",
                    r"objective 05\.1 does not belong to lesson 04", r"objective 04\.4 has no text"]:
        _one(problems, pattern)


# -------------------------------------------------------------------------------------------- release
def test_release_keeps_the_cells_bloomlib_metadata():
    """nbgrader's own preprocessors (bloomlib.course.grading.release_notebook) keep it in the exercise."""
    source = _source()
    exercise = release_notebook(source)
    graded = [c for c in exercise.cells if c.metadata.get("nbgrader", {}).get("grade")]
    assert [c.metadata["bloomlib"] for c in graded] == [{"objectives": o} for _, o in GRADED]
    assert "BEGIN HIDDEN TESTS" not in "".join(c.source for c in graded), "release did run (hidden tests gone)"
    assert objective_problems(_lesson(), exercise) == []


SOURCES_WITH_OBJECTIVES = [p for p in sorted(REPO.glob("solutions/[0-9][0-9]_*.ipynb"))
                           if any("bloomlib" in c.get("metadata", {}) for c in nbformat.read(p, 4).cells)]


@pytest.mark.parametrize("source", SOURCES_WITH_OBJECTIVES or [pytest.param(None, marks=pytest.mark.skip(
    reason="no nbgrader source in solutions/ marks a cell with bloomlib metadata yet"))],
    ids=[p.stem for p in SOURCES_WITH_OBJECTIVES] or ["none"])
def test_release_of_the_course_keeps_bloomlib_metadata(source):
    nb = nbformat.read(source, as_version=4)
    exercise = release_notebook(nb)
    before = {c.metadata["nbgrader"]["grade_id"]: c.metadata["bloomlib"] for c in nb.cells
              if "bloomlib" in c.metadata and "nbgrader" in c.metadata}
    after = {c.metadata["nbgrader"]["grade_id"]: c.metadata.get("bloomlib") for c in exercise.cells
             if c.metadata.get("nbgrader", {}).get("grade_id") in before}
    assert after == before


# --------------------------------------------------------------------------------------------- the course
LESSONS = sorted(REPO.glob("notebooks/[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("lesson", LESSONS, ids=[p.stem for p in LESSONS])
def test_course_lesson_objectives_are_all_assessed(lesson):
    source = REPO / "solutions" / lesson.name
    assert source.exists(), f"{lesson.name} has no nbgrader source {source}"
    assert objective_problems(lesson, source) == []


# ---------------------------------------------------------------------------------------------- sections
def test_sections_must_be_the_lessons_own_section_titles():
    """An objective may name the '## ' sections that teach it (what `bloomlib progress` tells a learner to revisit)."""
    assert section_titles(_lesson()) == ["Objectives"]
    assert objective_problems(_lesson(), _source()) == []
    bad = [dict(OBJECTIVES[0], sections=["1 · Nowhere"]), dict(OBJECTIVES[1], sections="Objectives")]
    problems = objective_problems(_lesson(objectives=bad), _source())
    _one(problems, r"objective 04\.1 names section '1 · Nowhere', which is not a '## ' heading of the lesson")
    _one(problems, r"objective 04\.2: sections must be a non-empty list .* got 'Objectives'")
    assert len(problems) == 2
    none = [{k: v for k, v in OBJECTIVES[0].items() if k != "sections"}, OBJECTIVES[1]]
    _one(objective_problems(_lesson(objectives=none), _source()), r"objective 04\.1 names no sections")
