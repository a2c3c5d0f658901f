"""bloomlib.sampling against plain-Python references of temperature, top-k, top-p and the CTRL penalty."""
import math

import pytest
import torch

import bloomlib
from bloomlib.sampling import (apply_repetition_penalty, check_sampling_args, filter_logits, sample_next_token,
                               top_k_filter, top_p_filter)


def softmax(xs):
    m = max(x for x in xs if x != -math.inf)
    e = [math.exp(x - m) if x != -math.inf else 0.0 for x in xs]
    s = sum(e)
    return [v / s for v in e]


def reference_distribution(logits, temperature=1.0, top_k=None, top_p=None):
    """Plain Python: divide by T, keep the k largest, then the smallest most-likely set whose mass reaches p
    (the token that crosses p included), renormalise."""
    xs = [x / temperature for x in logits]
    order = sorted(range(len(xs)), key=lambda i: -xs[i])
    keep = set(order[:top_k] if top_k is not None else order)
    if top_p is not None:
        probs = softmax([xs[i] if i in keep else -math.inf for i in range(len(xs))])
        kept, mass = set(), 0.0
        for i in order:
            if i not in keep:
                continue
            kept.add(i)
            mass += probs[i]
            if mass >= top_p:
                break
        keep = kept
    return softmax([xs[i] if i in keep else -math.inf for i in range(len(xs))])


def test_temperature_zero_is_argmax():
    logits = torch.randn(16, 50, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sample_next_token(logits, temperature=0.0), logits.argmax(-1))
    assert torch.equal(sample_next_token(logits, 0.0, top_k=3, top_p=0.5), logits.argmax(-1))


def test_top_k_support_size():
    logits = torch.randn(4, 30, generator=torch.Generator().manual_seed(1))
    for k in (1, 5, 30, 100):
        kept = top_k_filter(logits, k).isfinite()
        assert (kept.sum(-1) == min(k, 30)).all()
        expected = torch.zeros_like(kept).scatter(-1, logits.topk(min(k, 30), -1).indices, True)
        assert torch.equal(kept, expected)
    g = torch.Generator().manual_seed(2)
    draws = sample_next_token(logits[:1].expand(4000, -1), temperature=1.0, top_k=5, generator=g)
    assert set(draws.tolist()) == set(logits[0].topk(5).indices.tolist())  # all 5 seen, nothing else


@pytest.mark.parametrize("p", [0.05, 0.3, 0.5, 0.75, 0.9, 0.99, 1.0])
def test_top_p_keeps_the_smallest_set_reaching_p(p):
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(6, 12, generator=g, dtype=torch.float64) * 2
    kept = top_p_filter(logits, p).isfinite()
    for row in range(6):
        ref = reference_distribution(logits[row].tolist(), top_p=p)
        assert kept[row].tolist() == [q > 0 for q in ref]


def test_top_p_includes_the_token_that_crosses_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert top_p_filter(logits, 0.6).isfinite().tolist() == [[True, True, False, False]]  # 0.5 < 0.6 <= 0.8
    assert top_p_filter(logits, 0.4).isfinite().tolist() == [[True, False, False, False]]


def test_temperature_is_applied_before_top_p():
    logits = torch.tensor([[2.0, 1.0, 0.0]])
    # top-p 0.9 keeps 2 tokens at T=1 (probs ~ [0.665, 0.245, 0.090]), 3 at T=2 ([0.506, 0.307, 0.186])
    # and 1 at T=0.25 ([0.982, ...]): top-p before temperature would keep 2 in every case
    for t, n in ((1.0, 2), (2.0, 3), (0.25, 1)):
        ref = reference_distribution(logits[0].tolist(), temperature=t, top_p=0.9)
        assert sum(q > 0 for q in ref) == n
        assert filter_logits(logits, t, top_p=0.9).isfinite().sum().item() == n
    g = torch.Generator().manual_seed(4)
    draws = sample_next_token(logits.expand(3000, -1), temperature=2.0, top_p=0.9, generator=g)
    assert set(draws.tolist()) == {0, 1, 2}
    draws = sample_next_token(logits.expand(3000, -1), temperature=0.25, top_p=0.9, generator=g)
    assert set(draws.tolist()) == {0}


