"""`bloomlib serve`: an OpenAI-compatible HTTP server for a bloomlib checkpoint (FastAPI + uvicorn).

    bloomlib serve --checkpoint bloomlib/assets/course_model --port 8000
    curl localhost:8000/v1/completions -d '{"model": "course_model", "prompt": "The ", "max_tokens": 20}'

One background thread owns the engine and steps it; HTTP handlers hand it requests through a queue and read
their tokens back through per-request asyncio queues. A client that disconnects has its request cancelled.
Endpoints: /v1/completions, /v1/chat/completions (both with "stream": true as server-sent events),
/v1/models, /health, /metrics (Prometheus text).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import queue
import threading
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from bloomlib.serving.engine import LLMEngine
from bloomlib.serving.sequence import RequestOutput, SafetyFilter, SamplingParams


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type_: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_

    def response(self) -> JSONResponse:
        return JSONResponse({"error": {"message": self.message, "type": self.type, "param": self.param,
                                       "code": self.code}}, status_code=self.status)


class AsyncEngine:
    """Runs LLMEngine.step() in one background thread; requests and cancellations arrive through a queue."""

    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        self.commands: queue.Queue = queue.Queue()
        self.streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="bloomlib-engine", daemon=True)
        self.thread.start()

    def submit(self, prompt_ids: list[int], params: SamplingParams) -> tuple[str, asyncio.Queue]:
        rid, q = uuid.uuid4().hex, asyncio.Queue()
        self.streams[rid] = (asyncio.get_running_loop(), q)
        self.commands.put(("add", rid, prompt_ids, params))
        return rid, q

    def abort(self, rid: str) -> None:
        self.commands.put(("abort", rid))

    def _deliver(self, rid: str, item) -> None:
        loop, q = self.streams.get(rid, (None, None))
        if loop is not None:
            loop.call_soon_threadsafe(q.put_nowait, item)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:  # block while idle, drain without blocking while busy
                cmd = self.commands.get(timeout=None if not self.engine.has_unfinished() else 0)
            except queue.Empty:
                cmd = None
            while cmd is not None:
                if cmd[0] == "add":
                    try:
                        self.engine.add_request(cmd[2], cmd[3], request_id=cmd[1])
                    except ValueError as e:
                        self._deliver(cmd[1], e)
                        self.streams.pop(cmd[1], None)
                elif cmd[0] == "abort":
                    self.engine.abort(cmd[1])
                    self.streams.pop(cmd[1], None)
                else:
                    return
                try:
                    cmd = self.commands.get_nowait()
                except queue.Empty:
                    cmd = None
            if self.engine.has_unfinished():
                try:
                    outputs = self.engine.step()
                except Exception as e:  # keep serving: fail the running requests, not the server
                    for rid in list(self.engine.seqs):
                        self._deliver(rid, e)
                        self.engine.abort(rid)
                    continue
                for out in outputs:
                    self._deliver(out.request_id, out)
                    if out.finished:
                        self.streams.pop(out.request_id, None)

    def shutdown(self) -> None:
        self._stop.set()
        self.commands.put(("stop",))


def chat_prompt(messages: list[dict]) -> str:
    """The course's minimal chat template: one "role: content" line per message, then "assistant:"."""
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"


def _field(body: dict, name: str, kinds, default=None, allow_none: bool = True):
    value = body.get(name, default)
    if value is None and allow_none:
        return default
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise APIError(400, f"'{name}' must be of type {names}, got {type(value).__name__}", name, "invalid_type")
    return value


