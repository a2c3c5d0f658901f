"""bloomlib.serving.router: routing over engine replicas, and the model-free simulator.

References: one LLMEngine and GPT.generate for the tokens (float64 models, so near-ties cannot flip an argmax);
hit counts from brute force over the prompts (the longest common run of full pages with an earlier prompt on the
same replica; which (prefix, replica) pairs a round robin creates); the tokens the model is actually fed (counted
by wrapping the runner); the real engines' block-manager counters for the simulator."""
import pytest
import torch

from bloomlib import GPT, GPTConfig
from bloomlib.serving import EngineConfig, LLMEngine, SamplingParams
from bloomlib.serving.model_runner import ModelRunner
from bloomlib.serving.router import Router, shared_prefix_workload, simulate_routing


def tiny_gpt(seed=0, d_model=32) -> GPT:
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=64, block_size=64, n_layer=2, n_head=4, n_kv_head=2, d_model=d_model)
    return GPT(cfg).double().eval()


def serve(target, prompts, max_tokens, per_step=1) -> list[list[int]]:
    """Feed per_step prompts before each step of a Router or an LLMEngine (greedy) -> each prompt's new tokens."""
    params, ids, done, todo = SamplingParams(temperature=0, max_tokens=max_tokens), [], {}, list(prompts)
    while todo or target.has_unfinished():
        ids += [target.add_request(p, params) for p in todo[:per_step]]
        todo = todo[per_step:]
        for out in target.step():
            if out.finished:
                done[out.request_id] = out.token_ids
    return [done[i] for i in ids]


def router(model, n, policy, bs=4, **config) -> Router:
    return Router.replicate(model, n, policy, config=EngineConfig(kv_block_size=bs, **config), safety_filter=None)


def common_pages(a, b, bs) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n // bs


def test_routing_changes_where_not_what():
    model = tiny_gpt()
    prompts = shared_prefix_workload(18, 3, 10, 5, vocab=64, seed=1)
    one = serve(LLMEngine(model, None, EngineConfig(kv_block_size=4), safety_filter=None), prompts, 6, per_step=3)
    for i in (0, 7):  # the engine itself against the model's own generation
        want = model.generate(torch.tensor([prompts[i]]), 6, temperature=0)[0, len(prompts[i]):].tolist()
        assert one[i] == want
    used = {}
    for policy in ("round_robin", "prefix_aware"):
        r = router(model, 3, policy)
        assert serve(r, prompts, 6, per_step=3) == one
        used[policy] = [r.where[str(i)] for i in range(len(prompts))]
        assert len(set(used[policy])) > 1
    assert used["round_robin"] != used["prefix_aware"]


