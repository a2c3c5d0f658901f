"""bloomlib.analysis against references written here from the definitions: float64 quadratic formulas, explicit
loops of plain model forwards, F.cross_entropy, collections.Counter, tensor byte counts."""
from __future__ import annotations

import random
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from bloomlib import GPT, GPTConfig, scaled_dot_product_attention
from bloomlib.analysis import (RollingKVCache, attention_sink_share, dense_nll, distinct_n, linear_attention,
                               linear_attention_weights, loss_by_position, measure, repeated_ngram_rate, sink_heads,
                               sliding_recompute_nll, sliding_window_loss, streaming_nll)
from bloomlib.kernels import flash_attention


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


# ---------------------------------------------------------------- n-gram metrics

def counter_distinct(seqs, n):
    grams = Counter(tuple(s[i:i + n]) for s in seqs for i in range(len(s) - n + 1))
    return len(grams) / sum(grams.values())


def counter_repeated(seqs, n):
    per_seq = [Counter(tuple(s[i:i + n]) for i in range(len(s) - n + 1)) for s in seqs]
    return sum(c - 1 for grams in per_seq for c in grams.values()) / sum(sum(g.values()) for g in per_seq)


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_ngram_metrics_match_counter_on_random_sequences(n):
    rng = random.Random(n)
    seqs = [[rng.randrange(5) for _ in range(rng.randrange(0, 30))] for _ in range(7)]
    assert distinct_n(seqs, n) == pytest.approx(counter_distinct(seqs, n))
    assert repeated_ngram_rate(seqs, n) == pytest.approx(counter_repeated(seqs, n))
    as_tensors = [torch.tensor(s, dtype=torch.long) for s in seqs]
    assert distinct_n(as_tensors, n) == pytest.approx(counter_distinct(seqs, n))
    one = seqs[0] + seqs[1]
    assert distinct_n(torch.tensor(one), n) == pytest.approx(counter_distinct([one], n))
    assert repeated_ngram_rate(one, n) == pytest.approx(counter_repeated([one], n))


def test_ngram_metrics_by_hand():
    assert distinct_n([1, 2, 1, 2, 1], 2) == 0.5               # (1,2) (2,1) (1,2) (2,1): 2 of 4
    assert repeated_ngram_rate([1, 2, 1, 2, 1], 2) == 0.5      # the 3rd and 4th were seen before
    assert distinct_n([1, 2, 1, 2, 1], 1) == 2 / 5
    assert repeated_ngram_rate([1, 2, 1, 2, 1], 1) == 3 / 5
    assert distinct_n([[1, 2], [1, 2]], 2) == 0.5              # corpus-level: the same bigram twice
    assert repeated_ngram_rate([[1, 2], [1, 2]], 2) == 0.0     # but never twice in one sequence
    assert distinct_n(torch.tensor([[3, 3, 3], [4, 5, 6]]), 3) == 1.0
    assert repeated_ngram_rate([7] * 10, 3) == 7 / 8


def test_ngram_metrics_bad_input():
    with pytest.raises(ValueError, match="n must be"):
        distinct_n([1, 2, 3], 0)
    with pytest.raises(ValueError, match="no 4-grams"):
        repeated_ngram_rate([[1, 2, 3], [1]], 4)
    with pytest.raises(ValueError, match="no 1-grams"):
        distinct_n([], 1)
    with pytest.raises(ValueError, match="integer tensor"):
        distinct_n(torch.rand(5), 1)
    with pytest.raises(ValueError, match="list of ints"):
        distinct_n([[1, 2], "ab"], 1)


# ---------------------------------------------------------------- loss against position and context

@pytest.mark.parametrize("batch_size,max_chunks", [(16, None), (3, None), (2, 3)])
def test_loss_by_position_matches_explicit_forwards(batch_size, max_chunks):
    model, ids, length = tiny_gpt("learned"), random_ids(100), 12
    n = 100 // length if max_chunks is None else max_chunks
    per_chunk = []
    for c in range(n):
        chunk = ids[c * length:(c + 1) * length]
        with torch.no_grad():
            per_chunk.append(F.cross_entropy(model(chunk[None, :-1])[0], chunk[1:], reduction="none"))
    ref = torch.stack(per_chunk).mean(0)
    got = loss_by_position(model, ids, length, batch_size=batch_size, max_chunks=max_chunks)
    assert got.shape == (length - 1,) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("length,stride,max_windows", [(16, 4, None), (16, 15, None), (10, 1, None), (16, 5, 3)])
def test_sliding_window_loss_matches_per_target_forwards(length, stride, max_windows):
    """Reference target by target: the window that scores target j starts at s_j (0 for the first window's
    targets), and the prediction is a plain forward over ids[s_j : j]."""
    model, ids = tiny_gpt("learned", seed=2), random_ids(60, seed=3)
    n_windows = (len(ids) - length) // stride + 1 if max_windows is None else max_windows
    last_target = (n_windows - 1) * stride + length - 1
    nll = []
    for j in range(1, last_target + 1):
        start = 0 if j < length else ((j - length) // stride + 1) * stride
        assert start == 0 or j - start >= length - stride  # the context the docstring promises
        nll.append(F.cross_entropy(last_logits(model, ids[start:j]), ids[j]))
    ref = torch.stack(nll).mean().item()
    got = sliding_window_loss(model, ids, length, stride=stride, batch_size=3, max_windows=max_windows)
    assert got == pytest.approx(ref, rel=1e-9)


def test_loss_arguments_are_checked():
    model, ids = tiny_gpt("learned"), random_ids(40)
    with pytest.raises(ValueError, match="stride"):
        sliding_window_loss(model, ids, 10, stride=10)
    with pytest.raises(ValueError, match="length"):
        loss_by_position(model, ids, 66)
    with pytest.raises(ValueError, match="fewer than one chunk"):
        loss_by_position(model, ids[:9], 10)
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 50\)"):
        loss_by_position(model, ids + 50, 10)


