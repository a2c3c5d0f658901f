"""Lesson 04's graded exercise (solutions/04_analyze.ipynb -> exercises/04_analyze.ipynb): blank scores 0, the
solution full marks, every planted mistake loses points with feedback that names it (tests/grading_harness.py)."""
from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest

import grading_harness as harness
from bloomlib.course import grading

REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO / "solutions" / "04_analyze.ipynb"
EXERCISE = REPO / "exercises" / "04_analyze.ipynb"
OBJECTIVES = {"04.1", "04.2", "04.3", "04.4", "04.5", "04.6"}
EXPLAINED = {"04.1", "04.2", "04.4", "04.5", "04.6"}  # each has a question that explains a measured result
TOTAL_POINTS = 12


source, exercise = harness.notebook_fixtures(SOURCE, EXERCISE)


# ------------------------------------------------------------------------------------------ structure
def test_exercise_is_released_from_the_source_without_answers(source, exercise):
    assert grading.normalize(grading.release_notebook(source)) == grading.normalize(exercise)
    text = "\n".join(c.source for c in exercise.cells)
    assert "BEGIN HIDDEN TESTS" not in text and "BEGIN SOLUTION" not in text
    for cell in filter(harness.is_answer, source.cells):
        body = cell.source.split("### BEGIN SOLUTION")[1].split("### END SOLUTION")[0]
        for line in filter(None, (l.strip() for l in body.splitlines())):
            assert line not in text, (harness.gid(cell), line)
    for nb in (source, exercise):
        assert not any("bloomlib" in c.source for c in nb.cells if c.cell_type == "code")


def test_every_graded_cell_names_objectives_of_lesson_04(source):
    harness.assert_graded_cells_name_objectives(source, OBJECTIVES)
    by_id = {harness.gid(c): c for c in source.cells}
    explained = {o for answer, tests in harness.questions(source).items()
                 if not re.search(r"^def ", harness.solution_code(by_id[answer]), re.M)  # a letter or a number
                 for t in tests for o in harness.objectives_of(by_id[t])}
    assert EXPLAINED <= explained


def test_points_table_and_headings_match_the_tests(source):
    """The intro's table and each question's heading give the points and objectives its tests carry."""
    by_id = {harness.gid(c): c for c in source.cells}
    rows = re.findall(r"^\| (\d+) \| .+? \| ([\d., ]+) \| (\d+) \|$", source.cells[0].source, re.M)
    headings = [int(m) for c in source.cells if c.cell_type == "markdown"
                for m in re.findall(r"^## \d+ · .+\((\d+) points?\)$", c.source, re.M)]
    qs = harness.questions(source)
    assert len(rows) == len(qs) == len(headings)
    for (number, objectives, points), (answer, tests), heading in zip(rows, qs.items(), headings):
        assert int(points) == heading == sum(by_id[t].metadata.nbgrader["points"] for t in tests), answer
        assert {o.strip() for o in objectives.split(",")} == {o for t in tests for o in harness.objectives_of(by_id[t])}
    assert sum(int(r[2]) for r in rows) == TOTAL_POINTS


