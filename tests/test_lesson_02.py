"""Lesson 02 (Understand): lesson structure and grading of its exercise (tests/grading_harness.py).

nbval runs the lesson and the solution themselves (pytest's testpaths)."""
from __future__ import annotations

from pathlib import Path

import re

import pytest

import grading_harness as harness
from bloomlib.course import grading

REPO = Path(__file__).resolve().parent.parent
LESSON = REPO / "notebooks" / "02_understand.ipynb"
SOURCE = REPO / "solutions" / "02_understand.ipynb"
EXERCISE = REPO / "exercises" / "02_understand.ipynb"
TOTAL_POINTS = 17
BLOOM_VERBS = ["explain", "describe", "compare", "summarize", "interpret", "classify"]
OBJECTIVES = {f"02.{k}" for k in range(1, 8)}


# ------------------------------------------------------------------------------------------- lesson
def test_lesson_follows_the_house_rules():
    harness.assert_lesson_house_rules(LESSON, BLOOM_VERBS)


# (answer id, replacements, test that must lose points (None: all must pass), words its feedback must contain)
MISTAKES_02 = [
    ("shapes", [("q=(2, 3, 5, 4)", "q=(2, 5, 3, 4)")], "test_shapes_attention", "heads axis comes before the tokens axis"),
    ("shapes", [("q=(2, 3, 5, 4)", "q=(2, 3, 5, 12)")], "test_shapes_attention", "d_model / n_heads = 4 features"),
    ("shapes", [("scores=(2, 3, 5, 5)", "scores=(2, 3, 5, 4)")], "test_shapes_attention", "every query is compared with every key"),
    ("shapes", [("ffn_hidden=(2, 5, 48)", "ffn_hidden=(2, 5, 12)")], "test_shapes_block", "widens each token to 4 * d_model"),
    ("shapes", [("block_out=(2, 5, 12)", "block_out=(2, 5, 48)")], "test_shapes_block", "narrows back to d_model"),
    ("shapes", [("x=(2, 5, 12)", "x=[2, 5, 12]"), ("attn_out=(2, 5, 12)", "attn_out=torch.Size([2, 5, 12])")], None, ""),
    ("attention_by_hand", [("scores.max(axis=-1", "scores.max(axis=0"), ("e.sum(axis=-1", "e.sum(axis=0")],
     "test_weights_3_tokens",
     "weights should sum to 1 over keys, not queries"),
    ("attention_by_hand", [("Q @ K.T / np.sqrt(K.shape[-1])", "Q @ K.T")], "test_weights_3_tokens",
     "you forgot to scale by sqrt(d_k)"),
    ("attention_by_hand", [("Q @ K.T / np.sqrt(K.shape[-1])", "Q @ K.T / K.shape[-1]")], "test_weights_3_tokens",
     "divided by d_k instead of sqrt(d_k)"),
    ("attention_by_hand", [("Q @ K.T / np.sqrt(K.shape[-1])", "K @ Q.T / np.sqrt(K.shape[-1])")], "test_weights_3_tokens",
     "scores transposed"),
    ("attention_by_hand", [("scores = scores - scores.max(axis=-1, keepdims=True)", "pass")], "test_weights_general",
     "subtract each row's maximum"),
    ("attention_by_hand", [("return attention_weights(Q, K) @ V", "return attention_weights(Q, K).T @ V")], "test_output",
     "weights @ V, not weights.T @ V"),
    ("strongest_key", [("strongest_key = 1 ", "strongest_key = 0 ")], "test_strongest_key", "not from which key looks most like"),
    ("strongest_key", [("strongest_key = 1 ", "strongest_key = 2 ")], "test_strongest_key", "the values do not enter the weights"),
    ("strongest_key", [("strongest_key = 1 ", "strongest_key = 1.0 ")], None, ""),
    ("parallel_steps", [("rnn_steps = 512 ", "rnn_steps = 1 ")], "test_parallel_training", "h_t needs h_(t-1)"),
    ("parallel_steps", [("rnn_steps = 512 ", "rnn_steps = 511 ")], "test_parallel_training", "the first token is a step too"),
    ("parallel_steps", [("attention_steps = 1 ", "attention_steps = 512 * 512 ")], "test_parallel_training",
     "are work, not steps"),
    ("parallel_steps", [("attention_steps = 1 ", "attention_steps = 512 ")], "test_parallel_training",
     "does not wait for earlier tokens"),
    ("parallel_steps", [("generation_steps = 50 ", "generation_steps = 1 ")], "test_parallel_generation",
     "generation stays sequential"),
    ("parallel_steps", [("generation_steps = 50 ", "generation_steps = 60 ")], "test_parallel_generation",
     "in one parallel pass, not one pass each"),
    ("parallel_steps", [("generation_steps = 50 ", "generation_steps = 51 ")], "test_parallel_generation",
     "already predicts the first new token"),
    ("parallel_steps", [("generation_steps = 50 ", "generation_steps = 49 ")], "test_parallel_generation",
     "not the number of sequential passes"),
    ("residual_norm", [('residual_outcome = "b"', 'residual_outcome = "a"')], "test_residual_gradient",
     "that is the residual stack"),
    ("residual_norm", [('residual_outcome = "b"', 'residual_outcome = "c"')], "test_residual_gradient",
     "contributions add up along a residual path"),
    ("residual_norm", [('residual_outcome = "b"', 'residual_outcome = "d"')], "test_residual_gradient",
     "never exactly 0"),
    ("residual_norm", [('residual_outcome = "b"', 'residual_outcome = "b)"')], "test_residual_gradient",
     "must be one letter in quotes"),
    ("residual_norm", [('layer_norm_outcome = "c"', 'layer_norm_outcome = "a"')], "test_layer_norm_curve",
     "could undo one fixed scale"),
    ("residual_norm", [('layer_norm_outcome = "c"', 'layer_norm_outcome = "b"')], "test_layer_norm_curve",
     "removes no obstacle to learning"),
    ("residual_norm", [('layer_norm_outcome = "c"', 'layer_norm_outcome = "d"')], "test_layer_norm_curve",
     "the loss stayed finite"),
    ("residual_norm", [('residual_outcome = "b"', 'residual_outcome = " B "')], None, ""),
    ("depth", [('depth_cause = "b"', 'depth_cause = "a"')], "test_depth_cause", "not a second look-up in a row"),
    ("depth", [('depth_cause = "b"', 'depth_cause = "c"')], "test_depth_cause", "sees every digit"),
    ("depth", [('depth_cause = "b"', 'depth_cause = "d"')], "test_depth_cause", "may spread over any number of tokens"),
    ("masks", [('"BERT (encoder-only)": "none", "GPT (decoder-only)": "causal"',
                '"BERT (encoder-only)": "causal", "GPT (decoder-only)": "none"')], "test_masks_bert_gpt",
     "GPT needs a causal mask, BERT does not"),
    ("masks", [('"T5 decoder cross-attention": "none"', '"T5 decoder cross-attention": "causal"')], "test_masks_t5",
     "cross-attention reads the encoder's output"),
    ("positions", [("attend(x_mbd)[2]", "attend(x_mbd)[0]")], "test_without_positions", "the dog is the last token"),
    ("positions", [("attend(x_mbd + positions(3, 8))[2]", "attend((x_dbm + positions(3, 8))[perm])[2]")],
     "test_with_positions", "positions were added before reordering"),
    ("positions", [('reason = "B"', 'reason = "a"')], "test_reason", "dog's output does not depend on where dog stands"),
    ("positions", [('reason = "B"', 'reason = "C"')], "test_reason", "the row index is bookkeeping"),
    ("positions", [('reason = "B"', 'reason = "d"')], "test_reason", "this head has no causal mask"),
    ("sinks", [('sink_cause = "b"', 'sink_cause = "a"')], "test_sink_cause", "it does not fetch a summary"),
    ("sinks", [('sink_cause = "b"', 'sink_cause = "c"')], "test_sink_cause", "the heads do not spread evenly"),
    ("sinks", [('sink_cause = "b"', 'sink_cause = "d"')], "test_sink_cause", "cannot give every token weight 0"),
]


