"""The exercise pipeline: release (solutions/ -> exercises/) and `bloomlib grade`, on exercise 03's notebooks.

Lesson 03's own questions and planted mistakes are graded in tests/test_lesson_03.py.
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

import grading_harness as harness
from bloomlib.course import grading

REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO / "solutions" / "03_apply.ipynb"
EXERCISE = REPO / "exercises" / "03_apply.ipynb"


source, exercise = harness.notebook_fixtures(SOURCE, EXERCISE)


# ---------------------------------------------------------------------------------------------- release
def test_exercises_are_up_to_date():
    stale = grading.release(check=True)
    assert not stale, f"exercises out of date: {stale}; run `make exercises`"


def test_release_strips_solutions_and_hidden_tests(source, exercise):
    assert [harness.gid(c) for c in exercise.cells] == [harness.gid(c) for c in source.cells]
    text = "\n".join(c.source for c in exercise.cells)
    for marker in ("BEGIN SOLUTION", "BEGIN HIDDEN TESTS", "__module__", "math.sqrt"):
        assert marker not in text
    code = "\n".join(c.source for c in exercise.cells if c.cell_type == "code")
    solutions = sum(c.source.count("### BEGIN SOLUTION") for c in source.cells if harness.is_answer(c))
    assert code.count("raise NotImplementedError()") == solutions > sum(map(harness.is_answer, source.cells))  # 2 in heads
    for c in exercise.cells:
        assert c.cell_type != "code" or (c.outputs == [] and c.execution_count is None)


def test_release_detects_a_stale_exercise(tmp_path, source):
    (tmp_path / "sol").mkdir()
    nbformat.write(source, tmp_path / "sol" / SOURCE.name)
    assert grading.release(tmp_path / "sol", tmp_path / "ex") == [tmp_path / "ex" / SOURCE.name]
    assert grading.release(tmp_path / "sol", tmp_path / "ex", check=True) == []
    changed = copy.deepcopy(source)
    next(c for c in changed.cells if harness.gid(c) == "test_causal_mask").source += "\nassert True"
    nbformat.write(changed, tmp_path / "sol" / SOURCE.name)
    assert grading.release(tmp_path / "sol", tmp_path / "ex", check=True) == [tmp_path / "ex" / SOURCE.name]
    # the objective a graded cell assesses is part of what must match
    nbformat.write(source, tmp_path / "sol" / SOURCE.name)
    assert grading.release(tmp_path / "sol", tmp_path / "ex", check=True) == []
    retagged = copy.deepcopy(source)
    next(c for c in retagged.cells if harness.gid(c) == "test_causal_mask").metadata["bloomlib"] = {"objectives": ["03.9"]}
    nbformat.write(retagged, tmp_path / "sol" / SOURCE.name)
    assert grading.release(tmp_path / "sol", tmp_path / "ex", check=True) == [tmp_path / "ex" / SOURCE.name]


def test_unknown_notebook_name_is_a_clear_error(tmp_path, capsys):
    nb = tmp_path / "99_nothing.ipynb"
    nbformat.write(nbformat.v4.new_notebook(), nb)
    assert grading.main([str(nb)]) == 2
    assert "no source notebook for '99_nothing.ipynb'" in capsys.readouterr().err


def _installed_without_checkout(tmp_path):
    """The grading module as pip would install it: in site-packages, with no solutions/ or exercises/ near it."""
    import importlib.util

    path = tmp_path / "site-packages" / "bloomlib" / "course" / "grading.py"
    path.parent.mkdir(parents=True)
    path.write_text(Path(grading.__file__).read_text())
    spec = importlib.util.spec_from_file_location("installed_grading", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_installed_without_a_checkout_says_to_pass_the_solutions_folder(tmp_path, capsys, source):
    g = _installed_without_checkout(tmp_path)
    assert g.SOLUTIONS_DIR == tmp_path / "site-packages" / "solutions" and not g.SOLUTIONS_DIR.exists()
    nb = tmp_path / SOURCE.name
    nbformat.write(nbformat.v4.new_notebook(), nb)
    for call in (lambda: g.find_source(nb), lambda: g.grade_notebook(nb), lambda: g.release(),
                 lambda: g.release(check=True)):
        with pytest.raises(ValueError, match=r"no solutions folder at .*--solutions DIR.*solutions_dir="):
            call()
    assert g.main([str(nb)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bloomlib grade: no solutions folder at ") and "--solutions DIR" in err
    assert g.main(["release", "--check"]) == 2
    assert "--solutions DIR" in capsys.readouterr().err
    # the folders passed explicitly work without a checkout
    (tmp_path / "sol").mkdir()
    nbformat.write(source, tmp_path / "sol" / SOURCE.name)
    assert g.find_source(nb, solutions_dir=tmp_path / "sol") == tmp_path / "sol" / SOURCE.name
    with pytest.raises(ValueError, match="--exercises DIR"):
        g.release(tmp_path / "sol", check=True)
    assert g.release(tmp_path / "sol", tmp_path / "ex", check=True) == [tmp_path / "ex" / SOURCE.name]
    assert g.main(["release", "--check", "--solutions", str(tmp_path / "sol"), "--exercises",
                   str(tmp_path / "ex")]) == 1
    with pytest.raises(ValueError, match="does not exist"):
        g.find_source(nb, solutions_dir=tmp_path / "missing")


# ---------------------------------------------------------------------------------------------- grading
def test_cli_json_unactivated_with_solutions_dir(tmp_path, source, exercise):
    """The console script with PATH lacking the venv, --solutions and --json, on a cut-down notebook."""
    keep = {"setup", "causal_mask", "test_causal_mask", "heads", "test_split_heads", "test_merge_heads"}
    (tmp_path / "sol").mkdir()
    nbformat.write(harness.cut(source, keep), tmp_path / "sol" / SOURCE.name)
    blank = next(c.source for c in exercise.cells if harness.gid(c) == "causal_mask")
    nbformat.write(harness.cut(harness.fill(exercise, source, {"causal_mask": blank}), keep), tmp_path / SOURCE.name)
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env["PATH"] = "/usr/bin:/bin"
    bloomlib = Path(sys.executable).parent / "bloomlib"
    proc = subprocess.run([str(bloomlib), "grade", str(tmp_path / SOURCE.name), "--json", "--solutions",
                           str(tmp_path / "sol")], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"notebook": SOURCE.name, "score": 2.0, "max_score": 3.0,
                                       "manual_max_score": 0.0, "questions": [
        {"id": "test_causal_mask", "score": 0.0, "max_score": 1.0,
         "feedback": "NotImplementedError: this answer is not written yet", "manual": False},
        {"id": "test_split_heads", "score": 1.0, "max_score": 1.0, "feedback": "", "manual": False},
        {"id": "test_merge_heads", "score": 1.0, "max_score": 1.0, "feedback": "", "manual": False}]}


def test_tampered_or_deleted_tests_do_not_raise_a_score(source, exercise):
    keep = {"setup", "causal_mask", "test_causal_mask", "scaled_dot_product_attention", "test_attention_no_mask",
            "test_attention_mask", "test_attention_fully_masked"}
    wrong = "def causal_mask(seq_len):\n    return torch.ones(seq_len, seq_len, dtype=torch.bool).triu(1)"
    sub = harness.cut(harness.fill(exercise, source, {"causal_mask": wrong}), keep)
    for c in sub.cells:
        if harness.gid(c) == "test_causal_mask":
            c.source, c.metadata.nbgrader["points"] = "pass", 100
        if harness.gid(c) == "test_attention_mask":
            c.source = "assert True"
    sub.cells = [c for c in sub.cells if harness.gid(c) != "test_attention_no_mask"]  # deleted
    bonus = nbformat.v4.new_code_cell("pass", metadata={"nbgrader": {"grade": True, "grade_id": "bonus", "points": 50,
                                                                    "locked": True, "solution": False}})
    sub.cells.append(bonus)
    result = grading.grade_notebook(sub, source=harness.cut(source, keep))
    assert {q["id"]: q["score"] for q in result["questions"]} == {
        "test_causal_mask": 0, "test_attention_no_mask": 1, "test_attention_mask": 1, "test_attention_fully_masked": 1}
    assert result["max_score"] == 4 and result["score"] == 3
    assert "mask polarity inverted" in result["questions"][0]["feedback"]


def _strip_nbgrader(nb, cell_ids: bool = False):
    nb = copy.deepcopy(nb)
    for c in nb.cells:
        c.metadata.pop("nbgrader", None)
        if cell_ids:
            c.id = "x" + c.id[1:]  # ids any editor might give fresh cells
    return nb


def test_answers_keep_their_place_when_an_editor_drops_nbgrader_metadata(source, exercise):
    """Cells matched by Jupyter cell id when the nbgrader metadata is gone: the answers are graded in order."""
    keep = {"setup", "causal_mask", "test_causal_mask", "heads", "test_split_heads", "test_merge_heads"}
    wrong = "def causal_mask(seq_len):\n    return torch.ones(seq_len, seq_len, dtype=torch.bool).triu(1)"
    sub = _strip_nbgrader(harness.cut(harness.fill(exercise, source, {"causal_mask": wrong}), keep))
    assert not any(harness.gid(c) for c in sub.cells)
    result = grading.grade_notebook(sub, source=harness.cut(source, keep))
    assert {q["id"]: q["score"] for q in result["questions"]} == {
        "test_causal_mask": 0, "test_split_heads": 1, "test_merge_heads": 1}
    assert "mask polarity inverted" in result["questions"][0]["feedback"]


def test_notebook_without_metadata_or_cell_ids_is_a_clear_error(tmp_path, source, exercise, capsys):
    """Nothing to match answers by: refuse with a message instead of grading the answers as missing."""
    sub = _strip_nbgrader(harness.fill(exercise, source), cell_ids=True)
    with pytest.raises(ValueError, match="nbgrader metadata and cell ids are gone"):
        grading.assemble(sub, source)
    nbformat.write(sub, tmp_path / SOURCE.name)
    assert grading.main([str(tmp_path / SOURCE.name)]) == 2
    assert "Nothing was graded" in capsys.readouterr().err


def test_endless_loop_crash_and_syntax_error_cost_only_their_answer():
    """A pure-Python source notebook: the grader's machinery, with a short timeout."""
    def cell(kind, gid, src, points=1):
        meta = {"grade_id": gid, "grade": kind == "test", "solution": kind == "answer", "locked": kind != "answer",
                "schema_version": 3}
        if kind == "test":
            meta["points"] = points
        return nbformat.v4.new_code_cell(src, metadata={"nbgrader": meta})
    src = nbformat.v4.new_notebook(cells=[
        cell("setup", "setup", "BASE = 40"),
        cell("answer", "loop", "def loop():\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION"),
        cell("test", "test_loop", "assert loop() == 1, 'loop() must return 1'"),
        cell("answer", "add", "def add():\n    ### BEGIN SOLUTION\n    return BASE + 2\n    ### END SOLUTION"),
        cell("test", "test_add", "assert add() == 42, 'add() must return 42'", points=2),
        cell("answer", "syntax", "def syntax():\n    ### BEGIN SOLUTION\n    return 3\n    ### END SOLUTION"),
        cell("test", "test_syntax", "assert syntax() == 3, 'syntax() must return 3'"),
        cell("answer", "late", "def late():\n    ### BEGIN SOLUTION\n    return add()\n    ### END SOLUTION"),
        cell("test", "test_late", "assert late() == 42, 'late() must return 42'"),
    ])
    sub = grading.release_notebook(src)
    answers = {"loop": "def loop():\n    while True:\n        pass", "add": "def add():\n    return BASE + 2",
               "syntax": "def syntax(:\n    return 3", "late": "import os\ndef late():\n    return add()"}
    for c in sub.cells:
        if harness.gid(c) in answers:
            c.source = answers[harness.gid(c)]
    crash = nbformat.v4.new_code_cell("import os\nos._exit(1)")  # the learner's own cell kills the kernel
    sub.cells.insert(5, crash)
    result = grading.grade_notebook(sub, source=src, timeout=3)
    got = {q["id"]: (q["score"], q["feedback"]) for q in result["questions"]}
    assert got["test_loop"][0] == 0 and "longer than 3 s" in got["test_loop"][1]
    assert got["test_add"] == (2, "")  # defined before the timeout: replayed after the restart
    assert got["test_syntax"][0] == 0 and "NameError" in got["test_syntax"][1]
    assert got["test_late"] == (1, ""), "cells after a crash run in a restarted kernel"
    assert result["score"] == 3 and result["max_score"] == 5


