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
        self.replacement = replacement
        self.pattern = (re.compile(r"(?<!\w)(?:" + "|".join(map(re.escape, words)) + r")(?!\w)", re.IGNORECASE)
                        if words else None)
        self.holdback = max((len(w) for w in words), default=0) + 1 if words else 0

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


@dataclass
class SamplingParams:
    """temperature 0 is greedy; temperature, then top_k, then top_p (None turns a filter off).
    max_tokens: new tokens at most; stop: strings that end the output (not included in it);
    seed: a per-request generator; ignore_eos: keep going past the tokenizer's <eos>."""

    temperature: float = 1.0
    top_p: float | None = None
    top_k: int | None = None
    max_tokens: int = 16
    stop: list[str] | str | None = None
    seed: int | None = None
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        for name in ("temperature", "top_p"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ValueError(f"{name} must be a number, got {value!r}")
        check_sampling_args(self.temperature, self.top_k, self.top_p)
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens <= 0:
            raise ValueError(f"max_tokens must be a positive integer, got {self.max_tokens!r}")
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop or [])
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError(f"stop must be a non-empty string or a list of them, got {self.stop!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")


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
        self.request_id, self.seq_id, self.params, self.tokenizer, self.safety = (request_id, request_id, params,
                                                                                  tokenizer, safety)
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
        if self.finish_reason is None and len(self.completion_ids) >= self.params.max_tokens:
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
