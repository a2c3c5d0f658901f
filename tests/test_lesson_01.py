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
TOTAL_POINTS = 20

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
    # part 4: shapes (a function: the hidden checks try a second size)
    ("shapes", [('"q": (B, n_heads, T, head_dim)', '"q": (B, n_heads, T, d_model)')], "test_shapes_q",
     "each head gets d_model / n_heads"),
    ("shapes", [('"q": (B, n_heads, T, head_dim)', '"q": (B, T, n_heads, head_dim)')], "test_shapes_q",
     "heads come before positions"),
    ("shapes", [('"scores": (B, n_heads, T, T)', '"scores": (B, n_heads, T, head_dim)')], "test_shapes_scores",
     "T x T, not T x head_dim"),
    ("shapes", [('"scores": (B, n_heads, T, T)', '"scores": (B, T, T)')], "test_shapes_scores",
     "the heads axis stays"),
    ("shapes", [('"ffn_hidden": (B, T, 4 * d_model)', '"ffn_hidden": (B, T, d_model)')], "test_shapes_ffn",
     "widens to 4 x d_model"),
    ("shapes", [('return {', 'return {"q": (2, 4, 10, 16), "scores": (2, 4, 10, 10), "ffn_hidden": (2, 10, 256)} or {')],
     "test_shapes_q", "q for (3, 7, 48, 6)"),  # the visible example's numbers, hard-coded
    ("shapes", [('"q": (B, n_heads, T, head_dim)', '"q": [B, n_heads, T, head_dim]')], None, ""),
    # part 5: masks
    ("masks", [('"the encoder of a translation model": "full"', '"the encoder of a translation model": "causal"')],
     "test_mask_by_task", "reads the whole source sentence"),
    ("masks", [('"the decoder of a translation model": "causal"', '"the decoder of a translation model": "full"')],
     "test_mask_by_task", "even though it also reads the encoder"),
    ("masks", [('"BERT classifying a sentence": "full"', '"BERT classifying a sentence": "causal"')],
     "test_mask_by_task", "BERT is an encoder"),
    ("masks", [('padding_mask_hides = "B"', 'padding_mask_hides = "A"')], "test_padding_mask",
     "the causal mask's job"),
    ("masks", [('padding_mask_hides = "B"', 'padding_mask_hides = "C"')], "test_padding_mask", "[MASK] tokens"),
    ("masks", [('"BERT classifying a sentence": "full"', '"BERT classifying a sentence": "Bidirectional"'),
               ('padding_mask_hides = "B"', 'padding_mask_hides = "b)"')], None, ""),
    # part 6: what a term changes
    ("term_effects", [('raise_temperature = "B"', 'raise_temperature = "A"')], "test_effect_temperature",
     "that is lowering the temperature"),
    ("term_effects", [('raise_temperature = "B"', 'raise_temperature = "C"')], "test_effect_temperature",
     "keeps their order"),
    ("term_effects", [('residual_adds = "C"', 'residual_adds = "B"')], "test_effect_residual",
     "the positional encoding is added once"),
    ("term_effects", [('context_window_limits = "D"', 'context_window_limits = "A"')], "test_effect_context",
     "the vocabulary counts distinct tokens"),
    ("term_effects", [('context_window_limits = "D"', 'context_window_limits = "B"')], "test_effect_context",
     "the batch size counts sequences"),
]


# ------------------------------------------------------------------------------------------- grading
source, exercise = harness.notebook_fixtures(SOURCE, EXERCISE)


@pytest.fixture(scope="module")
def graded(source, exercise):
    mistakes, accepted = harness.edit_variants(source, MISTAKES_01)
    return harness.grade_variants(source, exercise, mistakes, accepted, timeout=120), mistakes, accepted


CHECK_CELL = "check_my_notebook"


def test_exercise_does_not_import_bloomlib(source, exercise):
    """Answered with torch, math and numpy alone: the one code cell that names bloomlib is the last one, the
    locked "check my notebook" cell (graded nothing, skipped inside a grading run)."""
    for nb in (source, exercise):
        named = [harness.gid(c) for c in nb.cells if c.cell_type == "code" and "bloomlib" in c.source]
        assert named == [CHECK_CELL], named
        code = [c for c in nb.cells if c.cell_type == "code"]
        check = code[-1]
        assert harness.gid(check) == CHECK_CELL and "nbval-ignore-output" in check.metadata.get("tags", [])
        assert {k: check.metadata.nbgrader.get(k) for k in ("grade", "solution", "locked", "schema_version")} == {
            "grade": False, "solution": False, "locked": True, "schema_version": 3}
        assert 'check_my_notebook("01_remember.ipynb")' in check.source
        harness.assert_no_bloomlib_in_code(harness.cut(nb, {harness.gid(c) for c in code[:-1]}))


