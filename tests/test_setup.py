"""The foundation: install files agree with each other, the CLI dispatches, the network guard holds,
nbval's sanitizers are precise, and bloomlib.device behaves."""
from __future__ import annotations

import os
import random
import re
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from bloomlib import cli
from bloomlib.device import autocast, default_dtype, get_device, seed_everything

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
GUARD_MESSAGE = "network access is blocked in tests (bloomlib is offline-only)"


def _pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"constraints.txt: {line!r} is not an exact pin"
            pins[canonicalize_name(name)] = version
    return pins


def _requirements() -> list[Requirement]:
    project = PYPROJECT["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        reqs += [Requirement(r) for r in extra]
    return [r for r in reqs if canonicalize_name(r.name) != "bloomlib"]


# ------------------------------------------------------------------------------------ install files
def test_constraints_pin_every_dependency_within_pyproject_bounds():
    pins = _pins()
    for req in _requirements():
        name = canonicalize_name(req.name)
        if name == "triton":
            continue
        assert name in pins, f"{req.name} (pyproject.toml) is not pinned in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), \
            f"constraints.txt pins {req.name}=={pins[name]}, outside pyproject.toml's {req}"


def test_constraints_pin_torch_but_not_triton_or_cuda_packages():
    pins = _pins()
    assert re.fullmatch(r"\d+\.\d+\.\d+", pins["torch"]), "torch pin must carry no local tag (+cpu)"
    unpinned = [n for n in pins if n == "triton" or n.startswith(("nvidia-", "cuda-"))]
    assert not unpinned, f"CUDA builds of torch bring their own {unpinned}; do not pin them"
    assert "bloomlib" not in pins


def test_environment_yml_agrees_with_pyproject():
    yaml = pytest.importorskip("yaml")
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    deps = env["dependencies"]
    python = next(d for d in deps if isinstance(d, str) and d.startswith("python="))
    version = python.split("=", 1)[1]
    assert SpecifierSet(PYPROJECT["project"]["requires-python"]).contains(version + ".0"), python
    assert "pip" in deps
    pip_lines = next(d["pip"] for d in deps if isinstance(d, dict))
    assert "-c constraints.txt" in pip_lines
    editable = [line for line in pip_lines if line.startswith("-e .")]
    assert len(editable) == 1, pip_lines
    extras = re.fullmatch(r"-e \.\[([\w,-]+)\]", editable[0]).group(1).split(",")
    assert set(extras) <= set(PYPROJECT["project"]["optional-dependencies"]), extras


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_help_lists_every_command(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in list(cli.COMMANDS) + ["bench"]:
        assert re.search(rf"^\s+{name}\s", out, re.M), f"{name!r} missing from --help"


def test_cli_unknown_command_exits_2(capsys):
    assert cli.main(["no-such-command"]) == 2
    assert "unknown command 'no-such-command'" in capsys.readouterr().err
    assert cli.main([]) == 2
    assert cli.main(["bench", "no-such-bench"]) == 2


def test_console_script_info_prints_the_device():
    exe = Path(sys.executable).with_name("bloomlib")
    if not exe.exists():
        pytest.skip(f"no console script next to {sys.executable} (bloomlib not pip-installed here)")
    env = dict(os.environ, BLOOMLIB_DEVICE="cpu")
    proc = subprocess.run([str(exe), "info"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^device\s+cpu$", proc.stdout, re.M), proc.stdout
    assert re.search(rf"^torch\s+{re.escape(torch.__version__)}$", proc.stdout, re.M), proc.stdout


# ---------------------------------------------------------------------------------- network guard
@pytest.mark.parametrize("address", [("192.0.2.1", 80), ("2001:db8::1", 443)])
def test_guard_blocks_connections_to_other_hosts(address):
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError:
        pytest.skip(f"this machine has no {family.name} sockets")
    with sock, pytest.raises(OSError, match=re.escape(GUARD_MESSAGE)):
        sock.settimeout(2)  # if the guard failed, TEST-NET addresses time out instead of hanging
        sock.connect(address)
    with pytest.raises(OSError, match=re.escape(GUARD_MESSAGE)):
        socket.create_connection(("192.0.2.1", 80), timeout=2)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, pytest.raises(OSError, match="offline-only"):
        udp.sendto(b"x", ("192.0.2.1", 53))


def test_guard_blocks_name_lookups():
    for resolve in (lambda: socket.getaddrinfo("example.com", 443), lambda: socket.gethostbyname("pypi.org")):
        with pytest.raises(OSError, match=re.escape(GUARD_MESSAGE)):
            resolve()
    with socket.socket() as sock, pytest.raises(OSError, match="offline-only"):
        sock.settimeout(2)
        sock.connect_ex(("huggingface.co", 443))


def test_guard_allows_loopback_and_unix_sockets(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as server:
        with socket.create_connection(("localhost", server.getsockname()[1]), timeout=5) as client:
            conn, _ = server.accept()
            with conn:
                client.sendall(b"ping")
                assert conn.recv(4) == b"ping"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
        a.bind(("127.0.0.1", 0))
        b.sendto(b"pong", a.getsockname())
        assert a.recv(4) == b"pong"
    if hasattr(socket, "AF_UNIX"):
        path = str(tmp_path / "s")
        with socket.socket(socket.AF_UNIX) as server, socket.socket(socket.AF_UNIX) as client:
            server.bind(path)
            server.listen()
            client.connect(path)


def test_guard_runs_in_child_processes():
    """Notebook kernels, servers and CLI runs are child processes: they get the guard via PYTHONPATH."""
    code = """if True:
        import socket
        with socket.create_server(("127.0.0.1", 0)) as s:
            socket.create_connection(s.getsockname(), timeout=5).close()
        print("loopback ok")
        socket.create_connection(("192.0.2.1", 80), timeout=2)
    """
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "loopback ok", proc.stderr
    assert proc.returncode != 0 and GUARD_MESSAGE in proc.stderr, proc.stderr


def test_offline_environment_for_children():
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"
    assert os.environ["PYTHONHASHSEED"] == "0"


# ------------------------------------------------------------------------------------ nbval sanitize
def test_sanitizers_mask_noise_and_keep_numbers():
    from nbval.plugin import get_sanitize_patterns  # nbval's own reader of the file

    patterns = get_sanitize_patterns((REPO / "tests" / "sanitize.cfg").read_text())
    assert len(patterns) >= 5

    def sanitize(text: str) -> str:
        for regex, replace in patterns:
            text = re.sub(regex, replace, text)
        return text

    noisy = {
        "<bloomlib.model.GPT object at 0x7f3a2c1b4d90>": "0x7f3a2c1b4d90",
        " 40%|####  | 4/10 [00:01<00:02,  3.10it/s]\r100%|######| 10/10 [00:03<00:00,  3.30it/s]": "3.30it/s",
        "Wall time: 1.23 s": "1.23", "step 10: 12ms": "12ms", "decode: 1,234.5 tok/s": "1,234.5",
        "CPU times: user 1.2 s, sys: 3 ms": "1.2 s", "saved to /tmp/tmpab12cd/model.safetensors": "tmpab12cd",
        "1.23 ms ± 45.6 µs per loop (mean ± std. dev. of 7 runs, 1,000 loops each)": "1,000",
    }
    for text, noise in noisy.items():
        assert noise not in sanitize(text), f"{text!r} -> {sanitize(text)!r}"
    kept = ["loss 2.3456 after 100 steps", "d_model 512, 8 heads, 6 layers, 3 sequences", "tensor([0.1200, 3.4500])",
            "speedup 3.20x", "mask 0xff", "perplexity 12.5", "cuda:0 | cpu"]
    for text in kept:
        assert sanitize(text) == text


# ------------------------------------------------------------------------------------------- device
def test_get_device_default_order_and_override(monkeypatch):
    monkeypatch.delenv("BLOOMLIB_DEVICE", raising=False)
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    expected = "cuda" if torch.cuda.is_available() else "mps" if mps else "cpu"
    assert get_device().type == expected
    monkeypatch.setenv("BLOOMLIB_DEVICE", "cpu")
    assert get_device() == torch.device("cpu")
    assert get_device("cpu") == torch.device("cpu")


def test_get_device_rejects_bad_names(monkeypatch):
    with pytest.raises(ValueError, match="banana"):
        get_device("banana")
    monkeypatch.setenv("BLOOMLIB_DEVICE", "tpu")
    with pytest.raises(ValueError, match="BLOOMLIB_DEVICE"):
        get_device()
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="cuda is not available"):
            get_device("cuda")


def test_cpu_dtype_and_autocast_keep_float32():
    assert default_dtype("cpu") == torch.float32
    a = torch.randn(4, 4)
    with autocast(torch.device("cpu")):
        out = a @ a
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.mm(a.double(), a.double()).float())


@pytest.mark.gpu
def test_cuda_autocast_runs_matmuls_in_bf16():
    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    assert default_dtype("cuda") == torch.bfloat16
    a = torch.randn(64, 64, device="cuda")
    with autocast("cuda"):
        out = a @ a
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), a @ a, atol=0.5, rtol=0.05)


def test_seed_everything_repeats_every_stream():
    def draws(seed: int):
        gen = seed_everything(seed)
        return random.random(), np.random.rand(), torch.rand(3), torch.rand(3, generator=gen)

    first, again, other = draws(1234), draws(1234), draws(4321)
    assert first[0] == again[0] and first[1] == again[1]
    torch.testing.assert_close(first[2], again[2])
    torch.testing.assert_close(first[3], torch.rand(3, generator=torch.Generator().manual_seed(1234)))
    assert first[0] != other[0] and not torch.equal(first[2], other[2])
    for bad in (-1, 1.5, "7"):
        with pytest.raises(ValueError, match="seed"):
            seed_everything(bad)


@pytest.mark.slow
def test_suite_collects_nbval_only_on_lessons_and_solutions():
    """`pytest` with no arguments (what `make test` runs): no exercise notebook, no test-data notebook."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = {line.split("::", 1)[0] for line in proc.stdout.splitlines() if "::" in line}
    notebooks = {f for f in files if f.endswith(".ipynb")}
    assert all(f.startswith(("notebooks/", "solutions/")) for f in notebooks), notebooks
    assert "tests/test_setup.py" in files


def test_run_notebooks_executes_in_place_under_the_guard(tmp_path, capsys):
    """`make notebooks` runner: outputs written back, kernel is this Python, network blocked inside."""
    import nbformat

    sys.path.insert(0, str(REPO / "tests" / "tools"))
    try:
        import run_notebooks
    finally:
        sys.path.pop(0)
    assert run_notebooks.main([str(tmp_path)]) == 0  # no notebooks: nothing to do, not an error
    assert "nothing to run" in capsys.readouterr().out

    code = ["import sys, socket; print(sys.executable)",
            "try:\n    socket.create_connection(('192.0.2.1', 80), timeout=2)\nexcept OSError as e:\n    print(e)"]
    path = tmp_path / "probe.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in code]), path)
    assert run_notebooks.main([str(path)]) == 0
    assert re.search(r"probe\.ipynb:\s+[\d.]+ s", capsys.readouterr().out)
    outputs = [cell.outputs[0]["text"].strip() for cell in nbformat.read(path, as_version=4).cells]
    assert outputs[0] == sys.executable
    assert GUARD_MESSAGE in outputs[1]
