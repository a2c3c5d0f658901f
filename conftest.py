"""Offline everywhere, for every path pytest collects (tests/, notebooks/, solutions/).

At import time (before any test module, notebook kernel or subprocess starts) the network guard in
tests/netguard/ is put first on PYTHONPATH, so every child Python process loads it as its
sitecustomize, and it is installed in this process too.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

NETGUARD = Path(__file__).resolve().parent / "tests" / "netguard"

os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(NETGUARD)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(NETGUARD)])
os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONHASHSEED="0")

_spec = importlib.util.spec_from_file_location("bloomlib_netguard", NETGUARD / "sitecustomize.py")
netguard = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(netguard)  # installs the guard in this process

