"""Every learning objective of a lesson is assessed by a graded question: the checks behind that promise.

Conventions:
- the lesson notebook (notebooks/NN_name.ipynb) declares, in its notebook metadata,
  ``metadata["bloomlib"] = {"level": "analyze", "study_minutes": 120,
  "objectives": [{"id": "04.1", "text": "Analyze how ...", "sections": ["1 · Quadratic cost: ..."]}, ...]}``
  (ids "NN.k"; ``sections``: the titles of the lesson's '## ' sections that teach it, for `bloomlib progress`);
- its nbgrader source (solutions/NN_name.ipynb) marks every graded cell (nbgrader ``grade: true``) with
  ``metadata["bloomlib"] = {"objectives": ["04.1", ...]}``;
- the lesson's markdown lists each objective with its id in bold and the grade_ids that assess it on the same line:
  ``- **04.1** Analyze ... (graded: `test_fit_power_law`, `test_cost_cause`)``.

`objective_problems(lesson, source)` lists what breaks them, one sentence each; `coverage` maps each objective to
the graded cells that assess it. Notebooks are given as paths or as nbformat nodes (or plain dicts).
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Union

BLOOM_LEVELS = ("remember", "understand", "apply", "analyze", "evaluate", "create")
NotebookLike = Union[Mapping, str, Path]

_ID = re.compile(r"\d\d\.\d+")
_LISTED = re.compile(r"^\s*[-*+]\s+\*\*(\d\d\.\d+)\*\*")  # a markdown list item that starts with a bold id
_GRADED = "(graded:"


def _load(nb: NotebookLike, default_name: str) -> tuple[Mapping, str]:
    """(the notebook, the name messages call it by: its file name, or `default_name` for a node)."""
    if isinstance(nb, (str, Path)):
        import nbformat

        path = Path(nb)
        if not path.is_file():
            raise ValueError(f"no such notebook: {path}")
        return nbformat.read(path, as_version=4), path.name
    if not isinstance(nb, Mapping) or "cells" not in nb:
        raise ValueError(f"{default_name} must be a notebook (a path, or an nbformat node with cells), "
                         f"got {type(nb).__name__}")
    return nb, default_name


def _text(cell: Mapping) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def _bloomlib(node: Mapping) -> Mapping:
    meta = node.get("metadata", {}).get("bloomlib", {})
    return meta if isinstance(meta, Mapping) else {}


def declared_objectives(lesson: NotebookLike) -> list[dict]:
    """The lesson's objectives as declared in its metadata: [{"id": "04.1", "text": "..."}, ...]."""
    nb, _ = _load(lesson, "the lesson")
    objectives = _bloomlib(nb).get("objectives")
    return [dict(o) for o in objectives if isinstance(o, Mapping)] if isinstance(objectives, list) else []


def graded_cells(source: NotebookLike) -> list[tuple[str | None, Any]]:
    """(grade_id, the cell's metadata bloomlib.objectives as written, None when absent) for every graded cell
    (nbgrader ``grade: true``) of an nbgrader source notebook, in order."""
    nb, _ = _load(source, "the source notebook")
    out = []
    for cell in nb["cells"]:
        nbgrader = cell.get("metadata", {}).get("nbgrader", {})
        if nbgrader.get("grade"):
            out.append((nbgrader.get("grade_id"), _bloomlib(cell).get("objectives")))
    return out


def coverage(lesson: NotebookLike, source: NotebookLike) -> dict[str, list[str]]:
    """Objective id -> the grade_ids of the graded cells that name it (source order; [] when none), for every
    objective the lesson declares (declaration order)."""
    out = {o["id"]: [] for o in declared_objectives(lesson) if isinstance(o.get("id"), str)}
    for grade_id, named in graded_cells(source):
        for oid in named if grade_id and isinstance(named, list) else []:
            if isinstance(oid, str) and oid in out and grade_id not in out[oid]:
                out[oid].append(grade_id)
    return out


def listed_objectives(lesson: NotebookLike) -> dict[str, list[str]]:
    """Objective id -> the markdown lines that list it (``- **04.1** ...``), across the lesson's markdown cells."""
    nb, _ = _load(lesson, "the lesson")
    out: dict[str, list[str]] = {}
    for cell in nb["cells"]:
        if cell.get("cell_type") == "markdown":
            for line in _text(cell).splitlines():
                if m := _LISTED.match(line):
                    out.setdefault(m.group(1), []).append(line.strip())
    return out


def _graded_names(line: str) -> list[str] | None:
    """The `grade_id`s in a listing line's last "(graded: ...)" part; None when it has none."""
    at = line.rfind(_GRADED)
    return None if at < 0 else re.findall(r"`([^`]+)`", line[at:])


def _number(name: str) -> str | None:
    """The lesson number of a file name like 04_analyze.ipynb ("04"); None for a node given without a path."""
    return name[:2] if re.match(r"\d\d_", name) else None


