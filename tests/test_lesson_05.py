"""Lesson 05's graded exercise (solutions/05_evaluate.ipynb -> exercises/05_evaluate.ipynb): blank scores 0, the
solution full marks, every planted mistake loses points with feedback that names it (tests/grading_harness.py),
and the written judgement is left to a human, by us and by nbgrader alike."""
from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest

import grading_harness as harness
from bloomlib.course import grading

REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO / "solutions" / "05_evaluate.ipynb"
EXERCISE = REPO / "exercises" / "05_evaluate.ipynb"
OBJECTIVES = {"05.1", "05.2", "05.3", "05.4", "05.5", "05.6"}
AUTO_POINTS, MANUAL_POINTS = 14, 2
MANUAL = "plan_judgement"

source, exercise = harness.notebook_fixtures(SOURCE, EXERCISE)


# ------------------------------------------------------------------------------------------ structure
def test_exercise_is_released_from_the_source_without_answers_or_rubric(source, exercise):
    assert grading.normalize(grading.release_notebook(source)) == grading.normalize(exercise)
    text = "\n".join(c.source for c in exercise.cells)
    for marker in ("BEGIN HIDDEN TESTS", "BEGIN SOLUTION", "BEGIN MARK SCHEME", "Rubric"):
        assert marker not in text
    for cell in filter(harness.is_answer, source.cells):
        body = cell.source.split("### BEGIN SOLUTION")[1].split("### END SOLUTION")[0]
        for line in filter(None, (l.strip() for l in body.splitlines())):
            assert line not in text, (harness.gid(cell), line)
    for nb in (source, exercise):
        assert not any("bloomlib" in c.source for c in nb.cells if c.cell_type == "code")


def test_every_graded_cell_names_objectives_of_lesson_05(source):
    harness.assert_graded_cells_name_objectives(source, OBJECTIVES)


def test_points_table_and_headings_match_the_cells(source):
    """The intro's table and each question's heading give the points and objectives its graded cells carry."""
    by_id = {harness.gid(c): c for c in source.cells}
    rows = re.findall(r"^\| (\d+) \| .+? \| ([\d., ]+) \| (\d+) \|$", source.cells[0].source, re.M)
    headings = [int(m) for c in source.cells if c.cell_type == "markdown"
                for m in re.findall(r"^## \d+ · .+\((\d+) points?(?:, marked by hand)?\)$", c.source, re.M)]
    qs = harness.questions(source)
    assert len(rows) == len(qs) == len(headings)
    for (number, objectives, points), (answer, tests), heading in zip(rows, qs.items(), headings):
        graded = tests or [answer]  # the written answer is its own graded cell
        assert int(points) == heading == sum(by_id[t].metadata.nbgrader["points"] for t in graded), answer
        assert {o.strip() for o in objectives.split(",")} == {o for t in graded for o in harness.objectives_of(by_id[t])}
    assert sum(int(r[2]) for r in rows) == AUTO_POINTS + MANUAL_POINTS


# ------------------------------------------------------------------------------------------ mistakes
LOSS = """
def chinchilla_loss(N, D, E, A, B, alpha, beta):
    N, D = np.asarray(N, dtype=float), np.asarray(D, dtype=float)
    loss = {expr}
    return {ret}
"""
LOSS_OK = dict(expr="E + A / N ** alpha + B / D ** beta", ret="float(loss) if loss.ndim == 0 else loss")
OPT = """
def compute_optimal(C, E, A, B, alpha, beta):
    G = {G}
    N = G * ({C6}) ** ({exp})
    return {ret}
"""
OPT_OK = dict(G="(alpha * A / (beta * B)) ** (1 / (alpha + beta))", C6="C / 6", exp="beta / (alpha + beta)",
              ret="float(N), float(C / (6 * N))")
ENT = "def head_entropy(weights):\n    return {expr}\n"
ENT_OK = dict(expr="-torch.special.xlogy(weights, weights).sum(dim=-1).mean(dim=-1)")
EMERGENCE = "exact_match_estimate = {estimate}\nemergence_claim = {claim}"
EMERGENCE_OK = dict(estimate="0.9 ** 5", claim='"b"')
PLANS = "plan_printed = {printed}\nplan_refit = {refit}"
PLANS_OK = dict(printed='"b"', refit='"a"')

_loss = functools.partial(harness.variant, LOSS, LOSS_OK)
_opt = functools.partial(harness.variant, OPT, OPT_OK)
_ent = functools.partial(harness.variant, ENT, ENT_OK)
_emergence = functools.partial(harness.variant, EMERGENCE, EMERGENCE_OK)
_plans = functools.partial(harness.variant, PLANS, PLANS_OK)

