"""The serving engine: paged attention, continuous batching, preemption, prefix cache, sampling, streaming text.

References: torch's sdpa / bloomlib.scaled_dot_product_attention over contiguous K/V, and GPT.generate
(float64 models, so near-ties cannot flip an argmax).
"""
import functools
import random

import pytest
import torch

from bloomlib import GPT, GPTConfig, alibi_bias, alibi_slopes, scaled_dot_product_attention
from bloomlib.attention import MultiHeadAttention
from bloomlib.serving import (LLM, EngineConfig, LLMEngine, PagedKVCache, SafetyFilter, SamplingParams,
                              Sequence)
from bloomlib.tokenizer import ByteBPETokenizer

TEXT = ("The quick brown fox jumps over the lazy dog. Attention is all you need; the cat sat on the mat. "
        "Naïve café, über straße, 東京 and emoji 🙂🚀 too. ") * 4


def tiny_gpt(pos="learned", vocab=64, n_kv_head=2, seed=0, block_size=64, window=None) -> GPT:
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=vocab, block_size=block_size, n_layer=2, n_head=4, n_kv_head=n_kv_head,
                    d_model=32, pos_encoding=pos, sliding_window=window)
    return GPT(cfg).double().eval()


def reference(model: GPT, prompt: list[int], n: int) -> list[int]:
    return model.generate(torch.tensor([prompt]), n, temperature=0)[0, len(prompt):].tolist()


