"""Answers must be the learner's own code: a grading run refuses answers that call bloomlib, or a call a question
forbids, and scores that question 0 with feedback that says why.

bloomlib is installed next to every learner and holds a reference implementation of most exercise functions, so
``from bloomlib import scaled_dot_product_attention`` would otherwise pass. The rule:

- no answer may import or call bloomlib (any submodule, however imported);
- a question may forbid more calls: a line in the locked first test cell after its answer, e.g.
  ``# not allowed in this answer: torch.nn.functional.scaled_dot_product_attention``
  (dotted names of module attributes). Test cells are restored from the course's copy before grading, so a
  learner cannot remove the line, and it tells the learner the rule.

How: `guard` puts a guard cell first (it blocks bloomlib imports and wraps each forbidden function), a marker line
at the top of each cell the learner wrote (answers, and their own extra cells, which count for the next answer; it
records the file name Python compiles that cell under), and a report cell last. An import or call is refused only
when a learner's cell's code is on the call stack, so the tests' own reference computations (and the course's
locked cells) may still use a forbidden function. `apply_report` reads the report, gives every test of a
violating question an error (nbgrader's rules then score it 0) whose message is the feedback, and removes what
`guard` added. `bloomlib grade` runs both around its execution; `GuardAnswers` and `ReportAnswers` are the same two
steps as nbgrader preprocessors, for `nbgrader autograde` (see `nbgrader_preprocessors`).
"""
from __future__ import annotations

import copy
import json
import re

import nbformat
from nbconvert.preprocessors import Preprocessor
from nbformat import NotebookNode
from traitlets import Bool

FORBID_LINE = re.compile(r"^#\s*not allowed in this answer:\s*(.+)$", re.M)
_REPORT_MARK = "bloomlib-integrity-report:"
_TAG = "bloomlib-integrity"
_MODULE = "__bloomlib_guard__"

# Runs in the grading kernel before any other cell: plain Python (the kernel must not import bloomlib itself), all
# inside one function so that the learner's namespace gets no new name.
_GUARD = r"""
def _bloomlib_guard(forbid):
    import importlib, importlib.abc, sys, types

    g = types.ModuleType("{module}")
    g.cells, g.violations = {{}}, []  # compiled file name of a learner's cell -> its question

    def question_on_stack(names=None):
        frame = sys._getframe(1)
        while frame is not None:
            q = g.cells.get(frame.f_code.co_filename)
            if q is not None and (names is None or q in names):
                return q
            frame = frame.f_back
        return None

    def refuse(question, what):
        message = f"your answer {{question}} uses {{what}}, which answers may not use: write it yourself"
        g.violations.append({{"question": question, "message": message}})
        return message

    class NoBloomlib(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            q = question_on_stack() if name.split(".")[0] == "bloomlib" else None
            if q is not None:
                raise ImportError(refuse(q, f"bloomlib (import {{name}})"))
            return None

    def wrap(dotted, fn, questions):
        def guarded(*args, **kwargs):
            q = question_on_stack(questions)
            if q is not None:
                raise AssertionError(refuse(q, dotted))
            return fn(*args, **kwargs)
        guarded.__wrapped__ = fn
        return guarded

    def mark(question):
        g.cells[sys._getframe(1).f_code.co_filename] = question

    g.mark = mark
    sys.meta_path.insert(0, NoBloomlib())
    for dotted in {{name for names in forbid.values() for name in names}}:
        module, _, attr = dotted.rpartition(".")
        try:
            owner = importlib.import_module(module)
        except ImportError:
            continue
        fn = getattr(owner, attr, None)
        if fn is not None:
            questions = {{q for q, names in forbid.items() if dotted in names}}
            setattr(owner, attr, wrap(dotted, getattr(fn, "__wrapped__", fn), questions))
    sys.modules["{module}"] = g


_bloomlib_guard({forbid!r})
del _bloomlib_guard
"""
_MARK = '__import__("sys").modules["' + _MODULE + '"].mark({question!r})  # bloomlib-integrity\n'
_REPORT = ('print("' + _REPORT_MARK + '" + __import__("json").dumps('
           '__import__("sys").modules["' + _MODULE + '"].violations))')


def nbgrader_meta(cell: NotebookNode) -> dict:
    """A cell's nbgrader metadata ({} for a cell nbgrader does not manage)."""
    return cell.get("metadata", {}).get("nbgrader", {})


def questions(nb: NotebookNode) -> dict[str, tuple[int, list[int]]]:
    """answer grade_id -> (index of its answer cell, indices of the test cells that follow it). Written answers
    (markdown) are left out: they run no code."""
    out, current = {}, None
    for i, cell in enumerate(nb.cells):
        m = nbgrader_meta(cell)
        if m.get("solution") and not m.get("grade") and cell.cell_type == "code":
            current = m.get("grade_id")
            out[current] = (i, [])
        elif m.get("grade") and not m.get("solution") and current is not None:
            out[current][1].append(i)
        elif m.get("solution"):
            current = None
    return out


