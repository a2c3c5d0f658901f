"""Re-execute notebooks in place and print how long each took (`make notebooks`).

    python tests/tools/run_notebooks.py [DIR_OR_NOTEBOOK ...]     # default: notebooks solutions

Each notebook runs with its own folder as working directory, in a kernel of this Python
(so the project's .venv), under the test network guard. Exits 1 if any notebook fails.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

REPO = Path(__file__).resolve().parents[2]
NETGUARD = REPO / "tests" / "netguard"


def find(args: list[str]) -> list[Path]:
    paths: list[Path] = []
    for arg in args or ["notebooks", "solutions"]:
        p = Path(arg)
        paths += sorted(p.glob("*.ipynb")) if p.is_dir() else [p] if p.suffix == ".ipynb" and p.exists() else []
    return paths


def run(path: Path, timeout: int) -> float:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    client.execute()  # jupyter_client starts "python3" kernels with sys.executable, i.e. this venv
    elapsed = time.perf_counter() - start
    nbformat.write(nb, path)
    return elapsed


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    timeout = int(os.environ.get("NOTEBOOK_TIMEOUT", "1800"))
    notebooks = find(argv)
    if not notebooks:
        print(f"no notebooks found in {' '.join(argv or ['notebooks', 'solutions'])}; nothing to run")
        return 0
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(NETGUARD)]
    os.environ["PYTHONPATH"] = os.pathsep.join([str(NETGUARD), *paths])  # kernels load the network guard
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONHASHSEED="0")
    failed = []
    for path in notebooks:
        try:
            print(f"{path}: {run(path, timeout):7.1f} s", flush=True)
        except CellExecutionError as e:
            print(f"{path}: FAILED\n{e}", file=sys.stderr, flush=True)
            failed.append(path)
    if failed:
        print(f"{len(failed)} notebook(s) failed: {' '.join(map(str, failed))}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
