"""Where a learner stands: every exercise graded, summed up by Bloom level, with the objectives not yet met and the
lesson sections to revisit for each (`bloomlib progress`).

    bloomlib progress [FOLDER] [--json] [--solutions DIR] [--lessons DIR] [--timeout S]

FOLDER holds the learner's exercise notebooks (default: the course's exercises/). Each lesson's exercise is in one of
four states, never confused with a score of zero: ``missing`` (no file), ``not started`` (every answer cell is still
as released), ``broken`` (the file cannot be read or graded: the message says why; the others are still reported)
and ``graded``. An objective is met when every automatically graded cell that assesses it scores full marks;
answers marked by hand wait for the instructor and are counted apart.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat

from bloomlib.course import grading
from bloomlib.course.integrity import nbgrader_meta
from bloomlib.course.objectives import BLOOM_LEVELS, declared_objectives, graded_cells

LESSONS_DIR = grading.REPO / "notebooks"


@dataclass
class Objective:
    id: str
    text: str
    sections: list[str]


@dataclass
class LessonProgress:
    """One lesson's exercise: its state, its score (``graded`` only) and the objectives it has not met yet."""
    notebook: str
    level: str
    status: str  # "graded", "not started", "missing" or "broken"
    score: float = 0.0
    max_score: float = 0.0
    manual_max_score: float = 0.0  # points your instructor marks by hand (not in score)
    not_met: list[Objective] = field(default_factory=list)
    message: str = ""


def lessons_folder(lessons_dir: str | Path | None = None) -> Path:
    folder = Path(lessons_dir) if lessons_dir is not None else LESSONS_DIR
    if not folder.is_dir():
        raise ValueError(f"no lessons folder at {folder}: pass the course's notebooks/ folder "
                         "(--lessons DIR on the command line, lessons_dir= in Python)")
    return folder


def _answers(nb: nbformat.NotebookNode) -> dict[str | None, str]:
    """grade_id -> source of every answer cell (nbgrader solution cell)."""
    return {nbgrader_meta(c).get("grade_id"): c.source.strip() for c in nb.cells if nbgrader_meta(c).get("solution")}


def _untouched(submission: nbformat.NotebookNode, source: nbformat.NotebookNode) -> bool:
    """Every answer cell as released: the learner has not started."""
    answers = _answers(submission)
    return all(answers.get(gid, text) == text for gid, text in _answers(grading.release_notebook(source)).items())


def lesson_progress(exercise: Path, source: Path, lesson: Path | None, timeout: float = 60.0) -> LessonProgress:
    """Grade one exercise notebook (path) against its source and say which of the lesson's objectives it meets."""
    lesson_nb = nbformat.read(lesson, as_version=4) if lesson is not None and lesson.exists() else None
    objectives = [Objective(o["id"], o.get("text", ""), list(o.get("sections", [])))
                  for o in (declared_objectives(lesson_nb) if lesson_nb is not None else [])]
    level = lesson_nb.metadata.get("bloomlib", {}).get("level", "") if lesson_nb is not None else ""
    out = LessonProgress(exercise.name, level or exercise.stem[3:], "missing", not_met=objectives)
    if not exercise.exists():
        return out
    try:
        submission = nbformat.read(exercise, as_version=4)
        src = nbformat.read(source, as_version=4)
        if _untouched(submission, src):
            out.status = "not started"
            return out
        result = grading.grade_notebook(exercise, source=source, timeout=timeout)
    except Exception as e:  # a broken file must not hide the other lessons' progress
        out.status, out.message = "broken", f"{exercise.name}: {type(e).__name__}: {e}"
        return out
    out.status = "graded"
    out.score, out.max_score = result["score"], result["max_score"]
    out.manual_max_score = result.get("manual_max_score", 0.0)
    by_id = {q["id"]: q for q in result["questions"]}
    failing = {oid for grade_id, named in graded_cells(src) for oid in named or []
               if (q := by_id.get(grade_id)) and not q["manual"] and q["score"] < q["max_score"]}
    out.not_met = [o for o in objectives if o.id in failing]
    return out


def course_progress(folder: str | Path | None = None, solutions_dir: str | Path | None = None,
                    lessons_dir: str | Path | None = None, timeout: float = 60.0) -> list[LessonProgress]:
    """Every lesson of the course (one per source notebook in solutions_dir), in order."""
    folder = Path(folder) if folder is not None else grading.exercises_folder()
    if not folder.is_dir():
        raise ValueError(f"no folder {folder} with your exercise notebooks")
    sources = sorted(grading.solutions_folder(solutions_dir).glob(grading.NOTEBOOK_GLOB))
    lessons = lessons_folder(lessons_dir)
    return [lesson_progress(folder / s.name, s, lessons / s.name, timeout) for s in sources]


def _score(r: LessonProgress) -> str:
    """Points marked automatically, as "score/max", or the state of an exercise that was not graded."""
    return f"{r.score:g}/{r.max_score - r.manual_max_score:g}" if r.status == "graded" else r.status


