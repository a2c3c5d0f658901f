"""bloomlib.course.Prediction: choices and numbers, committed from code and through the widget's own inputs,
revealed with the exact line a lesson prints; and a notebook run with nobody clicking (as nbval runs a lesson)."""
from __future__ import annotations

import sys
from fractions import Fraction

import pytest

from bloomlib.course import Prediction

QUESTION = "When the sequence doubles, attention's time grows by about..."
CHOICES = ["2×", "4×", "8×"]


def _choice() -> Prediction:
    return Prediction(QUESTION, choices=CHOICES)


def _lines(capsys) -> list[str]:
    return capsys.readouterr().out.splitlines()


# ------------------------------------------------------------------------------------------ construction
@pytest.mark.parametrize("kwargs, needle", [
    ({}, "exactly one of choices="),
    ({"choices": ["a", "b"], "tolerance": 0.1}, "exactly one of choices="),
    ({"choices": ["a"]}, ">= 2 distinct strings"),
    ({"choices": ["a", "a"]}, ">= 2 distinct strings"),
    ({"choices": ["a", 2]}, ">= 2 distinct strings"),
    ({"tolerance": 0}, "tolerance must be > 0"),
    ({"tolerance": -0.1}, "tolerance must be > 0"),
    ({"tolerance": float("nan")}, "tolerance must be a finite number"),
    ({"tolerance": "0.3"}, "tolerance must be a finite number"),
    ({"choices": ["a", "b"], "relative": True}, "relative= and unit= apply to a number"),
    ({"choices": ["a", "b"], "unit": "s"}, "relative= and unit= apply to a number"),
])
def test_bad_construction_is_a_value_error(kwargs, needle):
    with pytest.raises(ValueError, match=needle.replace("(", r"\(")):
        Prediction("?", **kwargs)


@pytest.mark.parametrize("question", [" ", None, 3])
def test_question_must_be_text(question):
    with pytest.raises(ValueError, match="question must be a non-empty string"):
        Prediction(question, choices=CHOICES)


def test_missing_ipywidgets_is_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "ipywidgets", None)
    with pytest.raises(ImportError, match="widgets need ipywidgets: pip install ipywidgets"):
        _choice()


# -------------------------------------------------------------------------------------------- choices
def test_choice_right_and_wrong_lines(capsys):
    p = _choice()
    assert p.result == {"predicted": None, "actual": None, "correct": None}
    assert p.commit("4×") is None
    assert p.result == {"predicted": "4×", "actual": None, "correct": None}, "not judged before the reveal"
    assert p.reveal("4×") is None
    assert _lines(capsys) == ["Answer: 4×. You chose 4×: right ✓"]
    assert p.result == {"predicted": "4×", "actual": "4×", "correct": True}

    p = _choice()
    p.commit("2×")
    p.reveal("4×", explanation="Attention compares every pair of tokens: n² pairs.")
    assert _lines(capsys) == ["Answer: 4×. You chose 2×: not this time.",
                              "Attention compares every pair of tokens: n² pairs."]
    assert p.result["correct"] is False
    assert p._result.value == ("Answer: 4×. You chose 2×: not this time.<br>"
                               "Attention compares every pair of tokens: n² pairs.")


def test_commit_and_reveal_check_their_values():
    p = _choice()
    with pytest.raises(ValueError, match=r"'3×' is not one of the choices \['2×', '4×', '8×'\]"):
        p.commit("3×")
    with pytest.raises(ValueError, match="is not one of the choices"):
        p.commit(1)  # an index is not a choice
    assert p.predicted is None, "a rejected value leaves the prediction open"
    with pytest.raises(ValueError, match="actual must be one of the choices"):
        p.reveal("3×")
    assert not p.revealed and not p._input.disabled, "a rejected reveal changes nothing"


def test_double_commit_names_the_first_value():
    p = _choice()
    p.commit("8×")
    with pytest.raises(ValueError, match="already locked in: 8×"):
        p.commit("4×")
    assert p.predicted == "8×"
    n = Prediction("?", tolerance=0.3)
    n.commit(2)
    with pytest.raises(ValueError, match=r"already locked in: 2\.0"):
        n.commit(2.5)


# -------------------------------------------------------------------------------------------- numbers
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), "2.0", True, None, [1.0]])
def test_commit_needs_a_finite_number(bad):
    p = Prediction("?", tolerance=0.3)
    with pytest.raises(ValueError, match="the predicted value must be a finite number"):
        p.commit(bad)
    assert p.predicted is None


def test_number_within_and_off_lines(capsys):
    p = Prediction("Fitted exponent of time against length?", tolerance=0.3)
    p.commit(2.0)
    p.reveal(1.97, fmt="{:.2f}")
    p = Prediction("Fitted exponent of time against length?", tolerance=0.3)
    p.commit(3.0)
    p.reveal(1.97, explanation="n² pairs.", fmt="{:.2f}")
    assert _lines(capsys) == ["Measured: 1.97. You predicted 2.0: within ±0.3 ✓",
                              "Measured: 1.97. You predicted 3.0: off by 1.03 (tolerance ±0.3)",
                              "n² pairs."]
    assert p.result == {"predicted": 3.0, "actual": 1.97, "correct": False}


