"""Test-wide setup: offline everywhere, deterministic hashing, `gpu` tests skip without CUDA.

At import time (before any test module, notebook kernel or subprocess starts) the network guard
in tests/netguard/ is put first on PYTHONPATH, so every child Python process loads it as its
sitecustomize, and it is installed in this process too.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

NETGUARD = Path(__file__).resolve().parent / "netguard"

os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(NETGUARD)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(NETGUARD)])
os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONHASHSEED="0")

_spec = importlib.util.spec_from_file_location("bloomlib_netguard", NETGUARD / "sitecustomize.py")
netguard = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(netguard)  # installs the guard in this process

# nbval runs notebooks/ and solutions/ only: notebooks used as test data under tests/ are not lessons
collect_ignore_glob = ["*.ipynb"]


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
