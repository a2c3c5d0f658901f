"""Self-check widgets for the lessons: flashcards and a multiple-choice quiz (ipywidgets).

Answers stay in Python (`Quiz.results`), feedback appears on click, and both can be driven from code
(`cards.flip()`, `quiz.answer(i, choice)`), so tests exercise the same path as the buttons. Reprs are
deterministic (no random ids in text), so nbval can compare them.
"""
from __future__ import annotations

import html
from dataclasses import dataclass


def _widgets():
    try:
        import ipywidgets
    except ImportError as e:
        raise ImportError("the course's widgets need ipywidgets: pip install ipywidgets (or pip install -e '.[lab]')") from e
    return ipywidgets


class _Displayable:
    widget = None

    def _repr_mimebundle_(self, **kwargs):
        bundle = self.widget._repr_mimebundle_(**kwargs)
        bundle["text/plain"] = repr(self)  # short and stable, also what a static render shows
        return bundle


class Flashcards(_Displayable):
    """Cards with a term on the front and its definition on the back. cards: {term: definition}."""

    def __init__(self, cards: dict[str, str], title: str = "Flashcards") -> None:
        if not cards:
            raise ValueError("Flashcards need at least one (term, definition) pair")
        self.cards, self.title = list(cards.items()), title
        self.index, self.flipped = 0, False
        w = _widgets()
        self.face = w.HTML()
        buttons = [w.Button(description=d) for d in ("◀ Previous", "Flip", "Next ▶")]
        for b, f in zip(buttons, (self.previous, self.flip, self.next)):
            b.on_click(lambda _, f=f: f())
        self.widget = w.VBox([w.HTML(f"<b>{html.escape(title)}</b>"), self.face, w.HBox(buttons)])
        self.widget.add_class("bloomlib-flashcards")  # stable hooks for styling and the browser test
        self._render()

    @property
    def terms(self) -> list[str]:
        return [t for t, _ in self.cards]

    def _render(self) -> None:
        term, definition = self.cards[self.index]
        text = f"<i>{html.escape(definition)}</i>" if self.flipped else f"<b>{html.escape(term)}</b>"
        self.face.value = f"<div>Card {self.index + 1} of {len(self.cards)}</div><div>{text}</div>"

    def flip(self) -> str:
        """Turn the card over; returns the side now showing."""
        self.flipped = not self.flipped
        self._render()
        return self.cards[self.index][int(self.flipped)]

    def show(self, i: int) -> str:
        """Go to card i (front side up); returns its term."""
        self.index, self.flipped = i % len(self.cards), False
        self._render()
        return self.cards[self.index][0]

    def next(self) -> str:
        return self.show(self.index + 1)

    def previous(self) -> str:
        return self.show(self.index - 1)

    def __repr__(self) -> str:
        return f"Flashcards({self.title!r}: {len(self.cards)} cards)"


@dataclass
class Question:
    """A multiple-choice question: `answer` is the index of the right choice in `choices`."""

    prompt: str
    choices: list[str]
    answer: int
    explanation: str = ""  # shown with a right answer
    hint: str = ""  # shown with a wrong one

    def __post_init__(self) -> None:
        if len(self.choices) < 2 or not 0 <= self.answer < len(self.choices):
            raise ValueError(f"question {self.prompt!r}: need >= 2 choices and 0 <= answer < {len(self.choices)}, "
                             f"got {len(self.choices)} choices and answer={self.answer}")


class Quiz(_Displayable):
    """Multiple-choice quiz. `answer(i, choice)` (what the Check button calls) records the attempt in
    `results[i] = {"choice": int, "correct": bool, "attempts": int}` and returns the feedback text."""

    def __init__(self, questions: list[Question], title: str = "Quiz") -> None:
        if not questions:
            raise ValueError("a Quiz needs at least one Question")
        self.questions, self.title, self.results = list(questions), title, {}
        w = _widgets()
        self._radios, self._feedback, boxes = [], [], [w.HTML(f"<b>{html.escape(title)}</b>")]
        for i, q in enumerate(self.questions):
            radio = w.RadioButtons(options=q.choices, value=None, layout=w.Layout(width="max-content"))
            check, fb = w.Button(description="Check"), w.HTML()
            fb.add_class("bloomlib-feedback")
            check.on_click(lambda _, i=i: self.answer(i, self._radios[i].index) if self._radios[i].index is not None
                           else setattr(self._feedback[i], "value", "Pick an answer first."))
            self._radios.append(radio)
            self._feedback.append(fb)
            boxes.append(w.VBox([w.HTML(f"<b>{i + 1}.</b> {html.escape(q.prompt)}"), radio, w.HBox([check, fb])]))
        self.widget = w.VBox(boxes)
        self.widget.add_class("bloomlib-quiz")

    def answer(self, i: int, choice: int | str) -> str:
        """Answer question i with a choice index or the choice's text; returns the feedback shown."""
        if not 0 <= i < len(self.questions):
            raise ValueError(f"question index must be in [0, {len(self.questions)}), got {i}")
        q = self.questions[i]
        if isinstance(choice, str):
            if choice not in q.choices:
                raise ValueError(f"{choice!r} is not a choice of question {i}: {q.choices}")
            choice = q.choices.index(choice)
        if not 0 <= choice < len(q.choices):
            raise ValueError(f"choice must be in [0, {len(q.choices)}) for question {i}, got {choice}")
        correct = choice == q.answer
        attempts = self.results.get(i, {}).get("attempts", 0) + 1
        self.results[i] = {"choice": choice, "correct": correct, "attempts": attempts}
        text = "✔ Correct. " + q.explanation if correct else "✘ Not quite, try again. " + q.hint
        self._radios[i].index = choice
        self._feedback[i].value = html.escape(text.strip())
        return text.strip()

    @property
    def score(self) -> tuple[int, int]:
        """(questions answered correctly at their latest attempt, number of questions)."""
        return sum(r["correct"] for r in self.results.values()), len(self.questions)

    def __repr__(self) -> str:
        return f"Quiz({self.title!r}: {len(self.questions)} questions, {self.score[0]} correct so far)"
