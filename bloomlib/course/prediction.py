"""Predict, then measure: a learner commits to a prediction before an experiment; after it, the lesson reveals
the measured result next to it (ipywidgets).

    p = Prediction("When the sequence doubles, attention's time grows by about...", choices=["2×", "4×", "8×"])
    p = Prediction("Fitted exponent of time against length?", tolerance=0.3)           # a number, ± absolute
    p = Prediction("Peak memory at 2048 tokens?", tolerance=0.25, relative=True, unit="MiB")  # ± 25 %
    p                       # shows the question, the input and a "Lock in" button
    ...experiment...
    p.reveal(measured, explanation="...", fmt="{:.2f}")

`commit(value)` is what "Lock in" calls, so tests drive the same path as the button. `reveal` fills the widget's
result area and prints the same line, so a static render, nbval and a learner who never clicked all see it. Texts
are deterministic (no ids, no timestamps) so nbval can compare them.
"""
from __future__ import annotations

import html
import math
from typing import Any

from bloomlib.course.quiz import _Displayable, _widgets

NOT_COMMITTED = "(No prediction was locked in.)"


def _finite(value: Any, name: str) -> float:
    """`value` as a finite float; a ValueError naming `name` otherwise (strings and bools are not numbers)."""
    if isinstance(value, (str, bytes, bool)):
        raise ValueError(f"{name} must be a finite number, got {type(value).__name__} {value!r}")
    try:
        x = float(value)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be a finite number, got {type(value).__name__} {value!r}") from e
    if not math.isfinite(x):
        raise ValueError(f"{name} must be a finite number, got {x}")
    return x


def _within(error: float, tolerance: float) -> bool:
    """error <= tolerance, where a value exactly at the tolerance (up to float rounding: 2.0 - 1.7 is
    0.30000000000000004) counts as within."""
    return error <= tolerance or math.isclose(error, tolerance, rel_tol=1e-9)


