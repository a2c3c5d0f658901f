"""The OpenAI wire format `bloomlib serve` speaks: request parsing, response and stream-chunk shapes, errors.

Plain Python (no FastAPI): a JSON body goes in, a `GenerationRequest` or an `APIError` naming the request field
at fault (`param`) comes out. Where each check lives:

    server.read_json       body size (413)
    parse_body             the body is a JSON object
    parse_request          model (404), n, stream, stream_options, prompt / messages shape
    SamplingParams         temperature, top_p, top_k, max_tokens, stop, seed, ignore_eos: type and range
    check_prompt           prompt ids non-empty and in the vocabulary, prompt + max_tokens within the context
    LLMEngine.add_request  the KV pool can hold the request (its error arrives on the request's stream)

SamplingParams and check_prompt (sequence.py) raise a ParamError, answered with a 400 naming the body's field.
check_prompt runs here, before the request is queued, so that a streamed request gets a 400 rather than an error
event (LLMEngine.add_request runs it again for library callers).
"""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field

from bloomlib.serving.sequence import ParamError, RequestOutput, SamplingParams, check_prompt

CHAT_STOP = "\nuser:"  # the chat template's next user turn ends the assistant's reply
SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "max_tokens", "stop", "seed", "ignore_eos")
DONE = "data: [DONE]\n\n"  # the last server-sent event of a stream


class APIError(Exception):
    """An error answered as OpenAI does: HTTP `status` and {"error": {message, type, param, code}}."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type_: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    @classmethod
    def from_engine(cls, e: Exception) -> APIError:
        """A request's failure inside the engine: its ValueErrors are the client's fault, anything else ours."""
        if isinstance(e, ValueError):
            return cls(400, str(e), getattr(e, "param", None), getattr(e, "code", None))
        return cls(500, str(e), type_="server_error")


@dataclass(frozen=True)
class ServedModel:
    name: str
    tokenizer: object  # .encode(text) -> ids, .vocab_size
    context: int       # the context window, in tokens


@dataclass
class GenerationRequest:
    """A validated completion (or chat completion) request, and the builders of the objects it is answered with."""

    prompt_ids: list[int]
    params: SamplingParams
    model: str
    chat: bool = False
    stream: bool = False
    include_usage: bool = False
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created: int = field(default_factory=lambda: int(time.time()))

    def _answer(self, chunk: bool, choices: list[dict], **extra) -> dict:
        kind = "chat.completion" if self.chat else "text_completion"
        return {"id": ("chatcmpl-" if self.chat else "cmpl-") + self.request_id,
                "object": kind + ".chunk" if chunk and self.chat else kind, "created": self.created,
                "model": self.model, "choices": choices, **extra}

    def _choice(self, text: str, finish_reason: str | None, key: str) -> dict:
        content = {key: {"role": "assistant", "content": text}} if self.chat else {"text": text}
        return {"index": 0, **content, "finish_reason": finish_reason, "logprobs": None}

    def response(self, out: RequestOutput) -> dict:
        """The whole answer, from the request's last output."""
        return self._answer(False, [self._choice(out.text, out.finish_reason, "message")], usage=usage(out))

    def chunk(self, out: RequestOutput) -> dict:
        """One streamed event: the text this output added."""
        extra = {"usage": None} if self.include_usage else {}
        return self._answer(True, [self._choice(out.new_text, out.finish_reason, "delta")], **extra)

    def usage_chunk(self, out: RequestOutput) -> dict:
        """The extra last event of stream_options.include_usage: no choices, the token counts."""
        return self._answer(True, [], usage=usage(out))


def usage(out: RequestOutput) -> dict:
    return {"prompt_tokens": out.prompt_tokens, "completion_tokens": out.completion_tokens,
            "total_tokens": out.prompt_tokens + out.completion_tokens}


def sse(data: dict) -> str:
    return f"data: {json.dumps(data)}\n\n"


def models_response(name: str) -> dict:
    return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "bloomlib"}]}


def chat_prompt(messages: list[dict]) -> str:
    """The course's minimal chat template: one "role: content" line per message, then "assistant:"."""
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"


def parse_body(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"request body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, "request body must be a JSON object", code="invalid_json")
    return body


def parse_request(body: dict, model: ServedModel, chat: bool = False) -> GenerationRequest:
    """A /v1/completions body ("prompt") or, with chat, a /v1/chat/completions body ("messages")."""
    if body.get("model") not in (None, model.name):
        raise APIError(404, f"the model '{body['model']}' does not exist; this server serves '{model.name}'",
                       "model", "model_not_found")
    ids = _messages_ids(body, model.tokenizer) if chat else _prompt_ids(body, model.tokenizer)
    n = body.get("n")
    if n not in (None, 1) or isinstance(n, bool):
        raise APIError(400, f"only n=1 is supported, got {n!r}", "n")
    stream, options = _typed(body, "stream", bool, False), _typed(body, "stream_options", dict, {})
    include_usage = _typed(options, "include_usage", bool, False, "stream_options.include_usage")
    names = {f: f for f in SAMPLING_FIELDS} | {"prompt": "messages" if chat else "prompt"}  # ours -> the body's
    if body.get("max_completion_tokens") is not None:  # the newer name of max_tokens
        names["max_tokens"] = "max_completion_tokens"
    kwargs = {f: body[names[f]] for f in SAMPLING_FIELDS if body.get(names[f]) is not None}
    try:
        params = SamplingParams(**({"stop": CHAT_STOP} if chat else {}) | kwargs)
        check_prompt(ids, params.max_tokens, model.context, model.tokenizer.vocab_size)
    except ParamError as e:
        raise APIError(400, str(e), names.get(e.param, e.param), e.code) from None
    return GenerationRequest(ids, params, model.name, chat, stream, include_usage)


def _prompt_ids(body: dict, tokenizer) -> list[int]:
    """"prompt": a string or a list of token ids, or a one-element list of either."""
    prompt = body.get("prompt")
    if prompt is None:
        raise APIError(400, "'prompt' is required", "prompt", "missing_required_parameter")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return tokenizer.encode(prompt)
    if isinstance(prompt, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return prompt
    raise APIError(400, "'prompt' must be a string or a list of token ids", "prompt", "invalid_type")


def _messages_ids(body: dict, tokenizer) -> list[int]:
    """"messages": a non-empty list of {role, content} strings, put through chat_prompt."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages):
        raise APIError(400, "'messages' must be a non-empty list of {role: str, content: str}", "messages")
    return tokenizer.encode(chat_prompt(messages))


def _typed(obj: dict, key: str, kind: type, default, param: str | None = None):
    """obj[key] if it is a `kind`, `default` if it is missing or null; otherwise a 400 naming `param` (or key)."""
    value, param = obj.get(key), param or key
    if value is not None and not isinstance(value, kind):
        raise APIError(400, f"'{param}' must be of type {kind.__name__}, got {type(value).__name__}", param,
                       "invalid_type")
    return default if value is None else value
