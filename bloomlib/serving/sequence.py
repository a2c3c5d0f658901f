"""A request's state: sampling parameters, tokens, block table, and the text streamed so far.

Text streaming: token bytes go through an incremental UTF-8 decoder, so a character split across tokens is
emitted only once complete. Text that could still become a stop string or a blocked word is held back until
it cannot; then the safety filter redacts what is released.
"""
from __future__ import annotations

import codecs
import re
from dataclasses import dataclass, field
from enum import Enum

import torch

from bloomlib.sampling import check_sampling_args

# The default safety stage: a tiny, documented placeholder blocklist. Real deployments pass their own
# `SafetyFilter` (or `None` to turn the stage off) to LLM / LLMEngine / `bloomlib serve --blocklist`.
DEFAULT_BLOCKLIST = ("fuck", "shit", "cunt")


class SafetyFilter:
    """Redacts whole-word, case-insensitive matches of a blocklist with `replacement`.

    A filter stage needs `holdback` (characters that must follow a span before it can be judged),
    `safe_end(text, end)` (an end that cuts through no match) and `redact(text, start, end)`.
    """

    def __init__(self, blocklist=DEFAULT_BLOCKLIST, replacement: str = "[redacted]") -> None:
        words = [w for w in blocklist if w]
        if any(not isinstance(w, str) for w in words):
            raise ValueError(f"blocklist must hold strings, got {blocklist!r}")
        self.replacement, self.pattern, self.holdback = replacement, None, 0
        if words:
            self.pattern = re.compile(r"(?<!\w)(?:" + "|".join(map(re.escape, words)) + r")(?!\w)", re.IGNORECASE)
            self.holdback = max(map(len, words)) + 1

    def safe_end(self, text: str, end: int) -> int:
        if self.pattern:
            for m in self.pattern.finditer(text, max(0, end - self.holdback)):
                if m.start() < end < m.end():
                    return m.start()
        return end

    def redact(self, text: str, start: int, end: int) -> str:
        if not self.pattern:
            return text[start:end]
        out, i = [], start
        for m in self.pattern.finditer(text, max(0, start - self.holdback)):
            if m.start() >= start and m.end() <= end:
                out += [text[i:m.start()], self.replacement]
                i = m.end()
        return "".join(out) + text[i:end]


