"""bloomlib.analysis against references written here from the definitions: float64 quadratic formulas, explicit
loops of plain model forwards, F.cross_entropy, collections.Counter, tensor byte counts."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bloomlib import GPT, GPTConfig
from bloomlib.analysis import (RollingKVCache, dense_nll, linear_attention, linear_attention_weights,
                               sliding_recompute_nll, streaming_nll)


def tiny_gpt(pos_encoding: str = "alibi", n_layer: int = 2, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    config = GPTConfig(vocab_size=50, block_size=64, n_layer=n_layer, n_head=2, d_model=16, pos_encoding=pos_encoding)
    return GPT(config).double().eval()


def random_ids(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 50, (n,), generator=torch.Generator().manual_seed(seed))


def last_logits(model: GPT, ids: torch.Tensor) -> torch.Tensor:
    """A plain forward, no cache: the logits at the last position."""
    with torch.no_grad():
        return model(ids[None])[0, -1]


# ---------------------------------------------------------------- linear attention

def quadratic_linear_attention(q, k, v, causal, eps=1e-6):
    """float64: phi(Q) phi(K)^T, masked by torch.tril (end-aligned), normalised row-wise (+ eps), times V."""
    phi = lambda x: F.elu(x.double()) + 1  # noqa: E731
    a = phi(q) @ phi(k).transpose(-2, -1)
    if causal:
        n_q, n_k = q.shape[2], k.shape[2]
        a = a * torch.tril(torch.ones(n_q, n_k, dtype=torch.float64), diagonal=n_k - n_q)
    w = a / (a.sum(-1, keepdim=True) + eps)
    return w @ v.double(), w


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n_q,n_k", [(37, 37), (5, 37), (1, 37), (37, 20)])
@pytest.mark.parametrize("chunk_size", [1, 8, 64])
def test_linear_attention_matches_quadratic_formula(causal, n_q, n_k, chunk_size):
    g = torch.Generator().manual_seed(n_q * 100 + n_k)
    q, k = torch.randn(2, 3, n_q, 8, generator=g), torch.randn(2, 3, n_k, 8, generator=g)
    v = torch.randn(2, 3, n_k, 5, generator=g)
    ref_out, ref_w = quadratic_linear_attention(q, k, v, causal)
    out = linear_attention(q.double(), k.double(), v.double(), causal=causal, chunk_size=chunk_size)
    assert out.shape == (2, 3, n_q, 5) and out.dtype == torch.float64
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-10)
    w = linear_attention_weights(q.double(), k.double(), causal=causal)
    torch.testing.assert_close(w, ref_w, rtol=1e-10, atol=1e-10)
    out32 = linear_attention(q, k, v, causal=causal, chunk_size=chunk_size)
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), ref_out, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_linear_attention_weights_rows_sum_to_one_and_reproduce_the_output(causal):
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, 16, 4, generator=g) for _ in range(3))
    w = linear_attention_weights(q, k, causal=causal)
    assert w.shape == (1, 2, 16, 16)
    torch.testing.assert_close(w.sum(-1), torch.ones(1, 2, 16))
    if causal:
        assert (w.triu(1) == 0).all()
    torch.testing.assert_close(w @ v, linear_attention(q, k, v, causal=causal))


@pytest.mark.parametrize("shapes,match", [
    (((1, 2, 4, 8), (1, 2, 5, 8), (1, 2, 6, 8)), "length"),
    (((1, 2, 4, 8), (1, 2, 5, 4), (1, 2, 5, 8)), "head_dim"),
    (((1, 2, 4, 8), (1, 3, 5, 8), (1, 3, 5, 8)), "heads"),
    (((2, 2, 4, 8), (1, 2, 5, 8), (1, 2, 5, 8)), "batch"),
    (((2, 4, 8), (2, 5, 8), (2, 5, 8)), "4-D"),
])
def test_linear_attention_bad_shapes_raise(shapes, match):
    q, k, v = (torch.randn(*s) for s in shapes)
    with pytest.raises(ValueError, match=match):
        linear_attention(q, k, v)


def test_linear_attention_bad_dtypes_raise():
    q = torch.randn(1, 1, 4, 8)
    with pytest.raises(ValueError, match="floating point"):
        linear_attention(q, q.long(), q)
    with pytest.raises(ValueError, match="float64"):
        linear_attention(q, q.double(), q)
    with pytest.raises(ValueError, match="chunk_size"):
        linear_attention(q, q, q, causal=True, chunk_size=0)


# ---------------------------------------------------------------- StreamingLLM

@pytest.mark.parametrize("pos_encoding", ["alibi", "none"])
@pytest.mark.parametrize("n_sink", [0, 4])
def test_streaming_equals_dense_when_the_window_holds_the_text(pos_encoding, n_sink):
    model, ids = tiny_gpt(pos_encoding), random_ids(48)
    with torch.no_grad():
        ref = F.cross_entropy(model(ids[None])[0, :-1], ids[1:], reduction="none")
    streamed = streaming_nll(model, ids, window=48, n_sink=n_sink)
    assert streamed.shape == (47,) and streamed.dtype == torch.float32
    torch.testing.assert_close(streamed.double(), ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(dense_nll(model, ids).double(), ref, rtol=1e-6, atol=1e-6)


def kept_by_definition(t: int, window: int, n_sink: int) -> list[int]:
    """After feeding tokens 0..t: the first n_sink ever fed and the most recent window - n_sink."""
    sinks = set(range(min(n_sink, t + 1)))
    recent = set(range(max(0, t + 1 - (window - n_sink)), t + 1))
    return sorted(sinks | recent)


@pytest.mark.parametrize("pos_encoding", ["alibi", "none"])
@pytest.mark.parametrize("n_sink", [0, 4])
def test_one_layer_streamed_logits_equal_a_plain_forward_over_the_kept_tokens(pos_encoding, n_sink):
    # With one layer a key depends on its token only, so the cache is exactly "the kept tokens, re-positioned".
    model, ids, window = tiny_gpt(pos_encoding, n_layer=1), random_ids(40), 12
    cache = RollingKVCache.for_model(model, window, n_sink)
    with torch.no_grad():
        for t in range(len(ids)):
            streamed = model(ids[None, t:t + 1], kv_cache=cache)[0, -1]
            kept = kept_by_definition(t, window, n_sink)
            assert cache.kept.tolist() == kept and cache.length <= window and cache.n_fed == t + 1
            torch.testing.assert_close(streamed, last_logits(model, ids[kept]), rtol=1e-10, atol=1e-10)


def test_one_layer_streaming_without_sinks_equals_sliding_recompute():
    model, ids = tiny_gpt("alibi", n_layer=1), random_ids(40)
    torch.testing.assert_close(streaming_nll(model, ids, window=10), sliding_recompute_nll(model, ids, window=10))


def test_sinks_change_what_a_deep_model_predicts_once_tokens_are_evicted():
    model, ids = tiny_gpt("alibi"), random_ids(40)
    no_sink, sink = streaming_nll(model, ids, window=10), streaming_nll(model, ids, window=10, n_sink=4)
    torch.testing.assert_close(no_sink[:9], sink[:9])  # nothing evicted yet
    assert not torch.allclose(no_sink[10:], sink[10:])


def test_a_prompt_fed_at_once_then_tokens_one_at_a_time():
    model, ids, window = tiny_gpt("alibi"), random_ids(30), 12
    one_by_one = RollingKVCache.for_model(model, window, n_sink=2)
    at_once = RollingKVCache.for_model(model, window, n_sink=2)
    with torch.no_grad():
        singles = torch.stack([model(ids[None, t:t + 1], kv_cache=one_by_one)[0, -1] for t in range(len(ids))])
        prompt = model(ids[None, :8], kv_cache=at_once)[0]
        torch.testing.assert_close(prompt, model(ids[None, :8])[0], rtol=1e-10, atol=1e-10)
        prompt2 = model(ids[None, 8:12], kv_cache=at_once)[0]  # fills the window exactly
        rest = torch.stack([model(ids[None, t:t + 1], kv_cache=at_once)[0, -1] for t in range(12, len(ids))])
        with pytest.raises(ValueError, match="one at a time"):
            model(ids[None, :2], kv_cache=at_once)  # would need eviction inside the chunk
    torch.testing.assert_close(torch.cat([prompt, prompt2, rest]), singles, rtol=1e-10, atol=1e-10)
    assert at_once.kept.tolist() == one_by_one.kept.tolist() == kept_by_definition(len(ids) - 1, window, 2)


@pytest.mark.parametrize("pos_encoding,why", [("rope", "rotated"), ("learned", "added to the input"),
                                              ("sinusoidal", "added to the input")])
def test_rolling_cache_refuses_models_whose_keys_carry_positions(pos_encoding, why):
    model, ids = tiny_gpt(pos_encoding), random_ids(20)
    with pytest.raises(ValueError, match=f"'{pos_encoding}'.*{why}"):
        RollingKVCache.for_model(model, 16)
    with pytest.raises(ValueError, match=pos_encoding):
        streaming_nll(model, ids, window=16)


def test_rolling_cache_arguments_are_checked():
    model = tiny_gpt("alibi")
    with pytest.raises(ValueError, match="block_size is 64"):
        RollingKVCache.for_model(model, 65)
    with pytest.raises(ValueError, match="n_sink"):
        RollingKVCache(2, window=4, n_sink=4)
    with pytest.raises(ValueError, match="n_sink"):
        RollingKVCache(2, window=4, n_sink=-1)
    with pytest.raises(ValueError, match="window"):
        RollingKVCache(2, window=0)
    cache = RollingKVCache(1, window=4)
    with pytest.raises(ValueError, match="positions"):
        cache.attend(0, *(torch.zeros(1, 1, 1, 2) for _ in range(3)), attend=None)
    with pytest.raises(ValueError, match="ids must be a 1-D"):
        streaming_nll(model, random_ids(10)[None], window=8)
    with pytest.raises(ValueError, match="block_size"):
        dense_nll(model, random_ids(65))


@pytest.mark.parametrize("pos_encoding", ["alibi", "learned"])
@pytest.mark.parametrize("batch_size", [1, 4])
def test_sliding_recompute_matches_an_explicit_loop(pos_encoding, batch_size):
    model, ids, window = tiny_gpt(pos_encoding), random_ids(30), 8
    ref = torch.stack([F.cross_entropy(last_logits(model, ids[max(0, t - window + 1):t + 1]), ids[t + 1])
                       for t in range(len(ids) - 1)])
    got = sliding_recompute_nll(model, ids, window=window, batch_size=batch_size)
    assert got.shape == (29,) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), ref, rtol=1e-6, atol=1e-6)
    short = ids[:6]  # shorter than the window: every prediction sees its whole prefix
    torch.testing.assert_close(sliding_recompute_nll(model, short, window=window), dense_nll(model, short))