M = harness.Mistake
MISTAKES = [
    M("chinchilla_loss", _loss(expr="A / N ** alpha + B / D ** beta"), "test_chinchilla_loss", "E left out"),
    M("chinchilla_loss", _loss(expr="E + A / N ** beta + B / D ** alpha"), "test_chinchilla_loss", "exponents swapped"),
    M("chinchilla_loss", _loss(expr="E + B / N ** alpha + A / D ** beta"), "test_chinchilla_loss", "A and B swapped"),
    M("chinchilla_loss", _loss(expr="E + A * N ** alpha + B * D ** beta"), "test_chinchilla_loss",
      "multiplied by N^alpha"),
    M("chinchilla_loss", _loss(expr="E - A / N ** alpha - B / D ** beta"), "test_chinchilla_loss",
      "subtracted the two terms"),
    M("chinchilla_loss", _loss(expr="E + (A + B) / (N * D) ** ((alpha + beta) / 2)"), "test_chinchilla_loss",
      "not a sum of two power laws"),
    M("chinchilla_loss", "def chinchilla_loss(N, D, E, A, B, alpha, beta):\n"
      "    return E + A / math.pow(N, alpha) + B / math.pow(D, beta)", "test_chinchilla_loss_arrays",
      "may be numpy arrays"),
    M("chinchilla_loss", _loss(ret="loss.tolist()"), "test_chinchilla_loss_arrays", "return a numpy array"),
    M("chinchilla_loss", "from fakelib import chinchilla_loss", "test_chinchilla_loss",
      "define chinchilla_loss in this notebook"),
    M("pinned_constants", 'pinned_constants = "a"', "test_pinned_constants", "five orders of magnitude"),
    M("pinned_constants", 'pinned_constants = "c"', "test_pinned_constants", "not whether a run worked"),
    M("pinned_constants", 'pinned_constants = "d"', "test_pinned_constants", "trust the surface in range"),
    M("pinned_constants", 'pinned_constants = "bb"', "test_pinned_constants", "must be one letter in quotes"),
    M("compute_optimal", _opt(C6="C", ret="float(N), float(C / N)"), "test_compute_optimal", "C = N·D without the 6"),
    M("compute_optimal", _opt(ret="float(N), float(C / N)"), "test_compute_optimal", "D_opt computed as C/N"),
    M("compute_optimal", _opt(exp="alpha / (alpha + beta)"), "test_compute_optimal",
      "alpha and beta swapped in the exponent"),
    M("compute_optimal", _opt(G="(beta * B / (alpha * A)) ** (1 / (alpha + beta))"), "test_compute_optimal",
      "G upside down"),
    M("compute_optimal", _opt(G="(beta * A / (alpha * B)) ** (1 / (alpha + beta))", exp="alpha / (alpha + beta)"),
      "test_compute_optimal", "alpha and beta swapped"),
    M("compute_optimal", _opt(ret="float(C / (6 * N)), float(N)"), "test_compute_optimal", "(D, N) returned"),
    M("compute_optimal", _opt(ret="[float(N), float(C / (6 * N))]"), "test_compute_optimal", "return a tuple"),
    M("compute_optimal", _opt(G='(HOFFMANN_2022["alpha"] * HOFFMANN_2022["A"] / (HOFFMANN_2022["beta"] * '
                                'HOFFMANN_2022["B"])) ** (1 / (HOFFMANN_2022["alpha"] + HOFFMANN_2022["beta"]))',
                              exp='HOFFMANN_2022["beta"] / (HOFFMANN_2022["alpha"] + HOFFMANN_2022["beta"])'),
      "test_compute_optimal_refit", "for the refit"),
    M("compute_optimal", "from fakelib import compute_optimal", "test_compute_optimal",
      "define compute_optimal in this notebook"),
    M("plans", _plans(printed='"a"'), "test_plan_printed", "under the printed constants plan a reaches"),
    M("plans", _plans(refit='"b"'), "test_plan_refit", "under the refit plan a reaches"),
    M("plans", _plans(printed='"c"'), "test_plan_printed", "must be one letter in quotes, one of 'a', 'b'"),
    M("head_entropy", _ent(expr="-(torch.special.xlogy(weights, weights) / math.log(2)).sum(-1).mean(-1)"),
      "test_head_entropy", "entropy in bits"),
    M("head_entropy", _ent(expr="-torch.special.xlogy(weights, weights).sum(-1).sum(-1)"), "test_head_entropy",
      "summed over the queries"),
    M("head_entropy", _ent(expr="torch.special.xlogy(weights, weights).sum(-1).mean(-1)"), "test_head_entropy",
      "the sign"),
    M("head_entropy", _ent(expr="-torch.special.xlogy(weights, weights).mean(-1).mean(-1)"), "test_head_entropy",
      "averaged over the keys"),
    M("head_entropy", _ent(expr="-torch.special.xlogy(weights, weights).sum(-1)"), "test_head_entropy",
      "one entropy per (batch, head)"),
    M("head_entropy", _ent(expr="-(weights * weights.log()).sum(-1).mean(-1)"), "test_head_entropy_masked",
      "NaN from 0·log 0"),
    M("head_entropy", _ent(expr="-torch.special.xlogy(weights, weights).sum(3).mean(2)"), "test_head_entropy_masked",
      "any number of leading dims"),
    M("head_entropy", _ent(expr="-torch.special.xlogy(weights, weights).sum(-1).mean(-1).float()"),
      "test_head_entropy_masked", "keep the dtype of weights"),
    M("head_entropy", "from fakelib import head_entropy", "test_head_entropy", "define head_entropy in this notebook"),
    M("head_judgement", 'head_judgement = "a"', "test_head_judgement", "test importance by ablation"),
    M("head_judgement", 'head_judgement = "c"', "test_head_judgement", "a sharp head is doing a precise job"),
    M("head_judgement", 'head_judgement = "d"', "test_head_judgement", "that spread is what makes the number useful"),
    M("emergence", _emergence(estimate="0.9"), "test_exact_match_estimate", "that is the per-digit accuracy"),
    M("emergence", _emergence(estimate="0.9 * 5"), "test_exact_match_estimate", "an accuracy is between 0 and 1"),
    M("emergence", _emergence(estimate="0.9 ** 4"), "test_exact_match_estimate", "p^4"),
    M("emergence", _emergence(estimate="1 - 0.1 ** 5"), "test_exact_match_estimate", "at least one digit is right"),
    M("emergence", _emergence(estimate="0.5"), "test_exact_match_estimate", "not a coin flip"),
    M("emergence", _emergence(estimate="0.7"), "test_exact_match_estimate", "the estimate is p^5"),
    M("emergence", _emergence(estimate='"0.59"'), "test_exact_match_estimate", "must be a number"),
    M("emergence", _emergence(claim='"a"'), "test_emergence_claim", "a smooth per-step improvement looks like"),
    M("emergence", _emergence(claim='"c"'), "test_emergence_claim", "does not rule emergence out"),
    M("emergence", _emergence(claim='"d"'), "test_emergence_claim", "thresholds differ from task to task"),
    M("induction_claim", 'induction_claim = "a"', "test_induction_claim", "one attention layer cannot compose"),
    M("induction_claim", 'induction_claim = "c"', "test_induction_claim", "nothing to memorise"),
    M("induction_claim", 'induction_claim = "d"', "test_induction_claim", "the same warm-up and no bump"),
    M("max_sequences", "max_sequences = 40", "test_max_sequences", "without the factor 2"),
    M("max_sequences", "max_sequences = 10", "test_max_sequences", "counted 4 bytes per element"),
    M("max_sequences", "max_sequences = 40e9 // (2 * 32 * 32 * 128 * 2 * 4096)", "test_max_sequences",
      "is not 40 GiB"),
    M("max_sequences", "max_sequences = 1280", "test_max_sequences", "without the layers"),
    M("max_sequences", "max_sequences = 2", "test_max_sequences", "counted in bits"),
    M("max_sequences", "max_sequences = 20.5", "test_max_sequences", "a whole number"),
    M("max_sequences", "max_sequences = 24", "test_max_sequences", "bytes per token = 2 · layers"),
]