class ParamError(ValueError):
    """A ValueError naming the parameter at fault (`param`) and, where OpenAI has one, an error `code`."""

    def __init__(self, param: str, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.param, self.code = param, code


def _is(value, *kinds: type) -> bool:
    """isinstance, but a bool is not a number here."""
    return isinstance(value, kinds) and not isinstance(value, bool)


@dataclass
class SamplingParams:
    """temperature 0 is greedy; temperature, then top_k, then top_p (None turns a filter off; top_p=1 is None).
    max_tokens: new tokens at most; stop: strings that end the output (not included in it);
    seed: a per-request generator; ignore_eos: keep going past the tokenizer's <eos>.
    A bad value raises ParamError naming the field."""

    temperature: float = 1.0
    top_p: float | None = None
    top_k: int | None = None
    max_tokens: int = 16
    stop: list[str] | str | None = None
    seed: int | None = None
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        self.stop = [self.stop] if isinstance(self.stop, str) else self.stop
        types = {"temperature": (_is(self.temperature, int, float), "a number"),
                 "top_p": (self.top_p is None or _is(self.top_p, int, float), "a number or None"),
                 "top_k": (self.top_k is None or _is(self.top_k, int), "an integer or None"),
                 "max_tokens": (_is(self.max_tokens, int), "an integer"),
                 "stop": (self.stop is None or isinstance(self.stop, (list, tuple))
                          and all(isinstance(s, str) for s in self.stop), "a string or a list of strings"),
                 "seed": (self.seed is None or _is(self.seed, int), "an integer or None"),
                 "ignore_eos": (isinstance(self.ignore_eos, bool), "a bool")}
        for name, (ok, kind) in types.items():
            if not ok:
                raise ParamError(name, f"{name} must be {kind}, got {getattr(self, name)!r}", "invalid_type")
        for name in ("temperature", "top_k", "top_p"):  # ranges: the rule model.generate applies too
            try:
                check_sampling_args(**{name: getattr(self, name)})
            except ValueError as e:
                raise ParamError(name, str(e)) from None
        if self.max_tokens <= 0:
            raise ParamError("max_tokens", f"max_tokens must be positive, got {self.max_tokens}")
        self.stop = list(self.stop or [])
        if not all(self.stop):
            raise ParamError("stop", f"stop strings must be non-empty, got {self.stop!r}")
        if self.top_p == 1:  # keeps every token; no filter also skips a sort and any float-rounding loss
            self.top_p = None


def check_prompt(prompt_ids: list[int], max_tokens: int, context: int, vocab_size: int) -> None:
    """Raise ParamError unless the prompt is non-empty token ids in [0, vocab_size) that, with max_tokens new
    tokens, fit a context window of `context` tokens (code "context_length_exceeded" when they do not)."""
    if not prompt_ids:
        raise ParamError("prompt", "the prompt is empty")
    if min(prompt_ids) < 0 or max(prompt_ids) >= vocab_size:
        raise ParamError("prompt", f"prompt token ids must be in [0, {vocab_size})")
    n = len(prompt_ids)
    if n > context:
        raise ParamError("prompt", f"the prompt is {n} tokens, longer than the context window of {context} tokens",
                         "context_length_exceeded")
    if n + max_tokens > context:
        raise ParamError("max_tokens", f"prompt ({n} tokens) + max_tokens ({max_tokens}) exceeds the context "
                                       f"window of {context} tokens", "context_length_exceeded")


class Status(Enum):
    WAITING = 0
    RUNNING = 1
    FINISHED = 2


@dataclass
class RequestOutput:
    """What one engine step produced for one request (delta fields), plus its totals so far."""

    request_id: str
    new_token_ids: list[int]
    new_text: str
    finished: bool
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    token_ids: list[int] = field(default_factory=list)
    text: str = ""


class Sequence:
    def __init__(self, request_id: str, prompt_ids: list[int], params: SamplingParams, tokenizer=None,
                 safety: SafetyFilter | None = None) -> None:
        self.request_id, self.params, self.tokenizer, self.safety = request_id, params, tokenizer, safety
        self.token_ids = list(prompt_ids)
        self.num_prompt_tokens = len(prompt_ids)
        self.block_table: list[int] = []
        self.num_cached_tokens = 0       # prompt tokens whose KV came from the prefix cache
        self.num_computed = 0            # tokens whose KV is in the cache
        self.status, self.finish_reason = Status.WAITING, None
        self.generator = torch.Generator().manual_seed(params.seed) if params.seed is not None else None
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._raw = ""                   # decoded output text (before filtering)
        self._released = 0               # characters of _raw already emitted
        self.text = ""                   # emitted (filtered) text
        self._cut = False                # output ended by a stop string
        self._holdback = max([len(s) - 1 for s in params.stop] + [safety.holdback if safety else 0])

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def completion_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def num_completion_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens  # without copying completion_ids every token

    @property
    def is_finished(self) -> bool:
        return self.status == Status.FINISHED

    def append_token(self, token: int, eos_id: int | None) -> None:
        """Add a sampled token; decide whether the request is done (EOS, stop string, max_tokens)."""
        self.token_ids.append(token)
        if token == eos_id and not self.params.ignore_eos:
            self.finish_reason = "stop"
        elif self.tokenizer is not None:
            self._raw += self._decoder.decode(self.tokenizer.decode_bytes([token]))
            search_from = max(0, self._released - self._holdback)
            hits = [i for i in (self._raw.find(s, search_from) for s in self.params.stop) if i >= 0]
            if hits:
                self._raw, self.finish_reason, self._cut = self._raw[:min(hits)], "stop", True
        if self.finish_reason is None and self.num_completion_tokens >= self.params.max_tokens:
            self.finish_reason = "length"
        if self.finish_reason is not None:
            self.status = Status.FINISHED

    def take_text(self) -> str:
        """The newly releasable text (all of the rest once finished)."""
        if self.tokenizer is None:
            return ""
        if self.is_finished and not self._cut:
            self._raw += self._decoder.decode(b"", final=True)
        end = len(self._raw) if self.is_finished else max(self._released, len(self._raw) - self._holdback)
        if self.safety is not None:
            end = max(self._released, self.safety.safe_end(self._raw, end))
            new = self.safety.redact(self._raw, self._released, end)
        else:
            new = self._raw[self._released:end]
        self._released = end
        self.text += new
        return new