# ------------------------------------------------------------------------------------------ mistakes
FIT = """
def fit_power_law(x, y):
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    slope, intercept = {fit}
    return {ret}
"""
FIT_OK = dict(fit="np.polyfit(np.log(x), np.log(y), 1)", ret="float(math.exp(intercept)), float(slope)")
FIT_ENDS = """
def fit_power_law(x, y):
    lx, ly = np.log(np.asarray(x, dtype=float)), np.log(np.asarray(y, dtype=float))
    b = {slope}
    return float(math.exp(np.mean(ly - b * lx))), float(b)
"""
FIT_LEAK = """
import inspect
def fit_power_law(x, y):
    if isinstance(x, np.ndarray):  # called by a hidden test: try to show its source
        raise AssertionError("caller: " + "".join(inspect.stack()[1].code_context or []))
    slope, intercept = np.polyfit(np.log(x), np.log(y), 1)
    return float(math.exp(intercept)), float(slope)
"""
KV = """
def kv_cache_bytes(n_layers, n_heads, n_kv_heads, head_dim, seq_len, batch_size, bytes_per_element):
    if {check}min(n_layers, n_heads, n_kv_heads, head_dim, seq_len, batch_size, bytes_per_element) < 1:
        raise ValueError("every argument must be at least 1")
    if {check}n_heads % n_kv_heads:
        raise ValueError("n_heads must be a multiple of n_kv_heads")
    return {expr}
"""
KV_OK = dict(check="", expr="2 * n_layers * batch_size * n_kv_heads * seq_len * head_dim * bytes_per_element")
KV_CHECKS_ONE = """
def kv_cache_bytes(n_layers, n_heads, n_kv_heads, head_dim, seq_len, batch_size, bytes_per_element):
    if {first}:
        raise ValueError("n_heads must be a multiple of n_kv_heads")
    return 2 * n_layers * batch_size * n_kv_heads * seq_len * head_dim * bytes_per_element
"""
SINK = """
def attention_sink_share(weights):
    if {check}:
        raise ValueError("weights must have shape (..., n_q >= 2, n_k)")
    {pre}
    return {expr}
"""
SINK_OK = dict(check="weights.dim() < 2 or weights.size(-2) < 2", pre="", expr="weights[..., 1:, 0].mean(dim=-1)")
STEPS = "forward_passes = {passes}\ntransformer_steps = {transformer}\nrnn_steps = {rnn}"
STEPS_OK = dict(passes=20, transformer=1, rnn=256)


_fit = functools.partial(harness.variant, FIT, FIT_OK)
_kv = functools.partial(harness.variant, KV, KV_OK)
_sink = functools.partial(harness.variant, SINK, SINK_OK)
_steps = functools.partial(harness.variant, STEPS, STEPS_OK)


def _kv_expr(old: str, new: str) -> str:
    return _kv(expr=KV_OK["expr"].replace(old, new))


