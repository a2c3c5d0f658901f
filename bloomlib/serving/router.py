"""Routing requests over several engine replicas (data parallel serving), and a model-free simulator of it.

    router = Router.replicate(model, 2, policy="prefix_aware")
    rid = router.add_request(prompt_ids, SamplingParams(max_tokens=16))
    while router.has_unfinished():
        for out in router.step(): ...
    router.stats()                       # per replica and in total: hits / lookups, prefill tokens saved

Every replica is a whole LLMEngine (same model, its own KV pool and prefix cache), so a prompt prefix cached on
one replica saves nothing on another. Policies:

    round_robin    request i goes to replica i mod N: even load, blind to the cache, so a shared system prompt
                   is prefilled once on *every* replica. Of those N prefills, N - 1 are repeats.
    prefix_aware   cache-aware routing (SGLang's router, llm-d): the replica already holding the longest prefix of
                   the prompt's full KV pages gets the request, so a shared prefix is prefilled about once.

simulate_routing replays a trace of prompts over many replicas without a model (each replica a bounded LRU set of
page hashes), to see those two numbers at N = 2, 4, 8, ... in milliseconds.
"""
from __future__ import annotations

import itertools
import random
from collections import OrderedDict
from collections.abc import Sequence as Seq

import torch

from bloomlib.serving.block_manager import block_hash
from bloomlib.serving.config import EngineConfig
from bloomlib.serving.engine import LLMEngine
from bloomlib.serving.sequence import RequestOutput, SafetyFilter, SamplingParams, Status

POLICIES = ("round_robin", "prefix_aware")


