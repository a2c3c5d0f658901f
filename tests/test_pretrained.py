"""all-MiniLM-L6-v2 in bloomlib's own Encoder vs transformers' BertModel and sentence-transformers."""
import importlib
import sys

import pytest
import torch

from bloomlib import set_attention_backend
from bloomlib.interop import pretrained

SENTENCES = ["The cat sits on the mat.", "A transformer reads every token at once, weighing them by attention.",
             "Hi", "Paris is the capital of France; its river is the Seine."]


@pytest.fixture(scope="module")
def loaded():
    pytest.importorskip("transformers")
    try:
        enc, tok = pretrained.minilm()
    except pretrained.MissingExtraError as e:
        pytest.skip(str(e))
    from transformers import BertModel

    hf = BertModel.from_pretrained(str(pretrained.minilm_folder()), attn_implementation="eager").eval()
    return enc, tok, hf


def close_to_scale(ours: torch.Tensor, ref: torch.Tensor, rel: float) -> None:
    """Largest difference within `rel` of the reference's largest magnitude (float32 noise over 6 post-LN layers)."""
    err, scale = (ours - ref).abs().max().item(), ref.abs().max().item()
    assert err <= rel * scale, f"max |diff| {err:.3g} > {rel} * max |ref| {scale:.3g}"


def test_minilm_shape_and_offline(loaded):
    enc, tok, _ = loaded
    c = enc.config
    assert (c.n_layer, c.n_head, c.d_model, c.d_ff, c.vocab_size) == (6, 12, 384, 1536, tok.vocab_size)
    import os
    assert os.environ["HF_HUB_OFFLINE"] == "1"


@pytest.mark.parametrize("backend", ["sdpa", "math"])
def test_hidden_states_and_attention_match_bert_model(loaded, backend):
    enc, tok, hf = loaded
    set_attention_backend(enc, backend)
    batch = tok(SENTENCES, padding=True, return_tensors="pt")  # padded: lengths differ
    assert (batch["attention_mask"] == 0).any()
    with torch.no_grad():
        ref = hf(**batch, output_attentions=True)
        h = enc(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        _, weights = enc(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], return_attention=True)
    set_attention_backend(enc, "sdpa")
    close_to_scale(h, ref.last_hidden_state, 1e-5)
    assert len(weights) == len(ref.attentions) == 6
    for ours, theirs in zip(weights, ref.attentions):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    # one sentence alone (no padding) gives the same hidden states as inside the padded batch
    one = tok(SENTENCES[2:3], return_tensors="pt")
    with torch.no_grad():
        alone = enc(one["input_ids"], one["attention_mask"], one["token_type_ids"])
    n = one["input_ids"].shape[1]
    close_to_scale(alone[0], h[2, :n], 1e-5)


def test_mapping_is_exact_in_float64(loaded):
    enc, tok, hf = loaded
    enc64, hf64 = pretrained.load_bert(pretrained.minilm_folder()).double(), hf.double()
    try:
        batch = tok(SENTENCES[:2], padding=True, return_tensors="pt")
        with torch.no_grad():
            ref = hf64(**batch).last_hidden_state
            h = enc64(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
            torch.testing.assert_close(h, ref, rtol=1e-10, atol=1e-10)
            torch.testing.assert_close(enc64.pooled(h), ref_pool := hf64.pooler(ref), rtol=1e-10, atol=1e-10)
            assert ref_pool.shape == (2, 384)
    finally:
        hf.float()


def test_sentence_embeddings_match_sentence_transformers(loaded):
    enc, tok, hf = loaded
    emb = pretrained.sentence_embeddings(enc, tok, SENTENCES, batch_size=3)  # two batches, both padded
    assert emb.shape == (len(SENTENCES), 384)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(len(SENTENCES)))
    try:
        from sentence_transformers import SentenceTransformer
        st = SentenceTransformer(str(pretrained.minilm_folder()), device="cpu")
        ref = st.encode(SENTENCES, convert_to_tensor=True)
    except ImportError:  # transformers-based mean pooling + normalisation
        batch = tok(SENTENCES, padding=True, return_tensors="pt")
        with torch.no_grad():
            h = hf(**batch).last_hidden_state
        m = batch["attention_mask"][..., None].float()
        ref = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)
    torch.testing.assert_close(emb, ref.cpu(), rtol=1e-5, atol=1e-5)


def test_semantic_search_finds_the_related_sentence(loaded):
    enc, tok, _ = loaded
    docs = ["The stock market fell sharply today.", "A kitten is sleeping on the rug.", "Rain is expected tomorrow."]
    (score, best), *_ = pretrained.semantic_search(enc, tok, "Where is the cat lying?", docs, k=2)
    assert best == docs[1] and -1 <= score <= 1


def test_truncation_at_max_seq_length(loaded):
    enc, tok, _ = loaded
    assert tok.model_max_length == 256  # from the package's sentence_bert_config.json
    long = " ".join(["word"] * 600)  # longer than BERT's 512 positions: must not raise
    assert pretrained.sentence_embeddings(enc, tok, [long]).shape == (1, 384)


