"""Every lesson and exercise, driven in JupyterLab in a real (headless) Chromium, as a learner would run it.

nbval proves the kernel side; this proves the page: no error output (except cells tagged
`raises-exception`), every quiz question and flashcard deck answers a click with feedback from the kernel,
every figure shows as an image, every BertViz view draws its SVG. Notebooks are discovered at run time
(notebooks/*.ipynb, exercises/*.ipynb) and run on copies, one JupyterLab server for the module, one after
another. Screenshots go to artifacts/browser/. The two fixture notebooks prove the checks pass on working
output and report each kind of breakage. A Prediction is answered in the page as a learner would (run up to it,
pick a choice, "Lock in", run on to its reveal): in the prediction fixture, and the first one of every lesson
that has one. The explorer fixture is typed into, slid and sampled as a learner would (`labdriver.explore`).

Needs Debian's Chromium (`sudo apt-get install chromium`): skipped without it, failed without it under CI=true.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
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
LESSON_PREDICTIONS = [p for p in LESSONS if lab.find_prediction(json.loads(p.read_text()))]

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

    def answer(self, rel: str, name: str, **kwargs) -> lab.PredictionRun:
        run = lab.answer_prediction(self.browser, self.server, rel, timeout=TIMEOUT,
                                    screenshot=ARTIFACTS / f"{name}.png", **kwargs)
        self.times[name] = (run.seconds, lab.summary(run))
        return run

    def keyboard(self, rel: str, name: str, **kwargs) -> lab.KeyboardRun:
        run = lab.answer_quiz_by_keyboard(self.browser, self.server, rel, timeout=TIMEOUT,
                                          screenshot=ARTIFACTS / f"{name}.png", **kwargs)
        self.times[name] = (run.seconds, lab.summary(run))
        return run

    def explore(self, rel: str, name: str, **kwargs) -> lab.ExplorerRun:
        run = lab.explore(self.browser, self.server, rel, timeout=TIMEOUT, screenshot=ARTIFACTS / f"{name}.png",
                          **kwargs)
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


def test_quiz_answered_with_the_keyboard_only(session):
    """Accessibility: a quiz question is answered without the mouse: Tab moves from choice to choice (each radio
    button is its own stop), Space chooses, Tab reaches Check, Enter presses it; the kernel's feedback appears.
    (The arrow keys would not do: JupyterLab's command mode takes them to move between cells.)"""
    run = session.keyboard("fixtures/all_checks_pass.ipynb", "fixture_quiz_keyboard", keys=["Tab", "Space", "Tab", "Enter"])
    assert lab.lesson_problems(run) == [], lab.report(run, lab.lesson_problems(run))
    assert run.chosen == "4", run.keys
    assert run.keys[-2][1] == "button[submit]: Check", run.keys
    assert run.feedback.startswith("✔ Correct."), run.feedback


def test_prediction_fixture_answered_in_the_page(session):
    """Click a choice and "Lock in"; the reveal, run afterwards, says what was chosen (printed and in the widget)."""
    run = session.answer("fixtures/prediction.ipynb", "fixture_prediction", choice=2)
    assert lab.prediction_problems(run) == [], lab.report(run, lab.prediction_problems(run))
    assert (run.cell, run.reveal, run.chosen) == (1, 3, "8×")
    assert run.printed.splitlines()[:2] == ["Answer: 4×. You chose 8×: not this time.",
                                            "Attention compares every pair of tokens: n² pairs."]
    assert "Answer: 4×. You chose 8×: not this time." in run.shown
    assert run.cells[4]["executionCount"] is None, "the cell after the reveal should not have run"


def test_prediction_fixture_run_all_with_nobody_clicking(session):
    """Run top to bottom as nbval does: the reveal says nothing was locked in, and the locked widget is not clicked."""
    run = session.run("fixtures/prediction.ipynb", "fixture_prediction_run_all")
    assert lab.lesson_problems(run) == [], lab.report(run, lab.lesson_problems(run))
    assert run.n_clicks == 0, "a revealed (locked) prediction should not be clicked"
    assert "Answer: 4×. (No prediction was locked in.)" in run.cells[3]["text"]


def test_explorer_fixture_typed_slid_and_sampled_in_the_page(session):
    """Type a prompt, move the temperature slider (keyboard, 10 steps down), click "Sample next token": the kernel
    answers each step in the page; the chips are the course tokenizer's tokens, one more after the sample."""
    from bloomlib.checkpoint import COURSE_MODEL
    from bloomlib.tokenizer import load_tokenizer

    prompt, tokenizer = "Attention is all", load_tokenizer(COURSE_MODEL / "tokenizer.json")
    run = session.explore("fixtures/explorer.ipynb", "fixture_explorer", prompt=prompt)
    assert lab.explorer_problems(run, prompt) == [], lab.report(run, lab.explorer_problems(run, prompt))
    start, typed, slid, sampled = run.steps
    assert start.chips == len(tokenizer.encode("The attention of")), "the fixture's own prompt"
    assert (typed.chips, sampled.chips) == (len(tokenizer.encode(prompt)), len(tokenizer.encode(prompt)) + 1)
    assert (typed.temperature, slid.temperature) == ("1.00", "0.50")
    assert "| T 1.00," in typed.summary and "| T 0.50," in slid.summary


def test_explorer_problems_are_reported():
    """A run whose kernel answered nothing after the start: each step that did not happen is reported."""
    line = "Explorer: 4 tokens | layer 0 head 0 | T 1.00, top-k off, top-p off | 512 of 512 kept | next: '␣the' 0.3"
    steps = [lab.ExplorerStep(name, line, 4, "The attention of", "1.00", "blob:1")
             for name in ("start", "prompt", "temperature", "sample")]
    steps[3].chips = 6
    run = lab.ExplorerRun("nb.ipynb", cell=1, steps=steps)
    problems = "\n".join(lab.explorer_problems(run, "Attention is all"))
    for needle in ["after typing 'Attention is all' the prompt box shows 'The attention of' and the summary did not "
                   "change", "the temperature slider did not move", "summary unchanged, chart unchanged",
                   "after sample, 6 token chips but the summary reads", "after 'Sample next token' 6 chips (before 4)"]:
        assert needle in problems, f"{needle!r} not reported:\n{problems}"
    assert lab.explorer_problems(lab.ExplorerRun("nb.ipynb", steps=steps[:2]), "x") == [
        "only 2 of 4 steps were recorded"]


def test_prediction_problems_are_reported():
    """A run whose kernel never answered: each missing piece is reported."""
    cells = [{"index": 0, "type": "code", "tags": [], "source": "p = Prediction('?', ['a', 'b'])", "outputs": [],
              "executionCount": 1},
             {"index": 1, "type": "code", "tags": [], "source": "p.reveal('a')", "outputs": [], "executionCount": None},
             {"index": 2, "type": "code", "tags": [], "source": "x = 1", "outputs": [], "executionCount": 3}]
    run = lab.PredictionRun("nb.ipynb", cells=cells, cell=0, reveal=1, chosen="b", status="", printed="", shown="")
    problems = "\n".join(lab.prediction_problems(run))
    for needle in ["cell 1: never ran", "cell 2: ran, but only the cells up to the reveal", "status shows ''",
                   "choices are still enabled", "cell 1: the reveal printed '', which does not say 'You chose b:'",
                   "result area shows ''"]:
        assert needle in problems, f"{needle!r} not reported:\n{problems}"


def test_find_prediction_in_notebook_sources():
    def nb(*sources):
        return {"cells": [{"cell_type": "code", "source": s} for s in sources]}

    assert lab.find_prediction(nb("x = 1", "p = Prediction('?', tolerance=0.3)")) is None, "numbers are not choices"
    assert lab.find_prediction(nb("%matplotlib inline\nq = bl.Prediction('?', choices=['a', 'b'])\nq",
                                  "x = 2", "q.reveal('a')")) == (0, "q", 2)
    assert lab.find_prediction(nb("display(r := Prediction('?', ['a', 'b']))", "p.reveal('a')")) == (0, "r", None)
    assert lab.find_prediction(nb("Prediction('?', choices=['a', 'b'])")) == (0, None, None)


@pytest.mark.parametrize("nb", LESSON_PREDICTIONS or [pytest.param(None, marks=pytest.mark.skip(
    reason="no lesson has a Prediction with choices yet (notebooks/*.ipynb)"))],
    ids=[p.stem for p in LESSON_PREDICTIONS] or ["none"])
def test_lesson_prediction_answered_in_the_page(session, nb):
    run = session.answer(f"notebooks/{nb.name}", f"lesson_{nb.stem}_prediction")
    problems = lab.prediction_problems(run)
    assert not problems, lab.report(run, problems)


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


def _get_json(url: str) -> dict | list:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def test_make_lab_opens_lesson_01_without_asking_about_news(session, tmp_path):
    """`make lab` as a learner runs it (here with --no-browser and a known port): the course folder is the root,
    lesson 01 is what it opens, JupyterLab's news question is switched off by the override `make lab` writes, and
    nothing pops up. As root (CI), `make lab` adds --allow-root by itself."""
    port, token = lab.free_port(), secrets.token_hex(16)
    args = (f"--no-browser --ip=127.0.0.1 --port={port} --port-retries=0 --IdentityProvider.token={token} "
            "--LabApp.expose_app_in_browser=True")
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces")}
    log = tmp_path / "make_lab.log"
    with log.open("w") as out:
        proc = subprocess.Popen(["make", "lab", f"LAB_ARGS={args}"], cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, f"make lab exited ({proc.returncode}):\n{log.read_text()[-3000:]}"
            try:
                _get_json(f"{base}/api/status?token={token}")
                break
            except OSError:
                assert time.monotonic() < deadline, f"make lab did not serve in time:\n{log.read_text()[-3000:]}"
                time.sleep(1)
        if os.geteuid() == 0:
            assert "starting JupyterLab with --allow-root" in log.read_text()
        command = next(line for line in log.read_text().splitlines() if "jupyter lab " in line)  # not labextension
        assert "notebooks/01_remember.ipynb" in command, command
        names = {item["name"] for item in _get_json(f"{base}/api/contents?token={token}")["content"]}
        assert {"notebooks", "exercises"} <= names, names
        schema = _get_json(f"{base}/lab/api/settings/@jupyterlab/apputils-extension:notification?token={token}")
        assert schema["schema"]["properties"]["fetchNews"]["default"] == "false", schema["schema"]["properties"]
        page = session.browser.new_page(viewport={"width": 1400, "height": 900})
        try:
            page.goto(f"{base}/lab/tree/notebooks/01_remember.ipynb?token={token}", timeout=120000)
            page.wait_for_function("() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
                                   " return !!(w && w.context && w.context.isReady); }", timeout=120000)
            assert page.evaluate("() => window.jupyterapp.shell.currentWidget.context.path") == \
                "notebooks/01_remember.ipynb"
            page.wait_for_timeout(5000)  # JupyterLab asks about news a moment after it starts, when it asks
            toasts = page.locator(".Toastify__toast").all_inner_texts()
            assert not any("news" in t.lower() for t in toasts), toasts
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "make_lab_first_screen.png"))
        finally:
            page.close()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
