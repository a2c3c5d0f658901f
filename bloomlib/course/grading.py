"""Exercise pipeline: release exercises from nbgrader source notebooks, and grade a submission.

    bloomlib grade exercises/03_apply.ipynb [--json] [--timeout S] [--solutions DIR]
    python -m bloomlib.course.grading release [--check] [--solutions DIR] [--exercises DIR]  # solutions/ -> exercises/

Grading uses nbgrader's own rules (``nbgrader.utils.determine_grade``) without a course or database: the
submission's locked and test cells are restored from its source notebook (hidden tests included; deleted ones put
back), then it runs cell by cell in a fresh kernel; a crash or timeout restarts the kernel, replays the cells that
ran before, and goes on. Feedback is the failing assertion's message only, never test source. An answer that imports
or calls bloomlib, or a call its question forbids, scores that question 0 (bloomlib.course.integrity).

The folders default to the checkout's solutions/ and exercises/; bloomlib installed without the checkout has none,
and then says to pass them (``--solutions DIR`` / ``solutions_dir=``, ``--exercises DIR`` / ``exercises_dir=``).
"""
from __future__ import annotations

import argparse
import copy
import datetime
import functools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
from nbformat import NotebookNode

from bloomlib.course import integrity
from bloomlib.course.integrity import nbgrader_meta

REPO = Path(__file__).resolve().parents[2]  # the checkout: bloomlib/course/grading.py -> repository root
SOLUTIONS_DIR = REPO / "solutions"  # the defaults, used only when they exist (see solutions_folder)
EXERCISES_DIR = REPO / "exercises"
NOTEBOOK_GLOB = "[0-9][0-9]_*.ipynb"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_FEEDBACK_CHARS = 500
GRADING_ENV = "BLOOMLIB_GRADING"  # set in the kernel of a grading run; nbgrader sets NBGRADER_EXECUTION in its own


def _grade_id(cell: NotebookNode) -> str | None:
    return nbgrader_meta(cell).get("grade_id")


def _is_protected(cell: NotebookNode) -> bool:
    """Cells the learner may not change: tests and read-only cells (not answers)."""
    m = nbgrader_meta(cell)
    return bool(m.get("grade_id")) and (m.get("locked") or m.get("grade")) and not m.get("solution")


# ---------------------------------------------------------------------------------------------- folders
def solutions_folder(solutions_dir: str | Path | None = None) -> Path:
    """The folder of nbgrader source notebooks: ``solutions_dir``, or the checkout's solutions/; it must exist."""
    if solutions_dir is not None:
        folder = Path(solutions_dir)
        if not folder.is_dir():
            raise ValueError(f"solutions folder {folder} does not exist (or is not a folder)")
        return folder
    if not SOLUTIONS_DIR.is_dir():
        raise ValueError(f"no solutions folder at {SOLUTIONS_DIR}: bloomlib finds the course's solutions/ only "
                         "when it runs from the course checkout. Pass the folder of source notebooks: "
                         "--solutions DIR on the command line, solutions_dir= in Python")
    return SOLUTIONS_DIR


def exercises_folder(exercises_dir: str | Path | None = None) -> Path:
    """Where released exercises go: ``exercises_dir``, or the checkout's exercises/ (only in a checkout)."""
    if exercises_dir is not None:
        return Path(exercises_dir)
    if not SOLUTIONS_DIR.is_dir():
        raise ValueError(f"no course checkout around {REPO} to write exercises/ into: pass the folder, "
                         "--exercises DIR on the command line, exercises_dir= in Python")
    return EXERCISES_DIR


# ---------------------------------------------------------------------------------------------- release
def release_notebook(nb: NotebookNode) -> NotebookNode:
    """Student version of a source notebook: the preprocessors of ``nbgrader generate_assignment`` in its
    order, less SaveCells (course database), IncludeHeaderFooter and InstantiateTests (unused here)."""
    from nbgrader.preprocessors import (CheckCellMetadata, ClearHiddenTests, ClearMarkScheme, ClearOutput,
                                        ClearSolutions, ComputeChecksums, LockCells)

    nb, resources = copy.deepcopy(nb), {}
    for step in (LockCells, ClearSolutions, ClearOutput, CheckCellMetadata, ComputeChecksums,
                 ClearHiddenTests, ClearMarkScheme, ComputeChecksums, CheckCellMetadata):
        nb, resources = step().preprocess(nb, resources)
    return nb


def normalize(nb: NotebookNode) -> list[tuple]:
    """What must match between a generated exercise and the file on disk: cell types, sources, nbgrader metadata
    and the course's own (`bloomlib`: the objectives a graded cell assesses); outputs, execution counts, cell ids
    and other metadata are ignored."""
    return [(c.cell_type, c.source.strip(), json.dumps(nbgrader_meta(c), sort_keys=True),
             json.dumps(c.get("metadata", {}).get("bloomlib", {}), sort_keys=True)) for c in nb.cells]


