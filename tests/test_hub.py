"""The class on one server (deploy/, `make hub`): JupyterHub + nbgrader, run as a class would run it.

test_class_on_the_hub starts the hub of deploy/jupyterhub_config.py on loopback (free ports, its state in a
temporary folder) with its standard proxy (configurable-http-proxy from deploy/node, installed by `make test`
and `make hub`). An instructor and two learners sign up on the hub's own sign-up page (NativeAuthenticator),
the instructor approves them on /hub/authorize (signed in on the hub's login page: that page takes no API
token); learner ada signs in through
the hub's login page in headless Chromium (her server starts; JupyterLab shows her course folders, with
nbgrader's Assignments plugin on and the formgrader off, the instructor's with both on), the
instructor and learner bob sign in through the REST API (a token for name and password; bob, who never saw the
login page, is added as a hub user by the instructor through the API) and start their servers through it.
Every command then runs in (through) the user's own server, behind the hub's proxy:
- the instructor's nbgrader commands (generate_assignment, release_assignment, collect, autograde, export) in a
  kernel of the instructor's server, in the course folder, so with the environment and nbgrader config the hub
  gave that server;
- the learners' fetch and submit through nbgrader's assignment_list server extension (the endpoints the
  Assignments tab of JupyterLab calls), and their answers written with the server's Contents API.
ada's notebook gets the solution's answers, bob's stays blank; the exported CSV holds ada with full marks and bob
with 0. The hub is then stopped, and no process it started (proxy, servers, kernels) may be left.

tests/test_course_workflow.py runs the same nbgrader workflow without a hub (full, partial and blank answers).

Needs node, npm and the proxy (`make test` installs it with `npm ci --prefix deploy/node`), and Chromium for the
hub test: skipped without them, failed without them under CI=true (as tests/browser does for Chromium).
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import nbformat
import psutil
import pytest
import requests

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
sys.path.insert(0, str(DEPLOY))
sys.path.insert(0, str(REPO / "tests" / "browser"))
import classroom  # noqa: E402
import labdriver as lab  # noqa: E402

import grading_harness as harness  # noqa: E402
from test_course_workflow import ADMIN, ASSIGNMENT, SOURCE, _answers, _grades, _points  # noqa: E402

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
PROXY = DEPLOY / "node" / "node_modules" / ".bin" / "configurable-http-proxy"
LEARNERS = ("ada", "bob")
PASSWORD = "{}-workshop-2026"  # per user: NativeAuthenticator refuses short and common passwords
PREFIX = "RESULT:"


def _require(missing: str | None) -> None:
    if missing:
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(f"{missing} (CI=true: `make test` installs it)")
        pytest.skip(missing)


def _missing_hub() -> str | None:
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            return f"the hub test needs {tool} (Debian/Ubuntu: sudo apt-get install nodejs npm)"
    if not PROXY.exists():
        return (f"the hub test needs configurable-http-proxy at {PROXY}: "
                "npm ci --prefix deploy/node (`make test` and `make hub` run it)")
    if not (BIN / "jupyterhub").exists():
        return "the hub test needs JupyterHub: pip install -c constraints.txt -e '.[all]'"
    if not lab.CHROMIUM.exists():
        return f"the hub test signs a learner in with Chromium at {lab.CHROMIUM}: {lab.INSTALL_HINT}"
    return None


# ------------------------------------------------------------------------------------------ the hub
class Hub:
    """The hub of deploy/jupyterhub_config.py on loopback, its state in ``state``."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.port, api, proxy_api = (lab.free_port() for _ in range(3))
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTER")}
        self.env.update(HUB_STATE=str(state), HUB_IP="127.0.0.1", HUB_PORT=str(self.port), HUB_API_PORT=str(api),
                        HUB_PROXY_API_PORT=str(proxy_api), HUB_ADMIN=ADMIN,
                        PATH=os.pathsep.join([str(BIN), os.environ.get("PATH", "")]))
        self.tokens: dict[str, str] = {}
        self.instructor: requests.Session | None = None
        self.proc: subprocess.Popen | None = None
        self.log = state / "jupyterhub.log"

    def start(self, timeout: float = 120) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        self._log = self.log.open("w")
        self.proc = subprocess.Popen([str(BIN / "jupyterhub"), "-f", str(DEPLOY / "jupyterhub_config.py")],
                                     cwd=self.state, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"the hub exited:\n{self.log.read_text()[-4000:]}"
            try:
                if requests.get(f"{self.url}/hub/api", timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"the hub did not answer in {timeout} s:\n{self.log.read_text()[-4000:]}")

    def stop(self) -> list[str]:
        """Stop the hub as Ctrl-C would; what it started must stop with it. Returns the processes left."""
        if self.proc is None:
            return []
        try:
            family = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:  # the hub died on its own: nothing of it may be left either
            family = []
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()
        gone, alive = psutil.wait_procs(family, timeout=20)
        left = []
        for p in alive:
            try:
                left.append(f"{p.pid} {' '.join(p.cmdline()[:3])}")
                p.kill()
            except psutil.NoSuchProcess:
                pass
        return left

    def api(self, method: str, path: str, user: str = ADMIN, **kwargs) -> requests.Response:
        headers = {"Authorization": f"token {self.tokens[user]}"}
        r = requests.request(method, f"{self.url}{path}", headers=headers, timeout=120, **kwargs)
        assert r.status_code < 400, f"{method} {path} as {user}: {r.status_code} {r.text[:2000]}"
        return r

    def sign_up(self, user: str) -> str:
        """The hub's sign-up form, submitted as a browser would (its page, its _xsrf cookie and field)."""
        s = requests.Session()
        page = s.get(f"{self.url}/hub/signup", timeout=30).text
        xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page).group(1)
        pw = PASSWORD.format(user)
        r = s.post(f"{self.url}/hub/signup", timeout=30, data={
            "_xsrf": xsrf, "username": user, "signup_password": pw, "signup_password_confirmation": pw})
        alert = re.search(r'role="alert">(.*?)</div>', r.text, re.S)
        return " ".join(re.sub(r"<[^>]+>", " ", alert.group(1)).split()) if alert else r.text[-500:]

    def approve(self, user: str) -> None:
        """The instructor, signed in on the hub's login page, clicks the learner's link on /hub/authorize (an
        HTML page: the hub takes no API token there, only its login cookie)."""
        if self.instructor is None:
            self.instructor = requests.Session()
            page = self.instructor.get(f"{self.url}/hub/login", timeout=30).text
            xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page).group(1)
            self.instructor.post(f"{self.url}/hub/login?next=/hub/authorize", timeout=60, data={
                "_xsrf": xsrf, "username": ADMIN, "password": PASSWORD.format(ADMIN)})
        area = self.instructor.get(f"{self.url}/hub/authorize", timeout=30)
        assert area.status_code == 200 and f"/authorize/{user}" in area.text, area.status_code
        r = self.instructor.get(f"{self.url}/hub/authorize/{user}", timeout=30)
        assert r.status_code == 200, r.status_code

    def sign_in(self, user: str) -> None:
        """The REST API: a token for name and password."""
        r = requests.post(f"{self.url}/hub/api/users/{user}/tokens", timeout=30, json={
            "auth": {"username": user, "password": PASSWORD.format(user)}, "note": "test_hub", "expires_in": 3600})
        assert r.status_code == 201, f"{user}: {r.status_code} {r.text[:500]}"
        self.tokens[user] = r.json()["token"]

    def wait_ready(self, user: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            server = self.api("GET", f"/hub/api/users/{user}").json().get("servers", {}).get("")
            if server and server.get("ready"):
                return
            time.sleep(0.5)
        raise AssertionError(f"{user}'s server did not start in {timeout} s:\n{self.log.read_text()[-4000:]}")

    def run_python(self, user: str, code: str, timeout: float = 600) -> str:
        """Run ``code`` in a new kernel of ``user``'s server (through the proxy); its printed output."""
        kernel = self.api("POST", f"/user/{user}/api/kernels", user, json={"name": "python3"}).json()["id"]
        try:
            return asyncio.run(_execute(f"ws://127.0.0.1:{self.port}/user/{user}/api/kernels/{kernel}/channels",
                                        self.tokens[user], code, timeout))
        finally:
            self.api("DELETE", f"/user/{user}/api/kernels/{kernel}", user)

    def assignments(self, user: str, action: str | None = None) -> list[dict]:
        """nbgrader's assignment_list extension in the user's server: list, or fetch / submit then list."""
        args = {"course_id": classroom.COURSE_ID, "assignment_id": ASSIGNMENT}
        if action is None:
            r = self.api("GET", f"/user/{user}/assignments", user, params={"course_id": classroom.COURSE_ID})
        else:
            r = self.api("POST", f"/user/{user}/assignments/{action}", user, params=args)
        out = r.json()
        assert out["success"], f"{user} {action or 'list'}: {out['value']}"
        return [a for a in out["value"] if a["assignment_id"] == ASSIGNMENT]

    def contents(self, user: str, path: str, body: dict | None = None) -> dict:
        url = f"/user/{user}/api/contents/{path}"
        return self.api("PUT", url, user, json=body).json() if body else self.api("GET", url, user).json()


async def _execute(url: str, token: str, code: str, timeout: float) -> str:
    """One execute_request over the kernel's websocket (Jupyter's JSON protocol): stdout, or the traceback."""
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    ws = await websocket_connect(HTTPRequest(url, headers={"Authorization": f"token {token}"}))
    msg_id, out, done = uuid.uuid4().hex, [], {"reply": False, "idle": False}
    ws.write_message(json.dumps({
        "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "test", "session": uuid.uuid4().hex,
                   "version": "5.3"},
        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
        "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                    "allow_stdin": False, "stop_on_error": True}}))
    try:
        while not (done["reply"] and done["idle"]):
            raw = await asyncio.wait_for(ws.read_message(), timeout)
            assert raw is not None, "the kernel's websocket closed"
            msg = json.loads(raw)
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = msg["msg_type"]
            if kind == "stream":
                out.append(msg["content"]["text"])
            elif kind == "error":
                raise AssertionError("\n".join(msg["content"]["traceback"]))
            elif kind == "execute_reply":
                done["reply"] = True
            elif kind == "status" and msg["content"]["execution_state"] == "idle":
                done["idle"] = True
    finally:
        ws.close()
    return "".join(out)


def _instructor(hub: Hub, *commands: list[str]) -> list[dict]:
    """nbgrader commands in a kernel of the instructor's server, in the course folder."""
    code = (f"import json, os, subprocess\nos.chdir(os.path.expanduser('~/course'))\nresults = []\n"
            f"for args in {[list(c) for c in commands]!r}:\n"
            f"    p = subprocess.run(['nbgrader', *args], capture_output=True, text=True)\n"
            f"    results.append(dict(args=args, rc=p.returncode, log=(p.stdout + p.stderr)[-3000:]))\n"
            f"    if p.returncode: break\n"
            f"print({PREFIX!r} + json.dumps(dict(results=results, user=os.environ['USER'],\n"
            f"                                   home=os.environ['HOME'])))\n")
    out = json.loads(hub.run_python(ADMIN, code).split(PREFIX, 1)[1])
    assert out["user"] == ADMIN and Path(out["home"]) == hub.state / "home" / ADMIN, out
    for r in out["results"]:
        assert r["rc"] == 0, f"nbgrader {' '.join(r['args'])} in the instructor's server:\n{r['log']}"
    return out["results"]


def _nbgrader_lab_plugins(html: str) -> dict[str, bool]:
    """Which of nbgrader's JupyterLab plugins a lab page turns on (its page config's disabledExtensions)."""
    data = re.search(r'<script id="jupyter-config-data" type="application/json">(.*?)</script>', html, re.S)
    disabled = set(json.loads(data.group(1))["disabledExtensions"])
    return {name: f"@jupyter/nbgrader:{name}" not in disabled
            for name in ("assignment-list", "formgrader", "create-assignment")}


def _sign_in_with_chromium(hub: Hub, browser, user: str) -> None:
    """Sign up on the hub's page, wait for the instructor's approval, sign in: JupyterLab opens on the course."""
    page = browser.new_page()
    try:
        pw = PASSWORD.format(user)
        page.goto(f"{hub.url}/hub/signup")
        page.fill("#username_input", user)
        page.fill("#password_input", pw)
        page.fill("#password_confirmation_input", pw)
        page.click("#signup_submit")
        message = page.locator("[role=alert]").inner_text()
        assert "sent to the admin" in message, message
        hub.approve(user)
        page.goto(f"{hub.url}/hub/login")
        page.fill("#username_input", user)
        page.fill("#password_input", pw)
        page.click("#login_submit")
        page.wait_for_url(re.compile(rf"/user/{user}/lab"), timeout=120_000)
        for folder in classroom.COURSE_FOLDERS:
            page.locator(".jp-DirListing-itemText", has_text=folder).first.wait_for(timeout=120_000)
        lab_nbgrader = _nbgrader_lab_plugins(page.content())
        assert lab_nbgrader == {"assignment-list": True, "formgrader": False, "create-assignment": False}, \
            f"{user}'s JupyterLab, nbgrader plugins on: {lab_nbgrader}"
    finally:
        page.close()
    r = requests.post(f"{hub.url}/hub/api/users/{user}/tokens", timeout=30,
                      json={"auth": {"username": user, "password": pw}, "note": "test_hub"})
    assert r.status_code == 201, r.text
    hub.tokens[user] = r.json()["token"]


def test_class_on_the_hub(tmp_path):
    _require(_missing_hub())
    hub = Hub(tmp_path / "state")
    left: list[str] = []
    try:
        hub.start()
        assert "successful" in hub.sign_up(ADMIN)  # the admin is approved from the start
        hub.sign_in(ADMIN)
        hub.api("POST", f"/hub/api/users/{ADMIN}/server")
        with lab.chromium(tmp_path) as browser:
            _sign_in_with_chromium(hub, browser, LEARNERS[0])
        assert "sent to the admin" in hub.sign_up(LEARNERS[1])
        with pytest.raises(AssertionError, match="403"):
            hub.sign_in(LEARNERS[1])  # not approved yet: no token
        hub.approve(LEARNERS[1])
        # a sign-up becomes a hub user at its first sign-in on the login page; for one who only uses the API,
        # the instructor adds it (what "Add users" on /hub/admin does)
        hub.api("POST", f"/hub/api/users/{LEARNERS[1]}")
        hub.sign_in(LEARNERS[1])
        hub.api("POST", f"/hub/api/users/{LEARNERS[1]}/server", LEARNERS[1])
        for user in (ADMIN, *LEARNERS):
            hub.wait_ready(user)
            assert {"notebooks", "exercises"} <= {c["name"] for c in hub.contents(user, "")["content"]}

        # the instructor has the formgrader, the learners do not (ada's JupyterLab was checked in Chromium)
        assert hub.api("GET", f"/user/{ADMIN}/formgrader", ADMIN).status_code == 200
        assert all(_nbgrader_lab_plugins(hub.api("GET", f"/user/{ADMIN}/lab", ADMIN).text).values())
        for learner in LEARNERS:
            headers = {"Authorization": f"token {hub.tokens[learner]}"}
            r = requests.get(f"{hub.url}/user/{learner}/formgrader", headers=headers, timeout=30)
            assert r.status_code == 404, f"{learner} sees the formgrader: {r.status_code}"
        # every lab takes deploy/lab-overrides.json as its defaults (`make hub` and `make test` install it)
        for plugin, settings in json.loads((REPO / "deploy" / "lab-overrides.json").read_text()).items():
            schema = hub.api("GET", f"/user/{LEARNERS[1]}/lab/api/settings/{plugin}", LEARNERS[1]).json()["schema"]
            assert {k: schema["properties"][k]["default"] for k in settings} == settings, plugin

        _instructor(hub, ["generate_assignment", ASSIGNMENT, "--force"], ["release_assignment", ASSIGNMENT, "--force"])
        source = nbformat.read(SOURCE, as_version=4)
        path = f"{ASSIGNMENT}/{SOURCE.name}"
        for learner, keep in zip(LEARNERS, (list(harness.questions(source)), [])):
            assert [a["status"] for a in hub.assignments(learner)] == ["released"]
            assert [a["status"] for a in hub.assignments(learner, "fetch")] == ["fetched"]
            released = nbformat.from_dict(hub.contents(learner, path)["content"])
            answered = _answers(released, source, keep)
            hub.contents(learner, path, {"type": "notebook", "format": "json", "content": answered})
            statuses = {a["status"] for a in hub.assignments(learner, "submit")}
            assert "submitted" in statuses, statuses

        _instructor(hub, ["collect", ASSIGNMENT], ["autograde", ASSIGNMENT, "--force"],
                    ["export", "--to", "grades.csv"])
        grades = _grades(hub.contents(ADMIN, "course/grades.csv")["content"])
        total = _points(source, harness.questions(source))
        assert grades == {LEARNERS[0]: (total, total), LEARNERS[1]: (0.0, total)}, grades
    finally:
        left = hub.stop()
    assert not left, f"still running after the hub stopped: {left}"


def test_kubernetes_values_name_what_the_hub_names():
    """deploy/kubernetes/values.yaml (Zero to JupyterHub; no cluster here): it parses, uses the one-server hub's
    authenticator and course id, mounts the shared exchange claim where its servers' nbgrader looks, and runs the
    course image's start script (deploy/Dockerfile)."""
    yaml = pytest.importorskip("yaml")
    values = yaml.safe_load((DEPLOY / "kubernetes" / "values.yaml").read_text())
    claim = yaml.safe_load((DEPLOY / "kubernetes" / "exchange-pvc.yaml").read_text())
    hub_config = (DEPLOY / "jupyterhub_config.py").read_text()
    single = values["singleuser"]
    env = single["extraEnv"]

    authenticator = values["hub"]["config"]["JupyterHub"]["authenticator_class"]
    assert f'authenticator_class = "{authenticator}"' in hub_config
    assert env["BLOOM_COURSE_ID"] == classroom.COURSE_ID
    assert values["hub"]["config"]["Authenticator"]["admin_users"] == [env["BLOOM_ADMIN"]]
    mounts = {m["name"]: m["mountPath"] for m in single["storage"]["extraVolumeMounts"]}
    volumes = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in single["storage"]["extraVolumes"]}
    exchange = [name for name, path in mounts.items() if path == env["BLOOM_EXCHANGE"]]
    assert len(exchange) == 1, f"no volume mounted at the exchange {env['BLOOM_EXCHANGE']}: {mounts}"
    assert volumes[exchange[0]] == claim["metadata"]["name"] and "ReadWriteMany" in claim["spec"]["accessModes"]
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    start = single["cmd"]
    assert start.startswith("/opt/course/") and f'CMD ["{start}"]' in dockerfile
    assert (REPO / start.removeprefix("/opt/course/")).exists()
    assert env["BLOOM_EXCHANGE"] == str(classroom.EXCHANGE_IN_CONTAINERS)  # the start script's default


def test_classroom_prepares_each_role(tmp_path):
    """What the hub's pre-spawn hook (and the container's start script) writes: the course copy, the nbgrader
    config of each role, and nbgrader's extensions of that role only."""
    exchange = tmp_path / "exchange"
    assert classroom.main(["--home", str(tmp_path / "ada"), "--user", "ada", "--exchange", str(exchange)]) == 0
    assert classroom.main(["--home", str(tmp_path / ADMIN), "--user", ADMIN, "--admin", ADMIN,
                           "--exchange", str(exchange)]) == 0
    learner = (tmp_path / "ada" / ".jupyter" / "nbgrader_config.py").read_text()
    instructor = (tmp_path / ADMIN / ".jupyter" / "nbgrader_config.py").read_text()
    for text in (learner, instructor):
        assert f"c.CourseDirectory.course_id = {classroom.COURSE_ID!r}" in text
        assert f"c.Exchange.root = {str(exchange)!r}" in text
    assert "student_id = 'ada'" in learner and "nbgrader_preprocessors()" not in learner
    assert "nbgrader_preprocessors()" in instructor and "student_id" not in instructor
    assert sorted(p.name for p in (tmp_path / "ada" / "exercises").glob("*.ipynb")) == \
        sorted(p.name for p in (REPO / "exercises").glob("*.ipynb"))
    assert (tmp_path / ADMIN / "course" / "source" / ASSIGNMENT / SOURCE.name).exists()
    server = json.loads((tmp_path / "ada" / ".jupyter" / "jupyter_server_config.json").read_text())
    enabled = {k for k, v in server["ServerApp"]["jpserver_extensions"].items() if v}
    assert "nbgrader.server_extensions.formgrader" not in enabled
    assert "nbgrader.server_extensions.assignment_list" in enabled
    with pytest.raises(ValueError, match="role must be"):
        classroom.nbgrader_config("student", exchange=exchange, user="ada")
