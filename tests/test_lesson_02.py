"""Lesson 02 (Understand): lesson structure and grading of its exercise (tests/grading_harness.py).

nbval runs the lesson and the solution themselves (pytest's testpaths)."""
from __future__ import annotations

from pathlib import Path

import pytest

import grading_harness as harness

REPO = Path(__file__).resolve().parent.parent
LESSON = REPO / "notebooks" / "02_understand.ipynb"
SOURCE = REPO / "solutions" / "02_understand.ipynb"
EXERCISE = REPO / "exercises" / "02_understand.ipynb"
TOTAL_POINTS = 10
BLOOM_VERBS = ["explain", "describe", "compare", "summarize", "interpret", "classify"]


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
    ("masks", [('"BERT (encoder-only)": "none", "GPT (decoder-only)": "causal"',
                '"BERT (encoder-only)": "causal", "GPT (decoder-only)": "none"')], "test_masks_bert_gpt",
     "GPT needs a causal mask, BERT does not"),
    ("masks", [('"T5 decoder cross-attention": "none"', '"T5 decoder cross-attention": "causal"')], "test_masks_t5",
     "cross-attention reads the encoder's output"),
    ("positions", [("attend(x_mbd)[2]", "attend(x_mbd)[0]")], "test_without_positions", "the dog is the last token"),
    ("positions", [("attend(x_mbd + positions(3, 8))[2]", "attend((x_dbm + positions(3, 8))[perm])[2]")],
     "test_with_positions", "positions were added before reordering"),
    ("positions", [('reason = "B"', 'reason = "a"')], "test_reason", "softmax normalises any row of numbers"),
]


# ------------------------------------------------------------------------------------------- grading
source, exercise = harness.notebook_fixtures(SOURCE, EXERCISE)


@pytest.fixture(scope="module")
def graded(source, exercise):
    mistakes, accepted = harness.edit_variants(source, MISTAKES_02)
    return harness.grade_variants(source, exercise, mistakes, accepted, timeout=120), mistakes, accepted


def test_exercise_does_not_import_bloomlib(source, exercise):
    harness.assert_no_bloomlib_in_code(source, exercise)


def test_exercise_is_graded_as_planned(graded, source):
    """Blank 0, the solution full marks, each mistake caught with its feedback, other spellings accepted."""
    harness.assert_graded_as_planned(*graded[:1], source, *graded[1:], TOTAL_POINTS)
