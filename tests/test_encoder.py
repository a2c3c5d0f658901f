"""Encoder (bidirectional, padding, heads, post-LN vs torch.nn.TransformerEncoderLayer) and EncoderDecoder
(cached decoding vs full recomputation)."""
import pytest
import torch
import torch.nn as nn

from bloomlib import GPT, Encoder, EncoderDecoder, GPTConfig, KVCache, set_attention_backend
from bloomlib.blocks import Block


def sharpen(model, seed=0):
    """Larger-than-init random weights (float64), so that every token visibly influences the others."""
    torch.manual_seed(seed)
    model = model.double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model


def test_encoder_is_bidirectional_unlike_gpt():
    cfg = GPTConfig.preset("tiny")
    enc, gpt = sharpen(Encoder(cfg)), sharpen(GPT(cfg))
    a = torch.tensor([[1, 2, 3, 4, 5, 6]])
    b = a.clone()
    b[0, 4] = 9  # change a later token
    with torch.no_grad():
        ea, eb = enc(a), enc(b)
        ga, gb = gpt.transformer(a)[0], gpt.transformer(b)[0]
    assert not torch.allclose(ea[:, :4], eb[:, :4], atol=1e-6)  # earlier positions see it
    assert not torch.allclose(ea[:, 0], eb[:, 0], atol=1e-6)
    torch.testing.assert_close(ga[:, :4], gb[:, :4])  # GPT's earlier positions do not
    assert not enc.config.causal and cfg.causal  # Encoder made its own non-causal copy of the config


@pytest.mark.parametrize("pos", ["learned", "sinusoidal", "rope", "alibi", "none"])
@pytest.mark.parametrize("backend", ["sdpa", "math"])
def test_padding_leaves_real_tokens_unchanged(pos, backend):
    enc = sharpen(set_attention_backend(Encoder(GPTConfig.preset("tiny", pos_encoding=pos)), backend))
    real = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    padded = torch.cat([real, torch.tensor([[0, 0, 0], [3, 4, 0]])], 1)
    mask = torch.cat([torch.ones(2, 4, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long)], 1)
    with torch.no_grad():
        h_real = enc(real)
        h_pad = enc(padded, attention_mask=mask)
        h_unmasked = enc(padded)
    torch.testing.assert_close(h_pad[:, :4], h_real, atol=1e-10, rtol=1e-10)
    assert not torch.allclose(h_unmasked[:, :4], h_real, atol=1e-6)  # without the mask, padding leaks in
    _, weights = enc(padded, attention_mask=mask, return_attention=True)
    for w in weights:
        assert w.shape == (2, 2, 7, 7) and (w[..., 4:] == 0).all()


def test_classification_and_mlm_heads():
    enc = Encoder(GPTConfig.preset("tiny", n_classes=3))
    idx = torch.randint(0, 64, (5, 7))
    mask = torch.ones(5, 7, dtype=torch.long)
    mask[:, 5:] = 0
    assert enc.classify(idx, mask).shape == (5, 3)
    h = enc(idx, mask)
    assert h.shape == (5, 7, 32)
    assert enc.mlm_logits(h).shape == (5, 7, 64)
    with pytest.raises(ValueError, match="n_classes"):
        Encoder(GPTConfig.preset("tiny")).classify(idx)
    with pytest.raises(ValueError, match="attention_mask"):
        enc(idx, torch.ones(5, 6))


def test_post_ln_bert_style_encoder_works():
    cfg = GPTConfig.preset("tiny", causal=False, prenorm=False, type_vocab_size=2, embed_norm=True,
                           final_norm=False, n_classes=2)
    enc = Encoder(cfg)
    idx = torch.randint(0, 64, (3, 6), generator=torch.Generator().manual_seed(0))
    types = torch.tensor([[0, 0, 0, 1, 1, 1]] * 3)
    h = enc(idx, token_type_ids=types)
    assert h.isfinite().all()
    assert not torch.allclose(h, enc(idx))  # token types matter
    # post-LN: every block ends with a norm, so each position's output has mean ~0 and variance ~1
    torch.testing.assert_close(h.mean(-1), torch.zeros(3, 6), atol=1e-5, rtol=0)
    loss = enc.classify(idx).logsumexp(-1).mean()
    loss.backward()
    assert all(p.grad is None or p.grad.isfinite().all() for p in enc.parameters())


def test_encoder_refuses_a_sliding_window():
    """A window is causal (i - w < j <= i); a bidirectional Encoder would drop it without a word."""
    for causal in (True, False):
        with pytest.raises(ValueError, match=r"sliding_window=3 .*Encoder.*bidirectional"):
            Encoder(GPTConfig.preset("tiny", sliding_window=3, causal=causal))