@pytest.mark.parametrize("alibi,window", [(False, None), (True, None), (False, 5)])
def test_paged_cache_attention_equals_contiguous(alibi, window):
    """Sequences fed through one PagedKVCache in uneven chunks (a prefill after a cached prefix, decodes, a
    fresh prompt), their pages scattered over the pool, read back what contiguous attention computes."""
    g = torch.Generator().manual_seed(0)
    H, H_kv, D, ps, num_pages = 4, 2, 8, 4, 32
    attn = MultiHeadAttention(H * D, H, H_kv, causal=True, sliding_window=window)
    cache = PagedKVCache(1, num_pages, ps, H_kv, D, dtype=torch.float64)
    perm = torch.randperm(num_pages, generator=g).tolist()
    lens, cached = [7, 13, 1, 9], [6, 9, 0, 0]  # total length, and how much of it an earlier step stored
    tables = [[perm.pop() for _ in range(-(-n // ps))] for n in lens]
    ks = [torch.randn(1, H_kv, n, D, generator=g, dtype=torch.float64) for n in lens]
    vs = [torch.randn(1, H_kv, n, D, generator=g, dtype=torch.float64) for n in lens]
    qs = [torch.randn(1, H, n, D, generator=g, dtype=torch.float64) for n in lens]
    slopes = alibi_slopes(H).double() if alibi else None
    attend = functools.partial(attn.attend, alibi=slopes)

    def step(starts, ends):  # the sequences that feed tokens, in the order the cache packs them
        rows = [i for i, (s, e) in enumerate(zip(starts, ends)) if e > s]
        rows = [rows[j] for j in cache.packing_order([ends[i] - starts[i] for i in rows])]
        cat = lambda ts: torch.cat([ts[i][:, :, starts[i]:ends[i]] for i in rows], dim=2)
        cache.prepare([starts[i] for i in rows], [ends[i] - starts[i] for i in rows], [tables[i] for i in rows])
        return cache.attend(0, cat(qs), cat(ks), cat(vs), attend)[0], rows

    step([0] * 4, cached)                                   # the cached prefixes
    out, rows = step(cached, lens)                          # the rest in one packed step
    offset = 0
    for i in rows:
        t, n = lens[i] - cached[i], lens[i]
        bias = alibi_bias(slopes, t, n) if alibi else None
        ref, _ = scaled_dot_product_attention(qs[i][:, :, cached[i]:], ks[i], vs[i], is_causal=True, window=window,
                                              bias=bias)
        torch.testing.assert_close(out[:, :, offset:offset + t], ref)
        if not alibi and window is None:  # and torch's own kernel (GQA, end-aligned causal mask)
            mask = torch.ones(t, n, dtype=torch.bool).tril(n - t)
            ref2 = torch.nn.functional.scaled_dot_product_attention(qs[i][:, :, cached[i]:], ks[i], vs[i],
                                                                    attn_mask=mask, enable_gqa=True)
            torch.testing.assert_close(out[:, :, offset:offset + t], ref2)
        offset += t


@pytest.mark.parametrize("pos,n_kv_head,window", [("learned", 4, None), ("rope", 2, None), ("sinusoidal", 1, None),
                                                  ("none", 2, None), ("alibi", 4, None), ("rope", 2, 5),
                                                  ("alibi", 1, 7)])
def test_batched_greedy_equals_one_at_a_time_with_random_arrivals_and_preemption(pos, n_kv_head, window):
    model = tiny_gpt(pos, n_kv_head=n_kv_head, window=window)
    rng = random.Random(1)
    prompts = [[rng.randrange(64) for _ in range(rng.randint(1, 20))] for _ in range(8)]
    max_tokens = [rng.randint(1, 24) for _ in prompts]
    # 14 blocks of 4 tokens cannot hold 8 sequences of up to 44 tokens: preemption must happen
    engine = LLMEngine(model, config=EngineConfig(num_kv_blocks=14, kv_block_size=4, max_num_seqs=8))
    arrivals = sorted(rng.randint(0, 12) for _ in prompts)
    results, step, pending = {}, 0, list(zip(arrivals, prompts, max_tokens))
    while pending or engine.has_unfinished():
        while pending and pending[0][0] <= step:
            _, p, n = pending.pop(0)
            engine.add_request(p, SamplingParams(temperature=0, max_tokens=n), request_id=str(len(results) +
                                                                                             len(engine.seqs)))
        for out in engine.step():
            if out.finished:
                results[out.request_id] = out.token_ids
        step += 1
    assert engine.scheduler.num_preemptions > 0
    assert engine.bm.num_free == engine.bm.num_blocks  # no leaked blocks
    assert all(b.ref_count == 0 for b in engine.bm.blocks)
    one_at_a_time = LLM(model, config=EngineConfig(max_num_seqs=1, kv_block_size=4))
    for i, (p, n) in enumerate(zip(prompts, max_tokens)):
        ref = reference(model, p, n)
        assert results[str(i)] == ref, f"request {i}"
        assert one_at_a_time.generate(p, SamplingParams(temperature=0, max_tokens=n))[0].token_ids == ref


def test_runner_returns_logits_in_the_callers_order_whatever_the_packing():
    """A prefilling sequence given before a decoding one is packed after it; the logits come back in the
    caller's order, equal to the model's own forward pass."""
    from bloomlib.serving import ModelRunner

    model = tiny_gpt("learned")
    runner = ModelRunner(model, num_pages=8, page_size=4)
    b, a = [1, 2, 3, 4], [5, 6, 7, 8, 9]
    runner.forward([b[:3]], [0], [[0, 1]])
    logits = runner.forward([a, b[3:]], [0, 3], [[2, 3], [0, 1]])
    with torch.no_grad():
        ref = torch.stack([model(torch.tensor([a]))[0, -1], model(torch.tensor([b]))[0, -1]])
    torch.testing.assert_close(logits, ref)
    full = runner.forward([[10, 11]], [0], [[4]], last_only=False)[0]
    torch.testing.assert_close(full, model(torch.tensor([[10, 11]]))[0].detach())


def test_a_change_to_the_block_is_served_at_once(monkeypatch):
    """The engine runs the model's own Block: change what a block computes (here, its output is damped) and the
    served greedy tokens follow GPT.generate's new ones, with nothing in serving/ told about it."""
    from bloomlib.blocks import Block

    model = tiny_gpt("rope", n_kv_head=1)
    prompts = [[1, 2, 3, 4, 5], [9, 8, 7]]
    before = [reference(model, p, 10) for p in prompts]
    forward = Block.forward

    def damped(self, x, **kw):
        out, weights = forward(self, x, **kw)
        return 0.5 * out + 0.5 * x, weights

    monkeypatch.setattr(Block, "forward", damped)
    after = [reference(model, p, 10) for p in prompts]
    assert after != before
    outs = LLM(model, config=EngineConfig(kv_block_size=4)).generate(prompts, SamplingParams(temperature=0,
                                                                                              max_tokens=10))
    assert [o.token_ids for o in outs] == after


@pytest.mark.parametrize("over", [dict(prenorm=False, norm="rmsnorm", ffn="swiglu", bias=False, tie_weights=False),
                                  dict(sliding_window=6, pos_encoding="rope", n_kv_head=1)])
def test_other_architectures_match_generate(over):
    torch.manual_seed(3)
    cfg = dict(vocab_size=64, block_size=64, n_layer=2, n_head=4, d_model=32) | over
    model = GPT(GPTConfig(**cfg)).double().eval()
    prompts = [[1, 2, 3, 4, 5, 6, 7, 8, 9], [10, 11]]
    outs = LLM(model, config=EngineConfig(kv_block_size=4)).generate(prompts,
                                                             SamplingParams(temperature=0, max_tokens=15))
    assert [o.token_ids for o in outs] == [reference(model, p, 15) for p in prompts]


def test_prefix_cache_hits_on_shared_system_prompt():
    model = tiny_gpt("rope")
    system = list(range(1, 25))  # 24 tokens = 6 full blocks of 4
    prompts = [system + [40 + i, 50 + i] for i in range(4)]
    llm = LLM(model, config=EngineConfig(kv_block_size=4, num_kv_blocks=64))
    bm = llm.engine.bm
    first = llm.generate(prompts[:1], SamplingParams(temperature=0, max_tokens=5))
    assert bm.hits == 0 and bm.num_cached > 0
    rest = llm.generate(prompts[1:], SamplingParams(temperature=0, max_tokens=5))
    assert bm.hits >= 3 * 6 and bm.hit_rate > 0.5
    for p, out in zip(prompts, first + rest):
        assert out.token_ids == reference(model, p, 5)
    assert bm.num_free == bm.num_blocks


def test_lru_eviction_keeps_outputs_right():
    model = tiny_gpt("learned")
    llm = LLM(model, config=EngineConfig(kv_block_size=4, num_kv_blocks=10))
    rng = random.Random(2)
    for _ in range(6):  # many distinct prompts through a small pool: cached blocks are evicted and reused
        p = [rng.randrange(64) for _ in range(rng.randint(5, 16))]
        assert llm.generate(p, SamplingParams(temperature=0, max_tokens=8))[0].token_ids == reference(model, p, 8)


def test_cancel_frees_blocks_at_once():
    engine = LLMEngine(tiny_gpt(), config=EngineConfig(kv_block_size=4, num_kv_blocks=40))
    a = engine.add_request(list(range(10)), SamplingParams(temperature=0, max_tokens=30))
    b = engine.add_request(list(range(5)), SamplingParams(temperature=0, max_tokens=30))
    engine.step()
    engine.step()
    used = engine.bm.num_used
    engine.abort(a)
    assert engine.bm.num_used < used
    engine.abort(b)
    assert engine.bm.num_free == engine.bm.num_blocks and not engine.has_unfinished()


def test_seeded_sampling_is_per_request_and_top_k_1_is_greedy():
    model = tiny_gpt()
    prompts = [[1, 2, 3], [4, 5], [6]]
    sp = SamplingParams(temperature=0.9, top_p=0.9, max_tokens=12, seed=7)
    batched = [o.token_ids for o in LLM(model).generate(prompts, sp)]
    single = [LLM(model).generate(p, sp)[0].token_ids for p in prompts]
    assert batched == single
    greedy = LLM(model).generate(prompts, SamplingParams(temperature=1.5, top_k=1, max_tokens=12))
    assert [o.token_ids for o in greedy] == [reference(model, p, 12) for p in prompts]


@pytest.fixture(scope="module")
def tok():
    return ByteBPETokenizer.train(TEXT, 300)


def test_text_prompts_stop_strings_and_eos(tok):
    model = tiny_gpt(vocab=tok.vocab_size)
    llm = LLM(model, tok)
    prompt = "The quick brown"
    out = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=30, ignore_eos=True))[0]
    ids = reference(model, tok.encode(prompt), 30)
    assert out.token_ids == ids and out.finish_reason == "length"
    full = tok.decode(ids)
    assert out.text == full
    if len(full) > 4:  # a stop string taken from the output ends it just before the stop
        stop = full[2:4]
        cut = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=30, stop=[stop], ignore_eos=True))[0]
        assert cut.finish_reason == "stop" and cut.text == full[:full.find(stop)]
    # EOS ends a request unless ignore_eos
    eos_model = tiny_gpt(vocab=tok.vocab_size)
    with torch.no_grad():  # every hidden state becomes all-ones, and only <eos>'s logit is large
        eos_model.transformer.final_norm.weight.zero_()
        eos_model.transformer.final_norm.bias.fill_(1.0)
        eos_model.lm_head.weight[tok.eos_id] = 1.0
    out = LLM(eos_model, tok).generate(prompt, SamplingParams(temperature=0, max_tokens=10))[0]
    assert out.finish_reason == "stop" and out.token_ids[-1] == tok.eos_id


