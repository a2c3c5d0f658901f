"""Drive JupyterLab in headless Chromium: start a server, restart-and-run-all a notebook, report what a
learner would see (error outputs, widgets that never answer, figures and BertViz views that do not render);
or answer a notebook's first Prediction as a learner would (`answer_prediction`), or type into, slide and sample
its first Explorer (`explore`).

Used by test_browser.py; runnable alone for a quick look: `python tests/browser/labdriver.py NB.ipynb ...`.
"""
from __future__ import annotations

import ast
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
# flags that keep Chromium from hanging on a closed network (no updates, sync, QUIC probes)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]
INSTALL_HINT = "sudo apt-get install chromium   (Debian/Ubuntu; Playwright's own browser download is not used)"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
IMAGE_MIMES = ("image/png", "image/jpeg", "image/svg+xml")
# user settings for the test's own JupyterLab: no news popup, every cell in the DOM, no autosave
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none", "recordTiming": True},
    "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LabServer:
    """JupyterLab on a free loopback port with a random token, config/data/settings in `work`, serving `root`.
    The server runs with this interpreter, so kernels are this environment's python (python3 spec)."""

    def __init__(self, root: Path, work: Path) -> None:
        self.root, self.work = Path(root), Path(work)
        self.port, self.token = free_port(), secrets.token_hex(16)
        self.proc: subprocess.Popen | None = None
        self.log = self.work / "jupyterlab.log"

    def start(self, timeout: float = 90.0) -> "LabServer":
        env = dict(os.environ)
        for var, sub in [("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_DATA_DIR", "data"),
                         ("JUPYTER_RUNTIME_DIR", "runtime"), ("JUPYTERLAB_SETTINGS_DIR", "settings"),
                         ("JUPYTERLAB_WORKSPACES_DIR", "workspaces")]:
            env[var] = str(self.work / sub)
            (self.work / sub).mkdir(parents=True, exist_ok=True)
        for plugin, values in LAB_SETTINGS.items():
            path = self.work / "settings" / f"{plugin}.jupyterlab-settings"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(values))
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
        cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root", "--ip=127.0.0.1",
               f"--port={self.port}", "--port-retries=0", f"--ServerApp.token={self.token}",
               f"--ServerApp.root_dir={self.root}", "--LabApp.expose_app_in_browser=True",
               "--LabApp.news_url=None", "--ServerApp.open_browser=False"]
        self._log = self.log.open("w")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=self.root)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited ({self.proc.returncode}):\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.base}/api/status?token={self.token}", timeout=2):
                    return self
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"JupyterLab did not answer within {timeout:.0f} s:\n{self.log.read_text()[-3000:]}")

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str, workspace: str) -> str:
        return f"{self.base}/lab/workspaces/{workspace}/tree/{path}?reset&token={self.token}"

    def shutdown_kernels(self) -> None:
        """Stop every kernel (also one left running by a notebook that timed out)."""
        def call(method: str, path: str):
            req = urllib.request.Request(f"{self.base}{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
            with urllib.request.urlopen(req, timeout=30) as r:
                return json.loads(r.read() or b"null")

        for kernel in call("GET", "/api/kernels"):
            call("DELETE", f"/api/kernels/{kernel['id']}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc:
            self._log.close()

    def __enter__(self) -> "LabServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@contextmanager
def chromium(work: Path):
    """A headless Debian Chromium through Playwright (fresh profile in `work`)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
                                     env={**os.environ, "HOME": str(work)})
        try:
            yield browser
        finally:
            browser.close()


# --- JavaScript run in the page (window.jupyterapp is exposed by --LabApp.expose_app_in_browser) ---
_FIND = """(path) => Array.from(window.jupyterapp.shell.widgets('main'))
                        .find(w => w.context && w.context.path === path && w.content && w.content.widgets)"""
JS_READY = f"""(path) => {{
  if (!window.jupyterapp) return false;
  const w = ({_FIND})(path);
  return !!(w && w.context.isReady && w.sessionContext.session && w.sessionContext.session.kernel
            && w.sessionContext.session.kernel.status === 'idle');
}}"""
# restart-run-all, or restart-and-run-to-selected with cell `upto` selected (cells 0..upto run)
JS_RESTART_RUN = f"""async ([path, upto]) => {{  // saved outputs and counts go first, so none can pass for new ones
  const w = ({_FIND})(path), commands = window.jupyterapp.commands;
  window.__bl_statuses = [];
  w.sessionContext.statusChanged.connect((_, s) => window.__bl_statuses.push(s));
  window.jupyterapp.shell.activateById(w.id);
  await commands.execute('notebook:clear-all-cell-outputs');
  const stale = w.content.widgets.filter(c => c.model.type === 'code' && (c.model.executionCount !== null
                                                                          || c.model.outputs.length)).length;
  if (upto !== null) w.content.activeCellIndex = upto;
  // not awaited: it waits on its confirm dialog
  commands.execute(upto === null ? 'notebook:restart-run-all' : 'notebook:restart-and-run-to-selected');
  return stale;
}}"""
JS_RUN_CELLS = f"""([path, first, last]) => {{  // select cells first..last and run them (no restart)
  const w = ({_FIND})(path);
  window.jupyterapp.shell.activateById(w.id);
  w.content.deselectAll();
  w.content.activeCellIndex = first;
  w.content.extendContiguousSelectionTo(last);
  window.jupyterapp.commands.execute('notebook:run-cell');  // not awaited: progress is polled
}}"""
JS_CELLS_DONE = f"""([path, first, last]) => {{
  const w = ({_FIND})(path), kernel = w.sessionContext.session && w.sessionContext.session.kernel;
  const code = w.content.widgets.slice(first, last + 1).filter(c => c.model.type === 'code');
  const prompts = w.content.widgets.filter(c => c.model.type === 'code')
    .map(c => (c.node.querySelector('.jp-InputPrompt') || {{}}).textContent || '');
  return {{status: kernel ? kernel.status : 'none', queued: prompts.filter(p => p.includes('*')).length,
           pending: code.filter(c => c.model.executionCount === null).length}};
}}"""
JS_PROGRESS = f"""(path) => {{
  const w = ({_FIND})(path);
  const kernel = w.sessionContext.session && w.sessionContext.session.kernel;
  const code = w.content.widgets.filter(c => c.model.type === 'code');
  const prompts = code.map(c => (c.node.querySelector('.jp-InputPrompt') || {{}}).textContent || '');
  return {{status: kernel ? kernel.status : 'none', statuses: window.__bl_statuses || [],
           queued: prompts.filter(p => p.includes('*')).length,
           executed: code.filter(c => c.model.executionCount !== null).length, code: code.length}};
}}"""
JS_REPORT = f"""(path) => {{
  const w = ({_FIND})(path);
  return w.content.widgets.map((c, index) => {{
    const cell = {{index, type: c.model.type, tags: c.model.getMetadata('tags') || [],
                  nbgrader: c.model.getMetadata('nbgrader') || null, source: c.model.sharedModel.getSource()}};
    if (c.model.type !== 'code') return cell;
    cell.executionCount = c.model.executionCount;
    const t = c.model.getMetadata('execution') || {{}};
    cell.seconds = t['iopub.execute_input'] && t['shell.execute_reply']
      ? (Date.parse(t['shell.execute_reply']) - Date.parse(t['iopub.execute_input'])) / 1000 : null;
    const area = c.outputArea.node, children = Array.from(area.querySelectorAll(':scope > .jp-OutputArea-child'));
    cell.outputs = c.model.outputs.toJSON().map((o, i) => ({{
      type: o.output_type, ename: o.ename || null, evalue: o.evalue || null,
      mimes: o.data ? Object.keys(o.data) : [],
      plain: o.data && o.data['text/plain'] ? [].concat(o.data['text/plain']).join('').slice(0, 300) : null,
      dom: children[i] ? {{widget: !!children[i].querySelector('.jupyter-widgets'),
                          text: children[i].innerText.slice(0, 300)}} : null}}));
    cell.text = area.innerText.slice(0, 100000);
    cell.images = Array.from(area.querySelectorAll('img')).map(i => ({{complete: i.complete, width: i.naturalWidth}}))
      .concat(Array.from(area.querySelectorAll('.jp-RenderedSVG svg')).map(s => ({{complete: true,
        width: s.getBoundingClientRect().width}})));
    cell.bertviz = Array.from(area.querySelectorAll('[id^="bertviz-"]')).map(v => ({{
      id: v.id, svgElements: v.querySelectorAll('svg *').length, text: v.innerText.slice(0, 300)}}));
    return cell;
  }});
}}"""
JS_MARK_WIDGETS = f"""(path) => {{  // tag the DOM of every widget output: data-bl-widget="cell.output"
  const w = ({_FIND})(path);
  let n = 0;
  w.content.widgets.forEach((c, index) => {{
    if (c.model.type !== 'code') return;
    const children = Array.from(c.outputArea.node.querySelectorAll(':scope > .jp-OutputArea-child'));
    c.model.outputs.toJSON().forEach((o, i) => {{
      if (o.data && o.data['{WIDGET_MIME}'] && children[i]) {{
        children[i].setAttribute('data-bl-widget', `${{index}}.${{i}}`);
        n++;
      }}
    }});
  }});
  return n;
}}"""

FIGURE_TEXT = re.compile(r"<Figure size \d+x\d+ with \d+ Axes>")
WIDGET_FAILED = re.compile(r"Error displaying widget|Loading widget|Failed to load model")
JS_ERRORS = ("require is not defined", "Javascript Error")


@dataclass
class Run:
    """One notebook driven in the browser: its cells as the page shows them, problems found, timings."""

    path: str
    cells: list[dict] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    clicks: list[str] = field(default_factory=list)  # widget interactions that got no feedback
    n_clicks: int = 0
    seconds: float = 0.0
    screenshot: Path | None = None

    def code_cells(self) -> list[dict]:
        return [c for c in self.cells if c["type"] == "code"]


def _wait_done(page, path: str, timeout: float) -> None:
    """Wait until the kernel restarted, ran what was queued, and sits idle (three polls in a row)."""
    deadline, calm = time.monotonic() + timeout, 0
    while time.monotonic() < deadline:
        p = page.evaluate(JS_PROGRESS, path)
        if p["status"] == "dead":
            raise RuntimeError(f"{path}: the kernel died (statuses seen: {p['statuses']})")
        restarted = any(s in ("restarting", "autorestarting", "starting") for s in p["statuses"])
        done = restarted and p["status"] == "idle" and not p["queued"] and (p["executed"] or not p["code"])
        calm = calm + 1 if done else 0
        if calm >= 3:
            return
        time.sleep(0.5)
    raise TimeoutError(f"{path}: still running after {timeout:.0f} s (last progress: {p})")


def _click_widgets(page, path: str) -> tuple[int, list[str]]:
    """Answer every quiz question (first choice, then its button) and flip every flashcard deck; each click
    must change the widget's text, which only the kernel can do. Returns (clicks made, silent clicks)."""
    page.evaluate(JS_MARK_WIDGETS, path)
    clicks, silent = 0, []
    outputs = page.locator("[data-bl-widget]")
    for n in range(outputs.count()):
        out = outputs.nth(n)
        cell, _ = out.get_attribute("data-bl-widget").split(".")
        if out.locator(".bloomlib-prediction").count():
            continue  # run-all revealed it, which locks it: answer_prediction answers one before its reveal
        where = f"cell {cell}: widget"
        questions = out.locator(".widget-radio-box")
        targets = []
        for q in range(questions.count()):
            box = questions.nth(q).locator("xpath=ancestor::div[contains(@class, 'widget-vbox')][1]")
            questions.nth(q).locator("input[type=radio]").first.check()
            targets.append((f"{where} question {q + 1}", box, box.locator("button.jupyter-button").first))
        if not targets:
            buttons = out.locator("button.jupyter-button")
            if not buttons.count():
                continue  # a widget with nothing to click (a slider, a label...)
            flip = out.locator("button.jupyter-button", has_text="Flip")
            targets.append((where, out, flip.first if flip.count() else buttons.first))
        for label, box, button in targets:
            box.scroll_into_view_if_needed()
            before = box.inner_text()
            button.click()
            clicks += 1
            try:
                page.wait_for_function("([el, before]) => el.innerText !== before", arg=[box.element_handle(), before],
                                       timeout=15000)
            except Exception:
                silent.append(f"{label}: no feedback after clicking {button.inner_text()!r} "
                              f"(text stayed {before[-120:]!r})")
    return clicks, silent


def run_notebook(browser, server: LabServer, path: str, *, timeout: float = 900.0,
                 screenshot: Path | None = None, interact: bool = True) -> Run:
    """Open `path` (relative to the server root), restart the kernel and run all cells, wait for idle,
    click every widget, and return what the page shows."""
    run = Run(path)
    with _page(browser, server, run) as page:
        _open_and_restart(page, server, path, timeout)
        if interact:
            run.n_clicks, run.clicks = _click_widgets(page, path)
        run.cells = page.evaluate(JS_REPORT, path)
        run.screenshot = _screenshot(page, screenshot)
    return run


@contextmanager
def _page(browser, server: LabServer, run: Run):
    """A fresh page whose errors go to `run`; closed after, with every kernel stopped and the time recorded."""
    start = time.monotonic()
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.on("pageerror", lambda e: run.page_errors.append(str(e)))
    try:
        yield page
    finally:
        page.close()
        server.shutdown_kernels()
        run.seconds = time.monotonic() - start


def _open_and_restart(page, server: LabServer, path: str, timeout: float, upto: int | None = None) -> None:
    """Open `path`, clear its outputs, restart the kernel and run all cells (or cells 0..upto), wait for idle."""
    page.goto(server.url(path, "bl" + secrets.token_hex(4)), timeout=120000)
    page.wait_for_function(JS_READY, arg=path, timeout=120000, polling=250)
    stale = page.evaluate(JS_RESTART_RUN, [path, upto])
    if stale:
        raise RuntimeError(f"{path}: clearing outputs left {stale} cells with an output or execution count")
    accept = page.locator(".jp-Dialog .jp-mod-accept")
    accept.wait_for(timeout=30000)
    accept.click()
    _wait_done(page, path, timeout)


def _screenshot(page, screenshot: Path | None) -> Path | None:
    """The whole notebook: a viewport as tall as its content (capped by Chromium's limit)."""
    if not screenshot:
        return None
    height = page.evaluate("() => Array.from(document.querySelectorAll('.jp-Notebook .jp-Cell'))"
                           ".reduce((h, c) => h + c.offsetHeight, 0)")
    page.set_viewport_size({"width": 1400, "height": max(1000, min(height + 200, 16000))})
    page.locator(".jp-Notebook .jp-Cell").first.scroll_into_view_if_needed()
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(screenshot))
    return screenshot


# --- a Prediction answered as a learner would: run up to it, pick a choice, lock in, run on to its reveal ---
@dataclass
class PredictionRun(Run):
    """A notebook in which the Prediction of cell `cell` was answered in the page and revealed by cell `reveal`."""

    cell: int = -1
    reveal: int | None = None
    chosen: str = ""  # the label of the radio button clicked
    status: str = ""  # the widget's status line after "Lock in"
    locked: bool = False  # the choices were disabled after "Lock in"
    printed: str = ""  # the reveal cell's output
    shown: str = ""  # the widget's result area after the reveal
    problems: list[str] = field(default_factory=list)  # found before running anything


def _tree(source: str) -> ast.Module | None:
    """The cell's Python, IPython magics and shell lines blanked; None when it does not parse."""
    lines = ["" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines()]
    try:
        return ast.parse("\n".join(lines))
    except SyntaxError:
        return None


def _creates_choice_prediction(node: ast.AST) -> bool:
    if not isinstance(node, ast.Call):
        return False
    name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
    return name == "Prediction" and (len(node.args) >= 2 or any(k.arg == "choices" for k in node.keywords))


def _assigned_name(tree: ast.Module) -> str | None:
    """The name a Prediction with choices is assigned to (`p = Prediction(...)` or `(p := Prediction(...))`)."""
    for n in ast.walk(tree):
        if isinstance(n, (ast.Assign, ast.NamedExpr)) and _creates_choice_prediction(n.value):
            for t in getattr(n, "targets", None) or [n.target]:
                if isinstance(t, ast.Name):
                    return t.id
    return None


def _reveals(tree: ast.Module, name: str) -> bool:
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "reveal"
               and isinstance(n.func.value, ast.Name) and n.func.value.id == name for n in ast.walk(tree))