class Prediction(_Displayable):
    """A prediction to lock in before an experiment: one of `choices` (>= 2 distinct strings), or a number
    judged within `tolerance` (> 0) of the measured value, absolute or, with `relative`, a fraction of it
    (0.25: ± 25 %). Exactly one of `choices` and `tolerance` is given. `result` holds what happened."""

    def __init__(self, question: str, choices: list[str] | None = None, *, tolerance: float | None = None,
                 relative: bool = False, unit: str = "") -> None:
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"question must be a non-empty string, got {question!r}")
        if (choices is None) == (tolerance is None):
            raise ValueError("a Prediction needs exactly one of choices= (a list of >= 2 strings) or tolerance= "
                             f"(a number > 0), got choices={choices!r} and tolerance={tolerance!r}")
        if choices is not None:
            choices = list(choices)
            if len(choices) < 2 or not all(isinstance(c, str) for c in choices) or len(set(choices)) < len(choices):
                raise ValueError(f"choices must be a list of >= 2 distinct strings, got {choices!r}")
            if relative or unit:
                raise ValueError("relative= and unit= apply to a number (tolerance=), not to choices")
        else:
            tolerance = _finite(tolerance, "tolerance")
            if tolerance <= 0:
                raise ValueError(f"tolerance must be > 0, got {tolerance:g}")
        self.question, self.choices, self.tolerance = question, choices, tolerance
        self.relative, self.unit = bool(relative), unit
        self.predicted: str | float | None = None
        self.actual: str | float | None = None
        self.correct: bool | None = None
        self.revealed = False
        w = _widgets()
        if choices is not None:
            self._input = w.RadioButtons(options=choices, value=None, layout=w.Layout(width="max-content"))
        else:
            self._input = w.Text(value="", placeholder=f"a number{' in ' + unit if unit else ''}",
                                 layout=w.Layout(width="16em"))
        self._button = w.Button(description="Lock in")
        self._button.on_click(lambda _: self._lock_in_clicked())
        self._status, self._result = w.HTML(), w.HTML()
        self._status.add_class("bloomlib-prediction-status")
        self._result.add_class("bloomlib-prediction-result")  # stable hooks for styling and the browser test
        self.widget = w.VBox([w.HTML(f"<b>Predict:</b> {html.escape(question)}"), self._input,
                              w.HBox([self._button, self._status]), self._result])
        self.widget.add_class("bloomlib-prediction")

    # ------------------------------------------------------------------------------------------ committing
    def _lock_in_clicked(self) -> None:
        if self._button.disabled:  # locked (a click sent from code; the page sends none to a disabled button)
            return
        value = self._input.value
        if self.choices is not None and value is None:
            self._status.value = "Pick an answer first."
            return
        if self.choices is None and not value.strip():
            self._status.value = "Type a number first."
            return
        try:
            self.commit(value if self.choices is not None else _parse_number(value))
        except ValueError as e:
            self._status.value = html.escape(str(e))

    def commit(self, value: str | float) -> None:
        """Lock in `value` (one of the choices, or a finite number): what the "Lock in" button does. Once only,
        and only before `reveal`."""
        if self.revealed:
            raise ValueError("the result was already revealed: a prediction is locked in before the experiment")
        if self.predicted is not None:
            raise ValueError(f"this prediction is already locked in: {self._show(self.predicted)} "
                             "(a prediction is committed once)")
        if self.choices is None:
            value = _finite(value, "the predicted value")
        elif value not in self.choices:
            raise ValueError(f"{value!r} is not one of the choices {self.choices}")
        self.predicted = value
        self._lock()
        self._status.value = html.escape(f"Locked in: {self._show(value)}.")

    def _lock(self) -> None:
        if self.predicted is not None:  # the input shows what was locked in, also when committed from code
            self._input.value = self.predicted if self.choices is not None else str(self.predicted)
        self._input.disabled = self._button.disabled = True

    # ------------------------------------------------------------------------------------------- revealing
    def reveal(self, actual: str | float, explanation: str = "", fmt: str = "{:.3g}") -> None:
        """Show the right choice or the measured value next to the prediction: in the widget's result area, and
        printed as one line (then `explanation` on its own line, when given). Locks the input. `fmt` formats
        the measured value and the difference (numbers only)."""
        if self.choices is None:
            actual = _finite(actual, "actual")
            if self.relative and actual == 0:
                raise ValueError("actual must be nonzero with relative=True (a relative error of 0 is undefined)")
        elif actual not in self.choices:
            raise ValueError(f"actual must be one of the choices {self.choices}, got {actual!r}")
        self.correct, line = self._judge(actual, fmt)
        self.actual, self.revealed = actual, True
        self._lock()
        self._result.value = "<br>".join(html.escape(t) for t in (line, explanation) if t)
        print(line)
        if explanation:
            print(explanation)

    def _judge(self, actual: str | float, fmt: str) -> tuple[bool | None, str]:
        """(whether the prediction was right, None when nothing was committed; the result line)."""
        head = f"Answer: {actual}." if self.choices is not None else f"Measured: {fmt.format(actual)}{self._unit}."
        if self.predicted is None:
            return None, f"{head} {NOT_COMMITTED}"
        if self.choices is not None:
            right = self.predicted == actual
            return right, f"{head} You chose {self.predicted}: {'right ✓' if right else 'not this time.'}"
        error = abs(self.predicted - actual)
        if self.relative:
            right = _within(error / abs(actual), self.tolerance)
            tolerance, off = f"±{self.tolerance * 100:g} %", f"{error / abs(actual) * 100:.3g} %"
        else:
            right = _within(error, self.tolerance)
            tolerance, off = f"±{self.tolerance:g}{self._unit}", f"{fmt.format(error)}{self._unit}"
        verdict = f"within {tolerance} ✓" if right else f"off by {off} (tolerance {tolerance})"
        return right, f"{head} You predicted {self._show(self.predicted)}: {verdict}"

    # ------------------------------------------------------------------------------------------------ state
    @property
    def result(self) -> dict:
        """{"predicted": value or None, "actual": value or None (before reveal), "correct": True, False, or None
        (nothing committed, or not revealed yet)}."""
        return {"predicted": self.predicted, "actual": self.actual, "correct": self.correct}

    @property
    def _unit(self) -> str:
        return f" {self.unit}" if self.unit else ""

    def _show(self, value: str | float) -> str:
        return value if isinstance(value, str) else f"{value}{self._unit}"

    def __repr__(self) -> str:
        if self.choices is not None:
            kind = f"{len(self.choices)} choices"
        elif self.relative:
            kind = f"a number{' in ' + self.unit if self.unit else ''}, ±{self.tolerance * 100:g} %"
        else:
            kind = f"a number, ±{self.tolerance:g}{self._unit}"
        state = "revealed" if self.revealed else "locked in" if self.predicted is not None else "open"
        return f"Prediction({self.question!r}: {kind}, {state})"


def _parse_number(text: str) -> float:
    try:
        return float(text.strip())
    except ValueError:
        raise ValueError(f"{text.strip()!r} is not a number") from None