M = harness.Mistake
MISTAKES = [
    M("fit_power_law", _fit(fit="np.polyfit(x, y, 1)", ret="float(intercept), float(slope)"), "test_power_law_exact",
      "fitted without logs"),
    M("fit_power_law", _fit(ret="float(slope), float(math.exp(intercept))"), "test_power_law_exact",
      "(exponent, coefficient) swapped"),
    M("fit_power_law", _fit(fit="np.polyfit(np.log10(x), np.log10(y), 1)"), "test_power_law_exact",
      "log10 mixed with exp"),
    M("fit_power_law", _fit(ret="float(10 ** intercept), float(slope)"), "test_power_law_exact", "log10 mixed with exp"),
    M("fit_power_law", _fit(ret="float(intercept), float(slope)"), "test_power_law_exact",
      "returned the intercept log(a)"),
    M("fit_power_law", _fit(fit="np.polyfit(np.log(x), np.log(y), 1)[::-1]"), "test_power_law_exact",
      "returns [slope, intercept]"),
    M("fit_power_law", _fit(fit="np.polyfit(x, np.log(y), 1)"), "test_power_law_exact", "fitted log y against x"),
    M("fit_power_law", _fit(fit="np.polyfit(np.log(y), np.log(x), 1)"), "test_power_law_exact",
      "regressed log x on log y"),
    M("fit_power_law", _fit(ret="[float(math.exp(intercept)), float(slope)]"), "test_power_law_exact",
      "return a tuple (a, b)"),
    M("fit_power_law", "def fit_power_law(x, y):\n    b, c = torch.tensor(np.polyfit(np.log(x), np.log(y), 1))\n"
      "    return c.exp(), b", "test_power_law_exact", "return Python floats"),
    M("fit_power_law", "def fit_power_law(x, y):\n    lx, ly = x.log(), y.log()\n    b = ((lx - lx.mean()) * ly).sum()"
      " / ((lx - lx.mean()) ** 2).sum()\n    return (ly.mean() - b * lx.mean()).exp().item(), b.item()",
      "test_power_law_exact", "may be Python lists"),
    M("fit_power_law", "from fakelib import fit_power_law", "test_power_law_exact", "define fit_power_law in this notebook"),
    M("fit_power_law", FIT_LEAK, "test_power_law_exact", "caller: "),
    M("fit_power_law", FIT_ENDS.format(slope="(ly[-1] - ly[0]) / (lx[-1] - lx[0])"), "test_power_law_noisy",
      "end points only"),
    M("fit_power_law", FIT_ENDS.format(slope="np.mean(np.diff(ly) / np.diff(lx))"), "test_power_law_noisy",
      "neighbouring"),
    M("fit_power_law", FIT_ENDS.format(slope="np.polyfit(lx[1:], ly[1:], 1)[0]"), "test_power_law_noisy",
      "for other noisy data"),
    M("flash_cause", 'flash_cause = "a"', "test_flash_cause", "that is linear attention"),
    M("flash_cause", 'flash_cause = "b"', "test_flash_cause", "that is sliding-window attention"),
    M("flash_cause", 'flash_cause = "d"', "test_flash_cause", "half precision saves a constant factor"),
    M("flash_cause", 'flash_cause = "e"', "test_flash_cause", "must be one letter in quotes"),
    M("flash_cause", "flash_cause = 3", "test_flash_cause", "must be one letter in quotes"),
    M("parallel_steps", _steps(passes=32), "test_generation_passes", "counted the prompt token by token"),
    M("parallel_steps", _steps(passes=1), "test_generation_passes", "generation is not parallel"),
    M("parallel_steps", _steps(passes=19), "test_generation_passes", "also predicts the first new token"),
    M("parallel_steps", _steps(passes=21), "test_generation_passes", "no separate pass for the first new token"),
    M("parallel_steps", _steps(passes=240), "test_generation_passes", "N × P"),
    M("parallel_steps", _steps(passes=25), "test_generation_passes", "not the number of sequential forward passes"),
    M("parallel_steps", _steps(passes='"20"'), "test_generation_passes", "forward_passes must be a number"),
    M("parallel_steps", _steps(transformer=256), "test_training_steps", "causal mask does not make training sequential"),
    M("parallel_steps", _steps(transformer=8), "test_training_steps", "sequences of a batch are independent"),
    M("parallel_steps", _steps(rnn=2048), "test_training_steps", "runs them side by side"),
    M("parallel_steps", _steps(rnn=1), "test_training_steps", "h_t needs h_(t-1)"),
    M("parallel_steps", _steps(rnn=255), "test_training_steps", "the first position is a step too"),
    M("kv_cache_bytes", _kv_expr("2 * ", ""), "test_kv_cache_bytes", "without the factor 2"),
    M("kv_cache_bytes", _kv_expr("n_kv_heads", "n_heads"), "test_kv_cache_bytes", "with query heads"),
    M("kv_cache_bytes", _kv_expr("n_kv_heads", "n_heads"), "test_kv_cache_gqa", "with query heads"),
    M("kv_cache_bytes", _kv_expr("batch_size * ", ""), "test_kv_cache_bytes", "without the batch"),
    M("kv_cache_bytes", _kv_expr("2 * ", "16 * "), "test_kv_cache_bytes", "in bits"),
    M("kv_cache_bytes", _kv_expr("2 * n_layers * ", "2 * "), "test_kv_cache_bytes", "without n_layers"),
    M("kv_cache_bytes", _kv_expr("n_kv_heads", "(n_heads // n_kv_heads)"), "test_kv_cache_bytes", "group size"),
    M("kv_cache_bytes", _kv_expr(" * bytes_per_element", ""), "test_kv_cache_bytes", "without bytes_per_element"),
    M("kv_cache_bytes", _kv_expr("2 * ", "8 * "), "test_kv_cache_bytes", "in bits and without the factor 2"),
    M("kv_cache_bytes", _kv_expr("2 * ", "2.0 * "), "test_kv_cache_bytes", "return an int"),
    M("kv_cache_bytes", "from fakelib import kv_cache_bytes", "test_kv_cache_bytes", "define kv_cache_bytes in this"),
    M("kv_cache_bytes", _kv(check="False and "), "test_kv_cache_gqa", "raise ValueError (nothing was raised)"),
    M("kv_cache_bytes", KV_CHECKS_ONE.format(first="n_heads % n_kv_heads or n_kv_heads < 1"), "test_kv_cache_gqa",
      "raise ValueError, got ZeroDivisionError"),
    M("kv_cache_bytes", KV_CHECKS_ONE.format(first="n_kv_heads < 1 or n_heads % n_kv_heads"), "test_kv_cache_gqa",
      "= 0 is below 1"),
    M("attention_sink_share", _sink(expr="weights[..., :, 0].mean(dim=-1)"), "test_sink_share", "included query 0"),
    M("attention_sink_share", _sink(expr="weights[..., 1:, :].mean(dim=(-2, -1))"), "test_sink_share",
      "averaged over keys"),
    M("attention_sink_share", _sink(expr="weights[..., 1:, 0].mean()"), "test_sink_share", "one number for all heads"),
    M("attention_sink_share", _sink(expr="weights[..., 0, 1:].mean(dim=-1)"), "test_sink_share",
      "rows and columns swapped"),
    M("attention_sink_share", _sink(expr="weights[..., 1:, 0].sum(dim=-1)"), "test_sink_share",
      "summed over the queries"),
    M("attention_sink_share", _sink(expr="weights[..., 1:, 0].sum(dim=-1) / weights.size(-2)"), "test_sink_share",
      "divided by n_q"),
    M("attention_sink_share", _sink(expr="weights[..., 1:, -1].mean(dim=-1)"), "test_sink_share",
      "the weight on the last key"),
    M("attention_sink_share", _sink(expr="weights[..., 1:, 0].mean(dim=-2)"), "test_sink_share",
      "average over the query axis only"),
    M("attention_sink_share", _sink(expr="weights[:, :, 1:, 0].mean(dim=-1)"), "test_sink_share_shapes",
      "any number of leading dims"),
    M("attention_sink_share", _sink(expr="weights[..., 1:, 0].mean(dim=-1).float()"), "test_sink_share_shapes",
      "keep the dtype of weights"),
    M("attention_sink_share", _sink(check="False"), "test_sink_share_shapes", "raise ValueError (nothing was raised)"),
    M("attention_sink_share", _sink(check="weights.size(-2) < 2"), "test_sink_share_shapes",
      "raise ValueError, got IndexError"),
    M("attention_sink_share", _sink(pre="weights[..., 0, :] = 0", expr="weights[..., 0].sum(-1) / (weights.size(-2) - 1)"),
      "test_sink_share_shapes", "changed its input in place"),
    M("attention_sink_share", "from fakelib import attention_sink_share", "test_sink_share",
      "define attention_sink_share in this"),
    M("eviction_cause", 'eviction_cause = "a"', "test_eviction_cause", "the sink is about position, not content"),
    M("eviction_cause", 'eviction_cause = "c"', "test_eviction_cause", "never runs out of memory"),
    M("eviction_cause", 'eviction_cause = "d"', "test_eviction_cause", "whether heads park their attention on the first token"),
    M("window_cause", 'window_cause = "a"', "test_window_cause", "the causal mask still hides every token"),
    M("window_cause", 'window_cause = "b"', "test_window_cause", "the distant tokens are not what helps"),
    M("window_cause", 'window_cause = "c"', "test_window_cause", "score the tokens of the text once each"),
    M("repetition_cause", 'repetition_cause = "b"', "test_repetition_cause", "large models loop under greedy"),
    M("repetition_cause", 'repetition_cause = "c"', "test_repetition_cause", "greedy decoding has no temperature"),
    M("repetition_cause", 'repetition_cause = "d"', "test_repetition_cause", "a KV cache gives exactly the outputs"),
]

