"""Lesson 01 (Remember): seed-term coverage, lesson structure, and grading of its exercise (tests/grading_harness.py).

nbval runs the lesson and the solution themselves (pytest's testpaths)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat
import pytest

import grading_harness as harness

REPO = Path(__file__).resolve().parent.parent
LESSON = REPO / "notebooks" / "01_remember.ipynb"
SOURCE = REPO / "solutions" / "01_remember.ipynb"
EXERCISE = REPO / "exercises" / "01_remember.ipynb"
TOTAL_POINTS = 12

# the 15 headings of the seed article's "Remembering" list
SEED_TERMS = ["Self-attention", "Multi-head attention", "Query, Key, Value (Q, K, V)", "Attention score", "Softmax",
              "Positional encoding", "Feed-forward network (FFN)", "Layer normalization", "Residual connection",
              "Encoder", "Decoder", "Causal masking", "Context window", "Token embedding", "Temperature"]
BLOOM_VERBS = ["define", "list", "recall", "identify", "name", "recognise", "recognize", "state", "match"]


# ------------------------------------------------------------------------------------------- lesson
def _cell_defining(nb, name):
    for cell in nb.cells:
        if cell.cell_type == "code":
            for node in ast.walk(ast.parse(cell.source)):
                if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
                    return node.value
    raise AssertionError(f"no cell assigns {name}")


def test_every_seed_term_is_taught_carded_and_quizzed():
    nb = nbformat.read(LESSON, as_version=4)
    text = "\n".join(c.source for c in nb.cells).lower()
    cards = ast.literal_eval(_cell_defining(nb, "TERMS"))
    questions = [call for call in ast.walk(_cell_defining(nb, "quiz"))
                 if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "Question"]
    quiz_texts = [" ".join(s.value for s in ast.walk(q) if isinstance(s, ast.Constant) and isinstance(s.value, str))
                  .lower() for q in questions]
    assert len(questions) == 15 and list(cards) == SEED_TERMS
    for term in SEED_TERMS:
        assert term.lower() in text, term
        assert re.search(rf"^## \d+ · {re.escape(term)}", "\n".join(c.source for c in nb.cells), re.M | re.I), term
        assert any(term.lower() in q for q in quiz_texts), f"no quiz question mentions {term!r}"


def test_lesson_follows_the_house_rules():
    harness.assert_lesson_house_rules(LESSON, BLOOM_VERBS)


# (answer id, replacements, test that must lose points (None: all must pass), words its feedback must contain)
MISTAKES_01 = [
    ("matching", [('"encoder": "E", "decoder": "N"', '"encoder": "N", "decoder": "E"')],
     "test_matching_architecture", "encoder and decoder swapped"),
    ("matching", [('"attention score": "G"', '"attention score": "C"'), ('"softmax": "C"', '"softmax": "G"')],
     "test_matching_attention", "attention score and softmax swapped"),
    ("matching", [('"temperature": "K"', '"temperature": "D"')], "test_matching_architecture",
     "wrong letter for: temperature"),
    ("matching", [('"token embedding": "B"', '"token embedding": None')], "test_matching_block", "no letter yet for: token embedding"),
    ("matching", [('"self-attention": "I"', '"self-attention": "i)"'), ('"encoder": "E"', '"encoder": " e. "')], None, ""),
    ("fill_in", [('a="temperature"', 'a="Top-K"')], "test_fill_in_a", "top-k keeps the k most likely"),
    ("fill_in", [('b="context window"', 'b="vocab size"')], "test_fill_in_b", "vocabulary counts distinct tokens"),
    ("fill_in", [('e="causal masking"', 'e="padding mask"')], "test_fill_in_e", "padding mask hides padding"),
    ("fill_in", [('d="softmax"', 'd="exp"')], "test_fill_in_d", "hint: which function exponentiates"),
    ("fill_in", [('b="context window"', 'b="  Block_Size "'), ('c="residual connection"', 'c="skip-connection"'),
                 ('d="softmax"', 'd="Soft-Max"'), ('e="causal masking"', 'e="look-ahead mask"')], None, ""),
    ("short_answers", [("score_divisor_for_d_k_64 = 8", "score_divisor_for_d_k_64 = 64")], "test_numbers",
     "square root of d_k, not by d_k"),
    ("short_answers", [("[[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]",
                        "[[1, 1, 1, 1], [0, 1, 1, 1], [0, 0, 1, 1], [0, 0, 0, 1]]")], "test_causal_mask_4", "transposed"),
    ("short_answers", [("[[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]",
                        "[[0, 1, 1, 1], [0, 0, 1, 1], [0, 0, 0, 1], [0, 0, 0, 0]]")], "test_causal_mask_4", "polarity inverted"),
    ("short_answers", [('["layer norm", "attention", "residual", "layer norm", "feed-forward", "residual"]',
                        '["attention", "residual", "layer norm", "feed-forward", "residual", "layer norm"]')],
     "test_block_order", "post-LN order"),
    ("short_answers", [('needs_causal_mask = "decoder"', 'needs_causal_mask = "encoder"')], "test_needs_causal_mask",
     "it is the decoder"),
]


# ------------------------------------------------------------------------------------------- grading
source, exercise = harness.notebook_fixtures(SOURCE, EXERCISE)


@pytest.fixture(scope="module")
def graded(source, exercise):
    mistakes, accepted = harness.edit_variants(source, MISTAKES_01)
    return harness.grade_variants(source, exercise, mistakes, accepted, timeout=120), mistakes, accepted


def test_exercise_does_not_import_bloomlib(source, exercise):
    harness.assert_no_bloomlib_in_code(source, exercise)


def test_exercise_is_graded_as_planned(graded, source):
    """Blank 0, the solution full marks, each mistake caught with its feedback, other spellings accepted."""
    harness.assert_graded_as_planned(*graded[:1], source, *graded[1:], TOTAL_POINTS)
