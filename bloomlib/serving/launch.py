"""`bloomlib serve` as a child process that a notebook or a test starts, reads and always stops.

    with ServerProcess("bloomlib/assets/course_model", kv_block_size=8) as server:
        client = openai.OpenAI(base_url=server.openai_base_url, api_key="none")
        ...
        server.metrics()["bloomlib_kv_utilization"]

The server runs `python -m bloomlib.cli serve` on a free loopback port; `start()` returns once /health answers.
Its output (stdout and stderr together) is drained by a thread into the last `TAIL_LINES` lines, so a chatty
server can never block on a full pipe, and a server that fails to start is reported with what it printed.
`stop()` terminates it (SIGTERM, then SIGKILL after a timeout), reaps it and closes the pipe; it is idempotent,
and also runs when the object is garbage-collected or the interpreter exits.
"""
from __future__ import annotations

import collections
import http.client
import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import weakref
from pathlib import Path

TAIL_LINES = 200
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback never goes through a proxy


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it; it may be taken again before it is used)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def parse_prometheus(text: str) -> dict[str, float]:
    """Prometheus text exposition -> {sample name (with its {labels} if any): value}; comments and blank lines
    are skipped, a trailing timestamp is dropped, NaN and +Inf/-Inf are read as floats."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "{" in line:  # name{label="v",...} value [timestamp]
            head, _, rest = line.rpartition("}")
            name, fields = head + "}", rest.split()
        else:
            name, *fields = line.split()
        if not fields:
            raise ValueError(f"metrics line {line!r} has no value")
        out[name] = float(fields[0])
    return out


def _positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
        raise ValueError(f"{name} must be a positive number, got {value!r}")


def _drain(pipe, tail: collections.deque) -> None:
    """Read the server's output to its end, keeping the last lines (the pipe never fills up)."""
    try:
        for line in pipe:
            tail.append(line)
    except (ValueError, OSError):  # closed while reading (the interpreter is exiting)
        pass


