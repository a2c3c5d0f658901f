"""The engine: requests in, tokens and text out, one scheduler step at a time.

    engine = LLMEngine(model, tokenizer)
    engine.add_request("Hello", SamplingParams(max_tokens=20))
    while engine.has_unfinished():
        for out in engine.step(): print(out.new_text, end="")

`LLM.generate` wraps that loop for a list of prompts; the server drives `step()` from a background thread.
"""
from __future__ import annotations

import itertools
from collections import deque
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from bloomlib.sampling import filter_logits
from bloomlib.serving.block_manager import BlockManager
from bloomlib.serving.config import EngineConfig
from bloomlib.serving.model_runner import ModelRunner
from bloomlib.serving.scheduler import Scheduler
from bloomlib.serving.sequence import RequestOutput, SafetyFilter, SamplingParams, Sequence, check_prompt


def sample(logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
    """logits (B, V) -> one token per sequence, each with its own parameters and generator."""
    out = logits.argmax(dim=-1).tolist()
    for i, seq in enumerate(seqs):
        p = seq.params
        if p.temperature != 0:
            probs = torch.softmax(filter_logits(logits[i:i + 1].float(), p.temperature, p.top_k, p.top_p), dim=-1)
            out[i] = int(torch.multinomial(probs, 1, generator=seq.generator))
    return out


class LLMEngine:
    """Continuous-batching engine over a paged KV cache for one bloomlib GPT (+ optional tokenizer).

    config: an EngineConfig (page size, pool size, sequence and token limits, prefix caching).
    safety_filter: a SafetyFilter for the text output (default: the small blocklist), or None.
    """

    def __init__(self, model: torch.nn.Module, tokenizer=None, config: EngineConfig | None = None, *,
                 safety_filter: SafetyFilter | None | str = "default") -> None:
        self.model, self.tokenizer, self.config = model.eval(), tokenizer, model.config
        self.engine_config = cfg = config or EngineConfig()
        self.context = self.config.block_size
        if tokenizer is not None and tokenizer.vocab_size != self.config.vocab_size:
            raise ValueError(f"tokenizer vocab_size={tokenizer.vocab_size} != model vocab_size="
                             f"{self.config.vocab_size}")
        num_pages = cfg.num_kv_blocks or cfg.max_num_seqs * -(-self.context // cfg.kv_block_size)
        self.bm = BlockManager(num_pages, cfg.kv_block_size, cfg.enable_prefix_caching)
        self.runner = ModelRunner(model, num_pages, cfg.kv_block_size)
        self.scheduler = Scheduler(self.bm, cfg.max_num_seqs, max(cfg.max_num_batched_tokens, self.context))
        self.safety = SafetyFilter() if safety_filter == "default" else safety_filter
        self.eos_id = tokenizer.eos_id if tokenizer is not None else None
        self.seqs: dict[str, Sequence] = {}
        self._ids = itertools.count()
        self.generated_tokens = 0
        self._recent: deque[tuple[float, int]] = deque()  # (time, tokens) of the last 10 s of steps, for tokens/s

    def encode(self, prompt) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("a text prompt needs a tokenizer; pass token ids or give LLM a tokenizer")
            return self.tokenizer.encode(prompt)
        if hasattr(prompt, "tolist"):
            prompt = prompt.tolist()
        if not isinstance(prompt, (list, tuple)) or not all(isinstance(t, int) and not isinstance(t, bool)
                                                            for t in prompt):
            raise ValueError(f"prompt must be a string or a list of token ids, got {type(prompt).__name__}")
        return list(prompt)

    def add_request(self, prompt, params: SamplingParams | None = None, request_id: str | None = None) -> str:
        params = params or SamplingParams()
        ids = self.encode(prompt)
        check_prompt(ids, params.max_tokens, self.context, self.config.vocab_size)
        if self.bm.blocks_needed(len(ids) + params.max_tokens) > self.bm.num_blocks:
            raise ValueError(f"request needs more KV blocks than the pool has ({self.bm.num_blocks})")
        request_id = str(next(self._ids)) if request_id is None else request_id
        if request_id in self.seqs:
            raise ValueError(f"request_id {request_id!r} is already in use")
        seq = Sequence(request_id, ids, params, self.tokenizer, self.safety)
        self.seqs[request_id] = seq
        self.scheduler.add(seq)
        return request_id

    def abort(self, request_id: str) -> None:
        """Cancel a request; its blocks are freed at once."""
        seq = self.seqs.pop(request_id, None)
        if seq is not None:
            self.scheduler.finish(seq)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def step(self) -> list[RequestOutput]:
        """One scheduler step (decodes and admitted prefills in one forward pass); an output per sequence."""
        seqs = self.scheduler.schedule()
        if not seqs:
            return []
        logits = self.runner.forward([s.token_ids[s.num_computed:] for s in seqs], [s.num_computed for s in seqs],
                                     [s.block_table for s in seqs])
        outputs = []
        page = self.bm.kv_block_size
        for seq, tok in zip(seqs, sample(logits, seqs)):
            if len(seq) // page > seq.num_computed // page:  # this step filled a page: it can serve as a prefix
                self.bm.register_full_blocks(seq, len(seq))
            seq.num_computed = len(seq)
            seq.append_token(tok, self.eos_id)
            new_text = seq.take_text()
            if seq.is_finished:
                self.scheduler.finish(seq)
                self.seqs.pop(seq.request_id, None)
            done = seq.completion_ids
            outputs.append(RequestOutput(seq.request_id, [tok], new_text, seq.is_finished, seq.finish_reason,
                                         seq.num_prompt_tokens, len(done), done, seq.text))
        now = time.perf_counter()
        self.generated_tokens += len(seqs)
        self._recent.append((now, len(seqs)))
        while now - self._recent[0][0] > 10.0:
            self._recent.popleft()
        return outputs

    def metrics(self) -> dict:
        span = time.perf_counter() - self._recent[0][0] if len(self._recent) > 1 else 0.0
        recent = sum(n for _, n in self._recent) - (self._recent[0][1] if self._recent else 0)
        return {"waiting": len(self.scheduler.waiting), "running": len(self.scheduler.running),
                "kv_blocks_total": self.bm.num_blocks, "kv_blocks_used": self.bm.num_used,
                "kv_blocks_free": self.bm.num_free, "kv_blocks_cached": self.bm.num_cached,
                "kv_utilization": self.bm.num_used / self.bm.num_blocks, "prefix_cache_hit_rate": self.bm.hit_rate,
                "preemptions": self.scheduler.num_preemptions, "kv_blocks_evicted": self.bm.evictions,
                "generated_tokens": self.generated_tokens,
                "tokens_per_s": recent / span if span > 0 else 0.0}


@dataclass
class CompletionOutput:
    request_id: str
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: str | None


class LLM:
    """Offline batch generation: `LLM(model_or_checkpoint_folder, tokenizer=None).generate(prompts, params)`."""

    def __init__(self, model, tokenizer=None, config: EngineConfig | None = None, *,
                 safety_filter: SafetyFilter | None | str = "default") -> None:
        if isinstance(model, (str, Path)):
            from bloomlib.checkpoint import load_checkpoint

            ckpt = load_checkpoint(model)
            model, tokenizer = ckpt.model, tokenizer or ckpt.tokenizer
        self.engine = LLMEngine(model, tokenizer, config, safety_filter=safety_filter)

    def generate(self, prompts, params: SamplingParams | list[SamplingParams] | None = None) -> list[CompletionOutput]:
        """prompts: a string, a list of token ids, or a list of either. Outputs come in request order."""
        if isinstance(prompts, str) or (isinstance(prompts, (list, tuple)) and prompts
                                        and isinstance(prompts[0], int)):
            prompts = [prompts]
        params = params if isinstance(params, list) else [params or SamplingParams()] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(f"got {len(params)} SamplingParams for {len(prompts)} prompts")
        ids = [self.engine.add_request(p, sp) for p, sp in zip(prompts, params)]
        prompt_ids = {i: list(self.engine.seqs[i].token_ids) for i in ids}
        done: dict[str, RequestOutput] = {}
        while self.engine.has_unfinished():
            for out in self.engine.step():
                if out.finished:
                    done[out.request_id] = out
        return [CompletionOutput(i, prompt_ids[i], done[i].token_ids, done[i].text, done[i].finish_reason)
                for i in ids]
