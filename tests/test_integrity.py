"""Answers must be the learner's own code (bloomlib.course.integrity): an answer that imports or calls bloomlib, or
a call its question forbids, scores that question 0 with feedback that says why, in `bloomlib grade` and in
nbgrader's own autograde alike; the tests' own reference computations may still use what answers may not."""
from __future__ import annotations

import copy
import textwrap
from pathlib import Path

import nbformat
import pytest

import grading_harness as harness
from bloomlib.course import grading, integrity

REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO / "solutions" / "03_apply.ipynb"
EXERCISE = REPO / "exercises" / "03_apply.ipynb"
SDPA = "torch.nn.functional.scaled_dot_product_attention"

source03, exercise03 = harness.notebook_fixtures(SOURCE, EXERCISE)


def _cell(kind: str, grade_id: str | None, code: str, points: int = 1):
    cell = nbformat.v4.new_code_cell(textwrap.dedent(code).strip())
    if grade_id:
        cell.metadata["nbgrader"] = {"grade_id": grade_id, "schema_version": 3, "task": False,
                                     "solution": kind == "answer", "grade": kind == "test",
                                     "locked": kind != "answer", **({"points": points} if kind == "test" else {})}
    return cell


ATTEND = """
def attend(q, k, v):
    ### BEGIN SOLUTION
    w = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.size(-1)), dim=-1)
    return w @ v
    ### END SOLUTION
"""
TEST_ATTEND = f"""
# not allowed in this answer: {SDPA}
torch.manual_seed(0)
q, k, v = torch.randn(3, 2, 5, 4, dtype=torch.float64).unbind(0)
ref = torch.nn.functional.scaled_dot_product_attention(q, k, v)  # the test's own reference may use it
assert torch.allclose(attend(q, k, v), ref), "attend is not softmax(q k^T / sqrt(d)) v"
"""
DOUBLE = "def double(x):\n    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION"


def _source() -> nbformat.NotebookNode:
    return nbformat.v4.new_notebook(cells=[
        _cell("locked", "setup", "import math\nimport torch"),
        _cell("answer", "attend", ATTEND), _cell("test", "test_attend", TEST_ATTEND, points=2),
        _cell("answer", "double", DOUBLE), _cell("test", "test_double", "assert double(3) == 6, 'double(3) != 6'"),
        _cell("locked", "check_my_notebook", "import bloomlib.masks  # a locked course cell may use bloomlib"),
    ])


def _submission(source, answers: dict[str, str], extra: dict[int, str] | None = None) -> nbformat.NotebookNode:
    nb = harness.fill(grading.release_notebook(copy.deepcopy(source)), source,
                      {k: textwrap.dedent(v).strip() for k, v in answers.items()})
    for index, code in sorted((extra or {}).items(), reverse=True):  # the learner's own cells, without metadata
        nb.cells.insert(index, nbformat.v4.new_code_cell(textwrap.dedent(code).strip()))
    return nb


def _graded(submission, source) -> dict[str, dict]:
    return {q["id"]: q for q in grading.grade_notebook(submission, source=source)["questions"]}


HONEST = {"attend": "def attend(q, k, v):\n    return torch.softmax(q @ k.transpose(-2, -1) / q.size(-1) ** 0.5, -1) @ v"}
CHEATS = {
    "imports bloomlib": ({"attend": """
        from bloomlib import scaled_dot_product_attention as ref
        def attend(q, k, v):
            return ref(q, k, v)"""}, None),
    "imports it by a computed name inside the function": ({"attend": """
        import importlib
        def attend(q, k, v):
            return importlib.import_module("bloom" + "lib").scaled_dot_product_attention(q, k, v)"""}, None),
    "calls the forbidden fused attention": ({"attend": """
        import torch.nn.functional as F
        def attend(q, k, v):
            return F.scaled_dot_product_attention(q, k, v)"""}, None),
    "keeps an alias of the forbidden function": ({"attend": """
        from torch.nn.functional import scaled_dot_product_attention as fused
        def attend(q, k, v):
            return fused(q, k, v)"""}, None),
    "imports bloomlib in a cell of its own": ({"attend": "def attend(q, k, v):\n    return sdpa(q, k, v)"},
                                              {1: "from bloomlib.attention import scaled_dot_product_attention as sdpa"}),
}