def release(solutions_dir: str | Path | None = None, exercises_dir: str | Path | None = None,
            check: bool = False) -> list[Path]:
    """Write exercises_dir/NN_name.ipynb for every solutions_dir/NN_name.ipynb; return those written.
    With ``check``, write nothing and return the exercises missing or out of date (normalized compare)."""
    solutions_dir, exercises_dir = solutions_folder(solutions_dir), exercises_folder(exercises_dir)
    stale = []
    for src in sorted(solutions_dir.glob(NOTEBOOK_GLOB)):
        out = release_notebook(nbformat.read(src, as_version=4))
        dst = exercises_dir / src.name
        if check:
            if not dst.exists() or normalize(nbformat.read(dst, as_version=4)) != normalize(out):
                stale.append(dst)
        elif not dst.exists() or dst.read_text() != nbformat.writes(out) + "\n":
            stale.append(dst)
            dst.parent.mkdir(parents=True, exist_ok=True)
            nbformat.write(out, dst)
    return stale


# ------------------------------------------------------------------------------------------ assembling
def assemble(submission: NotebookNode, source: NotebookNode) -> NotebookNode:
    """The notebook to execute: the learner's cells, with every protected cell (tests with their hidden parts,
    read-only setup) replaced by the source's version and missing ones put back in place. A cell is matched by
    grade_id or, when an editor dropped the nbgrader metadata, by Jupyter cell id; none matching is a ValueError."""
    src_cells = {_grade_id(c): c for c in source.cells if _grade_id(c)}
    src_order = [_grade_id(c) for c in source.cells if _grade_id(c)]
    by_cell_id = {c.get("id"): _grade_id(c) for c in source.cells if _grade_id(c) and c.get("id")}
    matched = [_grade_id(c) or by_cell_id.get(c.get("id")) for c in submission.cells]
    if src_cells and not any(gid in src_cells for gid in matched):
        raise ValueError("this notebook has none of the exercise's answer or test cells: their nbgrader "
                         "metadata and cell ids are gone (an editor or tool stripped them?). Nothing was "
                         "graded; copy your answers into a fresh copy of the exercise notebook and grade that")
    cells, seen = [], set()
    for cell, gid in zip(copy.deepcopy(submission.cells), matched):
        if gid in src_cells and gid not in seen:
            seen.add(gid)
            if _is_protected(src_cells[gid]):
                cell = copy.deepcopy(src_cells[gid])
            else:  # the learner's answer, with the source's metadata (points cannot be edited)
                cell.metadata["nbgrader"] = copy.deepcopy(nbgrader_meta(src_cells[gid]))
        else:  # learner's own cell, a duplicate, or an unknown id: never graded
            cell.get("metadata", {}).pop("nbgrader", None)
        cells.append(cell)
    for k, gid in enumerate(src_order):  # restore deleted protected cells after their predecessor
        if gid in seen or not _is_protected(src_cells[gid]):
            continue
        prev = {g: i for i, c in enumerate(cells) if (g := _grade_id(c))}
        at = next((prev[p] + 1 for p in reversed(src_order[:k]) if p in prev), 0)
        cells.insert(at, copy.deepcopy(src_cells[gid]))
        seen.add(gid)
    for cell in cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nb = copy.deepcopy(source)
    nb.cells = cells
    return nb


def hidden_lines(source: NotebookNode) -> set[str]:
    """Code lines inside hidden-test blocks (string-only lines such as messages excluded)."""
    lines, inside = set(), False
    for cell in source.cells:
        for line in cell.source.splitlines():
            if "BEGIN HIDDEN TESTS" in line:
                inside = True
            elif "END HIDDEN TESTS" in line:
                inside = False
            elif inside and len(s := line.strip()) >= 8 and not s.startswith(("'", '"', "f'", 'f"', "#")):
                lines.add(s)
    return lines


