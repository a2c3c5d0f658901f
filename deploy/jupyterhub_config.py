"""JupyterHub for a workshop room or a class on one server: `make hub HUB_PORT=8000 HUB_ADMIN=teacher`.

Environment (the Makefile sets them; the test too):
  HUB_STATE   the one folder that holds all state (default .hub/): database, cookie secret, homes, exchange
  HUB_IP      address to listen on (default 0.0.0.0: the room reaches the server; 127.0.0.1 for loopback only)
  HUB_PORT    public port (default 8000); the hub's own API listens on HUB_PORT+1 and the proxy's on HUB_PORT+2
              unless HUB_API_PORT / HUB_PROXY_API_PORT say otherwise
  HUB_ADMIN   the instructor's user name (admin of the hub, owner of the nbgrader course; default teacher)

Authenticator: NativeAuthenticator (accounts in the hub's own database). In a room, each learner signs up at
/hub/signup with a name and a password of their own, and the instructor approves each sign-up at /hub/authorize:
nobody outside the room gets in, no learner can sign in as another and submit in their name (a shared workshop
password would allow both: anyone who has it can take any name), and no OS account or identity provider is
needed, so it runs offline. The instructor (HUB_ADMIN) signs up first, before the room opens; that name is
approved from the start.

Spawner: SimpleLocalProcessSpawner: every learner's server runs as the hub's own OS user, with a home of their
own under HUB_STATE/home/<name>. That is one laptop or one server's worth of separation (separate files,
processes and nbgrader identities), not isolation: a learner's code could read another's home. An institution
uses real isolation instead: one OS user per learner (LocalProcessSpawner with PAM or an identity provider, the
hub run as root or with sudospawner) or one container per learner (DockerSpawner, or Kubernetes: see
deploy/kubernetes/values.yaml). deploy/README.md says more.
"""
import os
import sys
from pathlib import Path

DEPLOY = Path(__file__).resolve().parent
sys.path.insert(0, str(DEPLOY))
import classroom  # noqa: E402

c = get_config()  # noqa: F821 (JupyterHub's config loader defines it)

STATE = Path(os.environ.get("HUB_STATE", DEPLOY.parent / ".hub")).resolve()
PORT = int(os.environ.get("HUB_PORT", "8000"))
ADMIN = os.environ.get("HUB_ADMIN", "teacher")
EXCHANGE = STATE / "exchange"
HOMES = STATE / "home"
COURSE = HOMES / ADMIN / "course"  # inside the instructor's server root, as the formgrader wants
BIN = Path(sys.executable).parent  # the course environment's bin/ (jupyterhub-singleuser, nbgrader, alembic)
STATE.mkdir(parents=True, exist_ok=True)

# --- the hub, the proxy, and where their state goes
c.JupyterHub.ip = os.environ.get("HUB_IP", "0.0.0.0")
c.JupyterHub.port = PORT
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = int(os.environ.get("HUB_API_PORT", PORT + 1))
c.JupyterHub.db_url = f"sqlite:///{STATE / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(STATE / "jupyterhub_cookie_secret")
c.JupyterHub.pid_file = str(STATE / "jupyterhub.pid")
c.ConfigurableHTTPProxy.command = [str(DEPLOY / "node" / "node_modules" / ".bin" / "configurable-http-proxy")]
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{os.environ.get('HUB_PROXY_API_PORT', PORT + 2)}"
c.ConfigurableHTTPProxy.pid_file = str(STATE / "jupyterhub-proxy.pid")
c.JupyterHub.cleanup_servers = True  # stopping the hub stops every learner's server
c.JupyterHub.cleanup_proxy = True

# --- who gets in (see the docstring)
c.JupyterHub.authenticator_class = "nativeauthenticator.NativeAuthenticator"
c.Authenticator.admin_users = {ADMIN}
c.Authenticator.allow_all = True  # everyone the instructor approved: NativeAuthenticator refuses the others
c.NativeAuthenticator.open_signup = False  # sign-ups wait for the instructor's approval
c.NativeAuthenticator.minimum_password_length = 8
c.NativeAuthenticator.check_common_password = True

# --- each user's own server and home
c.JupyterHub.spawner_class = "jupyterhub.spawner.SimpleLocalProcessSpawner"
c.SimpleLocalProcessSpawner.home_dir_template = str(HOMES / "{username}")
c.Spawner.cmd = [str(BIN / "jupyterhub-singleuser")]
c.Spawner.default_url = "/lab"
c.Spawner.notebook_dir = "~"
c.Spawner.http_timeout = 120
c.Spawner.start_timeout = 120
c.Spawner.environment = {
    "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "/usr/bin:/bin")]),
    "MPLBACKEND": "module://matplotlib_inline.backend_inline",
    # the user's ~/.jupyter (their role's nbgrader extensions, written by classroom.prepare_home) takes precedence
    # over the course environment's (where `make lab` turns the instructor tools off); in a virtual environment
    # Jupyter otherwise prefers the environment's
    "JUPYTER_PREFER_ENV_PATH": "0",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}
if os.getuid() == 0:  # in a container or a cloud VM you are often root; Jupyter refuses that without this flag
    c.Spawner.args = ["--allow-root"]


def _prepare(spawner) -> None:
    """Before each start: the user's home (course copy at first start), Jupyter and nbgrader config."""
    user = spawner.user.name
    role = "instructor" if user == ADMIN else "learner"
    classroom.prepare_home(Path(spawner.home_dir), user, role, exchange=EXCHANGE,
                           course_root=COURSE if role == "instructor" else None)


c.Spawner.pre_spawn_hook = _prepare
