"""`bloomlib serve` in a subprocess on a free loopback port (bloomlib.serving.launch.ServerProcess), driven by the
official `openai` client and httpx."""
import asyncio
import time

import httpx
import pytest
import torch

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

from bloomlib import GPT, GPTConfig  # noqa: E402
from bloomlib.checkpoint import save_checkpoint  # noqa: E402
from bloomlib.serving import LLM, RequestOutput, SamplingParams  # noqa: E402
from bloomlib.serving.launch import ServerProcess  # noqa: E402
from bloomlib.serving.protocol import APIError, GenerationRequest  # noqa: E402
from bloomlib.serving.sequence import ParamError  # noqa: E402
from bloomlib.serving.server import AsyncEngine  # noqa: E402
from bloomlib.tokenizer import ByteBPETokenizer  # noqa: E402

TEXT = "The quick brown fox jumps over the lazy dog. Attention is all you need; the cat sat on the mat. " * 4
MAX_BODY = 4096


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt") / "tiny_model"
    tok = ByteBPETokenizer.train(TEXT, 300)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=128, n_layer=2, n_head=4, n_kv_head=2,
                          d_model=64, pos_encoding="rope"))
    save_checkpoint(folder, model, tok)
    with ServerProcess(folder, max_body_bytes=MAX_BODY, blocklist="", threads=1, startup_timeout=90) as proc:
        yield {"base": proc.base_url, "folder": folder, "tok": tok, "name": "tiny_model", "process": proc}


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server["base"] + "/v1", api_key="none", max_retries=0)


def metrics(server) -> dict[str, float]:
    return server["process"].metrics()


def test_models_health_metrics(server, client):
    assert [m.id for m in client.models.list().data] == [server["name"]]
    assert httpx.get(server["base"] + "/health").json()["status"] == "ok"
    m = metrics(server)
    for key in ("bloomlib_queue_length", "bloomlib_kv_utilization", "bloomlib_prefix_cache_hit_rate",
                "bloomlib_tokens_per_s"):
        assert key in m


def test_completion_streamed_equals_non_streamed_and_offline(server, client):
    prompt = "The quick brown"
    full = client.completions.create(model=server["name"], prompt=prompt, max_tokens=20, temperature=0,
                                     extra_body={"ignore_eos": True})
    chunks = list(client.completions.create(model=server["name"], prompt=prompt, max_tokens=20, temperature=0,
                                            stream=True, stream_options={"include_usage": True},
                                            extra_body={"ignore_eos": True}))
    streamed = "".join(c.choices[0].text for c in chunks if c.choices)
    assert streamed == full.choices[0].text
    assert full.choices[0].finish_reason == "length"
    n_prompt = len(server["tok"].encode(prompt))
    assert (full.usage.prompt_tokens, full.usage.completion_tokens, full.usage.total_tokens) == (
        n_prompt, 20, n_prompt + 20)
    assert chunks[-1].usage.completion_tokens == 20 and chunks[-1].usage.prompt_tokens == n_prompt
    offline = LLM(str(server["folder"]), safety_filter=None).generate(
        prompt, SamplingParams(temperature=0, max_tokens=20, ignore_eos=True))[0]
    assert offline.text == full.choices[0].text