# ------------------------------------------------------------------------------------------- executing
def execute(nb: NotebookNode, timeout: float = 60.0, cwd: Path | None = None) -> NotebookNode:
    """Run every code cell in place. A cell that times out or kills the kernel gets an error output; the kernel is
    restarted, the earlier non-test cells are replayed (outputs discarded), and the remaining cells run."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    # nbgrader runs `alembic` and kernels run `python` by name: put this environment's bin first
    bin_dir = str(Path(sys.executable).parent)
    if os.environ.get("PATH", "").split(os.pathsep)[0] != bin_dir:
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    done: list[int] = []
    pos = 0
    while pos < len(code):
        client = NotebookClient(nb, timeout=int(timeout), allow_errors=True, interrupt_on_timeout=False,
                                kernel_name="python3", record_timing=False,
                                resources={"metadata": {"path": str(cwd or Path.cwd())}})
        # GRADING_ENV tells a "check my notebook" cell that it runs inside a grading run (see check_my_notebook)
        with client.setup_kernel(stderr=subprocess.DEVNULL, env={**os.environ, GRADING_ENV: "1"}):
            for i in done:
                if not nbgrader_meta(nb.cells[i]).get("grade"):
                    client.execute_cell(copy.deepcopy(nb.cells[i]), i)
            while pos < len(code):
                i, pos = code[pos], pos + 1
                try:
                    client.execute_cell(nb.cells[i], i)
                except CellTimeoutError:
                    ename, evalue = "Timeout", (f"the cell ran longer than {timeout:g} s (an endless loop?); "
                                                "the kernel was restarted")
                except DeadKernelError:
                    ename, evalue = "DeadKernel", "the kernel died while running this cell; it was restarted"
                else:
                    done.append(i)
                    continue
                nb.cells[i].outputs = [nbformat.v4.new_output("error", ename=ename, evalue=evalue, traceback=[])]
                break
    return nb


# --------------------------------------------------------------------------------------------- scoring
def feedback(cell: NotebookNode, hidden: set[str] = frozenset()) -> str:
    """What went wrong in a test cell, in one line: the exception's message, never its traceback, and
    with any hidden test line (a learner's code could try to print one) blanked out."""
    text = ""
    for out in cell.get("outputs", []):
        if out.output_type == "error":
            ename, evalue = out.ename, _ANSI.sub("", out.evalue).strip()
            text = evalue if ename == "AssertionError" and evalue else f"{ename}: {evalue}" if evalue else ename
            if ename == "NotImplementedError" and not evalue:
                text = "NotImplementedError: this answer is not written yet"
            break
        if out.output_type == "stream" and out.name == "stderr":
            text = "the test cell wrote to stderr (nbgrader scores that 0): " + out.text.strip()
            break
    for line in hidden:
        text = text.replace(line, "[hidden test]")
    return text[:_FEEDBACK_CHARS]


def score(executed: NotebookNode, source: NotebookNode, name: str) -> dict:
    """nbgrader's per-cell grades of an executed notebook, as a JSON-ready dict."""
    from nbgrader.utils import determine_grade

    hidden = hidden_lines(source)
    by_id = {_grade_id(c): c for c in executed.cells if _grade_id(c)}
    questions = []
    for src in source.cells:
        m = nbgrader_meta(src)
        if not m.get("grade"):
            continue
        cell = by_id.get(m["grade_id"])
        if cell is None:  # cannot happen after assemble(); never fall back to the source's outputs
            points, max_points, fb = 0.0, m["points"], "this cell is missing from the submission"
        else:
            fb = feedback(cell, hidden) if cell.cell_type == "code" else ""
            try:
                points, max_points = determine_grade(cell)
            except (KeyError, ValueError):  # an odd result value nbgrader cannot read as partial credit
                points, max_points, fb = 0.0, m["points"], fb or "the test cell's result is not a valid grade"
            if _is_manual(m, cell):
                blank = cell.source.strip() in ("", _answer_stub())
                points, fb = 0.0, ("not answered yet" if blank else "graded by hand: your instructor marks this answer")
            elif points is None:
                points, fb = 0.0, "graded by hand"
        questions.append({"id": m["grade_id"], "score": float(points), "max_score": float(max_points),
                          "feedback": fb, "manual": _is_manual(m, src)})
    return {"notebook": name, "score": sum(q["score"] for q in questions),
            "max_score": sum(q["max_score"] for q in questions),
            "manual_max_score": sum(q["max_score"] for q in questions if q["manual"]), "questions": questions}


def _is_manual(m: dict, cell: NotebookNode) -> bool:
    """A written answer marked by hand (nbgrader's "manually graded answer": a graded solution cell, not a test)."""
    return bool(m.get("grade") and m.get("solution") and cell.cell_type == "markdown")


@functools.cache
def _answer_stub() -> str:
    from nbgrader.preprocessors import ClearSolutions

    return ClearSolutions().text_stub.strip()


def find_source(submission: str | Path, solutions_dir: str | Path | None = None) -> Path:
    """solutions_dir/NN_name.ipynb for a submission named NN_name.ipynb (solutions_dir: see solutions_folder)."""
    solutions_dir = solutions_folder(solutions_dir)
    src = solutions_dir / Path(submission).name
    if not re.fullmatch(r"\d\d_\w+\.ipynb", src.name) or not src.exists():
        known = ", ".join(p.name for p in sorted(solutions_dir.glob(NOTEBOOK_GLOB))) or "none"
        raise ValueError(f"no source notebook for {Path(submission).name!r} in {solutions_dir} "
                         f"(the submission must keep its file name; known: {known})")
    return src


def grade_notebook(submission: str | Path | NotebookNode, source: str | Path | NotebookNode | None = None,
                   solutions_dir: str | Path | None = None, timeout: float = 60.0,
                   name: str | None = None) -> dict:
    """Grade one submission: a path (its source is found by file name in ``solutions_dir``, by default the
    checkout's solutions/), or a notebook given with ``name`` or an explicit ``source`` (path or notebook)."""
    cwd = None
    if isinstance(submission, (str, Path)):
        path = Path(submission)
        name, cwd = name or path.name, path.resolve().parent
        submission = nbformat.read(path, as_version=4)
    if source is None:
        if name is None:
            raise ValueError("grade_notebook: a notebook given as a NotebookNode needs `name` (its file name, "
                             "to find its source in solutions_dir) or an explicit `source`")
        source = find_source(Path(name), solutions_dir)
    src = source if isinstance(source, NotebookNode) else nbformat.read(source, as_version=4)
    name = name or (Path(source).name if not isinstance(source, NotebookNode) else "notebook.ipynb")
    executed = integrity.apply_report(execute(integrity.guard(assemble(submission, src)), timeout=timeout, cwd=cwd))
    return score(executed, src, name)


def _table(result: dict) -> str:
    w = max([len(q["id"]) for q in result["questions"]] + [8])
    rows = [f"{'question':<{w}}  score  feedback"]
    for q in result["questions"]:
        rows.append(f"{q['id']:<{w}}  {q['score']:g}/{q['max_score']:g}".ljust(w + 9) + f"  {q['feedback']}")
    manual = result.get("manual_max_score", 0)
    auto = f"{result['score']:g}/{result['max_score'] - manual:g}"
    rows.append(f"{'total':<{w}}  {auto}" + (f" marked automatically, + {manual:g} points marked by hand" if manual else ""))
    return "\n".join(rows)


def check_my_notebook(name: str, solutions_dir: str | Path | None = None, timeout: float = 60.0) -> dict | None:
    """Grade the saved copy of the exercise ``name`` (in the working directory, i.e. the notebook's own folder) and
    print the table of `bloomlib grade`: the "check my notebook" cell of an exercise. Inside a grading run
    (`bloomlib grade`, nbgrader's autograde or validate) it prints one line and returns None, so grading never
    grades itself. Returns the result dict otherwise (a cell ending in ``;`` hides it)."""
    if os.environ.get(GRADING_ENV) or os.environ.get("NBGRADER_EXECUTION"):
        print("check_my_notebook: skipped inside a grading run")
        return None
    path = Path(name)
    if not path.is_file():
        raise ValueError(f"check_my_notebook: no saved notebook {path.name!r} in {Path.cwd()}: run this cell from "
                         "the exercise notebook itself, and save it first (Ctrl+S / Cmd+S)")
    saved = datetime.datetime.fromtimestamp(path.stat().st_mtime).strftime("%H:%M:%S")
    print(f"Grading {path.name} as saved at {saved} (save first to grade your latest answers) ...", flush=True)
    result = grade_notebook(path, solutions_dir=solutions_dir, timeout=timeout)
    print(_table(result))
    return result


# ------------------------------------------------------------------------------------------------- CLI
def release_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bloomlib.course.grading release",
                                description="Regenerate exercises/ from the nbgrader sources in solutions/.")
    p.add_argument("--solutions", type=Path, default=None,
                   help="folder of nbgrader source notebooks (default: the checkout's solutions/)")
    p.add_argument("--exercises", type=Path, default=None,
                   help="folder to write the exercises to (default: the checkout's exercises/)")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if an exercise is out of date")
    args = p.parse_args(argv)
    try:
        stale = release(args.solutions, args.exercises, check=args.check)
    except ValueError as e:
        print(f"{p.prog}: {e}", file=sys.stderr)
        return 2
    for path in stale:
        print(f"{'out of date' if args.check else 'wrote'}: {path}")
    return 1 if args.check and stale else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["release"]:
        return release_main(argv[1:])
    p = argparse.ArgumentParser(prog="bloomlib grade", description="Grade one exercise notebook "
                                "(tests are restored from the solutions folder, hidden tests included).")
    p.add_argument("notebook", type=Path, help="a submission named like its source, e.g. 03_apply.ipynb")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds each cell may run (default 60)")
    p.add_argument("--solutions", type=Path, default=None,
                   help="folder of source notebooks (default: the checkout's solutions/)")
    args = p.parse_args(argv)
    try:
        if not args.notebook.exists():
            raise ValueError(f"no such notebook: {args.notebook}")
        result = grade_notebook(args.notebook, solutions_dir=args.solutions, timeout=args.timeout)
    except ValueError as e:
        print(f"{p.prog}: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, ensure_ascii=False) if args.json else _table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