A = harness.Accepted
ACCEPTED = [
    A("chinchilla_loss", "def chinchilla_loss(N, D, E, A, B, alpha, beta):\n"
      "    return E + A * np.power(np.asarray(N, dtype=float), -alpha) + B * np.power(np.asarray(D, dtype=float), -beta)"),
    A("chinchilla_loss", _loss(expr="E + A * np.exp(-alpha * np.log(N)) + B * np.exp(-beta * np.log(D))")),
    A("compute_optimal", "def compute_optimal(C, E, A, B, alpha, beta):\n    s = alpha + beta\n"
      "    N = (alpha * A / (beta * B)) ** (1 / s) * (C / 6) ** (beta / s)\n"
      "    D = (beta * B / (alpha * A)) ** (1 / s) * (C / 6) ** (alpha / s)\n    return N, D"),
    A("head_entropy", _ent(expr="-(weights * weights.clamp_min(1e-30).log()).sum(-1).mean(-1)")),
    A("head_entropy", _ent(expr="-(weights * torch.where(weights > 0, weights.log(), 0)).sum(-1).mean(-1)")),
    A("head_judgement", 'head_judgement = " B "'),
    A("emergence", _emergence(estimate="0.59", claim='"B"')),
    A("max_sequences", "max_sequences = 20.0"),
]