def test_chat_completion_streamed_equals_non_streamed(server, client):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "the cat"}]
    full = client.chat.completions.create(model=server["name"], messages=messages, max_tokens=12, temperature=0)
    stream = client.chat.completions.create(model=server["name"], messages=messages, max_tokens=12,
                                            temperature=0, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert full.choices[0].message.role == "assistant"
    assert text == full.choices[0].message.content
    assert 0 < full.usage.completion_tokens <= 12


def test_64_concurrent_clients_complete(server):
    async def main():
        aclient = openai.AsyncOpenAI(base_url=server["base"] + "/v1", api_key="none", max_retries=0, timeout=120)
        tasks = [aclient.completions.create(model=server["name"], prompt=f"the {i} dog", max_tokens=8,
                                            temperature=0.8, seed=i) for i in range(64)]
        return await asyncio.gather(*tasks)

    results = asyncio.run(main())
    assert len(results) == 64
    assert all(r.choices[0].finish_reason in ("stop", "length") and r.usage.completion_tokens >= 1 for r in results)
    m = metrics(server)
    assert m["bloomlib_running"] == 0 and m["bloomlib_kv_blocks_used"] == 0


def test_client_disconnect_cancels_request(server):
    before = metrics(server)["bloomlib_generated_tokens"]
    body = {"model": server["name"], "prompt": "the", "max_tokens": 120, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", server["base"] + "/v1/completions", json=body, timeout=30) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                break  # read one event, then hang up
    for _ in range(100):
        m = metrics(server)
        if m["bloomlib_running"] == 0 and m["bloomlib_waiting"] == 0:
            break
        time.sleep(0.05)
    assert m["bloomlib_running"] == 0 and m["bloomlib_kv_blocks_used"] == 0
    assert m["bloomlib_generated_tokens"] - before < 120


@pytest.mark.parametrize("body,status,param", [
    (b"{not json", 400, None),
    (b"[1, 2]", 400, None),
    ({"model": "tiny_model"}, 400, "prompt"),
    ({"prompt": 5}, 400, "prompt"),
    ({"prompt": "hi", "max_tokens": "ten"}, 400, "max_tokens"),
    ({"prompt": "hi", "temperature": "hot"}, 400, "temperature"),
    ({"prompt": "hi", "max_tokens": 0}, 400, "max_tokens"),
    ({"prompt": "hi", "max_tokens": -3}, 400, "max_tokens"),
    ({"prompt": "hi", "max_tokens": 1000}, 400, "max_tokens"),
    ({"prompt": "hi", "temperature": -0.5}, 400, "temperature"),
    ({"prompt": "hi", "top_p": 0}, 400, "top_p"),
    ({"prompt": "hi", "top_p": 1.5}, 400, "top_p"),
    ({"prompt": "hi", "model": "gpt-4"}, 404, "model"),
    ({"prompt": "the cat " * 100}, 400, "prompt"),
    ({"prompt": "x" * (MAX_BODY + 10)}, 413, None),
    ({"prompt": "hi", "stream": "yes"}, 400, "stream"),
    ({"prompt": "hi", "stream_options": "yes", "stream": True}, 400, "stream_options"),
    ({"prompt": "hi", "stream_options": {"include_usage": "yes"}, "stream": True}, 400,
     "stream_options.include_usage"),
    ({"prompt": "hi", "max_tokens": 1000, "stream": True}, 400, "max_tokens"),  # refused before streaming
    ({"prompt": "hi", "max_tokens": True}, 400, "max_tokens"),
    ({"prompt": "hi", "max_completion_tokens": "ten"}, 400, "max_completion_tokens"),
    ({"prompt": "hi", "max_completion_tokens": 1000}, 400, "max_completion_tokens"),
    ({"prompt": "hi", "top_p": "all"}, 400, "top_p"),
    ({"prompt": "hi", "top_k": 1.5}, 400, "top_k"),
    ({"prompt": "hi", "top_k": 0}, 400, "top_k"),
    ({"prompt": "hi", "seed": "s"}, 400, "seed"),
    ({"prompt": "hi", "stop": 5}, 400, "stop"),
    ({"prompt": "hi", "stop": [""]}, 400, "stop"),
    ({"prompt": "hi", "ignore_eos": "no"}, 400, "ignore_eos"),
    ({"prompt": "hi", "n": 2}, 400, "n"),
    ({"prompt": []}, 400, "prompt"),
    ({"prompt": [1, 10**6]}, 400, "prompt"),
    ({"prompt": [True]}, 400, "prompt"),
])
def test_bad_requests_get_openai_shaped_4xx_and_server_keeps_serving(server, body, status, param):
    url = server["base"] + "/v1/completions"
    r = (httpx.post(url, content=body, headers={"content-type": "application/json"}) if isinstance(body, bytes)
         else httpx.post(url, json=body))
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert isinstance(err["message"], str) and err["message"] and "type" in err
    if param is not None:
        assert err["param"] == param
    assert httpx.post(url, json={"prompt": "hi", "max_tokens": 2}).status_code == 200


def test_bad_chat_request_and_openai_client_errors(server, client):
    r = httpx.post(server["base"] + "/v1/chat/completions", json={"messages": "hello"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="hi", max_tokens=2)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=server["name"], prompt="hi", max_tokens=2, temperature=-1)


@pytest.mark.parametrize("path,body,param,code", [
    ("/v1/completions", {"prompt": "hi", "max_tokens": 1000}, "max_tokens", "context_length_exceeded"),
    ("/v1/completions", {"prompt": "the cat " * 100}, "prompt", "context_length_exceeded"),
    ("/v1/completions", {"prompt": 5}, "prompt", "invalid_type"),
    ("/v1/completions", {"prompt": "hi", "temperature": "hot"}, "temperature", "invalid_type"),
    ("/v1/completions", {}, "prompt", "missing_required_parameter"),
    ("/v1/completions", {"prompt": "hi", "model": "gpt-4"}, "model", "model_not_found"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "the cat " * 100}]}, "messages",
     "context_length_exceeded"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "top_p": 2}, "top_p", None),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "stream": 1}, "stream",
     "invalid_type"),
])
def test_error_param_and_code(server, path, body, param, code):
    r = httpx.post(server["base"] + path, json=body)
    assert r.status_code in (400, 404), r.text
    err = r.json()["error"]
    assert (err["param"], err["code"], err["type"]) == (param, code, "invalid_request_error")


def test_sampling_params_errors_name_their_field():
    for kwargs, param in [({"temperature": "hot"}, "temperature"), ({"temperature": -1}, "temperature"),
                          ({"top_p": 0}, "top_p"), ({"top_k": True}, "top_k"), ({"max_tokens": 0}, "max_tokens"),
                          ({"stop": [3]}, "stop"), ({"seed": 1.5}, "seed"), ({"ignore_eos": 1}, "ignore_eos")]:
        with pytest.raises(ParamError) as e:
            SamplingParams(**kwargs)
        assert e.value.param == param and isinstance(e.value, ValueError)
    assert SamplingParams(top_p=1).top_p is None and SamplingParams(stop="x").stop == ["x"]


class FlakyEngine:
    """Finishes every request in one step, except that its first step raises."""

    def __init__(self):
        self.pending, self.steps = {}, 0

    def add_request(self, prompt_ids, params, request_id):
        self.pending[request_id] = prompt_ids

    def abort(self, request_id):
        self.pending.pop(request_id, None)

    def has_unfinished(self):
        return bool(self.pending)

    def step(self):
        self.steps += 1
        if self.steps == 1:
            raise RuntimeError("boom")
        outs = [RequestOutput(rid, [1], "x", True, "length", len(ids), 1, [1], "x")
                for rid, ids in self.pending.items()]
        self.pending.clear()
        return outs


def test_a_failing_step_fails_its_requests_and_the_engine_keeps_serving():
    async def main():
        core = AsyncEngine(FlakyEngine())
        with pytest.raises(APIError) as e:
            await core.add(GenerationRequest([1], SamplingParams(), "m")).get()
        assert e.value.status == 500 and e.value.type == "server_error"
        out = await core.add(GenerationRequest([1], SamplingParams(), "m")).get()
        core.shutdown()
        return out

    assert asyncio.run(main()).finished