def _metadata_problems(nb: Mapping, name: str) -> list[str]:
    """The lesson's own declaration: level, study time, objectives' ids and texts."""
    meta, out, number = _bloomlib(nb), [], _number(name)
    level = meta.get("level")
    if level is None:
        out.append(f"{name}: declares no level (metadata bloomlib.level, one of Bloom's six: "
                   f"{', '.join(BLOOM_LEVELS)})")
    elif level not in BLOOM_LEVELS:
        out.append(f"{name}: level {level!r} (metadata bloomlib.level) is not one of Bloom's six levels: "
                   f"{', '.join(BLOOM_LEVELS)}")
    elif Path(name).stem[3:] in BLOOM_LEVELS and Path(name).stem[3:] != level:
        out.append(f"{name}: metadata bloomlib.level is {level!r} but the file name says {Path(name).stem[3:]!r}")
    minutes = meta.get("study_minutes")
    if isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or minutes <= 0:
        out.append(f"{name}: metadata bloomlib.study_minutes must be a positive number of minutes, got {minutes!r}")
    objectives = meta.get("objectives")
    if not objectives or not isinstance(objectives, list):
        out.append(f"{name}: declares no objectives (notebook metadata bloomlib.objectives should be a list like "
                   f'[{{"id": "{number or "NN"}.1", "text": "..."}}])')
        return out
    seen = set()
    for k, o in enumerate(objectives, 1):
        if not isinstance(o, Mapping):
            out.append(f'{name}: objective #{k} must be an object {{"id": ..., "text": ...}}, got {o!r}')
            continue
        oid = o.get("id")
        if not isinstance(oid, str) or not _ID.fullmatch(oid):
            out.append(f"{name}: objective #{k} has id {oid!r}, not of the form NN.k (e.g. '{number or 'NN'}.{k}')")
            continue
        if number and not oid.startswith(number + "."):
            out.append(f"{name}: objective {oid} does not belong to lesson {number} (its ids start with {number}.)")
        if oid in seen:
            out.append(f"{name}: objective {oid} is declared twice")
        seen.add(oid)
        if not isinstance(o.get("text"), str) or not o["text"].strip():
            out.append(f"{name}: objective {oid} has no text")
        sections = o.get("sections")
        if sections is None:
            out.append(f"{name}: objective {oid} names no sections (metadata 'sections': the titles of the '## ' "
                       "sections that teach it, which `bloomlib progress` tells a learner to revisit)")
        elif not isinstance(sections, list) or not sections or not all(isinstance(x, str) for x in sections):
            out.append(f"{name}: objective {oid}: sections must be a non-empty list of the lesson's section titles "
                       f"(its '## ' headings, without the '## '), got {sections!r}")
        else:
            titles = section_titles(nb)
            out += [f"{name}: objective {oid} names section {x!r}, which is not a '## ' heading of the lesson"
                    for x in sections if x not in titles]
    return out


def section_titles(lesson: NotebookLike) -> list[str]:
    """The lesson's section titles: its markdown '## ' headings without the '## ', in order."""
    nb, _ = _load(lesson, "the lesson")
    return [line[3:].strip() for cell in nb["cells"] if cell.get("cell_type") == "markdown"
            for line in _text(cell).splitlines() if line.startswith("## ")]


def _graded_cell_problems(declared: set[str], cells: list, lesson_name: str, source_name: str) -> list[str]:
    out = []
    for k, (grade_id, named) in enumerate(cells, 1):
        what = f"{source_name}: graded cell {grade_id!r}"
        if not grade_id:
            out.append(f"{source_name}: graded cell #{k} has no nbgrader grade_id, so nothing can name it")
            continue
        if named is None or named == []:
            out.append(f"{what} names no objective (cell metadata bloomlib.objectives, e.g. "
                       f"[\"{_number(lesson_name) or 'NN'}.1\"])")
        elif not isinstance(named, list) or not all(isinstance(x, str) for x in named):
            out.append(f"{what}: metadata bloomlib.objectives must be a list of objective ids, got {named!r}")
        else:
            out += [f"{what} names objective {oid!r}, which {lesson_name} does not declare"
                    for oid in named if oid not in declared]
    return out


def _listing_problems(covered: dict[str, list[str]], listed: dict[str, list[str]], name: str) -> list[str]:
    out = []
    for oid, grade_ids in covered.items():
        if not _ID.fullmatch(oid):
            continue  # a malformed id is reported with the metadata; it cannot be listed
        lines = listed.get(oid, [])
        if not lines:
            out.append(f"{name}: objective {oid} is not listed in the lesson's markdown (a line "
                       f"'- **{oid}** <text> (graded: `{'`, `'.join(grade_ids) or 'test_...'}`)')")
            continue
        if len(lines) > 1:
            out.append(f"{name}: objective {oid} is listed on {len(lines)} markdown lines (once is enough)")
        names = _graded_names(lines[0])
        if names is None:
            out.append(f"{name}: the markdown line of objective {oid} has no '(graded: `...`)' naming the cells "
                       f"that assess it ({', '.join(grade_ids) or 'none yet'})")
            continue
        out += [f"{name}: the markdown line of objective {oid} does not name {g}, a graded cell that assesses it"
                for g in grade_ids if g not in names]
        out += [f"{name}: the markdown line of objective {oid} names {g}, which does not assess it "
                f"(its metadata bloomlib.objectives does not name {oid}, or it is not a graded cell)"
                for g in names if g not in grade_ids]
    out += [f"{name}: the markdown lists objective {oid}, which the metadata does not declare"
            for oid in listed if oid not in covered]
    return out


def objective_problems(lesson: NotebookLike, source: NotebookLike) -> list[str]:
    """Everything that breaks the conventions (see the module's docstring), one sentence each for a course
    author: [] when every declared objective is assessed by a graded cell and listed with those cells."""
    lesson_nb, lesson_name = _load(lesson, "the lesson")
    source_nb, source_name = _load(source, "the source notebook")
    out = _metadata_problems(lesson_nb, lesson_name)
    covered = coverage(lesson_nb, source_nb)
    out += _graded_cell_problems(set(covered), graded_cells(source_nb), lesson_name, source_name)
    out += [f"{lesson_name}: objective {oid} is assessed by no graded cell of {source_name} (name it in a graded "
            f"cell's metadata bloomlib.objectives)" for oid, grade_ids in covered.items() if not grade_ids]
    out += _listing_problems(covered, listed_objectives(lesson_nb), lesson_name)
    return out
