"""GPT: KV-cache decoding vs full recomputation, parameter counts, a short training run, and bad input."""
import pytest
import torch
import torch.nn.functional as F

import bloomlib
from bloomlib import GPT, GPTConfig, count_parameters
from bloomlib.training.data import reverse_task


def sharp_model(seed=0, backend="sdpa", **over) -> GPT:
    """A tiny float64 GPT with larger-than-init random weights, so attention is far from uniform and a wrong
    position, mask or cache entry changes the logits visibly."""
    torch.manual_seed(seed)
    cfg = GPTConfig.preset("tiny", **{"block_size": 12, "n_head": 4, **over})
    model = GPT(cfg).double().eval()
    model.set_attention_backend(backend)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model


CACHE_CASES = [
    dict(pos_encoding="learned"),
    dict(pos_encoding="sinusoidal"),
    dict(pos_encoding="rope"),
    dict(pos_encoding="alibi"),
    dict(pos_encoding="none"),
    dict(pos_encoding="rope", n_kv_head=2),
    dict(pos_encoding="alibi", n_kv_head=1),
    dict(pos_encoding="learned", sliding_window=3),
    dict(pos_encoding="rope", sliding_window=4, n_kv_head=2),
    dict(pos_encoding="alibi", sliding_window=2, backend="math"),
    dict(pos_encoding="learned", n_kv_head=2, backend="math"),
    dict(pos_encoding="rope", n_kv_head=2, sliding_window=3, backend="flash"),
]