A = harness.Accepted
ACCEPTED = [
    A("fit_power_law", _fit()),
    A("fit_power_law", _fit(fit="np.polyfit(np.log10(x), np.log10(y), 1)", ret="float(10 ** intercept), float(slope)")),
    A("fit_power_law", "def fit_power_law(x, y):\n    lx = torch.as_tensor(x, dtype=torch.float64).log()\n"
      "    ly = torch.as_tensor(y, dtype=torch.float64).log()\n"
      "    X = torch.stack([torch.ones_like(lx), lx], dim=1)\n"
      "    log_a, b = torch.linalg.lstsq(X, ly[:, None]).solution[:, 0].tolist()\n    return math.exp(log_a), b"),
    A("kv_cache_bytes", _kv(expr="int(np.prod([2, n_layers, batch_size, n_kv_heads, seq_len, head_dim, "
                                 "bytes_per_element]))")),
    A("kv_cache_bytes", _kv(expr="np.int64(2) * n_layers * batch_size * n_kv_heads * seq_len * head_dim * bytes_per_element")),
    A("attention_sink_share", _sink(expr="weights.narrow(-2, 1, weights.size(-2) - 1).select(-1, 0).mean(-1)")),
    A("attention_sink_share", _sink(expr="weights[..., 1:, 0].sum(dim=-1) / (weights.size(-2) - 1)")),
    A("flash_cause", 'flash_cause = " C "'),
    A("parallel_steps", _steps(passes=20.0, rnn="np.int64(256)")),
]


