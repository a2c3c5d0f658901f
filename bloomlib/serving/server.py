"""`bloomlib serve`: an OpenAI-compatible HTTP server for a bloomlib checkpoint (FastAPI + uvicorn).

    bloomlib serve --checkpoint bloomlib/assets/course_model --port 8000
    curl localhost:8000/v1/completions -d '{"model": "course_model", "prompt": "The ", "max_tokens": 20}'

One background thread owns the engine and steps it; HTTP handlers send it typed commands (Add, Abort, Stop)
through a queue and read their request's outputs back from a Stream. A client that disconnects has its request
cancelled. Endpoints: /v1/completions, /v1/chat/completions (both with "stream": true as server-sent events),
/v1/models, /health, /metrics (Prometheus text). What a request may contain is protocol.py's business.
"""
from __future__ import annotations

import argparse
import asyncio
import queue
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from bloomlib.serving.config import EngineConfig
from bloomlib.serving.engine import LLMEngine
from bloomlib.serving.protocol import (DONE, APIError, GenerationRequest, ServedModel, models_response, parse_body,
                                       parse_request, sse)
from bloomlib.serving.sequence import RequestOutput, SafetyFilter


class Stream:
    """One request's outputs, put by the engine thread and awaited on the handler's event loop."""

    def __init__(self) -> None:
        self.loop, self.queue = asyncio.get_running_loop(), asyncio.Queue()

    def put(self, item: RequestOutput | Exception) -> None:  # called from the engine thread
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    async def get(self) -> RequestOutput:
        item = await self.queue.get()
        if isinstance(item, Exception):
            raise APIError.from_engine(item)
        return item


@dataclass
class Add:
    req: GenerationRequest
    stream: Stream


@dataclass
class Abort:
    request_id: str


class Stop:
    pass


class AsyncEngine:
    """Runs LLMEngine in one background thread, the only one that touches it (or `streams`)."""

    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        self.commands: queue.Queue[Add | Abort | Stop] = queue.Queue()
        self.streams: dict[str, Stream] = {}  # the requests in the engine
        self.thread = threading.Thread(target=self._run, name="bloomlib-engine", daemon=True)
        self.thread.start()

    def add(self, req: GenerationRequest) -> Stream:
        stream = Stream()
        self.commands.put(Add(req, stream))
        return stream

    def abort(self, request_id: str) -> None:
        """Cancel a request; harmless once it has finished."""
        self.commands.put(Abort(request_id))

    def shutdown(self) -> None:
        self.commands.put(Stop())

    def _run(self) -> None:
        while True:
            # block while idle; while busy, take what has arrived and step
            commands = [] if self.engine.has_unfinished() else [self.commands.get()]
            while not self.commands.empty():
                commands.append(self.commands.get_nowait())
            for cmd in commands:
                match cmd:
                    case Add(req, stream):
                        try:
                            self.engine.add_request(req.prompt_ids, req.params, request_id=req.request_id)
                            self.streams[req.request_id] = stream
                        except Exception as e:
                            stream.put(e)
                    case Abort(rid) if rid in self.streams:
                        self.engine.abort(rid)
                        del self.streams[rid]
                    case Stop():
                        return
            if self.engine.has_unfinished():
                self._step()

    def _step(self) -> None:
        try:
            outputs = self.engine.step()
        except Exception as e:  # keep serving: fail the running requests, not the server
            for rid, stream in self.streams.items():
                stream.put(e)
                self.engine.abort(rid)
            self.streams.clear()
            return
        for out in outputs:
            if (stream := self.streams.get(out.request_id)) is not None:
                stream.put(out)
                if out.finished:
                    del self.streams[out.request_id]


async def read_json(request: Request, max_bytes: int) -> dict:
    """The body as a JSON object; 413 as soon as more than `max_bytes` arrive."""
    raw = bytearray()
    async for piece in request.stream():
        raw += piece
        if len(raw) > max_bytes:
            raise APIError(413, f"request body is larger than {max_bytes} bytes", code="body_too_large")
    return parse_body(raw)