@pytest.mark.parametrize("over", CACHE_CASES, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_kv_cache_step_logits_equal_full_recomputation(over):
    model = sharp_model(**over)
    idx = torch.randint(0, 64, (2, 4), generator=torch.Generator().manual_seed(1))
    cache = model.new_kv_cache()
    with torch.no_grad():
        step = model(idx, kv_cache=cache)
        torch.testing.assert_close(step, model(idx))
        for _ in range(12 - 4):
            nxt = step[:, -1].argmax(-1, keepdim=True)
            idx = torch.cat([idx, nxt], 1)
            step = model(nxt, kv_cache=cache)
            full = model(idx)
            assert cache.length == idx.shape[1]
            torch.testing.assert_close(step[:, -1], full[:, -1], atol=1e-10, rtol=1e-10)
        # several new tokens at once (a chunked prefill) also match
        cache = model.new_kv_cache()
        model(idx[:, :5], kv_cache=cache)
        torch.testing.assert_close(model(idx[:, 5:], kv_cache=cache), full[:, 5:], atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("over", CACHE_CASES, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_greedy_generation_with_cache_equals_recomputation_past_the_window(over):
    model = sharp_model(**over)
    block = model.config.block_size
    idx = torch.randint(0, 64, (2, 5), generator=torch.Generator().manual_seed(2))
    n_new = 2 * block  # runs past the context window: the oldest tokens are dropped
    ref = idx
    with torch.no_grad():
        for _ in range(n_new):
            ref = torch.cat([ref, model(ref[:, -block:])[:, -1].argmax(-1, keepdim=True)], 1)
    cached = model.generate(idx, n_new, temperature=0.0, use_cache=True)
    assert torch.equal(cached, ref)
    assert torch.equal(model.generate(idx, n_new, temperature=0.0, use_cache=False), ref)


def test_positional_encoding_changes_the_output():
    """Guards the cache tests above against a model that ignores positions: the same tokens, permuted earlier
    in the sequence, change the last logits for every scheme but 'none' (with one layer, the last query sees
    the previous tokens as a set, so its output is permutation-invariant)."""
    idx = torch.tensor([[1, 2, 3, 4, 5]])
    perm = torch.tensor([[3, 1, 4, 2, 5]])
    for pos in ("learned", "sinusoidal", "rope", "alibi", "none"):
        model = sharp_model(pos_encoding=pos, n_layer=1)
        with torch.no_grad():
            same = torch.allclose(model(idx)[:, -1], model(perm)[:, -1], atol=1e-9)
        assert same == (pos == "none"), pos


def test_return_attention_weights():
    model = sharp_model(pos_encoding="rope", sliding_window=3)
    idx = torch.randint(0, 64, (2, 6))
    logits, weights = model(idx, return_attention=True)
    assert len(weights) == model.config.n_layer
    for w in weights:
        assert w.shape == (2, 4, 6, 6)
        torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, 6, dtype=w.dtype))
        assert (w.triu(1) == 0).all() and (w.tril(-3) == 0).all()
    torch.testing.assert_close(logits, model(idx))


# --- attention-only blocks (ffn="none") --------------------------------------------------------------------------

@pytest.mark.parametrize("prenorm", [True, False])
def test_attention_only_block_is_its_attention_sublayer_alone(prenorm):
    """ffn="none": no FFN and no norm2 (d_ff ignored); the block computes x + attn(norm1(x)) (pre-LN) or
    norm1(x + attn(x)) (post-LN), recomputed here from its attention weights with plain matmuls."""
    from bloomlib.blocks import Block

    torch.manual_seed(0)
    cfg = GPTConfig.preset("tiny", ffn="none", d_ff=7, prenorm=prenorm)
    block = Block(cfg).double().eval()
    assert block.ffn is None and block.norm2 is None
    assert not any(p.shape[0] == 7 or p.shape[-1] == 7 for p in block.parameters())
    x = torch.randn(2, 5, cfg.d_model, dtype=torch.float64)
    out, weights = block(x, need_weights=True)
    a = block.attn
    h = block.norm1(x) if prenorm else x
    q, k, v = a.qkv_proj(h).split(cfg.d_model, dim=-1)
    heads = lambda t: t.view(2, 5, cfg.n_head, cfg.head_dim).transpose(1, 2)  # noqa: E731
    scores = heads(q) @ heads(k).transpose(-1, -2) / cfg.head_dim ** 0.5
    w = scores.masked_fill(~torch.ones(5, 5, dtype=torch.bool).tril(), float("-inf")).softmax(-1)
    mixed = a.o_proj((w @ heads(v)).transpose(1, 2).reshape(2, 5, cfg.d_model))
    torch.testing.assert_close(weights["self"], w)
    torch.testing.assert_close(out, x + mixed if prenorm else block.norm1(x + mixed))


def test_attention_only_gpt_counts_trains_and_generates_with_its_cache():
    cfg = GPTConfig.preset("tiny", ffn="none", tie_weights=False)
    model = GPT(cfg)
    d, V, T, L = cfg.d_model, cfg.vocab_size, cfg.block_size, cfg.n_layer
    per_block = 2 * d + 3 * d * d + 3 * d + d * d + d  # norm1, qkv (+ bias), o_proj (+ bias)
    assert count_parameters(model) == direct_count(model) == 2 * V * d + T * d + L * per_block + 2 * d
    model = sharp_model(ffn="none")
    prompt = torch.randint(0, 64, (2, 4), generator=torch.Generator().manual_seed(1))
    cached = model.generate(prompt, 8, temperature=0)
    torch.testing.assert_close(cached, model.generate(prompt, 8, temperature=0, use_cache=False), rtol=0, atol=0)


def test_gpt2_export_refuses_an_attention_only_model(tmp_path):
    from bloomlib.interop.hf import export_gpt2

    with pytest.raises(ValueError, match="ffn='none' is not GPT-2 layout"):
        export_gpt2(GPT(GPTConfig.preset("tiny", ffn="none")), tmp_path)
    assert not any(tmp_path.iterdir())  # refused before writing anything


# --- parameter counts -----------------------------------------------------------------------------------------

def direct_count(model) -> int:
    seen, total = set(), 0
    for _, p in model.named_parameters(remove_duplicate=False):
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


@pytest.mark.parametrize("over", [dict(), dict(tie_weights=False), dict(n_kv_head=1, pos_encoding="rope"),
                                  dict(ffn="swiglu", norm="rmsnorm", bias=False)])
def test_count_parameters_matches_a_direct_sum(over):
    model = GPT(GPTConfig.preset("tiny", **over))
    assert count_parameters(model) == direct_count(model)
    c = model.config
    emb = c.vocab_size * c.d_model + (c.block_size * c.d_model if c.pos_encoding == "learned" else 0)
    assert count_parameters(model, non_embedding=True) == direct_count(model) - emb


def test_count_parameters_encoder_decoder_counts_the_shared_embedding_once():
    model = bloomlib.EncoderDecoder(GPTConfig.preset("tiny"))
    assert count_parameters(model) == direct_count(model)
    assert count_parameters(model) < sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False))