def copy_block_from_torch(ref: nn.TransformerEncoderLayer, cfg: GPTConfig) -> Block:
    block = Block(cfg)
    with torch.no_grad():
        for lin, w, b in ((block.attn.qkv_proj, ref.self_attn.in_proj_weight, ref.self_attn.in_proj_bias),
                          (block.attn.o_proj, ref.self_attn.out_proj.weight, ref.self_attn.out_proj.bias),
                          (block.ffn.up, ref.linear1.weight, ref.linear1.bias),
                          (block.ffn.down, ref.linear2.weight, ref.linear2.bias)):
            lin.weight.copy_(w)
            lin.bias.copy_(b)
        block.norm1.load_state_dict(ref.norm1.state_dict())
        block.norm2.load_state_dict(ref.norm2.state_dict())
    return block


@pytest.mark.parametrize("prenorm", [False, True])
@pytest.mark.parametrize("padding", [False, True])
def test_block_matches_torch_transformer_encoder_layer(prenorm, padding):
    torch.manual_seed(0)
    cfg = GPTConfig.preset("tiny", causal=False, prenorm=prenorm)
    # train() with dropout 0 keeps torch on its reference (non-fused) path; the result is deterministic
    ref = nn.TransformerEncoderLayer(32, 2, dim_feedforward=128, dropout=0.0, activation="gelu",
                                     batch_first=True, norm_first=prenorm).train()
    with torch.no_grad():
        for n in (ref.norm1, ref.norm2):
            n.weight.normal_(1, 0.2)
            n.bias.normal_(0, 0.2)
        ref.self_attn.in_proj_bias.normal_(0, 0.2)
    block = copy_block_from_torch(ref, cfg)
    x = torch.randn(2, 5, 32)
    keep = torch.ones(2, 5, dtype=torch.bool)
    if padding:
        keep[1, 3:] = False
    expected = ref(x, src_key_padding_mask=~keep if padding else None)
    out, _ = block(x, mask=keep[:, None, None, :] if padding else None)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


# --- EncoderDecoder -------------------------------------------------------------------------------------------

def seq2seq(pos="learned", **over):
    return sharpen(EncoderDecoder(GPTConfig.preset("tiny", pos_encoding=pos, block_size=10, **over)), seed=1)


SRC = torch.tensor([[3, 4, 5, 6, 7, 8], [9, 10, 11, 12, 0, 0]])
SRC_MASK = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])


@pytest.mark.parametrize("pos", ["learned", "rope", "alibi"])
@pytest.mark.parametrize("src_mask", [None, SRC_MASK], ids=["nomask", "padded"])
def test_encoder_decoder_step_logits_equal_full_forward(pos, src_mask):
    model = seq2seq(pos, n_kv_head=1 if pos == "alibi" else None)
    tgt = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(SRC, tgt, src_mask)
        memory = model.encode(SRC, src_mask)
        cache = KVCache(model.config.n_layer, model.config.block_size)
        for t in range(tgt.shape[1]):
            step = model.decode(tgt[:, t:t + 1], memory, src_mask, kv_cache=cache)
            torch.testing.assert_close(step[:, 0], full[:, t], atol=1e-10, rtol=1e-10)
    # the decoder is causal: later target tokens do not change earlier logits
    tgt2 = tgt.clone()
    tgt2[:, 5] = (tgt2[:, 5] + 1) % 64
    with torch.no_grad():
        torch.testing.assert_close(model(SRC, tgt2, src_mask)[:, :5], full[:, :5])