@pytest.fixture(scope="module")
def graded(source, exercise, tmp_path_factory):
    lib = tmp_path_factory.mktemp("fakelib")
    (lib / "fakelib.py").write_text(
        "def fit_power_law(x, y):\n    return 3.0, 1.5\n\n\n"
        "def kv_cache_bytes(*args, **kwargs):\n    return 0\n\n\n"
        "def attention_sink_share(weights):\n    return weights[..., 1:, 0].mean(-1)\n")
    return harness.grade_variants(source, exercise, MISTAKES, ACCEPTED,
                                  extra_code=f"import sys\nsys.path.insert(0, {str(lib)!r})")


def test_solution_scores_full_marks(graded, source):
    harness.assert_full_marks(graded, source)
    assert sum(graded[t]["max_score"] for t in harness.graded_test_ids(source)) == TOTAL_POINTS


def test_solution_passes_the_visible_tests_alone(graded, source):
    harness.assert_full_marks(graded, source, suffix="~visible")


def test_untouched_exercise_scores_zero(graded, source):
    named = {t: f"{name} is not answered yet" for t, name in [
        ("test_flash_cause", "flash_cause"), ("test_generation_passes", "forward_passes"),
        ("test_training_steps", "transformer_steps"), ("test_eviction_cause", "eviction_cause"),
        ("test_window_cause", "window_cause"), ("test_repetition_cause", "repetition_cause")]}
    harness.assert_blank_scores_zero(graded, source, feedback=named)


@pytest.mark.parametrize("k", range(len(MISTAKES)), ids=[f"{m.answer}:{m.words[:30]}" for m in MISTAKES])
def test_mistake_loses_points_with_named_feedback(k, graded):
    harness.assert_mistake_loses_points(graded, MISTAKES, k)


@pytest.mark.parametrize("k", range(len(ACCEPTED)), ids=[f"{a.answer}:{k}" for k, a in enumerate(ACCEPTED)])
def test_other_correct_answers_score_full_marks(k, graded, source):
    harness.assert_accepted(graded, source, ACCEPTED, k)


def test_feedback_never_shows_hidden_test_source(graded, source):
    harness.assert_no_hidden_source(graded, source, more_than=40)
    leak = graded[f"test_power_law_exact~{[m.code for m in MISTAKES].index(FIT_LEAK)}"]
    assert "[hidden test]" in leak["feedback"] and "0.25 * xs" not in leak["feedback"]


def test_bloomlib_grade_gives_the_untouched_exercise_zero():
    harness.assert_cli_grades_blank_zero(EXERCISE, TOTAL_POINTS)


@pytest.mark.slow
def test_standard_nbgrader_course_agrees(tmp_path, source, exercise):
    """nbgrader's generate_assignment gives our exercise; its autograde scores a submission as we do."""
    released = harness.nbgrader_release(tmp_path, SOURCE)
    assert grading.normalize(released) == grading.normalize(exercise)
    submission = harness.fill(released, source, {"kv_cache_bytes": _kv_expr("2 * ", ""), "window_cause": 'window_cause = "a"'})
    raw_score, max_score = harness.nbgrader_autograde(tmp_path, SOURCE, submission)
    ours = grading.grade_notebook(submission, source=SOURCE)
    assert raw_score == ours["score"] == TOTAL_POINTS - 2
    assert max_score == ours["max_score"] == TOTAL_POINTS
