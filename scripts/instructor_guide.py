"""Write the generated parts of docs/instructor.md from the lessons and their nbgrader sources, so that the guide
never disagrees with the course: the workshop agendas (from each lesson's study time and section lengths), the
objectives with the exercise questions that assess them, and the misconceptions each question's feedback names.

    python scripts/instructor_guide.py            # rewrite the generated blocks in docs/instructor.md
    python scripts/instructor_guide.py --check    # exit 1 when they are out of date (tests/test_instructor_guide.py)

A generated block sits between `<!-- generated: NAME -->` and `<!-- end: NAME -->`; everything else is written by hand.
"""
from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO / "docs" / "instructor.md"
LESSONS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
BLOCK = re.compile(r"(<!-- generated: (\w+) -->\n)(.*?)(<!-- end: \2 -->)", re.S)
EXERCISE_SHARE = 0.3  # of a lesson's study time, spent on its exercise (the rest on its sections)
SESSION_MINUTES = 90  # a teaching block between breaks
MIN_BLOCK = 15  # minutes: shorter consecutive sections are taught together
# name -> (pace: minutes in the room per minute of stated study time, the lessons of each day). The one-day agenda
# keeps the stated pace; the three-day one leaves room for discussion of the predictions and ends with the capstone.
AGENDAS = {"one-day": (1.0, [["01_remember", "02_understand", "03_apply"]]),
           "three-day": (1.5, [["01_remember", "02_understand", "03_apply"], ["04_analyze", "05_evaluate"],
                               ["06_create", "capstone"]])}
CAPSTONE = ("capstone: each team designs a system for a workload of its choice (lesson 06, section 7) and presents "
            "it, numbers cited", 90)


def _meta(nb) -> dict:
    return nb.metadata.get("bloomlib", {})


def sections(nb) -> list[tuple[str, int]]:
    """(title of each '## ' section, its reading weight: words of its markdown + 40 per code cell)."""
    out: list[list] = []
    for cell in nb.cells:
        heads = [l[3:].strip() for l in cell.source.splitlines() if l.startswith("## ")] if cell.cell_type == "markdown" else []
        for h in heads:
            out.append([h, 0])
        if out:
            out[-1][1] += len(cell.source.split()) if cell.cell_type == "markdown" else 40
    return [(t, w) for t, w in out if not re.match(r"(Setup|Summary|Check yourself)", t)]


def _minutes(x: float) -> int:
    return max(5, int(5 * round(x / 5)))


def lesson_plan(path: Path) -> list[tuple[str, int]]:
    """(what, minutes) for one lesson: its sections, consecutive short ones taught as one block of at least
    MIN_BLOCK minutes, then its exercise; about its study time in all."""
    nb = nbformat.read(path, as_version=4)
    total = float(_meta(nb).get("study_minutes", 90))
    parts = sections(nb)
    weight = sum(w for _, w in parts) or 1
    plan, block = [], []
    for k, (title, w) in enumerate(parts):
        block.append((title, total * (1 - EXERCISE_SHARE) * w / weight))
        if sum(m for _, m in block) >= MIN_BLOCK or k == len(parts) - 1:
            titles = [t for t, _ in block]
            label = titles[0] if len(titles) == 1 else f"{titles[0]} … {titles[-1]}"
            plan.append((f"{path.stem[:2]} · {label}", _minutes(sum(m for _, m in block))))
            block = []
    return plan + [(f"{path.stem[:2]} · exercise (`exercises/{path.name}`)", _minutes(total * EXERCISE_SHARE))]


def agenda(name: str) -> str:
    """Day, start time, what, minutes: the lessons' plans at the agenda's pace, a break after at most SESSION_MINUTES
    of teaching, lunch at the first break from 12:00."""
    pace, days = AGENDAS[name]
    rows = ["| day | time | what | minutes |", "| --- | --- | --- | --- |"]
    for day, stems in enumerate(days, 1):
        clock, since_break, lunch = 9 * 60, 0, False
        items = [item for stem in stems for item in (
            [CAPSTONE] if stem == "capstone" else lesson_plan(REPO / "notebooks" / f"{stem}.ipynb"))]
        for what, minutes in items:
            minutes = _minutes(minutes * pace) if what != CAPSTONE[0] else minutes
            if since_break and since_break + minutes > SESSION_MINUTES:
                pause, lunch = (60, True) if clock >= 12 * 60 and not lunch else (15, lunch)
                rows.append(f"| {day} | {_clock(clock)} | {'lunch' if pause == 60 else 'break'} | {pause} |")
                clock, since_break = clock + pause, 0
            rows.append(f"| {day} | {_clock(clock)} | {what} | {minutes} |")
            clock, since_break = clock + minutes, since_break + minutes
        rows.append(f"| {day} | {_clock(clock)} | end of the day | |")
    return "\n".join(rows)