@pytest.mark.parametrize("cheat", list(CHEATS))
def test_an_answer_that_uses_what_it_may_not_scores_zero_and_is_told_why(cheat):
    answers, extra = CHEATS[cheat]
    graded = _graded(_submission(_source(), {**HONEST, **answers}, extra), _source())
    attend = graded["test_attend"]
    assert attend["score"] == 0 and attend["max_score"] == 2, attend
    what = "bloomlib" if "bloomlib" in cheat or "computed name" in cheat else SDPA
    assert attend["feedback"].startswith("your answer attend uses") and what in attend["feedback"], attend
    assert "write it yourself" in attend["feedback"]
    assert graded["test_double"]["score"] == 1, "another question is not touched"


def test_honest_answers_pass_even_where_the_test_uses_the_forbidden_function():
    graded = _graded(_submission(_source(), HONEST), _source())
    assert [(q["id"], q["score"], q["feedback"]) for q in graded.values()] == [("test_attend", 2, ""), ("test_double", 1, "")]


def test_the_issues_cheat_on_exercise_03_scores_zero(source03, exercise03):
    """The answer the issue tried ("13/13 on lesson 03") scores 0 on the attention question, with the reason."""
    cheat = ("from bloomlib import scaled_dot_product_attention as bloomlib_sdpa\n"
             "def scaled_dot_product_attention(Q, K, V, mask=None):\n    return bloomlib_sdpa(Q, K, V, mask=mask)")
    result = grading.grade_notebook(harness.fill(exercise03, source03, {"scaled_dot_product_attention": cheat}),
                                    source=source03)
    attention = [q for q in result["questions"] if q["id"].startswith("test_attention")]
    assert attention and all(q["score"] == 0 and "uses bloomlib" in q["feedback"] for q in attention), attention
    others = [q for q in result["questions"] if not q["id"].startswith(("test_attention", "test_padded"))]
    assert others and all(q["score"] == q["max_score"] for q in others), others  # (padded attention calls it)


def test_guard_leaves_no_trace_in_the_graded_notebook_or_the_learners_namespace():
    source = _source()
    submission = _submission(source, {**HONEST, "double": "def double(x):\n    return x + x\nprint(sorted(n for n in "
                                                             "globals() if 'guard' in n or 'bloomlib' in n))"})
    guarded = integrity.guard(grading.assemble(submission, source))
    executed = grading.execute(guarded)
    assert "[]" in "".join(o.get("text", "") for o in executed.cells[4].outputs), "no new name for the learner"
    cleaned = integrity.apply_report(executed)
    assert [c.source for c in cleaned.cells] == [c.source for c in grading.assemble(submission, source).cells]


def test_a_declaration_that_is_not_dotted_names_is_refused():
    source = _source()
    source.cells[2].source = "# not allowed in this answer: sdpa\n" + source.cells[2].source
    with pytest.raises(ValueError, match="question attend: .* dotted names"):
        integrity.forbidden_calls(source)


@pytest.mark.slow
def test_nbgrader_autograde_with_the_integrity_steps_agrees(tmp_path):
    """nbgrader's own autograde, with nbgrader_preprocessors() in its config, scores the cheat 0 as we do."""
    path = tmp_path / "src" / "01_toy.ipynb"
    path.parent.mkdir()
    nbformat.write(_source(), path)
    (tmp_path / "course").mkdir()
    harness.nbgrader_release(tmp_path / "course", path)
    config = tmp_path / "course" / "nbgrader_config.py"
    config.write_text(config.read_text() + "from bloomlib.course.integrity import nbgrader_preprocessors\n"
                      "c.Autograde.autograde_preprocessors = nbgrader_preprocessors()\n")
    submission = _submission(_source(), {**HONEST, **CHEATS["calls the forbidden fused attention"][0]})
    raw_score, max_score = harness.nbgrader_autograde(tmp_path / "course", path, submission)
    ours = grading.grade_notebook(submission, source=_source())
    assert (raw_score, max_score) == (ours["score"], ours["max_score"]) == (1, 3)
