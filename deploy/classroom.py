"""The class on one server: what jupyterhub_config.py gives each user, in plain functions the tests call too.

- ``nbgrader_config(...)``: the text of a user's nbgrader_config.py. Everyone shares the course id and the
  exchange folder; a learner's submissions carry their hub name (on one server every learner runs as the same
  OS user, so nbgrader's own guess, the OS user name, would be the same for all); the instructor's names the
  course folder and runs autograde with bloomlib's integrity steps (answers that call bloomlib score 0).
- ``prepare_home(...)``: a user's home at first start: a copy of notebooks/ and exercises/ (never overwritten
  later: it holds their work), and their Jupyter config (the nbgrader extensions of their role switched on).
- ``prepare_course(...)``: the instructor's nbgrader course folder, its sources copied from solutions/ (once).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COURSE_ID = "bloom-transformers"
EXCHANGE_IN_CONTAINERS = Path("/srv/nbgrader/exchange")  # the shared volume's mount (deploy/kubernetes/)
COURSE_FOLDERS = ("notebooks", "exercises")  # what each learner gets in their home
# nbgrader's server and lab extensions per role (`make lab` turns the instructor's ones off for the venv;
# a hub user's own config turns on what their role needs, whatever the venv says)
SERVER_EXTENSIONS = {
    "instructor": ["formgrader", "assignment_list", "course_list", "validate_assignment"],
    "learner": ["assignment_list", "validate_assignment"],
}
LAB_EXTENSIONS = {
    "instructor": ["formgrader", "create-assignment", "assignment-list", "course-list", "validate-assignment"],
    "learner": ["assignment-list", "validate-assignment"],
}
ALL_LAB = sorted({e for names in LAB_EXTENSIONS.values() for e in names})
ALL_SERVER = sorted({e for names in SERVER_EXTENSIONS.values() for e in names})


def nbgrader_config(role: str, *, exchange: Path, user: str, course_root: Path | None = None) -> str:
    """Text of nbgrader_config.py for ``user`` in ``role`` ('instructor' or 'learner')."""
    if role not in SERVER_EXTENSIONS:
        raise ValueError(f"role must be 'instructor' or 'learner', not {role!r}")
    lines = ["# Written by deploy/classroom.py at each server start: edit deploy/, not this file.",
             "c = get_config()",
             f"c.CourseDirectory.course_id = {COURSE_ID!r}",
             f"c.Exchange.root = {str(exchange)!r}"]
    if role == "learner":
        lines.append(f"c.CourseDirectory.student_id = {user!r}  # one OS user for all: name the learner")
    else:
        if course_root is None:
            raise ValueError("the instructor's nbgrader config needs course_root")
        lines += [f"c.CourseDirectory.root = {str(course_root)!r}",
                  "c.CollectApp.check_owner = False  # every submission belongs to the hub's OS user here",
                  "c.Execute.timeout = 300",
                  "from bloomlib.course.integrity import nbgrader_preprocessors",
                  "c.Autograde.autograde_preprocessors = nbgrader_preprocessors()  # answers calling bloomlib: 0"]
    return "\n".join(lines) + "\n"


def jupyter_config(role: str) -> tuple[dict, dict]:
    """(jupyter_server_config.json, labconfig/page_config.json) for a user's ~/.jupyter: nbgrader's extensions
    of their role on, the others off."""
    server = {f"nbgrader.server_extensions.{e}": e in SERVER_EXTENSIONS[role] for e in ALL_SERVER}
    lab = {f"@jupyter/nbgrader:{e}": e not in LAB_EXTENSIONS[role] for e in ALL_LAB}
    return {"ServerApp": {"jpserver_extensions": server}}, {"disabledExtensions": lab}


def prepare_course(course_root: Path) -> None:
    """The instructor's nbgrader course: source/<lesson>/<lesson>.ipynb from solutions/ (first time only;
    replace them with a private course source for graded work: see deploy/README.md)."""
    for src in sorted((REPO / "solutions").glob("*.ipynb")):
        dest = course_root / "source" / src.stem / src.name
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest)


def prepare_home(home: Path, user: str, role: str, *, exchange: Path, course_root: Path | None = None) -> None:
    """A user's home: the course folders (first start only), ~/.jupyter for their role, and for the
    instructor the nbgrader course folder."""
    home.mkdir(parents=True, exist_ok=True)
    for folder in COURSE_FOLDERS:
        if not (home / folder).exists():
            shutil.copytree(REPO / folder, home / folder)
    exchange.mkdir(parents=True, exist_ok=True)
    try:
        exchange.chmod(0o777)  # nbgrader's exchange: every learner writes to its inbound folder
    except PermissionError:  # a shared volume set up by its owner (Kubernetes: deploy/kubernetes/)
        pass
    cfg = home / ".jupyter"
    (cfg / "labconfig").mkdir(parents=True, exist_ok=True)
    server, page = jupyter_config(role)
    (cfg / "jupyter_server_config.json").write_text(json.dumps(server, indent=1) + "\n")
    (cfg / "labconfig" / "page_config.json").write_text(json.dumps(page, indent=1) + "\n")
    (cfg / "nbgrader_config.py").write_text(nbgrader_config(role, exchange=exchange, user=user,
                                                            course_root=course_root))
    if role == "instructor":
        prepare_course(course_root)


def main(argv: list[str] | None = None) -> int:
    """For a container (deploy/Dockerfile, deploy/kubernetes/): prepare the home of the user the hub started,
    from the environment the hub gives every server, before jupyterhub-singleuser starts."""
    import argparse
    import os

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--home", type=Path, default=Path.home())
    p.add_argument("--user", default=os.environ.get("JUPYTERHUB_USER"))
    p.add_argument("--admin", default=os.environ.get("BLOOM_ADMIN", "teacher"))
    p.add_argument("--exchange", type=Path, default=Path(os.environ.get("BLOOM_EXCHANGE", EXCHANGE_IN_CONTAINERS)))
    args = p.parse_args(argv)
    if not args.user:
        p.error("no user: pass --user or run under JupyterHub (JUPYTERHUB_USER)")
    role = "instructor" if args.user == args.admin else "learner"
    prepare_home(args.home, args.user, role, exchange=args.exchange,
                 course_root=args.home / "course" if role == "instructor" else None)
    print(f"classroom: {args.home} ready for {args.user} ({role}), exchange {args.exchange}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
