"""Speculative decoding (greedy identity, exact output distribution) and weight-only quantization."""
import pytest
import torch
import torch.nn.functional as F

from bloomlib import GPT, GPTConfig
from bloomlib.sampling import filter_logits
from bloomlib.serving import LLM, SamplingParams
from bloomlib.serving.quantization import Int4Linear, Int8Linear, quantize_model, weight_bytes
from bloomlib.serving.speculative import SpeculativeDecoder


def gpt(seed, vocab=64, n_layer=2, d_model=32, pos="learned", std=None) -> GPT:
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=vocab, block_size=64, n_layer=n_layer, n_head=2, d_model=d_model,
                          pos_encoding=pos, tie_weights=std is None))
    if std is not None:  # an untied head: sharper, less uniform next-token distributions than GPT-2's init
        torch.nn.init.normal_(model.lm_head.weight, std=std)
    return model.double().eval()


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_speculative_greedy_equals_target_greedy(pos):
    target, draft = gpt(0, pos=pos, std=0.2), gpt(1, n_layer=1, d_model=16, pos=pos, std=0.2)
    spec = SpeculativeDecoder(target, draft, k=3)
    for prompt in ([1, 2, 3], [5], list(range(10, 30))):
        out = spec.generate(prompt, SamplingParams(temperature=0, max_tokens=25))
        ref = target.generate(torch.tensor([prompt]), 25, temperature=0)[0, len(prompt):].tolist()
        assert out.completion_ids == ref
    s = spec.stats
    assert s.generated == 75 and s.target_passes < s.generated + 3
    # a draft that is the target itself is always right: k + 1 tokens per target pass
    same = SpeculativeDecoder(target, target, k=4)
    out = same.generate([1, 2, 3], SamplingParams(temperature=0, max_tokens=20))
    assert same.stats.acceptance_rate == 1.0 and same.stats.target_passes == 4
    assert out.completion_ids == target.generate(torch.tensor([[1, 2, 3]]), 20, temperature=0)[0, 3:].tolist()


def test_speculative_sampling_matches_target_distribution():
    """Chi-square of the first two sampled tokens' joint frequencies against the target's exact probabilities."""
    V, N = 8, 2000
    target = gpt(0, vocab=V, n_layer=1, d_model=16, std=0.3)
    draft = gpt(5, vocab=V, n_layer=1, d_model=16, std=0.3)
    params = dict(temperature=0.9, top_k=6)
    prompt = [1, 2]
    with torch.no_grad():  # exact joint P(a, b) = p(a | prompt) p(b | prompt, a), from the target alone
        p1 = torch.softmax(filter_logits(target(torch.tensor([prompt]))[0, -1], **params), -1)
        seqs = torch.tensor([prompt + [a] for a in range(V)])
        p2 = torch.softmax(filter_logits(target(seqs)[:, -1], **params), -1)
    expected = (p1[:, None] * p2).flatten() * N
    spec = SpeculativeDecoder(target, draft, k=3)
    counts = torch.zeros(V * V, dtype=torch.float64)
    for i in range(N):
        out = spec.generate(prompt, SamplingParams(max_tokens=2, seed=i, **params))
        a, b = out.completion_ids
        counts[a * V + b] += 1
    assert counts[expected == 0].sum() == 0  # nothing outside the top-k
    assert 0.05 < spec.stats.acceptance_rate < 0.99  # both the accept and the resample paths ran
    big = expected >= 5
    obs = torch.cat([counts[big], counts[~big].sum()[None]])
    exp = torch.cat([expected[big], expected[~big].sum()[None]])
    chi2 = float(((obs - exp) ** 2 / exp).sum())
    df = len(obs) - 1
    p_value = float(torch.special.gammaincc(torch.tensor(df / 2.0), torch.tensor(chi2 / 2.0)))
    assert p_value > 1e-3, (chi2, df)


def test_int8_per_channel_and_int4_groupwise_round_trip():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 24).double()
    w = lin.weight.detach()
    q8 = Int8Linear(lin)
    scale8 = w.abs().amax(1, keepdim=True) / 127  # symmetric per output channel
    assert q8.qweight.dtype == torch.int8 and q8.qweight.abs().max() <= 127
    assert ((q8.dequantize() - w).abs() <= scale8 / 2 + 1e-12).all()
    q4 = Int4Linear(lin, group_size=16)
    assert q4.qweight.dtype == torch.uint8 and q4.qweight.shape == (24, 32)
    g = w.view(24, 4, 16)
    step = ((g.amax(-1).clamp(min=0) - g.amin(-1).clamp(max=0)) / 15)[..., None]
    assert ((q4.dequantize().view(24, 4, 16) - g).abs() <= step * 0.5 + 1e-9).all()  # half a step per group
    x = torch.randn(5, 64, dtype=torch.float64)
    torch.testing.assert_close(q8(x), F.linear(x, q8.dequantize(), lin.bias))
    with pytest.raises(ValueError, match="group_size"):
        Int4Linear(lin, group_size=48)


def test_quantized_model_bytes_loss_and_serving():
    model = gpt(0, vocab=64, d_model=64)
    data = torch.randint(0, 64, (4, 33), generator=torch.Generator().manual_seed(0))

    def loss(m):
        with torch.no_grad():
            return float(F.cross_entropy(m(data[:, :-1]).flatten(0, 1), data[:, 1:].flatten()))

    base_bytes = weight_bytes(model)
    linear_bytes = sum(m.weight.numel() * m.weight.element_size() for m in model.modules()
                       if isinstance(m, torch.nn.Linear) and m is not model.lm_head)
    for bits in (8, 4):
        q = quantize_model(model, bits=bits, group_size=32)
        assert sum(isinstance(m, (Int8Linear, Int4Linear)) for m in q.modules()) == 2 * 4  # qkv, o, up, down
        assert q.lm_head.weight is q.transformer.tok_emb.weight  # tied head kept as is
        saved = base_bytes - weight_bytes(q)
        assert saved > linear_bytes * (0.8 if bits == 8 else 0.9)  # float64 -> 1 byte or half a byte
        assert abs(loss(q) - loss(model)) < 0.05
        # the engine runs quantized weights too, and agrees with the quantized model's own generate
        prompt = [3, 1, 4, 1, 5]
        ref = q.generate(torch.tensor([prompt]), 10, temperature=0)[0, 5:].tolist()
        assert LLM(q).generate(prompt, SamplingParams(temperature=0, max_tokens=10))[0].token_ids == ref
    with pytest.raises(ValueError, match="bits"):
        quantize_model(model, bits=3)


@pytest.mark.slow
def test_bench_serve_json_runs(capsys):
    import json

    from bloomlib.serving import bench

    assert bench.main(["--json", "--requests", "4", "--hf-requests", "4", "--repeat", "2", "--spec-requests", "1",
                       "--spec-max-tokens", "8"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["throughput"]["repeat"] == 2
    hf = report["vs_transformers"]  # transformers' own generate on the exported weights: the same greedy tokens
    assert hf is not None and hf["identical_greedy_requests"] == hf["requests"] == 4
    with pytest.raises(SystemExit):
        bench.main(["--repeat", "0"])
    assert "--repeat must be at least 1" in capsys.readouterr().err
    kv = report["kv_memory"]
    assert kv["contiguous_utilization"] < kv["paged_utilization"] <= 1.0
    assert report["quantization"]["int4"]["weight_bytes"] < report["quantization"]["int8"]["weight_bytes"] < \
        report["quantization"]["fp32"]["weight_bytes"]
    assert 0 < report["speculative"]["greedy"]["target_passes_per_token"] <= 1.0