def test_relative_tolerance_with_unit(capsys):
    p = Prediction("Peak memory at 2048 tokens?", tolerance=0.25, relative=True, unit="MiB")
    p.commit(600)
    p.reveal(812.4)
    p2 = Prediction("Peak memory at 2048 tokens?", tolerance=0.25, relative=True, unit="MiB")
    p2.commit(800)
    p2.reveal(812.4)
    off = f"{abs(600 - 812.4) / 812.4 * 100:.3g}"  # float64 relative error, in %
    assert _lines(capsys) == [f"Measured: 812 MiB. You predicted 600.0 MiB: off by {off} % (tolerance ±25 %)",
                              "Measured: 812 MiB. You predicted 800.0 MiB: within ±25 % ✓"]
    assert (p.result["correct"], p2.result["correct"]) == (False, True)


def test_absolute_tolerance_with_unit(capsys):
    p = Prediction("Time per step?", tolerance=0.5, unit="ms")
    p.commit(3)
    p.reveal(4.25)
    assert _lines(capsys) == ["Measured: 4.25 ms. You predicted 3.0 ms: off by 1.25 ms (tolerance ±0.5 ms)"]


@pytest.mark.parametrize("actual, predicted, tolerance, relative", [
    (1.7, 2.0, 0.3, False),  # 2.0 - 1.7 == 0.30000000000000004 in float64: still "exactly at"
    (2.3, 2.0, 0.3, False),  # from below
    (-1.0, -1.25, 0.25, False),
    (800.0, 1000.0, 0.25, True),  # 25 % of 800 is 200
    (800.0, 600.0, 0.25, True),
    (-40.0, -50.0, 0.25, True),
    (0.3, 0.33, 0.1, True),
])
def test_exactly_at_the_tolerance_is_within_and_just_past_it_is_not(actual, predicted, tolerance, relative):
    exact = abs(Fraction(str(predicted)) - Fraction(str(actual)))  # the decimal values, exactly
    bound = Fraction(str(tolerance)) * (abs(Fraction(str(actual))) if relative else 1)
    assert exact == bound, "the case must sit exactly on the boundary in exact arithmetic"
    at = Prediction("?", tolerance=tolerance, relative=relative)
    at.commit(predicted)
    at.reveal(actual)
    assert at.result["correct"] is True
    step = 1e-6 * max(1.0, abs(predicted))
    past = Prediction("?", tolerance=tolerance, relative=relative)
    past.commit(predicted + step if predicted > actual else predicted - step)
    past.reveal(actual)
    assert past.result["correct"] is False


def test_relative_needs_a_nonzero_measurement():
    p = Prediction("?", tolerance=0.1, relative=True)
    p.commit(1.0)
    with pytest.raises(ValueError, match="actual must be nonzero with relative=True"):
        p.reveal(0.0)
    with pytest.raises(ValueError, match="actual must be a finite number"):
        p.reveal(float("nan"))


def test_reveal_takes_a_torch_scalar(capsys):
    import torch

    p = Prediction("?", tolerance=0.5)
    p.commit(2)
    p.reveal(torch.tensor(1.75, dtype=torch.float64))
    assert _lines(capsys) == ["Measured: 1.75. You predicted 2.0: within ±0.5 ✓"]


# ------------------------------------------------------------------------------------ reveal, locking
def test_reveal_without_commit(capsys):
    p = Prediction("?", tolerance=0.3)
    p.reveal(1.97, explanation="Because.", fmt="{:.2f}")
    c = _choice()
    c.reveal("4×")
    assert _lines(capsys) == ["Measured: 1.97. (No prediction was locked in.)", "Because.",
                              "Answer: 4×. (No prediction was locked in.)"]
    assert p.result == {"predicted": None, "actual": 1.97, "correct": None}
    assert c.result == {"predicted": None, "actual": "4×", "correct": None}


def test_reveal_locks_the_widget_and_commit_after_it_is_refused(capsys):
    p = _choice()
    assert not p._input.disabled and not p._button.disabled
    p.reveal("4×")
    assert p._input.disabled and p._button.disabled and p.revealed
    with pytest.raises(ValueError, match="already revealed"):
        p.commit("4×")
    p._input.value = "2×"  # a click the page would not send to a disabled input and button
    p._button.click()
    assert p.predicted is None and p._status.value == ""


def test_reveal_again_replaces_the_result(capsys):
    """Re-running a lesson's reveal cell (without re-running the prediction) must not fail."""
    p = Prediction("?", tolerance=0.3)
    p.commit(2.0)
    p.reveal(1.97, fmt="{:.2f}")
    p.reveal(2.5, fmt="{:.2f}")
    assert _lines(capsys)[-1] == "Measured: 2.50. You predicted 2.0: off by 0.50 (tolerance ±0.3)"
    assert p.result == {"predicted": 2.0, "actual": 2.5, "correct": False}