def test_streaming_detokenizer_never_splits_utf8(tok):
    text = "naïve 東京 🙂🚀 café"
    ids = tok.encode(text)
    assert any(len(tok.decode_bytes([i])) == 1 and tok.decode_bytes([i])[0] >= 0x80 for i in ids)
    seq = Sequence("0", [0], SamplingParams(max_tokens=len(ids)), tok, safety=None)
    deltas = []
    for i in ids:
        seq.append_token(i, tok.eos_id)
        deltas.append(seq.take_text())
    assert "".join(deltas) == text and all("\ufffd" not in d for d in deltas)


def test_safety_filter_redacts_in_stream_and_is_configurable(tok):
    text = "a shit glass assemble ass! Shit."
    ids = tok.encode(text)
    for blocklist, expected in [(None, "a [redacted] glass assemble ass! [redacted]."),
                                (("ass",), "a shit glass assemble [redacted]! Shit.")]:
        f = SafetyFilter() if blocklist is None else SafetyFilter(blocklist)
        seq = Sequence("0", [0], SamplingParams(max_tokens=len(ids)), tok, safety=f)
        streamed = ""
        for i in ids:
            seq.append_token(i, tok.eos_id)
            streamed += seq.take_text()
        assert streamed == expected
    seq = Sequence("0", [0], SamplingParams(max_tokens=len(ids)), tok, safety=None)
    for i in ids:
        seq.append_token(i, tok.eos_id)
    assert seq.take_text() == text


def test_bad_requests_raise_value_errors():
    engine = LLMEngine(tiny_gpt())
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1)
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)
    with pytest.raises(ValueError, match="max_tokens"):
        SamplingParams(max_tokens=0)
    with pytest.raises(ValueError, match="context"):
        engine.add_request(list(range(60)), SamplingParams(max_tokens=10))
    with pytest.raises(ValueError, match="tokenizer"):
        engine.add_request("text without a tokenizer")
    with pytest.raises(ValueError, match="token ids"):
        engine.add_request([1, 2, 999])