def test_prefix_aware_saves_more_prefill_than_round_robin_on_two_replicas(monkeypatch):
    fed = []
    forward = ModelRunner.forward
    monkeypatch.setattr(ModelRunner, "forward", lambda self, tokens, *a, **k: fed.append(sum(map(len, tokens)))
                        or forward(self, tokens, *a, **k))
    n, k, prefix, suffix, bs, new = 24, 3, 16, 6, 4, 3
    prompts = shared_prefix_workload(n, k, prefix, suffix, vocab=64, seed=0)
    model, stats = tiny_gpt(), {}
    for policy in ("round_robin", "prefix_aware"):
        fed.clear()
        r = router(model, 2, policy, bs)
        serve(r, prompts, new)
        s = stats[policy] = r.stats()
        where = [r.where[str(i)] for i in range(n)]
        if policy == "round_robin":
            assert where == [i % 2 for i in range(n)]
        earlier = [[q for q, w in zip(prompts[:i], where) if w == where[i]] for i in range(n)]
        want = [min((len(p) - 1) // bs, max([common_pages(p, q, bs) for q in earlier[i]], default=0))
                for i, p in enumerate(prompts)]
        total = s["total"]
        assert total["hits"] == sum(want) and total["lookups"] == n * ((prefix + suffix - 1) // bs)
        assert [row["hits"] for row in s["replicas"]] == [sum(h for h, w in zip(want, where) if w == j) for j in (0, 1)]
        assert [row["requests"] for row in s["replicas"]] == [where.count(0), where.count(1)]
        assert total["prefill_tokens_requested"] == n * (prefix + suffix)
        # what the model was fed, less one decode token per request for each new token after the first
        assert sum(fed) - n * (new - 1) == total["prefill_tokens_computed"]
    distinct = len({tuple(p[:prefix]) for p in prompts})
    # cache-aware: only the first request of each system prompt misses it; round robin: the first on each replica
    assert stats["prefix_aware"]["total"]["hits"] == (n - distinct) * (prefix // bs)
    assert stats["prefix_aware"]["total"]["hit_rate"] > stats["round_robin"]["total"]["hit_rate"]
    assert stats["prefix_aware"]["total"]["prefill_saved"] > stats["round_robin"]["total"]["prefill_saved"]


def test_prefix_aware_follows_requests_still_waiting_for_their_prefill():
    prompts = shared_prefix_workload(12, 3, 12, 3, vocab=64, seed=2)
    r = router(tiny_gpt(), 3, "prefix_aware")
    for p in prompts:  # a burst: nothing is cached yet, the router knows only where it sent the earlier ones
        r.add_request(p, SamplingParams(temperature=0, max_tokens=2))
    by_prefix = {}
    for i, p in enumerate(prompts):
        by_prefix.setdefault(tuple(p[:12]), set()).add(r.where[str(i)])
    assert all(len(replicas) == 1 for replicas in by_prefix.values())
    while r.has_unfinished():
        r.step()
    assert all(not pending for pending in r._pending)


def test_a_miss_goes_to_the_least_loaded_replica():
    r = router(tiny_gpt(d_model=16), 2, "prefix_aware")
    long, short = SamplingParams(temperature=0, max_tokens=8), SamplingParams(temperature=0, max_tokens=1)
    assert r.where[r.add_request(list(range(10)), long)] == 0      # nothing anywhere: the lowest index
    assert r.where[r.add_request(list(range(20, 30)), short)] == 1  # replica 0 has one unfinished, replica 1 none
    r.step()                                                        # the short one is done, the long one is not
    assert [e.has_unfinished() for e in r.replicas] == [True, False]
    assert r.where[r.add_request(list(range(40, 50)), short)] == 1  # both were sent one; replica 1 has none left
    assert r.where[r.add_request(list(range(10)), short)] == 0      # a hit beats load: replica 0 holds its pages


@pytest.mark.parametrize("policy", ["round_robin", "prefix_aware"])
def test_simulator_agrees_with_the_router(policy):
    """Exact, not within a tolerance: one arrival per step caches each prompt's pages before the next lookup, so
    the simulator's sets are the block managers' tables. Unbounded: pools large enough that nothing is evicted.
    Bounded: max_tokens 1 (a request is done before the next arrives) and prompts ending in a partial page, which
    the engine never caches, so a pool of P pages keeps P - 1 cached ones, evicted least recently used."""
    model = tiny_gpt(d_model=16)
    prompts = shared_prefix_workload(30, 5, 8, 5, vocab=64, seed=3)
    for new, pool, cache in ((4, None, None), (1, 9, 8), (1, 6, 5)):
        r = router(model, 2, policy, num_kv_blocks=pool)
        serve(r, prompts, new)
        sim = simulate_routing(prompts, 2, policy, kv_block_size=4, max_tokens=new, cache_blocks_per_replica=cache)
        real = r.stats()
        assert sum(e.bm.evictions for e in r.replicas) == sim["evictions"] and (sim["evictions"] > 0) == bool(pool)
        assert sim["assignment"] == [r.where[str(i)] for i in range(len(prompts))]
        for key in ("hits", "lookups", "hit_rate", "prefill_tokens_saved", "prefill_saved"):
            assert sim[key] == real["total"][key], key
        assert [row["hits"] for row in sim["replicas"]] == [row["hits"] for row in real["replicas"]]
        assert sim["load"] == [row["requests"] for row in real["replicas"]]


@pytest.mark.parametrize("n_replicas", [2, 4, 8])
def test_round_robin_misses_each_prefix_once_per_replica(n_replicas):
    n, k, prefix, bs = 192, 4, 32, 8
    prompts = shared_prefix_workload(n, k, prefix, 8, vocab=512, seed=0)
    sims = {p: simulate_routing(prompts, n_replicas, p, kv_block_size=bs) for p in ("round_robin", "prefix_aware")}
    misses = {p: sum(h < prefix // bs for h in s["request_hits"]) for p, s in sims.items()}
    pairs = {(tuple(p[:prefix]), i % n_replicas) for i, p in enumerate(prompts)}  # (system prompt, replica) seen
    distinct = len({tuple(p[:prefix]) for p in prompts})
    assert misses["round_robin"] == len(pairs) and misses["prefix_aware"] == distinct
    assert sims["prefix_aware"]["hits"] == (n - distinct) * (prefix // bs)
    # of round robin's prefills of a system prompt, all but one per prompt are repeats: about (N - 1) / N
    repeats = 1 - distinct / misses["round_robin"]
    assert repeats == pytest.approx((n_replicas - 1) / n_replicas, abs=0.5 / n_replicas)
    load = sims["round_robin"]["load"]
    assert sum(load) == n and max(load) - min(load) <= 1


def test_bad_input_names_the_argument():
    model = tiny_gpt(d_model=16)
    with pytest.raises(ValueError, match="policy"):
        router(model, 2, "random")
    with pytest.raises(ValueError, match="n_replicas"):
        router(model, 0, "round_robin")
    with pytest.raises(ValueError, match="kv_block_size"):
        Router([LLMEngine(model, None, EngineConfig(kv_block_size=bs)) for bs in (4, 8)])
    with pytest.raises(ValueError, match="model config"):
        Router([LLMEngine(model), LLMEngine(tiny_gpt(d_model=32))])
    engine = LLMEngine(model)
    with pytest.raises(ValueError, match="same engine"):
        Router([engine, engine])
    with pytest.raises(ValueError, match="replicas"):
        Router([])
    with pytest.raises(ValueError, match=r"replicas\[1\]"):
        Router([engine, model])
    r = router(model, 2, "round_robin")
    with pytest.raises(ValueError, match="prompt"):
        r.add_request([99])  # out of the vocabulary: the replica's own check; the request takes no number
    assert r.add_request([1, 2]) == "0" and r.where == {"0": 0}
    prompts = [[1, 2, 3]]
    for kwargs, name in (({"policy": "nearest"}, "policy"), ({"n_replicas": 0}, "n_replicas"),
                         ({"kv_block_size": 0}, "kv_block_size"), ({"cache_blocks_per_replica": 0},
                                                                   "cache_blocks_per_replica"),
                         ({"max_tokens": 0}, "max_tokens")):
        with pytest.raises(ValueError, match=name):
            simulate_routing(prompts, **{"n_replicas": 2, **kwargs})
    with pytest.raises(ValueError, match="prompts"):
        simulate_routing([], 2)
    with pytest.raises(ValueError, match="n_prefixes"):
        shared_prefix_workload(4, 0, 8, 2, vocab=64, seed=0)