# ---------------------------------------------------------------------- the widget's own inputs and button
def test_radio_and_lock_in_button(capsys):
    p = _choice()
    p._button.click()
    assert p.predicted is None and p._status.value == "Pick an answer first."
    p._input.value = "8×"
    p._button.click()
    assert p.predicted == "8×" and p._status.value == "Locked in: 8×."
    assert p._input.disabled and p._button.disabled, "locking in disables the input"
    p._input.value = "2×"  # a click the page would not send to a disabled input and button
    p._button.click()
    assert p.predicted == "8×"
    p.reveal("8×")
    assert _lines(capsys) == ["Answer: 8×. You chose 8×: right ✓"]
    assert p._result.value == "Answer: 8×. You chose 8×: right ✓"


def test_number_box_and_lock_in_button(capsys):
    p = Prediction("Fitted exponent?", tolerance=0.3)
    p._button.click()
    assert p._status.value == "Type a number first."
    for text, status in [("two", "&#x27;two&#x27; is not a number"),
                         ("inf", "the predicted value must be a finite number, got inf")]:
        p._input.value = text
        p._button.click()
        assert p.predicted is None and p._status.value == status and not p._input.disabled
    p._input.value = " 2.5 "
    p._button.click()
    assert p.predicted == 2.5 and p._status.value == "Locked in: 2.5." and p._input.disabled
    p.reveal(1.97, fmt="{:.2f}")
    assert _lines(capsys) == ["Measured: 1.97. You predicted 2.5: off by 0.53 (tolerance ±0.3)"]


def test_commit_from_code_shows_in_the_widget():
    p = Prediction("?", tolerance=0.3, unit="s")
    p.commit(2)
    assert p._input.value == "2.0" and p._input.disabled and p._status.value == "Locked in: 2.0 s."
    c = _choice()
    c.commit("4×")
    assert c._input.value == "4×" and c._input.disabled


# ------------------------------------------------------------------------------------ reprs, escaping
def test_reprs_are_short_deterministic_text():
    c, n = _choice(), Prediction("Fitted exponent?", tolerance=0.3)
    r = Prediction("Peak memory?", tolerance=0.25, relative=True, unit="MiB")
    assert repr(c) == f"Prediction({QUESTION!r}: 3 choices, open)"
    assert repr(n) == "Prediction('Fitted exponent?': a number, ±0.3, open)"
    assert repr(r) == "Prediction('Peak memory?': a number in MiB, ±25 %, open)"
    bundle = c._repr_mimebundle_()
    assert bundle["text/plain"] == repr(c) == repr(_choice())
    assert "application/vnd.jupyter.widget-view+json" in bundle  # the live widget, for JupyterLab
    c.commit("2×")
    assert repr(c).endswith("3 choices, locked in)")
    c.reveal("4×")
    assert repr(c).endswith("3 choices, revealed)")


def test_question_and_texts_are_escaped(capsys):
    import html

    question = "Is <b>x</b> & y > 2?"
    p = Prediction(question, choices=["<i>yes</i>", "no"])
    assert p.widget.children[0].value == f"<b>Predict:</b> {html.escape(question)}"
    assert "<b>x</b>" not in p.widget.children[0].value
    p.commit("<i>yes</i>")
    assert p._status.value == html.escape("Locked in: <i>yes</i>.")
    p.reveal("no", explanation="<script>alert(1)</script>")
    assert p._result.value == (html.escape("Answer: no. You chose <i>yes</i>: not this time.") + "<br>"
                               + html.escape("<script>alert(1)</script>"))
    assert _lines(capsys) == ["Answer: no. You chose <i>yes</i>: not this time.", "<script>alert(1)</script>"]


# --------------------------------------------------------------------------- a lesson run with no clicks
@pytest.mark.slow
def test_notebook_run_with_nobody_clicking_prints_the_line(tmp_path):
    """What nbval sees: the prediction cell's text/plain and the reveal cell's printed lines, in a real kernel."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(f"from bloomlib.course import Prediction\n"
                                          f"p = Prediction({QUESTION!r}, choices={CHOICES!r})\np"),
                nbformat.v4.new_code_cell("p.reveal('4×', explanation='n² pairs.')")]
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    shown = nb.cells[0].outputs[0]
    assert shown.output_type == "execute_result"
    assert shown.data["text/plain"] == f"Prediction({QUESTION!r}: 3 choices, open)"
    assert "application/vnd.jupyter.widget-view+json" in shown.data
    assert [(o.output_type, o.get("name"), o.get("text")) for o in nb.cells[1].outputs] == [
        ("stream", "stdout", "Answer: 4×. (No prediction was locked in.)\nn² pairs.\n")]