def _clock(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def objectives_table() -> str:
    rows = ["| lesson | objective | assessed by (exercise test cells) | points |", "| --- | --- | --- | --- |"]
    for path in LESSONS:
        lesson = nbformat.read(path, as_version=4)
        source = nbformat.read(REPO / "solutions" / path.name, as_version=4)
        points, by = {}, {}
        for c in source.cells:
            m = c.metadata.get("nbgrader", {})
            if m.get("grade"):
                for oid in c.metadata.get("bloomlib", {}).get("objectives", []):
                    by.setdefault(oid, []).append(m["grade_id"])
                    points[oid] = points.get(oid, 0) + m.get("points", 0)
        for o in _meta(lesson).get("objectives", []):
            tests = ", ".join(f"`{g}`" for g in by.get(o["id"], [])) or "**none**"
            rows.append(f"| {path.stem} | **{o['id']}** {o['text']} | {tests} | {points.get(o['id'], 0):g} |")
    return "\n".join(rows)


def _strings(node: ast.AST) -> list[str]:
    """The feedback a test cell names: string values of its dict literals, and constant assert messages."""
    out = []
    for n in ast.walk(node):
        if isinstance(n, ast.Dict):
            out += [v.value for v in n.values if isinstance(v, ast.Constant) and isinstance(v.value, str)]
        elif isinstance(n, ast.Assert) and isinstance(n.msg, ast.Constant) and isinstance(n.msg.value, str):
            out.append(n.msg.value)
    return out


_FORM = ("define ", "return ", "keep the", "answer ", "give ", "use only", "list exactly", "write ", "assign ")


def _is_misconception(text: str) -> bool:
    """A named mistake, not a rule of form (name, type, shape of the answer) or a bare variable name."""
    return 3 < len(text) <= 90 and not re.fullmatch(r"[\w.]+", text) and not text.lower().startswith(_FORM) \
        and " must be " not in text


def misconceptions() -> str:
    rows = ["| exercise | question | what the feedback names |", "| --- | --- | --- |"]
    for path in LESSONS:
        source = nbformat.read(REPO / "solutions" / path.name, as_version=4)
        question, named = None, {}
        for c in source.cells:
            m = c.metadata.get("nbgrader", {})
            if m.get("solution"):
                question = m["grade_id"]
            elif m.get("grade") and question and c.cell_type == "code":
                try:
                    tree = ast.parse(c.source)
                except SyntaxError:
                    continue
                for text in _strings(tree):
                    short = re.split(r"[:;(]", text, maxsplit=1)[0].strip().rstrip(".")
                    if _is_misconception(short) and short not in named.setdefault(question, []):
                        named[question].append(short)
        for q, items in named.items():
            rows.append(f"| {path.stem} | `{q}` | {'; '.join(items)} |")
    return "\n".join(rows)


GENERATED = {"agenda_one_day": lambda: agenda("one-day"), "agenda_three_day": lambda: agenda("three-day"),
             "objectives": objectives_table, "misconceptions": misconceptions}


def render(text: str) -> str:
    def fill(m: re.Match) -> str:
        if m.group(2) not in GENERATED:
            raise ValueError(f"unknown generated block {m.group(2)!r} in {GUIDE.name}")
        return f"{m.group(1)}{GENERATED[m.group(2)]()}\n{m.group(4)}"
    return BLOCK.sub(fill, text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 when the guide is out of date")
    args = p.parse_args(argv)
    text = GUIDE.read_text()
    new = render(text)
    if args.check:
        if new != text:
            print(f"{GUIDE} is out of date: run python scripts/instructor_guide.py", file=sys.stderr)
            return 1
        return 0
    GUIDE.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