def test_published_parameter_counts_of_llama_mistral_and_bert():
    """LLaMA-7B: 2 * 32000*4096 (embedding, untied head) + 32 * (4 * 4096^2 + 3 * 4096*11008 + 2 * 4096) + 4096
    = 6,738,415,616. Mistral-7B (8 kv heads of 128): 2 * 32000*4096 + 32 * (2 * 4096^2 + 2 * 4096*1024
    + 3 * 4096*14336 + 2 * 4096) + 4096 = 7,241,732,096. BERT-base: BertModel's 109,482,240 (embeddings
    23,837,184 + 12 * 7,087,872 + pooler 590,592) plus the MLM head's dense, LayerNorm and decoder bias
    (590,592 + 1,536 + 30,522; its decoder weight is tied) = 110,104,890."""
    with torch.device("meta"):
        llama = GPT(GPTConfig.preset("llama-7b"))
        mistral = GPT(GPTConfig.preset("mistral-7b"))
        bert = bloomlib.Encoder(GPTConfig.preset("bert-base"))
    assert count_parameters(llama) == 6_738_415_616
    assert count_parameters(mistral) == 7_241_732_096
    assert count_parameters(bert) == 109_482_240 + 590_592 + 1_536 + 30_522


def test_gpt2_small_has_124_439_808_parameters():
    """GPT-2 small (124M): wte 50257*768 + wpe 1024*768 + 12 layers * (2 LayerNorms 2*1536 + qkv 768*2304+2304
    + attn proj 768*768+768 + fc 768*3072+3072 + mlp proj 3072*768+768) + ln_f 1536 = 124,439,808, the figure
    published for the Hugging Face `gpt2` checkpoint (lm_head is tied to wte, so counted once)."""
    with torch.device("meta"):
        model = GPT(GPTConfig.preset("gpt2"))
        untied = GPT(GPTConfig.preset("gpt2", tie_weights=False))
    assert count_parameters(model) == 124_439_808
    assert count_parameters(untied) == 124_439_808 + 50257 * 768
    assert count_parameters(model, non_embedding=True) == 124_439_808 - 50257 * 768 - 1024 * 768


# --- training -------------------------------------------------------------------------------------------------

