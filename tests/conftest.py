"""Test-wide hooks: `gpu` tests skip without CUDA; "no tests collected" is not a failure.

The offline setup (network guard, offline flags) lives in the repository's root conftest.py, so it
also applies when pytest is pointed at a single notebook.
"""
from __future__ import annotations

import os
import tempfile

import pytest

# Every session starts from an empty Triton cache (kernels compile from scratch), so that a kernel that only
# builds from a warm cache cannot pass here. Set at conftest import, before any test imports triton; the
# processes the tests start inherit it. The directory goes when the session ends.
_TRITON_CACHE = tempfile.TemporaryDirectory(prefix="triton-cache-")
os.environ["TRITON_CACHE_DIR"] = _TRITON_CACHE.name


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Unit tests use tiny shapes: one intra-op thread avoids OpenMP threads spin-waiting for a busy
    core (up to 100x slower on a shared 2-core machine). Notebooks and subprocesses are unaffected."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# nbval runs notebooks/ and solutions/ only: notebooks used as test data under tests/ are not lessons
collect_ignore_glob = ["*.ipynb"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "browser: drives JupyterLab in headless Chromium (skips without "
                                       "/usr/bin/chromium; fails without it under CI=true)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not any(item.get_closest_marker("gpu") for item in items):
        return
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs CUDA (torch.cuda.is_available() is False)")
        for item in items:
            if item.get_closest_marker("gpu"):
                item.add_marker(skip)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # "no tests collected" (exit 5, e.g. a -k or -m that selects nothing) is not a failure
    if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        session.exitstatus = pytest.ExitCode.OK
