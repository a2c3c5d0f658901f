"""KV-cache profiling on the serving engine (bloomlib.serving): what a token costs in memory, what a shared
prompt prefix saves, what a small pool costs, and what a live server reports while it serves.

Each function returns plain dicts / lists of dicts (a lesson prints them or makes a DataFrame):

    kv_size_check(model)                     bytes per token: the formula against the engine's allocated pages
    prefix_sharing_sweep(model)              prefix-cache hit rate and prefill tokens saved, per share of requests
                                             that start with one common system prompt
    memory_pressure_sweep(model)             preemptions, evicted cached blocks and tokens/s as the pool shrinks,
                                             and whether every request still gets the big pool's greedy tokens
    metrics_while_serving(server, prompts)   /metrics polled while threads send requests with the openai client

The engine's prefix-cache hit rate (BlockManager.hit_rate) counts *blocks*: hits / lookups, where every
allocation of a waiting sequence (a re-admission after preemption too) looks up its full prompt blocks except
the one holding its last token (whose logits must be computed).
"""
from __future__ import annotations

import concurrent.futures
import random
import time
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from bloomlib.analysis._lm import check_int
from bloomlib.serving.config import EngineConfig
from bloomlib.serving.engine import LLMEngine
from bloomlib.serving.sequence import SamplingParams

if TYPE_CHECKING:
    from bloomlib.serving.launch import ServerProcess


def _engine(model: nn.Module, kv_block_size: int, num_kv_blocks: int, **options) -> LLMEngine:
    """An engine without tokenizer (token ids in, no <eos>: every request runs to max_tokens) or safety filter."""
    config = EngineConfig(kv_block_size=kv_block_size, num_kv_blocks=num_kv_blocks, **options)
    return LLMEngine(model, None, config, safety_filter=None)