def test_tiny_gpt_learns_reverse_task_to_loss_below_0_25_in_300_steps():
    """GPTConfig.preset('tiny') + AdamW(lr 3e-3), batches of 32 from bloomlib.training.data.reverse_task (6 symbols of 10):
    answer-token loss starts near ln(64) = 4.2 (chance over the symbols: ln(10) = 2.3) and must fall below 0.25
    within 300 CPU steps (it reaches ~0.01 with this seed); greedy generation then reverses fresh sequences."""
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny"))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        batch = reverse_task(32, seq_len=6, n_symbols=10, generator=g)
        loss = F.cross_entropy(model(batch.inputs).flatten(0, 1), batch.targets.flatten(), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    test = reverse_task(256, seq_len=6, n_symbols=10, generator=torch.Generator().manual_seed(123))
    assert (test.targets[test.answer_mask] != -100).all() and (test.targets[~test.answer_mask] == -100).all()
    with torch.no_grad():
        eval_loss = F.cross_entropy(model(test.inputs).flatten(0, 1), test.targets.flatten(), ignore_index=-100)
    assert eval_loss.item() < 0.25, eval_loss.item()
    prompts = test.prompts[:64]  # x_1..x_6 SEP
    assert prompts.shape == (64, 7) and (prompts[:, -1] == 10).all()
    out = model.generate(prompts, 6, temperature=0.0)
    accuracy = (out[:, 7:] == prompts[:, :6].flip(1)).all(1).float().mean().item()
    assert accuracy > 0.8, accuracy


# --- bad input ------------------------------------------------------------------------------------------------

def test_sequence_longer_than_context_window_raises():
    model = GPT(GPTConfig.preset("tiny"))
    with pytest.raises(ValueError, match="context window"):
        model(torch.zeros(1, 33, dtype=torch.long))
    cache = model.new_kv_cache()
    model(torch.zeros(1, 30, dtype=torch.long), kv_cache=cache)
    with pytest.raises(ValueError, match="context window"):
        model(torch.zeros(1, 3, dtype=torch.long), kv_cache=cache)


def test_bad_token_ids_raise():
    model = GPT(GPTConfig.preset("tiny"))
    with pytest.raises(ValueError, match="shape"):
        model(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        model(torch.zeros(1, 5))
    with pytest.raises(ValueError, match="token ids"):
        model(torch.tensor([[1, 64]]))


@pytest.mark.parametrize("kwargs,word", [
    (dict(d_model=30, n_head=4), "n_head"),
    (dict(n_head=4, n_kv_head=3), "n_kv_head"),
    (dict(pos_encoding="rotary"), "pos_encoding"),
    (dict(norm="batchnorm"), "norm"),
    (dict(ffn="tanh"), "ffn"),
    (dict(sliding_window=0), "sliding_window"),
    (dict(vocab_size=0), "vocab_size"),
    (dict(dropout=1.0), "dropout"),
])
def test_bad_config_raises(kwargs, word):
    with pytest.raises(ValueError, match=word):
        GPTConfig(**kwargs)


def test_gpt_needs_a_causal_config():
    with pytest.raises(ValueError, match="causal"):
        GPT(GPTConfig.preset("tiny", causal=False))


def test_generate_bad_prompt_raises():
    model = GPT(GPTConfig.preset("tiny"))
    with pytest.raises(ValueError, match="prompt"):
        model.generate(torch.zeros(1, 0, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate(torch.zeros(1, 2, dtype=torch.long), -1)


@pytest.mark.slow  # importing transformers takes several seconds
def test_gpt_equals_hugging_face_gpt2_with_copied_weights():
    """bloomlib's GPT with GPT-2's knobs (learned positions, pre-LN, tanh GELU, tied head) computes the same
    logits as transformers' GPT2LMHeadModel given the same weights (its Conv1D weights are stored transposed)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf_cfg = transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=2,
                                     activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0,
                                     attn_pdrop=0.0, layer_norm_epsilon=1e-5)
    hf = transformers.GPT2LMHeadModel(hf_cfg).double().eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0, 0.3)
    ours = GPT(GPTConfig.preset("tiny", ffn="gelu_tanh")).double().eval()
    t, h = ours.transformer, hf.transformer
    with torch.no_grad():
        t.tok_emb.weight.copy_(h.wte.weight)
        t.pos_emb.weight.copy_(h.wpe.weight)
        for b, hb in zip(t.blocks, h.h):
            b.norm1.load_state_dict(hb.ln_1.state_dict())
            b.norm2.load_state_dict(hb.ln_2.state_dict())
            # GPT-2's Conv1D stores (in, out); c_attn stacks q, k, v along out, as our qkv_proj stacks its rows
            for lin, conv in ((b.attn.qkv_proj, hb.attn.c_attn), (b.attn.o_proj, hb.attn.c_proj),
                              (b.ffn.up, hb.mlp.c_fc), (b.ffn.down, hb.mlp.c_proj)):
                lin.weight.copy_(conv.weight.T)
                lin.bias.copy_(conv.bias)
        t.final_norm.load_state_dict(h.ln_f.state_dict())
    idx = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx), hf(idx).logits, atol=1e-9, rtol=1e-9)


@pytest.mark.slow
def test_bench_core_json_runs(capsys):
    """`bloomlib bench core --json` (short run): one JSON object, and the cache gives the same greedy tokens."""
    import json

    from bloomlib.training import bench

    assert bench.main(["--json", "--new-tokens", "8"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert all(run["same_tokens"] and run["new_tokens"] == 8 for run in report["kv_cache"])
    assert report["kv_cache_speedup"] > 0 and 0 < report["train_mfu"] and report["matmul_peak_gflops"] > 0


def test_generate_gives_long_ids_for_any_prompt_dtype_and_an_ordinary_tensor():
    """New ids may not fit the prompt's dtype (uint8 holds < 256); the result must also work with autograd
    (generation runs in inference mode) and leave torch's oneDNN switch as it found it."""
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny", vocab_size=512))
    prompt = torch.randint(256, (2, 3))
    ref = model.generate(prompt, 20, temperature=0.0)
    assert ref.dtype == torch.long and (ref[:, 3:] >= 256).any()
    for dtype in (torch.uint8, torch.int16, torch.int32):
        assert torch.equal(model.generate(prompt.to(dtype), 20, temperature=0.0), ref)
    model.transformer.tok_emb(ref).sum().backward()  # an inference-mode tensor would refuse this
    assert torch.backends.mkldnn.enabled