def _check_int(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def _check_policy(policy) -> str:
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    return policy


def page_hashes(token_ids: Seq[int], kv_block_size: int) -> list[bytes]:
    """The chained hashes of the full KV pages of token_ids, as the block manager names them (block_hash)."""
    hashes, parent = [], None
    for i in range(len(token_ids) // kv_block_size):
        parent = block_hash(parent, tuple(token_ids[i * kv_block_size:(i + 1) * kv_block_size]))
        hashes.append(parent)
    return hashes


def _leading(hashes: list[bytes], *held) -> int:
    """How many of hashes, from the first on, are in one of the containers held (a chain breaks at its first
    miss)."""
    return len(list(itertools.takewhile(lambda h: any(h in c for c in held), hashes)))


def choose_replica(policy: str, index: int, matches: list[int], loads: list[int], routed: list[int]) -> int:
    """The replica for request number `index`, given per replica: `matches` (leading prompt pages it holds),
    `loads` (unfinished sequences) and `routed` (requests sent so far).

    round_robin: index mod N. prefix_aware: among the replicas with the longest match (all of them on a miss), the
    least loaded; then the one sent fewer requests; then the lowest index. No load-balancing override (SGLang's
    router sends to the least loaded when loads grow too uneven): a popular prefix piles onto one replica.
    """
    if policy == "round_robin":
        return index % len(matches)
    best = max(matches)
    return min((r for r, m in enumerate(matches) if m == best), key=lambda r: (loads[r], routed[r], r))


class Router:
    """LLMEngine replicas behind one add_request / step / has_unfinished, routed by `policy` (POLICIES).

    replicas: distinct LLMEngines of one model config, kv_block_size and prefix-caching setting.
    A replica "holds" a page when its block manager has it cached (the router reads the replica's own hash table,
    as llm-d's precise mode does from KV events) or when a request sent there still waits for its prefill (it
    will be cached after that step). The engine caches a prompt's pages only after the step that computes them,
    so requests arriving in the same step do not share; the hit counters are the block managers' own.
    """

    def __init__(self, replicas: Seq[LLMEngine], policy: str = "prefix_aware") -> None:
        self.policy = _check_policy(policy)
        if not isinstance(replicas, (list, tuple)) or not replicas:
            raise ValueError(f"replicas must be a non-empty list of LLMEngine, got {replicas!r}")
        for i, engine in enumerate(replicas):
            if not isinstance(engine, LLMEngine):
                raise ValueError(f"replicas[{i}] must be an LLMEngine, got {type(engine).__name__}")
            if any(engine is other for other in replicas[:i]):
                raise ValueError(f"replicas[{i}] is the same engine as an earlier one; each replica needs its own "
                                 "KV pool")
            for what, get in (("model config", lambda e: e.config), ("kv_block_size", lambda e: e.bm.kv_block_size),
                              ("enable_prefix_caching", lambda e: e.bm.prefix_caching)):
                if get(engine) != get(replicas[0]):
                    raise ValueError(f"replicas are mismatched: replicas[{i}] has {what} {get(engine)!r}, "
                                     f"replicas[0] has {get(replicas[0])!r}")
        self.replicas = list(replicas)
        self.kv_block_size = replicas[0].bm.kv_block_size
        self.routed = [0] * len(replicas)                  # requests sent to each replica
        self.prompt_tokens = [0] * len(replicas)           # their prompt tokens (prefill requested)
        self.where: dict[str, int] = {}                    # request id -> replica
        self._pending: list[dict[str, list[bytes]]] = [{} for _ in replicas]  # not yet prefilled: their pages

    @classmethod
    def replicate(cls, model: torch.nn.Module, n_replicas: int, policy: str = "prefix_aware", tokenizer=None,
                  config: EngineConfig | None = None, *, safety_filter: SafetyFilter | None | str = "default"
                  ) -> "Router":
        """n_replicas engines over one model (its weights shared in this process), each its own KV pool."""
        _check_int("n_replicas", n_replicas, 1)
        return cls([LLMEngine(model, tokenizer, config, safety_filter=safety_filter) for _ in range(n_replicas)],
                   policy)

    def add_request(self, prompt, params: SamplingParams | None = None) -> str:
        """Route one request (text or token ids) to a replica; its outputs carry the returned id."""
        ids = self.replicas[0].encode(prompt)
        pages = page_hashes(ids, self.kv_block_size)
        lookup = pages[:max(len(ids) - 1, 0) // self.kv_block_size]  # the pages the block manager looks up
        loads = [len(e.scheduler.waiting) + len(e.scheduler.running) for e in self.replicas]
        matches = [_leading(lookup, engine.bm.hash_to_block, set().union(*pending.values()))
                   for engine, pending in zip(self.replicas, self._pending)]
        index = len(self.where)  # requests routed so far (a refused one takes no number)
        r = choose_replica(self.policy, index, matches, loads, self.routed)
        request_id = self.replicas[r].add_request(ids, params, request_id=str(index))
        self.routed[r] += 1
        self.prompt_tokens[r] += len(ids)
        self.where[request_id] = r
        self._pending[r][request_id] = pages
        return request_id

    def has_unfinished(self) -> bool:
        return any(e.has_unfinished() for e in self.replicas)

    def step(self) -> list[RequestOutput]:
        """One step of every replica that has work; their outputs together."""
        outputs = []
        for engine, pending in zip(self.replicas, self._pending):
            if engine.has_unfinished():
                outputs += engine.step()
            for rid in [rid for rid in pending if rid not in engine.seqs or engine.seqs[rid].status != Status.WAITING]:
                del pending[rid]
        return outputs

    def stats(self) -> dict:
        """{"policy", "replicas": [per replica], "total"}, each with "requests", "hits", "lookups", "hit_rate"
        (the block manager's counters, in pages), "prefill_tokens_requested" (prompt tokens routed there),
        "prefill_tokens_computed" (requested minus the hits' cached tokens, as kv_profile counts them; a preempted
        request's re-admission counts its hits again), "prefill_tokens_saved", "prefill_saved" (the fraction)."""
        rows = [_summary(self.routed[r], e.bm.hits, e.bm.lookups, self.prompt_tokens[r], self.kv_block_size)
                for r, e in enumerate(self.replicas)]
        total = _summary(sum(self.routed), sum(row["hits"] for row in rows), sum(row["lookups"] for row in rows),
                         sum(self.prompt_tokens), self.kv_block_size)
        return {"policy": self.policy, "replicas": rows, "total": total}


def _summary(requests: int, hits: int, lookups: int, requested: int, kv_block_size: int) -> dict:
    saved = hits * kv_block_size
    return {"requests": requests, "hits": hits, "lookups": lookups, "hit_rate": hits / lookups if lookups else 0.0,
            "prefill_tokens_requested": requested, "prefill_tokens_computed": requested - saved,
            "prefill_tokens_saved": saved, "prefill_saved": saved / requested if requested else 0.0}


def simulate_routing(prompts: Seq[Seq[int]], n_replicas: int, policy: str = "prefix_aware", *,
                     kv_block_size: int = 16, cache_blocks_per_replica: int | None = None,
                     max_tokens: int = 16) -> dict:
    """Replay prompts (lists of token ids, in arrival order) over n_replicas without a model.

    Each replica is an LRU set of page hashes (page_hashes) of at most cache_blocks_per_replica pages (None: no
    bound). Request i looks up the pages before the one holding its last token, hits its longest cached chain, and
    then caches all its full pages (its prefix pages most recent, as the engine frees a sequence's tail pages
    first). Load: request i counts as unfinished on its replica for the next max_tokens - 1 arrivals, which is what
    a Router sees when one request arrives per step and each generates max_tokens tokens. With no bound, this is
    exactly the Router's bookkeeping; with a bound it is a model (the engine evicts only what no running sequence
    uses, and its pool also holds the running sequences' own pages and generated tokens, which are not simulated).

    Returns {"policy", "n_replicas", "requests", "hits", "lookups", "hit_rate", "prefill_blocks_saved" (= hits),
    "prefill_tokens_requested", "prefill_tokens_computed", "prefill_tokens_saved", "prefill_saved" (the fraction),
    "evictions", "load" (requests per replica), "replicas" (per replica: requests, hits, lookups, hit_rate),
    "assignment" (the replica of each request), "request_hits" (pages each request found cached)}.
    """
    _check_policy(policy)
    _check_int("n_replicas", n_replicas, 1)
    _check_int("kv_block_size", kv_block_size, 1)
    _check_int("max_tokens", max_tokens, 1)
    if cache_blocks_per_replica is not None:
        _check_int("cache_blocks_per_replica", cache_blocks_per_replica, 1)
    if isinstance(prompts, str) or not len(prompts) or not all(isinstance(p, (list, tuple)) and p for p in prompts):
        raise ValueError("prompts must be a non-empty list of non-empty lists of token ids")
    caches: list[OrderedDict[bytes, None]] = [OrderedDict() for _ in range(n_replicas)]
    ends: list[list[int]] = [[] for _ in range(n_replicas)]  # per replica: arrival index each request finishes by
    routed, hits, lookups = [0] * n_replicas, [0] * n_replicas, [0] * n_replicas
    assignment, request_hits, evictions = [], [], 0
    for i, ids in enumerate(prompts):
        pages = page_hashes(ids, kv_block_size)
        lookup = pages[:(len(ids) - 1) // kv_block_size]
        matches = [_leading(lookup, cache) for cache in caches]
        loads = [sum(end > i for end in e) for e in ends]
        r = choose_replica(policy, i, matches, loads, routed)
        cache = caches[r]
        for h in reversed(pages):
            cache[h] = None
            cache.move_to_end(h)
        while cache_blocks_per_replica is not None and len(cache) > cache_blocks_per_replica:
            cache.popitem(last=False)
            evictions += 1
        ends[r] = [end for end in ends[r] if end > i] + [i + max_tokens]
        routed[r] += 1
        hits[r] += matches[r]
        lookups[r] += len(lookup)
        assignment.append(r)
        request_hits.append(matches[r])
    return {"policy": policy, "n_replicas": n_replicas,
            **_summary(len(prompts), sum(hits), sum(lookups), sum(map(len, prompts)), kv_block_size),
            "prefill_blocks_saved": sum(hits), "evictions": evictions, "load": routed,
            "replicas": [{"requests": routed[r], "hits": hits[r], "lookups": lookups[r],
                          "hit_rate": hits[r] / lookups[r] if lookups[r] else 0.0} for r in range(n_replicas)],
            "assignment": assignment, "request_hits": request_hits}


def shared_prefix_workload(n_requests: int, n_prefixes: int, prefix_len: int, suffix_len: int, *, vocab: int,
                           seed: int = 0) -> list[list[int]]:
    """n_requests prompts of prefix_len + suffix_len random token ids in [0, vocab): each starts with one of
    n_prefixes random system prompts (drawn uniformly for each request) and goes on with a suffix of its own."""
    for name, value, low in (("n_requests", n_requests, 1), ("n_prefixes", n_prefixes, 1),
                             ("prefix_len", prefix_len, 1), ("suffix_len", suffix_len, 1), ("vocab", vocab, 1),
                             ("seed", seed, 0)):
        _check_int(name, value, low)
    rng = random.Random(seed)
    prefixes = [[rng.randrange(vocab) for _ in range(prefix_len)] for _ in range(n_prefixes)]
    return [prefixes[rng.randrange(n_prefixes)] + [rng.randrange(vocab) for _ in range(suffix_len)]
            for _ in range(n_requests)]
