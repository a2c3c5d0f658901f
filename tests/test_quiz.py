"""bloomlib.course.quiz: flashcards and a multiple-choice quiz, driven through their Python API and their buttons."""
from __future__ import annotations

import sys

import pytest

from bloomlib.course import quiz

CARDS = {"softmax": "turns scores into weights that sum to 1", "residual": "x + f(x)"}


def _quiz():
    return quiz.Quiz([
        quiz.Question("2 + 2?", ["3", "4", "5"], 1, explanation="Four.", hint="Count again."),
        quiz.Question("Capital of France?", ["Paris", "Rome"], 0),
    ], title="Warm-up")


def _buttons(box):
    """Every Button in a widget tree, depth first."""
    import ipywidgets as w

    if isinstance(box, w.Button):
        return [box]
    return [b for c in getattr(box, "children", ()) for b in _buttons(c)]


def test_answer_records_results_and_returns_feedback():
    q = _quiz()
    assert q.score == (0, 2) and q.results == {}
    assert q.answer(0, 0) == "✘ Not quite, try again. Count again."
    assert q.results == {0: {"choice": 0, "correct": False, "attempts": 1}}
    assert q.answer(0, "4") == "✔ Correct. Four."
    assert q.results[0] == {"choice": 1, "correct": True, "attempts": 2}
    assert q._feedback[0].value == "✔ Correct. Four." and q._radios[0].value == "4"
    assert q.answer(1, "Paris") == "✔ Correct." and q.score == (2, 2)


def test_check_button_answers_the_selected_choice():
    q = _quiz()
    check = _buttons(q.widget.children[2])[0]
    check.click()
    assert q.results == {} and q._feedback[1].value == "Pick an answer first."
    q._radios[1].value = "Rome"
    check.click()
    assert q.results[1]["correct"] is False and q._feedback[1].value.startswith("✘ Not quite")


def test_bad_answers_raise_value_error():
    q = _quiz()
    with pytest.raises(ValueError, match=r"question index must be in \[0, 2\)"):
        q.answer(2, 0)
    with pytest.raises(ValueError, match="'6' is not a choice of question 0"):
        q.answer(0, "6")
    with pytest.raises(ValueError, match=r"choice must be in \[0, 3\)"):
        q.answer(0, 3)
    with pytest.raises(ValueError, match="answer=2"):
        quiz.Question("?", ["a", "b"], 2)
    with pytest.raises(ValueError, match="at least one"):
        quiz.Quiz([])


def test_flashcards_flip_and_move_by_code_and_by_button():
    cards = quiz.Flashcards(CARDS, title="Terms")
    assert cards.terms == ["softmax", "residual"]
    assert "<b>softmax</b>" in cards.face.value and "Card 1 of 2" in cards.face.value
    assert cards.flip() == CARDS["softmax"] and CARDS["softmax"] in cards.face.value
    previous, flip, nxt = _buttons(cards.widget)
    nxt.click()
    assert cards.index == 1 and not cards.flipped and "<b>residual</b>" in cards.face.value
    flip.click()
    assert "x + f(x)" in cards.face.value
    nxt.click()  # wraps around
    assert cards.index == 0
    previous.click()
    assert cards.index == 1


def test_reprs_are_deterministic_text():
    q, cards = _quiz(), quiz.Flashcards(CARDS)
    for obj, text in ((q, "Quiz('Warm-up': 2 questions, 0 correct so far)"), (cards, "Flashcards('Flashcards': 2 cards)")):
        bundle = obj._repr_mimebundle_()
        assert bundle["text/plain"] == text
        assert "application/vnd.jupyter.widget-view+json" in bundle  # the live widget, for JupyterLab
    assert repr(quiz.Flashcards(CARDS)) == repr(cards)


def test_missing_ipywidgets_is_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "ipywidgets", None)
    with pytest.raises(ImportError, match="widgets need ipywidgets: pip install ipywidgets"):
        quiz.Flashcards(CARDS)