def test_encoder_decoder_windows_the_decoder_and_not_the_encoder():
    """One layer, window 2: decoder position t sees targets t-1 and t only; the encoder still sees everything."""
    windowed, plain = seq2seq(n_layer=1, sliding_window=2), seq2seq(n_layer=1)  # the same weights (same seed)
    tgt = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(3))
    tgt2 = tgt.clone()
    tgt2[:, 0] = (tgt2[:, 0] + 1) % 64
    with torch.no_grad():
        full, full2 = windowed(SRC, tgt, SRC_MASK), windowed(SRC, tgt2, SRC_MASK)
        assert not torch.allclose(full2[:, 1], full[:, 1], atol=1e-6)  # position 1 sees position 0
        torch.testing.assert_close(full2[:, 2:], full[:, 2:])  # positions >= 2 do not
        assert not torch.allclose(plain(SRC, tgt2, SRC_MASK)[:, 2:], plain(SRC, tgt, SRC_MASK)[:, 2:], atol=1e-6)
        # the encoder is bidirectional and unwindowed: its first position sees the source's last token
        src2 = SRC.clone()
        src2[0, 5] = 20
        assert not torch.allclose(windowed.encode(src2)[0, 0], windowed.encode(SRC)[0, 0], atol=1e-6)
        # cached decoding keeps the window (end-aligned over the cache)
        memory = windowed.encode(SRC, SRC_MASK)
        cache = KVCache(1, windowed.config.block_size)
        for t in range(tgt.shape[1]):
            step = windowed.decode(tgt[:, t:t + 1], memory, SRC_MASK, kv_cache=cache)
            torch.testing.assert_close(step[:, 0], full[:, t], atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("pos", ["learned", "sinusoidal", "rope"])
def test_encoder_decoder_generate_cache_equals_recomputation(pos):
    model = seq2seq(pos)
    ref = torch.full((2, 1), 1)
    with torch.no_grad():
        for _ in range(8):
            ref = torch.cat([ref, model(SRC, ref, SRC_MASK)[:, -1].argmax(-1, keepdim=True)], 1)
    cached = model.generate(SRC, 1, 8, src_mask=SRC_MASK, use_cache=True)
    assert torch.equal(cached, ref)
    assert torch.equal(model.generate(SRC, 1, 8, src_mask=SRC_MASK, use_cache=False), ref)


def test_encoder_decoder_padding_of_source_is_ignored():
    model = seq2seq()
    tgt = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        short = model(SRC[1:, :4], tgt)
        padded = model(SRC[1:], tgt, SRC_MASK[1:])
    torch.testing.assert_close(padded, short, atol=1e-10, rtol=1e-10)


def test_encoder_decoder_eos_stops_and_fills():
    model = seq2seq()
    with torch.no_grad():
        first = model(SRC, torch.full((2, 1), 1), SRC_MASK)[:, -1].argmax(-1)
    eos = int(first[0])
    out = model.generate(SRC, 1, 6, src_mask=SRC_MASK, eos_id=eos)
    assert out[0, 1] == eos and (out[0, 1:] == eos).all()
    if (out[1, 1:] == eos).any():
        hit = int((out[1, 1:] == eos).nonzero()[0]) + 1
        assert (out[1, hit:] == eos).all() and out.shape[1] == hit + 1


@pytest.mark.slow  # importing transformers takes several seconds
def test_post_ln_encoder_equals_hugging_face_bert():
    """The BERT knobs (post-LN, token types, embedding LayerNorm, exact GELU, no final norm) give the same hidden
    states, MLM logits and pooled output as transformers' BertForPreTraining with copied weights."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf_cfg = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=128, max_position_embeddings=32, type_vocab_size=2,
                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, hidden_act="gelu")
    hf = transformers.BertForPreTraining(hf_cfg).double().eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0, 0.3)
    cfg = GPTConfig.preset("tiny", causal=False, prenorm=False, type_vocab_size=2, embed_norm=True,
                           final_norm=False, norm_eps=1e-12)
    enc = Encoder(cfg).double().eval()
    bert, t = hf.bert, enc.transformer

    def lin(ours, theirs):
        ours.weight.copy_(theirs.weight)
        ours.bias.copy_(theirs.bias)

    with torch.no_grad():
        t.tok_emb.weight.copy_(bert.embeddings.word_embeddings.weight)
        t.pos_emb.weight.copy_(bert.embeddings.position_embeddings.weight)
        t.type_emb.weight.copy_(bert.embeddings.token_type_embeddings.weight)
        t.embed_norm.load_state_dict(bert.embeddings.LayerNorm.state_dict())
        for b, layer in zip(t.blocks, bert.encoder.layer):
            a = layer.attention
            for part, hf_lin in enumerate((a.self.query, a.self.key, a.self.value)):  # qkv_proj stacks q, k, v rows
                rows = slice(part * cfg.d_model, (part + 1) * cfg.d_model)
                b.attn.qkv_proj.weight[rows] = hf_lin.weight
                b.attn.qkv_proj.bias[rows] = hf_lin.bias
            lin(b.attn.o_proj, a.output.dense), lin(b.ffn.up, layer.intermediate.dense)
            lin(b.ffn.down, layer.output.dense)
            b.norm1.load_state_dict(a.output.LayerNorm.state_dict())
            b.norm2.load_state_dict(layer.output.LayerNorm.state_dict())
        lin(enc.pooler, bert.pooler.dense)
        lin(enc.mlm_dense, hf.cls.predictions.transform.dense)
        enc.mlm_norm.load_state_dict(hf.cls.predictions.transform.LayerNorm.state_dict())
        enc.mlm_decoder.bias.copy_(hf.cls.predictions.bias)
    assert enc.mlm_decoder.weight is t.tok_emb.weight  # tied, like BERT's decoder
    idx = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(1))
    types = torch.tensor([[0, 0, 0, 1, 1, 1, 1]] * 2)
    mask = torch.tensor([[1] * 7, [1] * 5 + [0] * 2])
    with torch.no_grad():
        out = hf(idx, attention_mask=mask, token_type_ids=types, output_hidden_states=True)
        h = enc(idx, mask, token_type_ids=types)
        torch.testing.assert_close(h, out.hidden_states[-1], atol=1e-9, rtol=1e-9)
        torch.testing.assert_close(enc.mlm_logits(h), out.prediction_logits, atol=1e-9, rtol=1e-9)
        torch.testing.assert_close(enc.pooled(h), bert.pooler(out.hidden_states[-1]), atol=1e-9, rtol=1e-9)