def test_check_my_notebook_cell_grades_the_saved_exercise(tmp_path, monkeypatch, source, exercise, capsys):
    """The cell's own code, run from the exercise's folder on a saved, half-answered copy, prints the table of
    `bloomlib grade` with those points (and nothing but one line inside a grading run)."""
    from bloomlib.course import grading

    nbformat.write(harness.fill(exercise, source, {"shapes": "def attention_shapes(B, T, d_model, n_heads):\n"
                                                            "    raise NotImplementedError()"}),
                   tmp_path / EXERCISE.name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(grading.GRADING_ENV, raising=False)
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)
    check = next(c for c in exercise.cells if harness.gid(c) == CHECK_CELL)
    exec(compile(check.source, "check_my_notebook", "exec"), {})
    out = capsys.readouterr().out
    assert "Grading 01_remember.ipynb" in out and f"{TOTAL_POINTS - 3}" in out and "test_shapes_q" in out, out
    monkeypatch.setenv(grading.GRADING_ENV, "1")
    exec(compile(check.source, "check_my_notebook", "exec"), {})
    assert capsys.readouterr().out.strip() == "check_my_notebook: skipped inside a grading run"


def test_exercise_is_graded_as_planned(graded, source):
    """Blank 0, the solution full marks, each mistake caught with its feedback, other spellings accepted."""
    harness.assert_graded_as_planned(*graded[:1], source, *graded[1:], TOTAL_POINTS)


@pytest.mark.slow
def test_standard_nbgrader_course_agrees(tmp_path, source, exercise):
    """nbgrader's generate_assignment gives our exercise; its autograde scores a submission as we do (the check
    cell is skipped inside nbgrader's run)."""
    from bloomlib.course import grading

    released = harness.nbgrader_release(tmp_path, SOURCE)
    assert grading.normalize(released) == grading.normalize(exercise)
    submission = harness.fill(released, source, {"term_effects": 'raise_temperature = "A"\nresidual_adds = "C"\n'
                                                                 'context_window_limits = "A"'})
    raw_score, max_score = harness.nbgrader_autograde(tmp_path, SOURCE, submission)
    ours = grading.grade_notebook(submission, source=SOURCE)
    assert raw_score == ours["score"] == TOTAL_POINTS - 2
    assert max_score == ours["max_score"] == TOTAL_POINTS


def test_every_section_predicts_reveals_and_asserts_what_it_shows():
    """Each of the 15 sections: a Prediction in its own cell before the experiment, its reveal in a later cell, and a
    "What it shows" sentence with numbers, followed right away by a code cell that asserts; the lesson's first
    Prediction is a choice (the browser test answers it)."""
    nb = nbformat.read(LESSON, as_version=4)
    starts = [i for i, c in enumerate(nb.cells) if re.match(r"## \d+ · ", c.source)] + [
        next(i for i, c in enumerate(nb.cells) if c.source.startswith("## Try it live"))]
    first = next(c for c in nb.cells if "Prediction(" in c.source and c.cell_type == "code" and "import" not in c.source)
    assert "choices=" in first.source
    for a, b in zip(starts, starts[1:]):
        section = nb.cells[a:b]
        title = section[0].source.splitlines()[0]
        made = [(k, m.group(1)) for k, c in enumerate(section) if c.cell_type == "code"
                for m in [re.match(r"(\w+) = Prediction\(", c.source)] if m]
        assert len(made) == 1, title
        k, name = made[0]
        assert section[k].source.rstrip().endswith(name), f"{title}: the Prediction is shown in its own cell"
        assert any(f"{name}.reveal(" in c.source for c in section[k + 1:]), f"{title}: no reveal after the prediction"
        shows = [j for j, c in enumerate(section) if c.cell_type == "markdown" and "**What it shows:**" in c.source]
        assert len(shows) == 1 and re.search(r"\d", section[shows[0]].source), f"{title}: what it shows, with numbers"
        below = section[shows[0] + 1]
        assert below.cell_type == "code" and re.search(r"^assert ", below.source, re.M), f"{title}: no assert right below"