def _totals(rows: list[LessonProgress]) -> str:
    graded = [r for r in rows if r.status == "graded"]
    return (f"{len(graded)} of {len(rows)} exercises graded: {sum(r.score for r in graded):g}/"
            f"{sum(r.max_score - r.manual_max_score for r in graded):g} points marked automatically")


def _summary(rows: list[LessonProgress]) -> str:
    lines = [f"{'level':<11} {'exercise':<22} {'score':>9}  objectives not met yet (sections to revisit)"]
    for r in sorted(rows, key=lambda r: (BLOOM_LEVELS.index(r.level) if r.level in BLOOM_LEVELS else 99,
                                         r.notebook)):
        todo = "none: every objective met" if r.status == "graded" and not r.not_met else ""
        lines.append(f"{r.level:<11} {r.notebook:<22} {_score(r):>9}  {todo}".rstrip())
        if r.status == "broken":
            lines.append(f"{'':<45}could not be graded: {r.message}")
        for o in (r.not_met if r.status == "graded" else []):
            where = "; ".join(f"§{s}" for s in o.sections) or "see the lesson's objectives"
            lines.append(f"{'':<45}{o.id} {o.text[:70]}{'…' if len(o.text) > 70 else ''} ({where})")
        if r.status == "graded" and r.manual_max_score:
            lines.append(f"{'':<45}+ {r.manual_max_score:g} points marked by hand by your instructor")
    lines.append(_totals(rows))
    return "\n".join(lines)


def _html(rows: list[LessonProgress]) -> str:
    """The summary as an HTML table (the widget's view of `_summary`)."""
    import html

    body = []
    for r in rows:
        if r.status == "broken":
            todo = f"could not be graded: {html.escape(r.message)}"
        elif r.status != "graded":
            todo = ""
        else:
            todo = "<br>".join(f"<b>{o.id}</b> {html.escape(o.text)} (revisit: "
                               f"{html.escape('; '.join('§' + s for s in o.sections) or 'the objectives list')})"
                               for o in r.not_met) or "every objective met"
        body.append(f"<tr><td>{r.level}</td><td>{r.notebook}</td><td>{_score(r)}</td><td>{todo}</td></tr>")
    return ('<table class="bloomlib-progress"><thead><tr><th>level</th><th>exercise</th><th>score</th>'
            f'<th>objectives not met yet</th></tr></thead><tbody>{"".join(body)}</tbody></table>')


def default_exercises_folder() -> Path:
    """``../exercises`` next to the lesson being run (a copy of the course, e.g. on a hub), else the checkout's."""
    here = Path.cwd().parent / "exercises"
    return here if here.is_dir() else grading.exercises_folder()


class ProgressView:
    """The progress summary in a lesson: a button that grades your exercise notebooks (saved copies) and shows the
    table of `bloomlib progress`. Nothing is graded until you press it."""

    def __init__(self, folder: str | Path | None = None, solutions_dir: str | Path | None = None,
                 lessons_dir: str | Path | None = None) -> None:
        import ipywidgets as widgets

        self.folder, self.solutions_dir, self.lessons_dir = folder, solutions_dir, lessons_dir
        self.button = widgets.Button(description="Show my progress", icon="list-check",
                                     tooltip="grade your saved exercise notebooks (about a minute)")
        self.status = widgets.HTML("Your exercises are graded when you press the button (save them first).")
        self.table = widgets.HTML("")
        self.button.on_click(self._show)
        self.widget = widgets.VBox([self.button, self.status, self.table])
        self.widget.add_class("bloomlib-progress-view")
        self.rows: list[LessonProgress] = []

    def _show(self, _button=None) -> None:
        self.status.value = "Grading your exercise notebooks… (about a minute)"
        try:
            self.rows = course_progress(self.folder or default_exercises_folder(), self.solutions_dir,
                                        self.lessons_dir)
        except ValueError as e:
            self.status.value = f"Could not grade: {e}"
            return
        self.status.value = _totals(self.rows) + "."
        self.table.value = _html(self.rows)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bloomlib progress", description="Grade your exercise notebooks and show "
                                "your progress by Bloom level: score, objectives not met yet, sections to revisit.")
    p.add_argument("folder", nargs="?", type=Path, default=None,
                   help="folder of your exercise notebooks (default: the course's exercises/)")
    p.add_argument("--json", action="store_true", help="print one JSON list instead of a table")
    p.add_argument("--solutions", type=Path, default=None, help="folder of source notebooks (default: the checkout's)")
    p.add_argument("--lessons", type=Path, default=None, help="folder of the lessons (default: the checkout's)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds each cell may run (default 60)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        rows = course_progress(args.folder, args.solutions, args.lessons, args.timeout)
    except ValueError as e:
        print(f"{p.prog}: {e}", file=sys.stderr)
        return 2
    print(json.dumps([asdict(r) for r in rows], ensure_ascii=False) if args.json else _summary(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