# ------------------------------------------------------------------------------------ check my notebook
def test_check_my_notebook_grades_the_saved_copy(tmp_path, monkeypatch, capsys, source, exercise):
    """The in-notebook check grades the file on disk like `bloomlib grade` (a learner's slip costs its point)."""
    for var in (grading.GRADING_ENV, "NBGRADER_EXECUTION"):
        monkeypatch.delenv(var, raising=False)
    nbformat.write(harness.fill(exercise, source, {"heads": harness.edited(source, "heads", ("x.transpose(1, 2).reshape(B, T, H * hd)", "x.reshape(B, T, H * hd)"))}),
                   tmp_path / EXERCISE.name)
    monkeypatch.chdir(tmp_path)
    result = grading.check_my_notebook(EXERCISE.name, solutions_dir=SOURCE.parent)
    out = capsys.readouterr().out
    assert result["score"] == result["max_score"] - 1
    assert f"Grading {EXERCISE.name} as saved at" in out and "save first" in out
    assert out.splitlines()[-1].split() == ["total", f"{result['score']:g}/{result['max_score']:g}"]
    with pytest.raises(ValueError, match="no saved notebook 'nope.ipynb'.*save it first"):
        grading.check_my_notebook("nope.ipynb")


def test_check_my_notebook_does_nothing_inside_a_grading_run(tmp_path, monkeypatch, capsys):
    """Inside `bloomlib grade`'s kernel, and under nbgrader's NBGRADER_EXECUTION, the check never grades itself."""
    cell = nbformat.v4.new_code_cell("from bloomlib.course.grading import check_my_notebook\n"
                                     "print(check_my_notebook('missing.ipynb'))")
    ran = grading.execute(nbformat.v4.new_notebook(cells=[cell]), cwd=tmp_path)
    assert "".join(o.get("text", "") for o in ran.cells[0].outputs) == \
        "check_my_notebook: skipped inside a grading run\nNone\n"
    monkeypatch.delenv(grading.GRADING_ENV, raising=False)
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")
    assert grading.check_my_notebook("missing.ipynb") is None
    assert capsys.readouterr().out == "check_my_notebook: skipped inside a grading run\n"
