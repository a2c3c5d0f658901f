"""bloomlib.serving.launch.ServerProcess: starts `bloomlib serve`, reads it, and leaves nothing behind when stopped."""
import os
import socket
import sys

import pytest
import torch

from bloomlib import GPT, GPTConfig
from bloomlib.checkpoint import save_checkpoint
from bloomlib.serving.launch import ServerProcess, parse_prometheus
from bloomlib.tokenizer import ByteBPETokenizer

# answers /health on the port given as argv[1] and ignores SIGTERM: only a SIGKILL stops it
STUBBORN = """
import http.server, signal, sys
signal.signal(signal.SIGTERM, signal.SIG_IGN)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b'{"status": "ok"}')
    def log_message(self, *a): pass
print("stubborn up", flush=True)
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt") / "launch_model"
    tok = ByteBPETokenizer.train("The quick brown fox jumps over the lazy dog; the cat sat on the mat. " * 4, 270)
    torch.manual_seed(0)
    save_checkpoint(folder, GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2,
                                          d_model=32)), tok)
    return folder


def _gone(pid: int) -> bool:
    """pid is no child of ours any more (reaped) and no process of that id is running."""
    try:
        os.waitpid(pid, os.WNOHANG)
        return False  # still our (unreaped) child
    except ChildProcessError:
        pass
    psutil = pytest.importorskip("psutil")
    return pid not in [c.pid for c in psutil.Process().children(recursive=True)] and (
        not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)


def _port_free(port: int) -> bool:
    """A new server can listen on the port (SO_REUSEADDR, as servers bind: connections the old one closed may
    linger in TIME_WAIT, but nothing listens)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
            return True
        except OSError:
            return False


def test_parse_prometheus_agrees_with_prometheus_client():
    parser = pytest.importorskip("prometheus_client.parser")
    text = ("# HELP bloomlib_running sequences\n# TYPE bloomlib_running gauge\nbloomlib_running 3.0\n\n"
            "bloomlib_kv_utilization 0.125\nhttp_requests_total{method=\"get\",code=\"200\"} 1027 1395066363000\n"
            "bloomlib_nan NaN\nbloomlib_inf +Inf\nbloomlib_small -1.5e-3\n")
    ours = parse_prometheus(text)
    theirs = {}
    for family in parser.text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in s.labels.items())
            theirs[s.name + (f"{{{labels}}}" if labels else "")] = s.value
    assert ours.keys() == theirs.keys()
    for k, v in theirs.items():
        assert ours[k] == v or (v != v and ours[k] != ours[k])  # NaN == NaN
    with pytest.raises(ValueError, match="has no value"):
        parse_prometheus("lonely_name\n")


@pytest.mark.slow
def test_serves_reports_metrics_and_leaves_nothing_behind(folder):
    openai = pytest.importorskip("openai")
    pytest.importorskip("fastapi")
    from bloomlib.checkpoint import load_checkpoint
    from bloomlib.serving import EngineConfig, LLMEngine

    with ServerProcess(folder, kv_block_size=4, num_kv_blocks=40, threads=1) as server:
        pid, port = server.proc.pid, server.port
        assert server.base_url == f"http://127.0.0.1:{port}" and server.openai_base_url.endswith(":%d/v1" % port)
        assert server.health() == {"status": "ok"} and server.running
        client = openai.OpenAI(base_url=server.openai_base_url, api_key="none", max_retries=0)
        out = client.completions.create(model="launch_model", prompt="the cat", max_tokens=5, temperature=0,
                                        extra_body={"ignore_eos": True})
        assert out.usage.completion_tokens == 5
        m = server.metrics()
        ckpt = load_checkpoint(folder)
        engine = LLMEngine(ckpt.model, ckpt.tokenizer, EngineConfig(kv_block_size=4, num_kv_blocks=40))
        assert {f"bloomlib_{k}" for k in engine.metrics()} <= m.keys()
        assert m["bloomlib_kv_blocks_total"] == 40 and m["bloomlib_generated_tokens"] == 5
        children = [c.pid for c in pytest.importorskip("psutil").Process(pid).children(recursive=True)]
    assert not server.running and server.proc.stdout.closed
    assert all(_gone(p) for p in [pid] + children) and _port_free(port)
    assert server.stop() == server.proc.returncode  # idempotent


def test_a_server_that_exits_early_is_reported_with_its_output(folder):
    server = ServerProcess(folder, startup_timeout=30)
    server.argv = [sys.executable, "-c", "import sys; print('no model here', file=sys.stderr); sys.exit(3)"]
    with pytest.raises(RuntimeError, match=r"exited with code 3 before /health(.|\n)*no model here"):
        server.start()
    assert _gone(server.proc.pid) and server.proc.stdout.closed


def test_a_server_that_never_answers_times_out_with_its_output(folder):
    server = ServerProcess(folder, startup_timeout=1.0)
    server.argv = [sys.executable, "-c", "import time; print('still loading', flush=True); time.sleep(600)"]
    with pytest.raises(TimeoutError, match=r"did not answer .*/health within 1.0 s(.|\n)*still loading"):
        server.start()
    assert _gone(server.proc.pid)


def test_stop_kills_a_server_that_ignores_sigterm(folder):
    server = ServerProcess(folder, startup_timeout=30)
    server.argv = [sys.executable, "-c", STUBBORN, str(server.port)]
    with server:
        assert server.health() == {"status": "ok"}
        assert server.stop(timeout=0.5) == -9  # SIGTERM ignored: killed
    assert _gone(server.proc.pid) and _port_free(server.port) and "stubborn up" in server.output_tail


def test_bad_arguments_raise_value_error(folder, tmp_path):
    with pytest.raises(ValueError, match="checkpoint must be a checkpoint folder"):
        ServerProcess(tmp_path / "nothing")
    for kwargs, name in [({"kv_block_size": 0}, "kv_block_size"), ({"num_kv_blocks": 2.5}, "num_kv_blocks"),
                         ({"max_num_seqs": True}, "max_num_seqs"), ({"startup_timeout": -1}, "startup_timeout"),
                         ({"blocklist": ["a"]}, "blocklist"), ({"threads": 0}, "threads")]:
        with pytest.raises(ValueError, match=name):
            ServerProcess(folder, **kwargs)
    server = ServerProcess(folder)
    assert server.stop() is None and not server.running  # never started: nothing to stop
    assert "--kv-block-size" not in server.argv and server.argv[-2:] == ["--model-name", "launch_model"]