async def complete(request: Request, core: AsyncEngine, req: GenerationRequest) -> dict | Response:
    """A non-streamed answer: wait for the last output, checking twice a second that the client is still there."""
    stream = core.add(req)
    try:
        while True:
            try:
                if (out := await asyncio.wait_for(stream.get(), timeout=0.5)).finished:
                    return req.response(out)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    return Response(status_code=499)
    finally:
        core.abort(req.request_id)


async def events(core: AsyncEngine, req: GenerationRequest) -> AsyncIterator[str]:
    """A streamed answer: a chunk per output, the usage chunk if asked for, then DONE."""
    stream = core.add(req)
    try:
        while True:
            out = await stream.get()
            yield sse(req.chunk(out))
            if out.finished:
                break
        if req.include_usage:
            yield sse(req.usage_chunk(out))
    except APIError as e:  # too late for an HTTP status: the error is an event
        yield sse(e.body())
    finally:  # runs when the client disconnects, too
        core.abort(req.request_id)
    yield DONE


def build_app(engine: LLMEngine, model_name: str, max_body_bytes: int = 1 << 20) -> FastAPI:
    """The FastAPI app serving `engine` under the name `model_name`."""
    core = AsyncEngine(engine)
    model = ServedModel(model_name, engine.tokenizer, engine.context)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        core.shutdown()

    app = FastAPI(title="bloomlib serve", lifespan=lifespan)

    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError):
        return JSONResponse(e.body(), status_code=e.status)

    async def generate(request: Request, chat: bool):
        req = parse_request(await read_json(request, max_body_bytes), model, chat)
        if req.stream:
            return StreamingResponse(events(core, req), media_type="text/event-stream")
        return await complete(request, core, req)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await generate(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await generate(request, chat=True)

    @app.get("/v1/models")
    async def models():
        return models_response(model_name)

    @app.get("/health")
    async def health():
        return {"status": "ok" if core.thread.is_alive() else "engine stopped"}

    @app.get("/metrics")
    async def metrics():
        m = engine.metrics()
        lines = [f"bloomlib_{k} {float(v)}" for k, v in m.items()] + [f"bloomlib_queue_length {float(m['waiting'])}"]
        return PlainTextResponse("\n".join(lines) + "\n")

    return app


def main(argv: list[str] | None = None) -> int:
    from bloomlib.model import COURSE_MODEL

    p = argparse.ArgumentParser(prog="bloomlib serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=str(COURSE_MODEL), help="checkpoint folder (default: the course model)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model-name", default=None, help="name clients use (default: the folder's name)")
    p.add_argument("--kv-block-size", type=int, default=EngineConfig.kv_block_size, help="tokens per KV block")
    p.add_argument("--num-kv-blocks", type=int, default=None,
                   help="KV blocks in the pool (default: room for max-num-seqs full contexts)")
    p.add_argument("--max-num-seqs", type=int, default=EngineConfig.max_num_seqs,
                   help="sequences decoded together at most")
    p.add_argument("--blocklist", default=None,
                   help="comma-separated words the safety filter redacts ('' turns it off; default: a small list)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20)
    args = p.parse_args(argv)
    import uvicorn

    from bloomlib.checkpoint import load_checkpoint

    try:
        config = EngineConfig(kv_block_size=args.kv_block_size, num_kv_blocks=args.num_kv_blocks,
                              max_num_seqs=args.max_num_seqs)
        ckpt = load_checkpoint(args.checkpoint)
    except ValueError as e:
        p.error(str(e))
    if ckpt.tokenizer is None:
        p.error(f"{args.checkpoint} has no tokenizer.json; the server needs one")
    words = [w.strip() for w in (args.blocklist or "").split(",") if w.strip()]
    safety = "default" if args.blocklist is None else (SafetyFilter(words) if args.blocklist else None)
    engine = LLMEngine(ckpt.model, ckpt.tokenizer, config, safety_filter=safety)
    name = args.model_name or Path(args.checkpoint).resolve().name
    app = build_app(engine, name, args.max_body_bytes)
    print(f"bloomlib serve: {name} on http://{args.host}:{args.port}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