# ------------------------------------------------------------------------------------------- grading
source, exercise = harness.notebook_fixtures(SOURCE, EXERCISE)


@pytest.fixture(scope="module")
def graded(source, exercise):
    mistakes, accepted = harness.edit_variants(source, MISTAKES_02)
    return harness.grade_variants(source, exercise, mistakes, accepted, timeout=120), mistakes, accepted


def test_check_my_notebook_cell_closes_the_exercise(source, exercise):
    """The last code cell, locked and read-only, grades the saved copy of this very exercise; it is the only code
    cell that names bloomlib."""
    harness.assert_check_cell_closes(source, exercise, EXERCISE.name)
    assert "check my notebook" in source.cells[0].source.lower()
    assert f"bloomlib grade exercises/{EXERCISE.name}" in source.cells[0].source


def test_exercise_is_released_from_the_source(source, exercise):
    assert grading.normalize(grading.release_notebook(source)) == grading.normalize(exercise)


def test_every_graded_cell_names_objectives_of_lesson_02(source):
    harness.assert_graded_cells_name_objectives(source, OBJECTIVES)


def test_points_table_and_headings_match_the_tests(source):
    """Each part's heading and its row of the intro's table give the points and objectives of its test cells."""
    rows = re.findall(r"^\| (\d+) \| .+? \| ([\d., ]+) \| (\d+) \|$", source.cells[0].source, re.M)
    parts, current = [], None
    for cell in source.cells:
        heading = re.search(r"^## Part (\d+) · .+\((\d+) points?\)$", cell.source, re.M) if cell.cell_type == "markdown" else None
        if heading:
            current = {"number": heading[1], "points": int(heading[2]), "tests": []}
            parts.append(current)
        elif harness.is_test(cell) and current is not None:
            current["tests"].append(cell)
    assert len(rows) == len(parts) == 8
    for (number, objectives, points), part in zip(rows, parts):
        assert number == part["number"] and int(points) == part["points"] == sum(
            t.metadata.nbgrader["points"] for t in part["tests"]), number
        assert {o.strip() for o in objectives.split(",")} == {o for t in part["tests"] for o in harness.objectives_of(t)}
    assert sum(int(r[2]) for r in rows) == TOTAL_POINTS