def _blocks(tokens: int, kv_block_size: int) -> int:
    return -(-tokens // kv_block_size)


def kv_size_check(model: nn.Module, kv_block_size: int = 16, num_kv_blocks: int = 8) -> dict:
    """The KV bytes of one token, from the formula 2 (K and V) * n_layer * n_kv_head * head_dim * bytes per element
    (the model's weight dtype), against what the engine's PagedKVCache allocates: its pages tensor's nbytes
    divided by its token slots (num_kv_blocks * kv_block_size)."""
    check_int("kv_block_size", kv_block_size, 1)
    check_int("num_kv_blocks", num_kv_blocks, 1)
    cfg = model.config
    dtype = model.transformer.tok_emb.weight.dtype
    element = torch.finfo(dtype).bits // 8
    formula = 2 * cfg.n_layer * cfg.n_kv_head * cfg.head_dim * element
    pages = _engine(model, kv_block_size, num_kv_blocks).runner.cache.pages
    slots = pages.shape[1] * pages.shape[2]
    return {"n_layer": cfg.n_layer, "n_kv_head": cfg.n_kv_head, "head_dim": cfg.head_dim, "dtype": str(dtype),
            "bytes_per_element": element, "formula_bytes_per_token": formula,
            "engine_bytes_per_token": pages.nbytes / slots, "pool_bytes": pages.nbytes, "slots": slots,
            "pages_shape": tuple(pages.shape), "context_bytes": formula * cfg.block_size,
            "matches": pages.nbytes == formula * slots}


def _random_ids(rng: random.Random, n: int, vocab: int) -> list[int]:
    return [rng.randrange(vocab) for _ in range(n)]


def _check_share(shares) -> list[float]:
    if isinstance(shares, (int, float)) or not len(shares):
        raise ValueError(f"shares must be a non-empty sequence of numbers in [0, 1], got {shares!r}")
    for s in shares:
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 <= s <= 1:
            raise ValueError(f"shares must hold numbers in [0, 1], got {s!r}")
    return [float(s) for s in shares]


def prefix_sharing_sweep(model: nn.Module, shares=(0.0, 0.25, 0.5, 0.75, 1.0), *, n_requests: int = 32,
                         system_len: int = 64, user_len: int = 16, max_tokens: int = 8, seed: int = 0,
                         kv_block_size: int = 8, per_step: int = 1) -> list[dict]:
    """For each share, round(share * n_requests) requests (chosen at random) start with one common system prompt
    of system_len tokens, the others with a system prompt of their own; each goes on with user_len tokens of its
    own. Requests arrive `per_step` before each engine step (a steady stream: a prompt's full blocks enter the
    prefix cache once the step that computed them is done), greedy, max_tokens each, into a fresh engine whose pool
    holds every request at once (nothing is evicted or preempted).

    Returns per share: {"share", "shared_requests", "hit_rate" (the block manager's, blocks), "hits", "lookups",
    "prefill_tokens_requested" (sum of prompt lengths), "prefill_tokens_computed" (requested minus the hits'
    cached tokens), "prefill_saved" (the fraction not computed), "steps"}.
    """
    shares = _check_share(shares)
    for name, value, low in (("n_requests", n_requests, 1), ("system_len", system_len, 1), ("user_len", user_len, 1),
                             ("max_tokens", max_tokens, 1), ("kv_block_size", kv_block_size, 1),
                             ("per_step", per_step, 1), ("seed", seed, 0)):
        check_int(name, value, low)
    prompt_len = system_len + user_len
    if prompt_len + max_tokens > model.config.block_size:
        raise ValueError(f"system_len + user_len + max_tokens = {prompt_len + max_tokens} exceeds the model's "
                         f"context window (block_size={model.config.block_size})")
    vocab, pool = model.config.vocab_size, n_requests * _blocks(prompt_len + max_tokens, kv_block_size)
    rows = []
    for share in shares:
        rng = random.Random(seed)
        common = _random_ids(rng, system_len, vocab)
        n_shared = round(share * n_requests)
        sharing = set(rng.sample(range(n_requests), n_shared))
        prompts = [(common if i in sharing else _random_ids(rng, system_len, vocab)) + _random_ids(rng, user_len, vocab)
                   for i in range(n_requests)]
        engine = _engine(model, kv_block_size, pool, max_num_seqs=n_requests)
        params = SamplingParams(temperature=0, max_tokens=max_tokens)
        todo, steps = list(prompts), 0
        while todo or engine.has_unfinished():
            for p in todo[:per_step]:
                engine.add_request(p, params)
            todo = todo[per_step:]
            engine.step()
            steps += 1
        bm = engine.bm
        requested = sum(map(len, prompts))
        computed = requested - bm.hits * kv_block_size
        rows.append({"share": share, "shared_requests": n_shared, "hit_rate": bm.hit_rate, "hits": bm.hits,
                     "lookups": bm.lookups, "prefill_tokens_requested": requested,
                     "prefill_tokens_computed": computed, "prefill_saved": 1 - computed / requested, "steps": steps})
    return rows


def _serve_all(engine: LLMEngine, prompts: list[list[int]], params: SamplingParams) -> tuple[list, int, int, float]:
    """Every prompt added at once, stepped to the end -> (each request's tokens, steps, evicted blocks, seconds)."""
    ids = [engine.add_request(p, params) for p in prompts]
    out, steps, evicted = {}, 0, engine.bm.evictions
    start = time.perf_counter()
    while engine.has_unfinished():
        for o in engine.step():
            if o.finished:
                out[o.request_id] = o.token_ids
        steps += 1
    seconds = time.perf_counter() - start
    return [out.get(i) for i in ids], steps, engine.bm.evictions - evicted, seconds


def memory_pressure_sweep(model: nn.Module, num_blocks=(128, 48, 32, 24), *, n_requests: int = 16,
                          prompt_len: int = 32, max_tokens: int = 32, kv_block_size: int = 8, max_num_seqs: int = 16,
                          seed: int = 0) -> list[dict]:
    """One fixed workload (n_requests random prompts of prompt_len tokens, greedy, max_tokens each, all arriving at
    once, prefix caching on) served with KV pools of each size in num_blocks, against a reference run whose pool
    holds every request at once.

    Returns per pool size: {"num_blocks", "kv_tokens" (slots in the pool), "preemptions", "evicted_blocks" (cached
    blocks evicted, see _serve_all), "prefix_hits" (blocks a re-admitted sequence found still cached), "steps",
    "generated_tokens", "seconds", "tokens_per_s", "finished" (requests done), "same_tokens" (requests whose greedy
    tokens equal the reference's), "all_same"}. ValueError if a pool cannot hold one request.
    """
    for name, value, low in (("n_requests", n_requests, 1), ("prompt_len", prompt_len, 1),
                             ("max_tokens", max_tokens, 1), ("kv_block_size", kv_block_size, 1),
                             ("max_num_seqs", max_num_seqs, 1), ("seed", seed, 0)):
        check_int(name, value, low)
    if isinstance(num_blocks, int) or not len(num_blocks):
        raise ValueError(f"num_blocks must be a non-empty sequence of pool sizes, got {num_blocks!r}")
    if prompt_len + max_tokens > model.config.block_size:
        raise ValueError(f"prompt_len + max_tokens = {prompt_len + max_tokens} exceeds the model's context window "
                         f"(block_size={model.config.block_size})")
    one = _blocks(prompt_len + max_tokens, kv_block_size)
    for n in num_blocks:
        check_int("num_blocks", n, one, why=f" (one request of {prompt_len} + {max_tokens} tokens needs {one} "
                                            f"blocks of {kv_block_size})")
    rng = random.Random(seed)
    prompts = [_random_ids(rng, prompt_len, model.config.vocab_size) for _ in range(n_requests)]
    params = SamplingParams(temperature=0, max_tokens=max_tokens)
    reference, *_ = _serve_all(_engine(model, kv_block_size, n_requests * one, max_num_seqs=max_num_seqs), prompts,
                               params)
    rows = []
    for n in num_blocks:
        engine = _engine(model, kv_block_size, n, max_num_seqs=max_num_seqs)
        tokens, steps, evicted, seconds = _serve_all(engine, prompts, params)
        same = sum(t == r for t, r in zip(tokens, reference))
        generated = engine.generated_tokens
        rows.append({"num_blocks": n, "kv_tokens": n * kv_block_size, "preemptions": engine.scheduler.num_preemptions,
                     "evicted_blocks": evicted, "prefix_hits": engine.bm.hits, "steps": steps,
                     "generated_tokens": generated, "seconds": seconds,
                     "tokens_per_s": generated / seconds if seconds > 0 else 0.0,
                     "finished": sum(t is not None for t in tokens), "same_tokens": same,
                     "all_same": same == n_requests})
    return rows


SERIES = ("running", "waiting", "kv_blocks_used", "kv_utilization", "prefix_cache_hit_rate", "generated_tokens")


def metrics_while_serving(server: "ServerProcess", prompts, *, concurrency: int = 4, poll_s: float = 0.05,
                          max_tokens: int = 16, temperature: float = 0.0, ignore_eos: bool = False) -> list[dict]:
    """Send every prompt (a str or a list of token ids) to `server` with the official `openai` client from
    `concurrency` threads, polling /metrics every poll_s seconds until all have answered (and once after).
    ignore_eos: every request then generates max_tokens tokens.

    Returns the time series: one dict per poll, {"t" (seconds since the first request), "done" (requests
    answered), and the server's running, waiting, kv_blocks_used, kv_utilization, prefix_cache_hit_rate,
    generated_tokens}. A failed request raises its error after the polling ends.
    """
    try:
        import openai
    except ImportError as e:
        raise ImportError("metrics_while_serving needs the openai client: pip install openai") from e
    if isinstance(prompts, str) or not len(prompts):
        raise ValueError("prompts must be a non-empty list of prompts (str or lists of token ids)")
    check_int("concurrency", concurrency, 1)
    if isinstance(poll_s, bool) or not isinstance(poll_s, (int, float)) or not poll_s > 0:
        raise ValueError(f"poll_s must be a positive number of seconds, got {poll_s!r}")
    client = openai.OpenAI(base_url=server.openai_base_url, api_key="none", max_retries=0, timeout=300)
    series = []

    def sample(t0: float, futures) -> None:
        m = server.metrics()
        series.append({"t": time.perf_counter() - t0, "done": sum(f.done() for f in futures),
                       **{k: m[f"bloomlib_{k}"] for k in SERIES}})

    with concurrent.futures.ThreadPoolExecutor(max_workers=concurrency) as pool:
        t0 = time.perf_counter()
        futures = [pool.submit(client.completions.create, model=server.model_name, prompt=p, max_tokens=max_tokens,
                               temperature=temperature, extra_body={"ignore_eos": True} if ignore_eos else None)
                   for p in prompts]
        pending = set(futures)
        while pending:
            sample(t0, futures)
            _, pending = concurrent.futures.wait(pending, timeout=poll_s)
        sample(t0, futures)
    for f in futures:
        f.result()
    return series