def test_draws_match_the_filtered_distribution():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(1, 10, generator=g)
    T, k, p = 0.8, 6, 0.9
    ref = reference_distribution(logits[0].tolist(), temperature=T, top_k=k, top_p=p)
    filtered = torch.softmax(filter_logits(logits.double(), T, k, p), -1)[0].tolist()
    for a, b in zip(filtered, ref):
        assert abs(a - b) < 1e-9
    n = 20000
    draws = sample_next_token(logits.expand(n, -1), T, k, p, generator=torch.Generator().manual_seed(6))
    counts = torch.bincount(draws, minlength=10).tolist()
    assert all(c == 0 for c, q in zip(counts, ref) if q == 0)
    chi2 = sum((c - n * q) ** 2 / (n * q) for c, q in zip(counts, ref) if q > 0)
    df = sum(q > 0 for q in ref) - 1
    assert df >= 2
    assert chi2 < 30, (chi2, counts, ref)  # p ~ 1e-5 for df <= 6; the seed is fixed, so this is deterministic


def test_repetition_penalty_is_ctrl_style():
    logits = torch.tensor([[2.0, -1.0, 0.5, -3.0, 4.0], [1.0, 1.0, -2.0, -2.0, 0.0]])
    previous = torch.tensor([[0, 1, 1], [2, 4, 4]])
    out = apply_repetition_penalty(logits, previous, 2.0)
    for b in range(2):
        seen = set(previous[b].tolist())
        for j in range(5):
            x = logits[b, j].item()
            expected = (x / 2.0 if x > 0 else x * 2.0) if j in seen else x
            assert out[b, j].item() == pytest.approx(expected)
    assert torch.equal(apply_repetition_penalty(logits, previous, 1.0), logits)


@pytest.mark.parametrize("kwargs,word", [
    (dict(temperature=-1.0), "temperature"), (dict(temperature=float("nan")), "temperature"),
    (dict(top_k=0), "top_k"), (dict(top_k=2.5), "top_k"),
    (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"),
    (dict(repetition_penalty=0.0), "repetition_penalty"),
])
def test_bad_sampling_args_raise(kwargs, word):
    with pytest.raises(ValueError, match=word):
        check_sampling_args(**kwargs)
    model = bloomlib.GPT(bloomlib.GPTConfig.preset("tiny"))
    with pytest.raises(ValueError, match=word):
        model.generate(torch.zeros(1, 2, dtype=torch.long), 2, **kwargs)


def test_sample_next_token_bad_logits_rank():
    with pytest.raises(ValueError, match="logits"):
        sample_next_token(torch.randn(10))


def tiny_gpt(seed=0, **over):
    torch.manual_seed(seed)
    model = bloomlib.GPT(bloomlib.GPTConfig.preset("tiny", **over)).eval()
    with torch.no_grad():  # sharper-than-init weights, so that outputs depend strongly on the input
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model


def test_generate_stop_tokens_fill_finished_rows():
    model = tiny_gpt(1)
    stops = list(range(0, 64, 4))  # a quarter of the vocabulary
    prompt = torch.randint(1, 64, (12, 3), generator=torch.Generator().manual_seed(7))
    out = model.generate(prompt, 25, temperature=1.0, stop_tokens=stops, generator=torch.Generator().manual_seed(8))
    assert torch.equal(out[:, :3], prompt)
    new = out[:, 3:].tolist()
    first_stops = []
    for row in new:
        hit = next((t for t, tok in enumerate(row) if tok in stops), None)
        first_stops.append(hit)
        if hit is not None:
            assert all(tok == row[hit] for tok in row[hit:]), row
    assert sum(h is not None for h in first_stops) >= 2 and len(set(first_stops)) >= 2  # rows stop at different times
    if all(h is not None for h in first_stops):  # generation ends once every row has stopped
        assert len(new[0]) == max(first_stops) + 1
    else:
        assert len(new[0]) == 25


def test_generate_stops_early_when_every_row_stops():
    model = tiny_gpt(2)
    prompt = torch.randint(0, 64, (3, 2), generator=torch.Generator().manual_seed(9))
    out = model.generate(prompt, 10, temperature=0.0, stop_tokens=range(64))
    assert out.shape == (3, 3)


def test_repetition_penalty_reduces_repeats():
    model = tiny_gpt(3)
    prompt = torch.randint(0, 64, (8, 4), generator=torch.Generator().manual_seed(10))

    def repeats(out):
        return sum(len(r) - len(set(r)) for r in out[:, 4:].tolist())

    plain = repeats(model.generate(prompt, 24, temperature=0.0))
    penalised = repeats(model.generate(prompt, 24, temperature=0.0, repetition_penalty=5.0))
    assert plain > 0 and penalised < plain, (plain, penalised)


def test_generate_greedy_matches_argmax_loop():
    model = tiny_gpt(4)
    idx = torch.randint(0, 64, (2, 3), generator=torch.Generator().manual_seed(11))
    out = model.generate(idx, 6, temperature=0.0)
    ref = idx
    with torch.no_grad():
        for _ in range(6):
            ref = torch.cat([ref, model(ref)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, ref)