def test_bad_sentences_raise():
    with pytest.raises(ValueError, match="list of str"):
        pretrained.sentence_embeddings(None, None, "not a list")


def test_missing_extra_raises_clear_error_and_fallback_returns_none(monkeypatch):
    real = importlib.import_module

    def fail(name, *a, **k):
        if name == pretrained.MINILM_PACKAGE:
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", fail)
    with pytest.raises(pretrained.MissingExtraError, match=r"bloomlib\[hf\]"):
        pretrained.minilm()
    assert issubclass(pretrained.MissingExtraError, ImportError)
    messages = []
    assert pretrained.minilm_or_none(log=messages.append) is None
    assert "bloomlib[hf]" in messages[0] and "Falling back" in messages[0]


def test_missing_transformers_raises_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(pretrained, "minilm_folder", lambda: tmp_path)  # as if the weights were installed
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` now raises ImportError
    with pytest.raises(pretrained.MissingExtraError, match="transformers is not installed"):
        pretrained.minilm()


def test_bert_config_rejects_other_layouts():
    base = dict(model_type="bert", vocab_size=10, max_position_embeddings=8, num_hidden_layers=1,
                num_attention_heads=2, hidden_size=8, intermediate_size=16, layer_norm_eps=1e-12, type_vocab_size=2)
    assert pretrained.bert_config(base).prenorm is False
    with pytest.raises(ValueError, match="hidden_act"):
        pretrained.bert_config({**base, "hidden_act": "relu"})
    with pytest.raises(ValueError, match="position_embedding_type"):
        pretrained.bert_config({**base, "position_embedding_type": "relative_key"})


# ------------------------------------------------------------------------------ words, tokens and attention
WORDY = ["The keys to the cabinet are on the table.", "My sister bought a new bike and she rides it to work.",
         "There the theme of the thesis: unbelievable tokenization, the end."]


def test_word_token_index_matches_the_tokenizers_own_word_ids(loaded):
    """Every whole word, every occurrence: the token is where transformers' char_to_token puts the word's first
    character, and its word_ids() give that token the same word as the word's first token."""
    import re

    enc, tok, _ = loaded
    for text in WORDY:
        _, tokens, spans = pretrained.token_spans(tok, text)
        batch = tok(text)
        assert tokens == tok.convert_ids_to_tokens(batch["input_ids"])
        seen = {}
        for m in re.finditer(r"\w+", text):
            nth = seen.get(m[0].lower(), 0)
            seen[m[0].lower()] = nth + 1
            got = pretrained.word_token_index(text, spans, m[0], nth)
            assert got == batch.char_to_token(m.start()), (text, m[0], nth)
            assert batch.word_ids()[got] == batch.word_ids()[batch.word_to_tokens(batch.char_to_word(m.start())).start]
    with pytest.raises(ValueError, match="occurs 3 time"):
        pretrained.word_token_index(WORDY[0], pretrained.token_spans(tok, WORDY[0])[2], "the", 3)
    with pytest.raises(ValueError, match="occurs 0 time"):
        pretrained.word_token_index(WORDY[2], pretrained.token_spans(tok, WORDY[2])[2], "them")  # not inside "theme"


def test_read_attention_is_the_models_own_attention(loaded):
    enc, tok, hf = loaded
    text = WORDY[1]
    tokens, spans, att = pretrained.read_attention(enc, tok, text)
    batch = tok(text, return_tensors="pt")
    with torch.no_grad():
        ref = hf(**batch, output_attentions=True).attentions
    assert len(att) == len(ref) == enc.config.n_layer and len(tokens) == len(spans) == batch["input_ids"].shape[1]
    for ours, theirs in zip(att, ref):
        assert ours.shape == theirs.shape and torch.allclose(ours, theirs, atol=1e-4)


def test_token_spans_of_bloomlib_tokenizers_cover_the_text():
    """Against the text itself: the spans tile it, and each token's span is what its id decodes to (bytes split
    inside a character go to the token holding its last byte)."""
    from bloomlib.tokenizer import CharTokenizer

    text = "héllo wörld, naïve café"
    tok = CharTokenizer.train("hello world")  # é, ö, ï fall back to bytes
    ids, tokens, spans = pretrained.token_spans(tok, text)
    assert ids == tok.encode(text) and "".join(tokens) == text
    assert [a for a, _ in spans[1:]] == [b for _, b in spans[:-1]] and spans[0][0] == 0 and spans[-1][1] == len(text)
    assert pretrained.word_token_index(text, spans, "café") == len(tok.encode(text[:text.index("café")]))
    with pytest.raises(ValueError, match="non-empty str"):
        pretrained.token_spans(tok, "")
    with pytest.raises(ValueError, match="fast tokenizer"):
        pretrained.token_spans(object(), "text")