def test_exercise_is_graded_as_planned(graded, source):
    """Blank 0, the solution full marks, each mistake caught with its feedback, other spellings accepted."""
    harness.assert_graded_as_planned(*graded[:1], source, *graded[1:], TOTAL_POINTS)


def test_blank_exercise_scores_zero_with_a_named_reason(graded, source):
    named = {t: f"{name} is not answered yet" for t, name in [
        ("test_strongest_key", "strongest_key"), ("test_parallel_training", "rnn_steps"),
        ("test_parallel_generation", "generation_steps"), ("test_residual_gradient", "residual_outcome"),
        ("test_layer_norm_curve", "layer_norm_outcome"), ("test_depth_cause", "depth_cause"),
        ("test_sink_cause", "sink_cause")]}
    for t in harness.graded_test_ids(source):
        q = graded[0][f"{t}~blank"]
        assert q["score"] == 0 and (named[t] in q["feedback"] if t in named else q["feedback"]), q


@pytest.mark.slow
def test_standard_nbgrader_course_agrees(tmp_path, source, exercise):
    """nbgrader's generate_assignment gives our exercise; its autograde scores a submission as we do (the check
    cell skips itself inside nbgrader's run)."""
    released = harness.nbgrader_release(tmp_path, SOURCE)
    assert grading.normalize(released) == grading.normalize(exercise)
    submission = harness.fill(released, source, {
        "depth": 'depth_cause = "a"',
        "parallel_steps": "rnn_steps, attention_steps, generation_steps = 512, 1, 1"})
    raw_score, max_score = harness.nbgrader_autograde(tmp_path, SOURCE, submission)
    ours = grading.grade_notebook(submission, source=SOURCE)
    assert raw_score == ours["score"] == TOTAL_POINTS - 2
    assert max_score == ours["max_score"] == TOTAL_POINTS