def parse_params(body: dict, prompt_len: int, context: int) -> SamplingParams:
    max_tokens = _field(body, "max_tokens", (int,), 16)
    if "max_completion_tokens" in body:
        max_tokens = _field(body, "max_completion_tokens", (int,), max_tokens)
    temperature = _field(body, "temperature", (int, float), 1.0)
    top_p = _field(body, "top_p", (int, float), 1.0)
    top_k = _field(body, "top_k", (int,), None)
    seed = _field(body, "seed", (int,), None)
    stop = _field(body, "stop", (str, list), None)
    n = _field(body, "n", (int,), 1)
    ignore_eos = _field(body, "ignore_eos", (bool,), False)  # an extra field, as in vLLM
    if n != 1:
        raise APIError(400, f"only n=1 is supported, got {n}", "n")
    if max_tokens <= 0:
        raise APIError(400, f"'max_tokens' must be positive, got {max_tokens}", "max_tokens")
    if prompt_len > context:
        raise APIError(400, f"the prompt is {prompt_len} tokens, longer than the context window of {context} "
                            "tokens", "prompt", "context_length_exceeded")
    if prompt_len + max_tokens > context:
        raise APIError(400, f"prompt ({prompt_len} tokens) + max_tokens ({max_tokens}) exceeds the context window "
                            f"of {context} tokens", "max_tokens", "context_length_exceeded")
    if temperature < 0:
        raise APIError(400, f"'temperature' must be >= 0, got {temperature}", "temperature")
    if not 0 < top_p <= 1:
        raise APIError(400, f"'top_p' must be in (0, 1], got {top_p}", "top_p")
    try:
        return SamplingParams(temperature=float(temperature), top_p=None if top_p == 1 else float(top_p),
                              top_k=top_k, max_tokens=max_tokens, stop=stop, seed=seed,
                              ignore_eos=ignore_eos)
    except ValueError as e:
        raise APIError(400, str(e)) from None


def build_app(engine: LLMEngine, model_name: str, max_body_bytes: int = 1 << 20) -> FastAPI:
    """The FastAPI app serving `engine` under the name `model_name`."""
    core = AsyncEngine(engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        core.shutdown()

    app = FastAPI(title="bloomlib serve", lifespan=lifespan)
    app.state.engine = core
    tok, context = engine.tokenizer, engine.context

    async def read_body(request: Request) -> dict:
        if int(request.headers.get("content-length") or 0) > max_body_bytes:
            raise APIError(413, f"request body is larger than {max_body_bytes} bytes", code="body_too_large")
        raw = await request.body()
        if len(raw) > max_body_bytes:
            raise APIError(413, f"request body is larger than {max_body_bytes} bytes", code="body_too_large")
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise APIError(400, f"request body is not valid JSON: {e}", code="invalid_json") from None
        if not isinstance(body, dict):
            raise APIError(400, "request body must be a JSON object", code="invalid_json")
        model = body.get("model")
        if model is not None and model != model_name:
            raise APIError(404, f"the model '{model}' does not exist; this server serves '{model_name}'", "model",
                           "model_not_found")
        stream = _field(body, "stream", (bool,), False)
        return body | {"stream": stream}

    def encode_prompt(body: dict) -> list[int]:
        if "prompt" not in body or body["prompt"] is None:
            raise APIError(400, "'prompt' is required", "prompt", "missing_required_parameter")
        prompt = body["prompt"]
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]
        if isinstance(prompt, str):
            ids = tok.encode(prompt)
        elif isinstance(prompt, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            if any(not 0 <= t < engine.config.vocab_size for t in prompt):
                raise APIError(400, f"prompt token ids must be in [0, {engine.config.vocab_size})", "prompt")
            ids = prompt
        else:
            raise APIError(400, "'prompt' must be a string or a list of token ids", "prompt", "invalid_type")
        if not ids:
            raise APIError(400, "'prompt' is empty", "prompt")
        return ids

    async def run(request: Request, ids: list[int], params: SamplingParams, stream: bool, chat: bool):
        rid, q = core.submit(ids, params)
        cid = ("chatcmpl-" if chat else "cmpl-") + rid
        created, obj = int(time.time()), "chat.completion" if chat else "text_completion"

        def choice(text: str, reason: str | None, delta: bool) -> dict:
            if not chat:
                return {"index": 0, "text": text, "finish_reason": reason, "logprobs": None}
            msg = {"role": "assistant", "content": text}
            return {"index": 0, ("delta" if delta else "message"): msg, "finish_reason": reason, "logprobs": None}

        def usage(out: RequestOutput) -> dict:
            return {"prompt_tokens": out.prompt_tokens, "completion_tokens": out.completion_tokens,
                    "total_tokens": out.prompt_tokens + out.completion_tokens}

        async def next_output() -> RequestOutput:
            item = await q.get()
            if isinstance(item, Exception):
                raise APIError(400 if isinstance(item, ValueError) else 500, str(item),
                               type_="invalid_request_error" if isinstance(item, ValueError) else "server_error")
            return item

        if not stream:
            done = False
            try:
                while True:
                    try:
                        out = await asyncio.wait_for(next_output(), timeout=0.5)
                    except asyncio.TimeoutError:
                        if await request.is_disconnected():
                            break
                        continue
                    if out.finished:
                        done = True
                        return {"id": cid, "object": obj, "created": created, "model": model_name,
                                "choices": [choice(out.text, out.finish_reason, False)], "usage": usage(out)}
            finally:
                if not done:
                    core.abort(rid)
            return JSONResponse({}, status_code=499)

        include_usage = isinstance(body_opts := request.state.body.get("stream_options"), dict) and \
            bool(body_opts.get("include_usage"))

        async def events():
            done = False
            try:
                while True:
                    try:
                        out = await next_output()
                    except APIError as e:
                        yield f"data: {json.dumps({'error': {'message': e.message, 'type': e.type}})}\n\n"
                        done = True
                        break
                    chunk = {"id": cid, "object": obj + ".chunk" if chat else obj, "created": created,
                             "model": model_name, "choices": [choice(out.new_text, out.finish_reason, True)]}
                    if include_usage:
                        chunk["usage"] = None
                    yield f"data: {json.dumps(chunk)}\n\n"
                    if out.finished:
                        done = True
                        if include_usage:
                            last = {**chunk, "choices": [], "usage": usage(out)}
                            yield f"data: {json.dumps(last)}\n\n"
                        break
                yield "data: [DONE]\n\n"
            finally:  # runs when the client disconnects, too
                if not done:
                    core.abort(rid)

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError):
        return exc.response()

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = request.state.body = await read_body(request)
        ids = encode_prompt(body)
        params = parse_params(body, len(ids), context)
        return await run(request, ids, params, body["stream"], chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = request.state.body = await read_body(request)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in messages):
            raise APIError(400, "'messages' must be a non-empty list of {role: str, content: str}", "messages")
        ids = tok.encode(chat_prompt(messages))
        params = parse_params(body, len(ids), context)
        if not params.stop:
            params.stop = ["\nuser:"]
        return await run(request, ids, params, body["stream"], chat=True)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0,
                                            "owned_by": "bloomlib"}]}

    @app.get("/health")
    async def health():
        return {"status": "ok" if core.thread.is_alive() else "engine stopped"}

    @app.get("/metrics")
    async def metrics():
        m = engine.metrics()
        lines = [f"bloomlib_{k} {float(v)}" for k, v in m.items()]
        lines.append(f"bloomlib_queue_length {float(m['waiting'])}")
        return PlainTextResponse("\n".join(lines) + "\n")

    return app