@pytest.fixture(scope="module")
def graded(source, exercise, tmp_path_factory):
    lib = tmp_path_factory.mktemp("fakelib")
    (lib / "fakelib.py").write_text(
        "def chinchilla_loss(N, D, E, A, B, alpha, beta):\n    return E + A / N ** alpha + B / D ** beta\n\n\n"
        "def compute_optimal(C, E, A, B, alpha, beta):\n    G = (alpha * A / (beta * B)) ** (1 / (alpha + beta))\n"
        "    N = G * (C / 6) ** (beta / (alpha + beta))\n    return N, C / (6 * N)\n\n\n"
        "def head_entropy(weights):\n    import torch\n"
        "    return -torch.special.xlogy(weights, weights).sum(-1).mean(-1)\n")
    return harness.grade_variants(source, exercise, MISTAKES, ACCEPTED,
                                  extra_code=f"import sys\nsys.path.insert(0, {str(lib)!r})")


def test_solution_scores_full_marks(graded, source):
    harness.assert_full_marks(graded, source)
    assert sum(graded[t]["max_score"] for t in harness.graded_test_ids(source)) == AUTO_POINTS


def test_solution_passes_the_visible_tests_alone(graded, source):
    harness.assert_full_marks(graded, source, suffix="~visible")


def test_untouched_exercise_scores_zero(graded, source):
    letters = {"test_pinned_constants": "pinned_constants", "test_plan_printed": "plan_printed",
               "test_plan_refit": "plan_refit", "test_head_judgement": "head_judgement",
               "test_exact_match_estimate": "exact_match_estimate", "test_emergence_claim": "emergence_claim",
               "test_induction_claim": "induction_claim", "test_max_sequences": "max_sequences"}
    harness.assert_blank_scores_zero(graded, source, feedback={t: f"{n} is not answered yet" for t, n in letters.items()})


def test_the_written_judgement_waits_for_a_human(graded):
    blank, written = graded[f"{MANUAL}~blank"], graded[MANUAL]
    assert blank == {"id": f"{MANUAL}~blank", "score": 0.0, "max_score": MANUAL_POINTS, "feedback": "not answered yet",
                     "manual": True}
    assert written["score"] == 0 and written["manual"] and "graded by hand" in written["feedback"]


@pytest.mark.parametrize("k", range(len(MISTAKES)), ids=[f"{m.answer}:{m.words[:30]}" for m in MISTAKES])
def test_mistake_loses_points_with_named_feedback(k, graded):
    harness.assert_mistake_loses_points(graded, MISTAKES, k)


@pytest.mark.parametrize("k", range(len(ACCEPTED)), ids=[f"{a.answer}:{k}" for k, a in enumerate(ACCEPTED)])
def test_other_correct_answers_score_full_marks(k, graded, source):
    harness.assert_accepted(graded, source, ACCEPTED, k)


def test_feedback_never_shows_hidden_test_source(graded, source):
    harness.assert_no_hidden_source(graded, source, more_than=40)


def test_bloomlib_grade_gives_the_untouched_exercise_zero():
    harness.assert_cli_grades_blank_zero(EXERCISE, AUTO_POINTS + MANUAL_POINTS, MANUAL_POINTS)


@pytest.mark.slow
def test_standard_nbgrader_course_agrees(tmp_path, source, exercise):
    """nbgrader's generate_assignment gives our exercise (rubric removed); its autograde scores the automatic part of
    a submission as we do and leaves the written answer to a human."""
    released = harness.nbgrader_release(tmp_path, SOURCE)
    assert grading.normalize(released) == grading.normalize(exercise)
    submission = harness.fill(released, source, {"head_entropy": _ent(expr="-torch.special.xlogy(weights, weights)"
                                                                      ".sum(-1).sum(-1)"),
                                                  "induction_claim": 'induction_claim = "d"'})
    raw_score, max_score = harness.nbgrader_autograde(tmp_path, SOURCE, submission)
    ours = grading.grade_notebook(submission, source=SOURCE)
    assert raw_score == ours["score"] == AUTO_POINTS - 3  # both entropy tests, and the induction letter
    assert max_score == ours["max_score"] == AUTO_POINTS + MANUAL_POINTS