def find_prediction(nb: dict) -> tuple[int, str | None, int | None] | None:
    """The first code cell that creates a Prediction with choices: (its index, the name it is assigned to,
    the index of the first later code cell that calls `name.reveal(...)`); None when no cell creates one."""
    cells = [(i, c, _tree("".join(c["source"]))) for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"]
    for k, (i, _, tree) in enumerate(cells):
        if tree is None or not any(_creates_choice_prediction(n) for n in ast.walk(tree)):
            continue
        name = _assigned_name(tree)
        reveal = next((j for j, _, later in cells[k + 1:] if name and later and _reveals(later, name)), None)
        return i, name, reveal
    return None


def _wait_cells(page, path: str, first: int, last: int, timeout: float) -> None:
    """Wait until cells first..last ran and the kernel sits idle; return early when the run stopped before them
    (an error: the report says which cell)."""
    deadline, calm, stopped = time.monotonic() + timeout, 0, 0
    while time.monotonic() < deadline:
        p = page.evaluate(JS_CELLS_DONE, [path, first, last])
        if p["status"] == "dead":
            raise RuntimeError(f"{path}: the kernel died while running cells {first}..{last}")
        idle = p["status"] == "idle" and not p["queued"]
        calm, stopped = (calm + 1 if idle and not p["pending"] else 0), (stopped + 1 if idle and p["pending"] else 0)
        if calm >= 3 or stopped >= 10:
            return
        time.sleep(0.5)
    raise TimeoutError(f"{path}: cells {first}..{last} still running after {timeout:.0f} s (last progress: {p})")


def _text_when(page, locator, condition: str) -> str:
    """The element's text once the JavaScript `condition` on `el` holds (the kernel answers through the widget's
    comm, a moment after the cell is done), or as it is after 15 s."""
    try:
        page.wait_for_function(f"el => {condition}", arg=locator.element_handle(), timeout=15000)
    except Exception:  # Playwright's TimeoutError: the text as it stands is reported
        pass
    return locator.inner_text()


def answer_prediction(browser, server: LabServer, path: str, *, choice: int = 1, timeout: float = 900.0,
                      screenshot: Path | None = None) -> PredictionRun:
    """Restart the kernel and run `path` up to its first Prediction with choices (`find_prediction`), click its
    choice number `choice` and "Lock in", run the cells after it up to its reveal, and return what the page shows."""
    found = find_prediction(json.loads((server.root / path).read_text()))
    if found is None:
        raise ValueError(f"{path}: no code cell creates a Prediction with choices")
    cell, name, reveal = found
    run = PredictionRun(path, cell=cell, reveal=reveal)
    if reveal is None:
        run.problems.append(f"cell {cell}: its Prediction is never revealed (" + (
            f"no later cell calls {name}.reveal(...))" if name else "it is not assigned to a name)"))
        return run
    with _page(browser, server, run) as page:
        _open_and_restart(page, server, path, timeout, upto=cell)
        page.evaluate(JS_MARK_WIDGETS, path)
        widget = page.locator(f'[data-bl-widget^="{cell}."] .bloomlib-prediction').first
        widget.wait_for(timeout=30000)
        radio = widget.locator("input[type=radio]").nth(choice)
        run.chosen = radio.evaluate("el => el.parentElement.textContent").strip()
        radio.check()
        widget.locator("button.jupyter-button", has_text="Lock in").click()
        run.n_clicks = 2
        run.status = _text_when(page, widget.locator(".bloomlib-prediction-status"),
                                "el.innerText.startsWith('Locked in')")
        run.locked = widget.locator("input[type=radio]").first.is_disabled()
        page.evaluate(JS_RUN_CELLS, [path, cell + 1, reveal])
        _wait_cells(page, path, cell + 1, reveal, timeout)
        run.shown = _text_when(page, widget.locator(".bloomlib-prediction-result"), "el.innerText.trim() !== ''")
        if screenshot:  # the widget alone, locked in and revealed (the README's picture)
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            widget.screenshot(path=str(screenshot.with_name(screenshot.stem + "_widget.png")))
        run.cells = page.evaluate(JS_REPORT, path)
        run.printed = run.cells[reveal].get("text", "")
        run.screenshot = _screenshot(page, screenshot)
    return run


def prediction_problems(run: PredictionRun) -> list[str]:
    """What went wrong answering the prediction: errors in the cells run, cells that should (not) have run, a
    "Lock in" the kernel did not answer, a reveal that does not say what was chosen."""
    out = list(run.problems)
    if not run.cells:
        return out
    for c in run.code_cells():
        i = c["index"]
        if i <= run.reveal and "raises-exception" not in c["tags"]:
            out += [f"cell {i}: {e['ename']}: {e['evalue']}" for e in _errors(c)]
        if i <= run.reveal and c["executionCount"] is None and c["source"].strip():
            out.append(f"cell {i}: never ran (the run stopped before the reveal in cell {run.reveal})")
        if i > run.reveal and c["executionCount"] is not None:
            out.append(f"cell {i}: ran, but only the cells up to the reveal in cell {run.reveal} should")
    expected = f"Locked in: {run.chosen}."
    if run.status.strip() != expected:
        out.append(f"cell {run.cell}: after clicking 'Lock in' the status shows {run.status!r}, not {expected!r}")
    if not run.locked:
        out.append(f"cell {run.cell}: the choices are still enabled after 'Lock in'")
    said = f"You chose {run.chosen}:"
    if said not in run.printed:
        out.append(f"cell {run.reveal}: the reveal printed {run.printed[-200:]!r}, which does not say {said!r}")
    if said not in run.shown:
        out.append(f"cell {run.cell}: the widget's result area shows {run.shown[-200:]!r}, not {said!r}")
    out += [f"page error: {e}" for e in run.page_errors if any(m in e for m in JS_ERRORS)]
    return out


# --- the transformer explorer driven as a learner would: type a prompt, move the temperature, sample a token ---
@dataclass
class ExplorerStep:
    """What the explorer showed after one step: its summary line, how many token chips, the prompt box, and the
    address of the bar chart's image (a new image is a new blob address)."""

    name: str
    summary: str
    chips: int
    prompt: str
    temperature: str  # the slider's readout
    chart: str


@dataclass
class ExplorerRun(Run):
    """A notebook whose first Explorer (cell `cell`) was typed into, slid and sampled in the page."""

    cell: int = -1
    steps: list[ExplorerStep] = field(default_factory=list)  # start, prompt, temperature, sample


JS_EXPLORER_STEP = """(el) => ({
  summary: el.querySelector('.bloomlib-explorer-summary').innerText.trim(),
  chips: el.querySelectorAll('.bloomlib-explorer-chip').length,
  prompt: el.querySelector('.bloomlib-explorer-prompt input').value,
  temperature: (el.querySelector('.bloomlib-explorer-temperature .widget-readout') || {}).innerText || '',
  chart: (el.querySelector('img.bloomlib-explorer-distribution') || {}).src || ''})"""


def explore(browser, server: LabServer, path: str, *, prompt: str, key: str = "ArrowLeft", presses: int = 10,
            timeout: float = 900.0, screenshot: Path | None = None) -> ExplorerRun:
    """Restart and run all of `path`, then in its first Explorer: type `prompt` and press Enter, focus the
    temperature slider's handle and press `key` `presses` times, click "Sample next token"; after each step, wait
    for the kernel's answer (the summary line changes) and record what the widget shows (`ExplorerRun.steps`)."""
    run = ExplorerRun(path)
    with _page(browser, server, run) as page:
        _open_and_restart(page, server, path, timeout)
        page.evaluate(JS_MARK_WIDGETS, path)
        widget = page.locator("[data-bl-widget] .bloomlib-explorer").first
        widget.wait_for(timeout=30000)
        run.cell = int(widget.locator("xpath=ancestor::*[@data-bl-widget][1]").get_attribute("data-bl-widget")
                       .split(".")[0])
        summary = widget.locator(".bloomlib-explorer-summary")

        def step(name: str, act=None) -> None:
            before = summary.inner_text()
            if act:
                act()
                _text_when(page, summary, f"el.innerText !== {json.dumps(before)}")
            run.steps.append(ExplorerStep(name, **widget.evaluate(JS_EXPLORER_STEP)))

        def type_prompt() -> None:
            box = widget.locator(".bloomlib-explorer-prompt input")
            box.fill(prompt)
            box.press("Enter")

        def slide() -> None:
            handle = widget.locator(".bloomlib-explorer-temperature .noUi-handle")
            handle.focus()
            for _ in range(presses):
                handle.press(key)
            readout = widget.locator(".bloomlib-explorer-temperature .widget-readout").inner_text().strip()
            # every press is a change the kernel answers: wait for the one of the slider's final value
            _text_when(page, summary, f"el.innerText.includes({json.dumps(f'| T {readout}')})")

        step("start")
        step("prompt", type_prompt)
        step("temperature", slide)
        step("sample", lambda: widget.locator("button.bloomlib-explorer-sample").click())
        run.n_clicks = 1
        run.cells = page.evaluate(JS_REPORT, path)
        run.screenshot = _screenshot(page, screenshot)
    return run


@dataclass
class KeyboardRun(Run):
    """A quiz question answered from the keyboard: which element had the focus after each key, what it said."""
    keys: list[tuple[str, str]] = field(default_factory=list)  # (key pressed, the focused element afterwards)
    chosen: str = ""
    feedback: str = ""


JS_FOCUSED = """() => { const el = document.activeElement;
  return el ? `${el.tagName.toLowerCase()}${el.type ? '[' + el.type + ']' : ''}: ${(el.innerText || el.value ||
  (el.parentElement && el.parentElement.innerText) || '').trim().slice(0, 40)}` : 'none'; }"""


def answer_quiz_by_keyboard(browser, server: LabServer, path: str, *, keys: list[str], timeout: float = 900.0,
                            screenshot: Path | None = None) -> KeyboardRun:
    """Restart and run all of `path`; give the focus to the first quiz question's first choice (where Tab brings
    a keyboard user), then press `keys` one after another; return what was chosen, the feedback the kernel wrote,
    and where the focus was after each key."""
    run = KeyboardRun(path)
    with _page(browser, server, run) as page:
        _open_and_restart(page, server, path, timeout)
        page.evaluate(JS_MARK_WIDGETS, path)
        quiz = page.locator("[data-bl-widget] .bloomlib-quiz").first
        quiz.wait_for(timeout=30000)
        question = quiz.locator(".widget-radio-box").first.locator(
            "xpath=ancestor::div[contains(@class, 'widget-vbox')][1]")
        question.scroll_into_view_if_needed()
        question.locator("input[type=radio]").first.focus()
        run.keys.append(("(focus)", page.evaluate(JS_FOCUSED)))
        for key in keys:
            page.keyboard.press(key)
            run.keys.append((key, page.evaluate(JS_FOCUSED)))
        feedback = question.locator(".bloomlib-feedback")
        run.feedback = _text_when(page, feedback, "el.innerText.trim() !== ''")
        run.chosen = question.evaluate("el => Array.from(el.querySelectorAll('input[type=radio]'))"
                                       ".filter(r => r.checked).map(r => r.parentElement.textContent.trim()).join()")
        run.n_clicks = 0
        run.cells = page.evaluate(JS_REPORT, path)
        run.screenshot = _screenshot(page, screenshot)
    return run


def explorer_problems(run: ExplorerRun, prompt: str) -> list[str]:
    """What went wrong exploring: errors in the notebook, a step the widget did not answer (summary, chips, prompt
    box or chart unchanged), a sample that did not add exactly one token."""
    out = [p for p in lesson_problems(run) if not p.startswith("page error")]
    out += [f"page error: {e}" for e in run.page_errors if any(m in e for m in JS_ERRORS)]
    if len(run.steps) != 4:
        return out + [f"only {len(run.steps)} of 4 steps were recorded"]
    start, typed, slid, sampled = run.steps
    where = f"cell {run.cell}"
    if typed.prompt != prompt or typed.summary == start.summary:
        out.append(f"{where}: after typing {prompt!r} the prompt box shows {typed.prompt!r} and the summary "
                   f"{'did not change' if typed.summary == start.summary else 'reads ' + repr(typed.summary)}")
    for s in run.steps:
        if not s.summary.startswith(f"Explorer: {s.chips} token"):
            out.append(f"{where}: after {s.name}, {s.chips} token chips but the summary reads {s.summary!r}")
    if slid.temperature == typed.temperature:
        out.append(f"{where}: the temperature slider did not move (readout {slid.temperature!r})")
    if slid.summary == typed.summary or slid.chart == typed.chart:
        out.append(f"{where}: moving the temperature did not change the distribution shown (summary "
                   f"{'unchanged' if slid.summary == typed.summary else 'changed'}, chart "
                   f"{'unchanged' if slid.chart == typed.chart else 'changed'})")
    if sampled.chips != slid.chips + 1 or not sampled.prompt.startswith(prompt) or sampled.prompt == prompt:
        out.append(f"{where}: after 'Sample next token' {sampled.chips} chips (before {slid.chips}) and the prompt "
                   f"box shows {sampled.prompt!r}")
    return out


def _errors(cell: dict) -> list[dict]:
    return [o for o in cell.get("outputs", []) if o["type"] == "error"]


def cell_problems(cell: dict) -> list[str]:
    """What is wrong with one executed code cell as displayed (besides error outputs)."""
    out = []
    n_images = sum(any(m in IMAGE_MIMES for m in o["mimes"]) for o in cell["outputs"])
    shown = [i for i in cell["images"] if i["complete"] and i["width"] > 0]
    if len(shown) < n_images:
        out.append(f"{n_images - len(shown)} of {n_images} image(s) did not render")
    for o in cell["outputs"]:
        if o["plain"] and FIGURE_TEXT.search(o["plain"]) and not any(m in IMAGE_MIMES for m in o["mimes"]):
            out.append(f"a matplotlib figure shows as text only: {o['plain'][:80]!r}")
    for o in cell["outputs"]:
        shown = o["dom"] and o["dom"]["widget"] and not WIDGET_FAILED.search(o["dom"]["text"])
        if WIDGET_MIME in o["mimes"] and not shown:
            out.append(f"a widget did not render: {(o['dom'] or {}).get('text', 'no output element')[:120]!r}")
    for v in cell["bertviz"]:
        if v["svgElements"] == 0:
            out.append(f"BertViz view {v['id']} is empty: {v['text'][:150]!r}")
    for marker in JS_ERRORS:
        if marker in cell["text"]:
            out.append(f"the output shows {marker!r}")
    return out


def lesson_problems(run: Run) -> list[str]:
    """Everything a learner would see go wrong in a lesson run top to bottom."""
    out = []
    for c in run.code_cells():
        i = c["index"]
        if "raises-exception" not in c["tags"]:
            out += [f"cell {i}: {e['ename']}: {e['evalue']}" for e in _errors(c)]
        out += [f"cell {i}: {p}" for p in cell_problems(c)]
        if c["executionCount"] is None and c["source"].strip():
            out.append(f"cell {i}: never ran (run-all stopped before it)")
    out += run.clicks
    out += [f"page error: {e}" for e in run.page_errors if any(m in e for m in JS_ERRORS)]
    return out


def first_answer_problems(run: Run) -> list[str]:
    """An untouched exercise: the first failure is the NotImplementedError of the first answer, raised in the
    answer cell itself or in a test cell before the next answer, and run-all stops there."""
    code = run.code_cells()
    answers = [c["index"] for c in code if (c["nbgrader"] or {}).get("solution")]
    if not answers:
        return ["no nbgrader answer cell (metadata nbgrader.solution) found"]
    failing = [c for c in code if _errors(c)]
    if not failing:
        return [f"no cell failed: the answer in cell {answers[0]} should raise NotImplementedError"]
    first, err = failing[0], _errors(failing[0])[0]
    out = []
    if not answers[0] <= first["index"] < (answers[1:] or [len(run.cells)])[0] or err["ename"] != "NotImplementedError":
        out.append(f"first failure is cell {first['index']} ({err['ename']}: {err['evalue']}), expected the "
                   f"NotImplementedError of the answer in cell {answers[0]}")
    ran_after = [c["index"] for c in code if c["index"] > first["index"] and c["executionCount"] is not None]
    if ran_after:
        out.append(f"run-all did not stop at cell {first['index']}: cells {ran_after} ran")
    return out


def summary(run: Run) -> str:
    code = run.code_cells()
    images = sum(len(c["images"]) for c in code)
    views = sum(len(c["bertviz"]) for c in code)
    slow = sorted((c for c in code if (c.get("seconds") or 0) >= 10), key=lambda c: -c["seconds"])[:3]
    slow = "; slowest: " + ", ".join(f"cell {c['index']} {c['seconds']:.0f} s" for c in slow) if slow else ""
    return (f"{run.seconds:6.1f} s  {len(code):3d} code cells, {run.n_clicks} widget clicks, {images} images, "
            f"{views} BertViz views{slow}")


def fill_answers(exercise: dict, solution: dict) -> dict:
    """The exercise notebook with each answer cell's source replaced by the solution cell of the same
    nbgrader grade_id, without its ### BEGIN/END SOLUTION lines."""
    sources = {c["metadata"]["nbgrader"]["grade_id"]: "".join(c["source"]) for c in solution["cells"]
               if c.get("metadata", {}).get("nbgrader", {}).get("solution")}
    filled = json.loads(json.dumps(exercise))
    for c in filled["cells"]:
        grade_id = c.get("metadata", {}).get("nbgrader", {}).get("grade_id")
        if c.get("metadata", {}).get("nbgrader", {}).get("solution"):
            if grade_id not in sources:
                raise KeyError(f"answer cell {grade_id!r} has no solution cell with that grade_id")
            c["source"] = "".join(line for line in sources[grade_id].splitlines(keepends=True)
                                  if line.strip() not in ("### BEGIN SOLUTION", "### END SOLUTION"))
    return filled


def report(run: Run, problems: list[str]) -> str:
    head = f"{run.path}: {len(run.code_cells())} code cells, {run.n_clicks} widget clicks, {run.seconds:.1f} s"
    if run.screenshot:
        head += f", screenshot {run.screenshot}"
    others = [f"(page error, not counted: {e[:200]})" for e in run.page_errors if not any(m in e for m in JS_ERRORS)]
    return "\n  ".join([head] + problems + others)


if __name__ == "__main__":  # python tests/browser/labdriver.py notebooks/01_remember.ipynb ...
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "root"
        for nb in sys.argv[1:]:
            (root / Path(nb).parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(nb, root / Path(nb).parent.name / Path(nb).name)
        with LabServer(root, Path(tmp) / "work") as server, chromium(Path(tmp)) as browser:
            for nb in sys.argv[1:]:
                rel = f"{Path(nb).parent.name}/{Path(nb).name}"
                r = run_notebook(browser, server, rel, screenshot=Path("artifacts/browser") / f"{Path(nb).stem}.png")
                print(report(r, lesson_problems(r)), "\n  page errors:", r.page_errors)