def main(argv: list[str] | None = None) -> int:
    from bloomlib.model import COURSE_MODEL

    p = argparse.ArgumentParser(prog="bloomlib serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=str(COURSE_MODEL), help="checkpoint folder (default: the course model)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model-name", default=None, help="name clients use (default: the folder's name)")
    p.add_argument("--block-size", type=int, default=16, help="tokens per KV block")
    p.add_argument("--num-blocks", type=int, default=None, help="KV blocks in the pool")
    p.add_argument("--max-num-seqs", type=int, default=64, help="sequences decoded together at most")
    p.add_argument("--blocklist", default=None,
                   help="comma-separated words the safety filter redacts ('' turns it off; default: a small list)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20)
    args = p.parse_args(argv)
    import uvicorn

    from bloomlib.checkpoint import load_checkpoint

    try:
        ckpt = load_checkpoint(args.checkpoint)
    except ValueError as e:
        p.error(str(e))
    if ckpt.tokenizer is None:
        p.error(f"{args.checkpoint} has no tokenizer.json; the server needs one")
    safety = "default" if args.blocklist is None else (
        SafetyFilter([w.strip() for w in args.blocklist.split(",") if w.strip()]) if args.blocklist else None)
    engine = LLMEngine(ckpt.model, ckpt.tokenizer, block_size=args.block_size, num_blocks=args.num_blocks,
                       max_num_seqs=args.max_num_seqs, safety_filter=safety)
    name = args.model_name or Path(args.checkpoint).resolve().name
    app = build_app(engine, name, args.max_body_bytes)
    print(f"bloomlib serve: {name} on http://{args.host}:{args.port}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
