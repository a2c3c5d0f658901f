"""Lessons 01 (Remember) and 02 (Understand): seed-term coverage, lesson structure, and grading of their exercises.

nbval runs the lessons and the solutions themselves (pytest's testpaths). Here each exercise is graded
once, in one kernel: the untouched exercise (ids ``~blank``), the solution (plain ids), accepted
alternative spellings (``~ok<k>``) and typical mistakes (``~<k>``), each in its own copy of its question.
"""
from __future__ import annotations

import ast
import copy
import re
from pathlib import Path

import nbformat
import pytest

from bloomlib.course import grading

REPO = Path(__file__).resolve().parent.parent
LESSONS = {1: REPO / "notebooks" / "01_remember.ipynb", 2: REPO / "notebooks" / "02_understand.ipynb"}

# the 15 headings of the seed article's "Remembering" list
SEED_TERMS = ["Self-attention", "Multi-head attention", "Query, Key, Value (Q, K, V)", "Attention score", "Softmax",
              "Positional encoding", "Feed-forward network (FFN)", "Layer normalization", "Residual connection",
              "Encoder", "Decoder", "Causal masking", "Context window", "Token embedding", "Temperature"]
BLOOM_VERBS = {1: ["define", "list", "recall", "identify", "name", "recognise", "recognize", "state", "match"],
               2: ["explain", "describe", "compare", "summarize", "interpret", "classify"]}


def _read(path):
    return nbformat.read(path, as_version=4)


def _gid(cell):
    return cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")


# ------------------------------------------------------------------------------------------- lessons
def _cell_defining(nb, name):
    for cell in nb.cells:
        if cell.cell_type == "code":
            for node in ast.walk(ast.parse(cell.source)):
                if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
                    return node.value
    raise AssertionError(f"no cell assigns {name}")


def test_every_seed_term_is_taught_carded_and_quizzed():
    nb = _read(LESSONS[1])
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


@pytest.mark.parametrize("level", [1, 2])
def test_lesson_follows_the_house_rules(level):
    nb = _read(LESSONS[level])
    intro, summary = nb.cells[0].source, "\n".join(c.source for c in nb.cells[-3:] if c.cell_type == "markdown")
    assert "Learning objectives" in intro and "study time" in intro.lower() and "Prerequisites" in intro
    objectives = re.findall(r"^\d\. \*\*(\w+)\*\*", intro, re.M)
    assert 4 <= len(objectives) <= 8 and set(objectives) <= set(BLOOM_VERBS[level]), objectives
    assert "Summary" in summary and f"bloomlib grade exercises/{LESSONS[level].name}" in summary
    assert all(c.metadata.get("slideshow", {}).get("slide_type") for c in nb.cells)
    first_code = next(c.source for c in nb.cells if c.cell_type == "code")
    assert "bloomlib.seed_everything(0)" in first_code and "torch.set_num_threads(2)" in first_code
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.execution_count is not None, "commit lessons executed, with their outputs"
            if "plt.subplots" in cell.source or "plot_attention(" in cell.source:
                assert "assert " in cell.source and "plt.show()" in cell.source, cell.source[:80]
                assert ".set(title=" in cell.source or "set_title" in cell.source or "plot_attention(" in cell.source


@pytest.mark.parametrize("name", ["01_remember.ipynb", "02_understand.ipynb"])
def test_exercises_do_not_import_bloomlib(name):
    for folder in ("solutions", "exercises"):
        for cell in _read(REPO / folder / name).cells:
            assert cell.cell_type != "code" or "bloomlib" not in cell.source, (folder, _gid(cell))


# ------------------------------------------------------------------------------------------- grading
def _solution_code(cell):
    return "\n".join(l for l in cell.source.splitlines() if "### BEGIN SOLUTION" not in l and "### END SOLUTION" not in l)


def _suffixed(cell, suffix):
    cell = copy.deepcopy(cell)
    if _gid(cell):
        cell.metadata.nbgrader["grade_id"] = f"{_gid(cell)}~{suffix}"
    return cell


def _questions(source):
    """answer grade_id -> the test grade_ids that follow it."""
    out, current = {}, None
    for c in source.cells:
        meta = c.get("metadata", {}).get("nbgrader", {})
        if meta.get("solution"):
            current = _gid(c)
            out[current] = []
        elif meta.get("grade") and current:
            out[current].append(_gid(c))
    return out


def _edit(code, *pairs):
    for old, new in pairs:
        assert old in code, f"mutation target not found: {old!r}"
        code = code.replace(old, new)
    return code


def _grade(name, variants):
    """Grade blank + solution + variants (answer id, replacements) of solutions/<name> in one kernel."""
    source, exercise = _read(REPO / "solutions" / name), _read(REPO / "exercises" / name)
    cells = {_gid(c): c for c in source.cells if _gid(c)}
    questions = _questions(source)
    filled = copy.deepcopy(exercise)
    for c in filled.cells:
        if c.get("metadata", {}).get("nbgrader", {}).get("solution"):
            c.source = _solution_code(cells[_gid(c)])
    src_cells = [_suffixed(c, "blank") for c in source.cells] + copy.deepcopy(source.cells)
    sub_cells = [_suffixed(c, "blank") for c in exercise.cells] + filled.cells
    for k, (answer, pairs) in enumerate(variants):
        for gid in [answer] + questions[answer]:
            src_cells.append(_suffixed(cells[gid], k))
            sub_cells.append(_suffixed(cells[gid], k))
            if gid == answer:
                sub_cells[-1].source = _edit(_solution_code(cells[gid]), *pairs)
    for i, (a, b) in enumerate(zip(src_cells, sub_cells)):  # copies would repeat cell ids
        a["id"] = b["id"] = f"cell-{i}"
    src = nbformat.v4.new_notebook(cells=src_cells, metadata=source.metadata)
    sub = nbformat.v4.new_notebook(cells=sub_cells, metadata=source.metadata)
    result = grading.grade_notebook(sub, source=src, timeout=120)
    return source, questions, {q["id"]: q for q in result["questions"]}


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
EXERCISES = {"01_remember.ipynb": (MISTAKES_01, 12), "02_understand.ipynb": (MISTAKES_02, 10)}


@pytest.fixture(scope="module", params=list(EXERCISES))
def graded(request):
    mistakes, total = EXERCISES[request.param]
    source, questions, result = _grade(request.param, [(m[0], m[1]) for m in mistakes])
    return {"mistakes": mistakes, "total": total, "questions": questions, "result": result}


def test_solution_scores_full_marks_and_blank_scores_zero(graded):
    tests = [t for ts in graded["questions"].values() for t in ts]
    res = graded["result"]
    assert [res[t] for t in tests if res[t]["score"] != res[t]["max_score"] or res[t]["feedback"]] == []
    assert sum(res[t]["max_score"] for t in tests) == graded["total"]
    for t in tests:
        assert res[f"{t}~blank"]["score"] == 0, res[f"{t}~blank"]


def test_mistakes_lose_points_with_named_feedback_and_synonyms_pass(graded):
    res = graded["result"]
    for k, (answer, _, test_id, words) in enumerate(graded["mistakes"]):
        if test_id is None:  # an accepted alternative spelling: every test of the question passes
            for t in graded["questions"][answer]:
                assert res[f"{t}~{k}"]["score"] == res[f"{t}~{k}"]["max_score"], res[f"{t}~{k}"]
            continue
        q = res[f"{test_id}~{k}"]
        assert q["score"] < q["max_score"] and words in q["feedback"], (k, q)
        assert "Traceback" not in q["feedback"] and "BEGIN HIDDEN" not in q["feedback"]