# ---------------------------------------------------------------- attention sinks

def test_attention_sink_share_matches_an_explicit_loop():
    w = torch.softmax(torch.randn(3, 2, 7, 7), -1)
    ref = torch.empty(3, 2)
    for b in range(3):
        for h in range(2):
            ref[b, h] = sum(w[b, h, i, 0] for i in range(1, 7)) / 6
    torch.testing.assert_close(attention_sink_share(w), ref)
    with pytest.raises(ValueError, match="n_q >= 2"):
        attention_sink_share(w[..., :1, :])


def test_sink_heads_threshold():
    w = torch.zeros(2, 2, 5, 5)  # (B, H, n_q, n_k): head 0 puts 0.5 on key 0, head 1 puts 0.3 (not more)
    w[:, 0, :, 0], w[:, 0, :, 1] = 0.5, 0.5
    w[:, 1, :, 0], w[:, 1, :, 1] = 0.3, 0.7
    assert sink_heads([w, w.flip(1)]).tolist() == [[True, False], [False, True]]
    assert sink_heads(torch.stack([w, w]), threshold=0.2).tolist() == [[True, True], [True, True]]
    with pytest.raises(ValueError, match="threshold"):
        sink_heads([w], threshold=1.5)
    with pytest.raises(ValueError, match=r"weights_per_layer\[0\]"):
        sink_heads([w[0]])


def test_sink_heads_on_a_model_matches_the_rule():
    model, ids = tiny_gpt("alibi"), random_ids(40).view(2, 20)
    with torch.no_grad():
        _, weights = model(ids, return_attention=True)
    ref = [[float(sum(w[b, h, i, 0] for b in range(2) for i in range(1, 20))) / 38 > 0.3 for h in range(2)]
           for w in weights]
    assert sink_heads(weights).tolist() == ref


# ---------------------------------------------------------------- time and memory

def test_measure_cpu_peak_is_the_bytes_allocated():
    for n in (1, 1000, 12345):
        m = measure(lambda: torch.empty(n, dtype=torch.float64))
        assert m.seconds > 0
        assert m.peak_bytes == n * torch.empty(0, dtype=torch.float64).element_size()


def test_measure_naive_attention_peak_grows_with_n_and_holds_the_score_matrix():
    peaks = {}
    for n in (64, 128, 256, 512):
        q, k, v = (torch.randn(1, 2, n, 16) for _ in range(3))
        peaks[n] = measure(lambda: scaled_dot_product_attention(q, k, v, is_causal=True), repeats=1).peak_bytes
        assert peaks[n] >= q.shape[0] * q.shape[1] * n * n * q.element_size()  # one (B, H, n, n) score tensor
    assert peaks[64] < peaks[128] < peaks[256] < peaks[512]
    tiled = measure(lambda: flash_attention(q, k, v, causal=True, backend="torch"), repeats=1).peak_bytes
    assert 0 < tiled < q.shape[0] * q.shape[1] * 512 * 512 * q.element_size()  # 64 x 64 tiles, never n x n


def test_linear_attention_memory_stays_below_one_score_matrix():
    T = 1024
    q, k, v = (torch.randn(1, 2, T, 16) for _ in range(3))
    score_matrix_bytes = 2 * T * T * 4
    for causal in (False, True):
        peak = measure(lambda: linear_attention(q, k, v, causal=causal), repeats=1, warmup=0).peak_bytes
        assert 0 < peak < score_matrix_bytes / 4, (causal, peak)


def test_measure_prints_nothing_and_survives_an_error_while_profiled(capfd):
    calls = []

    def fails_when_profiled():
        calls.append(1)
        if len(calls) == 3:  # warmup, one timed run, then the profiled run
            raise RuntimeError("boom")
        return torch.ones(10)

    with pytest.raises(RuntimeError, match="boom"):
        measure(fails_when_profiled, repeats=1)
    assert measure(lambda: torch.ones(10)).peak_bytes == 40  # the profiler was stopped: a new one starts
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_measure_arguments():
    with pytest.raises(ValueError, match="callable"):
        measure(42)
    with pytest.raises(ValueError, match="repeats"):
        measure(lambda: None, repeats=0)
    assert measure(lambda: None, warmup=0).peak_bytes == 0


@pytest.mark.gpu
def test_on_cuda():
    q, k, v = (torch.randn(1, 2, 256, 16, device="cuda") for _ in range(3))
    m = measure(lambda: scaled_dot_product_attention(q, k, v))  # device inferred from the result
    assert m.peak_bytes >= 2 * 256 * 256 * 4
    n = 100_000
    assert 4 * n <= measure(lambda: torch.empty(n, device="cuda")).peak_bytes < 4 * n + 2**21
    model, ids = tiny_gpt("alibi").cuda(), random_ids(48).cuda()
    torch.testing.assert_close(streaming_nll(model, ids, window=48), dense_nll(model, ids), rtol=1e-6, atol=1e-6)
    assert streaming_nll(model, ids, window=8, n_sink=2).device.type == "cuda"
    assert linear_attention(q, k, v, causal=True).device.type == "cuda"
