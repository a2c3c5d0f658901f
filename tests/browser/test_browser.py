"""Every lesson and exercise, driven in JupyterLab in a real (headless) Chromium, as a learner would run it.

nbval proves the kernel side; this proves the page: no error output (except cells tagged
`raises-exception`), every quiz question and flashcard deck answers a click with feedback from the kernel,
every figure shows as an image, every BertViz view draws its SVG. Notebooks are discovered at run time
(notebooks/*.ipynb, exercises/*.ipynb) and run on copies, one JupyterLab server for the module, one after
another. Screenshots go to artifacts/browser/. The two fixture notebooks prove the checks pass on working
output and report each kind of breakage.

Needs Debian's Chromium (`sudo apt-get install chromium`): skipped without it, failed without it under CI=true.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import labdriver as lab  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
ARTIFACTS = REPO / "artifacts" / "browser"
LESSONS = sorted(REPO.glob("notebooks/*.ipynb"))
EXERCISES = sorted(REPO.glob("exercises/*.ipynb"))
TIMEOUT = float(os.environ.get("BLOOMLIB_BROWSER_TIMEOUT", "900"))  # seconds per notebook

pytestmark = pytest.mark.browser


def _missing_browser() -> str | None:
    if not lab.CHROMIUM.exists():
        return f"the browser test needs Chromium at {lab.CHROMIUM}: {lab.INSTALL_HINT}"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the browser test needs Playwright for Python: pip install -e '.[all]'"
    return None


class Session:
    def __init__(self, server: lab.LabServer, browser, root: Path) -> None:
        self.server, self.browser, self.root, self.times = server, browser, root, {}

    def run(self, rel: str, name: str, **kwargs) -> lab.Run:
        run = lab.run_notebook(self.browser, self.server, rel, timeout=TIMEOUT,
                               screenshot=ARTIFACTS / f"{name}.png", **kwargs)
        self.times[name] = (run.seconds, lab.summary(run))
        return run


@pytest.fixture(scope="module")
def session(tmp_path_factory, request):
    missing = _missing_browser()
    if missing:
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(f"{missing} (CI=true: .ci/run installs it)")
        pytest.skip(missing)
    tmp = tmp_path_factory.mktemp("browser")
    root = tmp / "root"  # copies: runs never touch the repository's saved outputs
    for folder, files in [("notebooks", LESSONS), ("exercises", EXERCISES), ("fixtures", FIXTURES.glob("*.ipynb"))]:
        (root / folder).mkdir(parents=True)
        for f in files:
            shutil.copy(f, root / folder / f.name)
    with lab.LabServer(root, tmp / "work") as server, lab.chromium(tmp) as browser:
        s = Session(server, browser, root)
        yield s
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    lines = [f"{name:<36} {line}" for name, (_, line) in s.times.items()]
    lines.append(f"{'total (notebooks only)':<36} {sum(sec for sec, _ in s.times.values()):6.1f} s")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "timings.txt").write_text("\n".join(lines) + "\n")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter and capture:
        with capture.global_and_fixture_disabled():
            reporter.write_line("")
            reporter.write_sep("-", "browser test: seconds per notebook (also in artifacts/browser/timings.txt)")
            for line in lines:
                reporter.write_line(line)


def test_fixture_all_checks_pass(session):
    run = session.run("fixtures/all_checks_pass.ipynb", "fixture_all_checks_pass")
    assert lab.lesson_problems(run) == [], lab.report(run, lab.lesson_problems(run))
    assert run.n_clicks == 3, "2 quiz questions and 1 flashcard deck should have been clicked"
    views = [v for c in run.code_cells() for v in c["bertviz"]]
    assert len(views) == 2 and all(v["svgElements"] for v in views)
    assert any(c["images"] for c in run.code_cells()), "the figures should have been found as images"
    assert f"ran to the end in {sys.prefix}" in run.code_cells()[-1]["text"], "the kernel is not this environment's"


def test_fixture_all_checks_fail(session):
    """Every broken cell of the fixture is reported, each for its own reason."""
    run = session.run("fixtures/all_checks_fail.ipynb", "fixture_all_checks_fail")
    problems = "\n".join(lab.lesson_problems(run))
    expected = {
        2: ["no feedback after clicking 'Check'"],
        3: ["a widget did not render"],
        4: ["image(s) did not render"],
        5: ["a matplotlib figure shows as text only"],
        6: ["is empty", "require is not defined"],
        7: ["is empty: 'Run bloomlib.course.viz.inline_js_libraries()"],
        8: ["ZeroDivisionError"],
        9: ["never ran"],
    }
    for cell, needles in expected.items():
        for needle in needles:
            assert any(line.startswith(f"cell {cell}:") and needle in line for line in problems.splitlines()), (
                f"cell {cell} should be reported with {needle!r}; got:\n{problems}")


@pytest.mark.parametrize("nb", LESSONS, ids=[p.stem for p in LESSONS])
def test_lesson(session, nb):
    run = session.run(f"notebooks/{nb.name}", f"lesson_{nb.stem}")
    problems = lab.lesson_problems(run)
    assert not problems, lab.report(run, problems)


@pytest.mark.parametrize("nb", EXERCISES, ids=[p.stem for p in EXERCISES])
def test_exercise_untouched_stops_at_first_answer(session, nb):
    run = session.run(f"exercises/{nb.name}", f"exercise_{nb.stem}_untouched", interact=False)
    problems = lab.first_answer_problems(run)
    assert not problems, lab.report(run, problems)


@pytest.mark.parametrize("nb", EXERCISES, ids=[p.stem for p in EXERCISES])
def test_exercise_with_solutions_passes(session, nb):
    solution = REPO / "solutions" / nb.name
    assert solution.exists(), f"{nb} has no nbgrader source {solution} to take the answers from"
    filled = lab.fill_answers(json.loads(nb.read_text()), json.loads(solution.read_text()))
    rel = f"exercises/{nb.stem}_filled.ipynb"
    (session.root / rel).write_text(json.dumps(filled))
    run = session.run(rel, f"exercise_{nb.stem}_filled")
    problems = lab.lesson_problems(run)
    assert not problems, lab.report(run, problems)
    assert lab.first_answer_problems(run), "the untouched-exercise check should reject a completed exercise"


def test_fill_answers_strips_markers_and_needs_every_answer():
    ex = {"cells": [{"cell_type": "code", "source": "raise NotImplementedError()",
                     "metadata": {"nbgrader": {"grade_id": "q1", "solution": True}}}]}
    sol = {"cells": [{"cell_type": "code", "source": "x = 1\n### BEGIN SOLUTION\ny = 2\n### END SOLUTION\n",
                      "metadata": {"nbgrader": {"grade_id": "q1", "solution": True}}}]}
    assert lab.fill_answers(ex, sol)["cells"][0]["source"] == "x = 1\ny = 2\n"
    assert ex["cells"][0]["source"] == "raise NotImplementedError()", "the exercise itself must not change"
    sol["cells"][0]["metadata"]["nbgrader"]["grade_id"] = "other"
    with pytest.raises(KeyError, match="q1"):
        lab.fill_answers(ex, sol)