def forbidden_calls(nb: NotebookNode) -> dict[str, list[str]]:
    """answer grade_id -> the dotted names its test cells declare with FORBID_LINE (beyond bloomlib, always
    forbidden)."""
    out = {}
    for answer, (_, tests) in questions(nb).items():
        names = [n.strip() for t in tests for line in FORBID_LINE.findall(nb.cells[t].source)
                 for n in line.split(",") if n.strip()]
        if any(not re.fullmatch(r"[A-Za-z_][\w.]*\.\w+", n) for n in names):
            raise ValueError(f"question {answer}: a 'not allowed in this answer' line must list dotted names "
                             f"(module.function), got {names}")
        out[answer] = names
    return out


def _learner_cells(nb: NotebookNode) -> dict[int, str]:
    """Index of every code cell the learner wrote (answers, and cells of their own without nbgrader metadata) ->
    the question it counts for: an answer's own, or the next answer's (the previous one's after the last)."""
    answers = {i: a for a, (i, _) in questions(nb).items()}
    out, pending, last = {}, [], None
    for i, cell in enumerate(nb.cells):
        if i in answers:
            last = answers[i]
            out.update({j: last for j in pending + [i]})
            pending = []
        elif cell.cell_type == "code" and not nbgrader_meta(cell) and not cell.source.lstrip().startswith("%%"):
            pending.append(i)  # a cell magic must stay first: such a cell is not watched
    if last is not None:
        out.update({j: last for j in pending})
    return out


def guard(nb: NotebookNode) -> NotebookNode:
    """A copy of ``nb`` ready to execute under the rule (see the module docstring)."""
    nb = copy.deepcopy(nb)
    forbid = forbidden_calls(nb)
    for i, question in _learner_cells(nb).items():
        nb.cells[i].source = _MARK.format(question=question) + nb.cells[i].source
    first = nbformat.v4.new_code_cell(_GUARD.format(module=_MODULE, forbid=forbid), metadata={"tags": [_TAG]})
    last = nbformat.v4.new_code_cell(_REPORT, metadata={"tags": [_TAG]})
    for cell in (first, last):
        cell.pop("id", None)
    nb.cells = [first] + nb.cells + [last]
    return nb


def report(executed: NotebookNode) -> list[dict]:
    """The violations the guard recorded: [{"question": grade_id, "message": ...}], the first per question."""
    text = "".join(o.get("text", "") for c in executed.cells if _TAG in c.get("metadata", {}).get("tags", [])
                   for o in c.get("outputs", []) if o.get("output_type") == "stream")
    found = [json.loads(line[len(_REPORT_MARK):]) for line in text.splitlines() if line.startswith(_REPORT_MARK)]
    firsts = {}
    for v in (found[-1] if found else []):
        firsts.setdefault(v["question"], v)
    return list(firsts.values())


def apply_report(executed: NotebookNode) -> NotebookNode:
    """``executed`` (run from `guard`'s copy) with every test of a violating question failed with the message,
    and the guard's cells and marker lines removed. A missing report (the kernel died before the last cell) fails
    nothing: the tests' own results stand."""
    nb = copy.deepcopy(executed)
    by_question = {v["question"]: v["message"] for v in report(nb)}
    for cell in nb.cells:
        first, _, rest = cell.source.partition("\n")
        if cell.cell_type == "code" and first.endswith("# bloomlib-integrity"):
            cell.source = rest
    for answer, (_, tests) in questions(nb).items():
        for t in tests if answer in by_question else []:
            nb.cells[t].outputs = [nbformat.v4.new_output("error", ename="AssertionError",
                                                          evalue=by_question[answer], traceback=[])]
    nb.cells = [c for c in nb.cells if _TAG not in c.get("metadata", {}).get("tags", [])]
    return nb


class GuardAnswers(Preprocessor):
    """nbgrader autograde step before Execute: `guard`."""

    enabled = Bool(True)  # nbconvert's preprocessors are off by default; nbgrader's own are on

    def preprocess(self, nb, resources):
        return guard(nb), resources


class ReportAnswers(Preprocessor):
    """nbgrader autograde step right after Execute: `apply_report`."""

    enabled = Bool(True)

    def preprocess(self, nb, resources):
        return apply_report(nb), resources


def nbgrader_preprocessors() -> list:
    """nbgrader's autograde steps with the rule around Execute: for nbgrader_config.py,
    ``c.Autograde.autograde_preprocessors = nbgrader_preprocessors()``."""
    from nbgrader.converters import Autograde
    from nbgrader.preprocessors import Execute

    steps = list(Autograde.class_traits()["autograde_preprocessors"].default())
    i = steps.index(Execute)
    return steps[:i] + [GuardAnswers, Execute, ReportAnswers] + steps[i + 1:]