def _terminate(proc: subprocess.Popen, reader: threading.Thread | None, timeout: float) -> int:
    """SIGTERM, wait up to `timeout` s, then SIGKILL; reap it, let the reader reach the pipe's end, close the
    pipe. Returns the exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if reader is not None:
        reader.join(timeout=timeout)
    if proc.stdout is not None:
        proc.stdout.close()
    return proc.returncode


class ServerProcess:
    """`bloomlib serve --checkpoint FOLDER` on 127.0.0.1:<free port>, as a context manager.

    checkpoint: a checkpoint folder (default: the course model). kv_block_size, num_kv_blocks, max_num_seqs:
    the EngineConfig options the CLI takes (None = its defaults). blocklist: the safety filter's words
    ("" turns it off; None = the default list). model_name: the name clients use (default: the folder's name).
    threads: OMP_NUM_THREADS for the server (None = inherited). env: more environment variables.
    startup_timeout: seconds to wait for /health before giving up (TimeoutError with the server's output).
    """

    def __init__(self, checkpoint: str | Path | None = None, *, kv_block_size: int | None = None,
                 num_kv_blocks: int | None = None, max_num_seqs: int | None = None, blocklist: str | None = None,
                 model_name: str | None = None, max_body_bytes: int | None = None, threads: int | None = None,
                 env: dict[str, str] | None = None, startup_timeout: float = 120.0, host: str = "127.0.0.1") -> None:
        if checkpoint is None:
            from bloomlib.model import COURSE_MODEL

            checkpoint = COURSE_MODEL
        folder = Path(checkpoint)
        if not (folder / "config.json").is_file():
            raise ValueError(f"checkpoint must be a checkpoint folder (with config.json), got {str(checkpoint)!r}")
        flags = {"kv_block_size": kv_block_size, "num_kv_blocks": num_kv_blocks, "max_num_seqs": max_num_seqs,
                 "max_body_bytes": max_body_bytes}  # each passed as --kv-block-size etc. when not None
        for name, value in (flags | {"threads": threads}).items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise ValueError(f"{name} must be a positive int or None, got {value!r}")
        _positive("startup_timeout", startup_timeout)
        if blocklist is not None and not isinstance(blocklist, str):
            raise ValueError(f"blocklist must be a comma-separated str or None, got {type(blocklist).__name__}")
        self.checkpoint, self.host, self.startup_timeout = folder, host, startup_timeout
        self.model_name = model_name or folder.resolve().name
        self.port = free_port(host)
        self.argv = [sys.executable, "-m", "bloomlib.cli", "serve", "--checkpoint", str(folder),
                     "--host", host, "--port", str(self.port), "--model-name", self.model_name]
        for name, value in (flags | {"blocklist": blocklist}).items():
            if value is not None:
                self.argv += ["--" + name.replace("_", "-"), str(value)]
        self.env = {**os.environ, **(env or {})}
        if threads is not None:
            self.env["OMP_NUM_THREADS"] = str(threads)
        self.proc: subprocess.Popen | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._reader: threading.Thread | None = None
        self._finalizer: weakref.finalize | None = None

    # ---- addresses
    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        """What `openai.OpenAI(base_url=...)` takes."""
        return self.base_url + "/v1"

    @property
    def output_tail(self) -> str:
        """The last lines the server printed (stdout and stderr together)."""
        return "".join(self._tail)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # ---- life cycle
    def start(self) -> "ServerProcess":
        """Start the server and wait until /health answers. Returns self. RuntimeError if it exits first,
        TimeoutError if it does not answer within startup_timeout; both quote its output, and stop it."""
        if self.proc is not None:
            raise RuntimeError("this ServerProcess was started already; make a new one to start another server")
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, env=self.env, text=True, errors="replace")
        self._reader = threading.Thread(target=_drain, args=(self.proc.stdout, self._tail), daemon=True,
                                        name=f"bloomlib-serve-{self.port}-output")
        self._reader.start()
        # stopped also when this object is garbage-collected or the interpreter exits (a notebook that forgot)
        self._finalizer = weakref.finalize(self, _terminate, self.proc, self._reader, 5.0)
        deadline = time.monotonic() + self.startup_timeout
        while not self._healthy():
            if self.proc.poll() is not None:
                code = self.stop()
                raise RuntimeError(f"bloomlib serve exited with code {code} before /health answered; "
                                   f"its output ended with:\n{self.output_tail}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"bloomlib serve did not answer {self.base_url}/health within "
                                   f"{self.startup_timeout} s; its output ended with:\n{self.output_tail}")
            time.sleep(0.1)
        return self

    def stop(self, timeout: float = 10.0) -> int | None:
        """Terminate the server (kill it after `timeout` s), reap it, close its pipe. Idempotent: returns the exit
        code (None if it never started)."""
        if self.proc is None:
            return None
        if self._finalizer is not None:
            self._finalizer.detach()
        return _terminate(self.proc, self._reader, timeout)

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- HTTP
    def get(self, path: str, timeout: float = 5.0) -> str:
        """GET base_url + path -> the body as text (urllib.error.HTTPError for a 4xx/5xx answer)."""
        with _NO_PROXY.open(self.base_url + path, timeout=timeout) as r:
            return r.read().decode("utf-8")

    def _healthy(self) -> bool:
        try:
            return json.loads(self.get("/health", timeout=1.0)).get("status") == "ok"
        except (OSError, ValueError, http.client.HTTPException):  # not listening yet (URLError is an OSError)
            return False

    def health(self) -> dict:
        return json.loads(self.get("/health"))

    def metrics(self) -> dict[str, float]:
        """/metrics (Prometheus text) as {name: value}, e.g. "bloomlib_running", "bloomlib_kv_utilization"."""
        return parse_prometheus(self.get("/metrics"))

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped" if self.proc is not None else "not started"
        return f"ServerProcess({self.model_name!r} at {self.base_url}, {state})"
