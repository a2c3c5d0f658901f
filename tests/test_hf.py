"""bloomlib GPT <-> Hugging Face GPT-2 folders, checked against transformers' GPT2LMHeadModel and GPT2TokenizerFast."""
import json

import pytest
import torch

from bloomlib.config import GPTConfig
from bloomlib.training.data import load_corpus
from bloomlib.interop.hf import bytes_to_unicode, check_gpt2_layout, export_gpt2, import_gpt2
from bloomlib import GPT, load_course_model
from bloomlib.tokenizer import ByteBPETokenizer, CharTokenizer

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    ckpt = load_course_model()
    folder = export_gpt2(ckpt.model, tmp_path_factory.mktemp("gpt2"), ckpt.tokenizer)
    return ckpt.model, ckpt.tokenizer, folder


def test_course_model_exports_to_gpt2_lm_head_model(exported):
    model, tok, folder = exported
    assert {"config.json", "model.safetensors", "vocab.json", "merges.txt"} <= {p.name for p in folder.iterdir()}
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()  # as serving engines load it
    assert isinstance(hf, transformers.GPT2LMHeadModel)
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()  # tied, as in bloomlib
    text = load_corpus()[:2000]
    idx = torch.tensor([tok.encode(text)[:256], tok.encode(text)[256:512]])  # a full context window, batch of 2
    with torch.no_grad():
        ours, theirs = model(idx), hf(idx).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5 * theirs.abs().max().item())
    # transformers' own generation agrees with ours (greedy)
    prompt = idx[:1, :20]
    with torch.no_grad():
        g_ours = model.generate(prompt, 15, temperature=0.0)
        g_hf = hf.generate(prompt, max_new_tokens=15, do_sample=False, pad_token_id=tok.eos_id)
    assert g_ours.tolist() == g_hf[:, :g_ours.shape[1]].tolist()


def test_byte_table_equals_gpt2s():
    from tokenizers.pre_tokenizers import ByteLevel

    assert sorted(bytes_to_unicode().values()) == sorted(ByteLevel.alphabet())
    assert len(set(bytes_to_unicode().values())) == 256


def test_gpt2_tokenizer_decodes_and_encodes_like_ours(exported):
    _, tok, folder = exported
    hf_tok = transformers.GPT2TokenizerFast.from_pretrained(folder)
    assert hf_tok.vocab_size == tok.vocab_size and hf_tok.eos_token_id == tok.eos_id
    text = load_corpus()[:60_000]  # the course corpus: ASCII plus a few typographic symbols (’ “ — °)
    ids = tok.encode(text)
    assert hf_tok(text)["input_ids"] == ids  # the pre-tokenizers split this text the same way
    assert hf_tok.decode(ids) == text
    # ids -> text agrees for any ids, even ids that cut a UTF-8 character in half
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        rand = torch.randint(0, tok.vocab_size - 1, (30,), generator=g).tolist()
        assert hf_tok.decode(rand) == tok.decode(rand)
    assert hf_tok.decode(tok.encode("naïve café, 日本語 ✓")) == "naïve café, 日本語 ✓"
    auto = transformers.AutoTokenizer.from_pretrained(folder)  # from tokenizer_config.json, as serving engines do
    assert auto(text[:3000])["input_ids"] == tok.encode(text[:3000]) and auto.eos_token_id == tok.eos_id


def test_documented_split_difference_on_non_ascii(tmp_path):
    """'²' is a letter for Python's `re` but a number for GPT-2's regex: 'x²' is one piece for us, two for GPT-2.
    With a merge across that boundary, the ids differ (which is why the export documents ASCII agreement)."""
    tok = ByteBPETokenizer([(ord("x"), 0xC2)])  # merge 256 = b"x\xc2"
    hf_tok_folder = export_gpt2(GPT(GPTConfig.preset("tiny", vocab_size=258)), tmp_path, tok)
    hf_tok = transformers.GPT2TokenizerFast.from_pretrained(hf_tok_folder)
    pieces = [p for p, _ in hf_tok.backend_tokenizer.pre_tokenizer.pre_tokenize_str("x²")]
    assert tok.pretokenize("x²") == ["x²"] and len(pieces) == 2
    assert tok.encode("x²") == [256, 0xB2] and hf_tok("x²")["input_ids"] == [ord("x"), 0xC2, 0xB2]
    assert hf_tok.decode(tok.encode("x²")) == "x²"


@pytest.mark.parametrize("act", ["gelu_new", "gelu"])
@pytest.mark.parametrize("tied", [True, False])
def test_gpt2_folder_imports_with_matching_logits(tmp_path, act, tied):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=70, n_positions=24, n_embd=32, n_layer=2, n_head=4,
                                  activation_function=act, tie_word_embeddings=tied, layer_norm_epsilon=1e-5)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():  # larger than GPT-2's init, so that a wrong mapping shows
            p.normal_(0, 0.3)
    hf.save_pretrained(tmp_path)
    ours = import_gpt2(tmp_path)
    assert ours.config.ffn == ("gelu_tanh" if act == "gelu_new" else "gelu") and ours.config.tie_weights == tied
    idx = torch.randint(0, 70, (3, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(idx).logits
        torch.testing.assert_close(ours(idx), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


@pytest.mark.parametrize("tied", [True, False])
def test_export_then_import_round_trips(tmp_path, tied):
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny", ffn="gelu_tanh", tie_weights=tied)).eval()
    back = import_gpt2(export_gpt2(model, tmp_path))
    assert back.config.ffn == "gelu_tanh" and back.config.tie_weights == tied
    assert not (tmp_path / "vocab.json").exists()
    for (n, a), (_, b) in zip(model.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), n
    assert json.loads((tmp_path / "config.json").read_text())["activation_function"] == "gelu_new"
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()  # an untied head loads too
    idx = torch.randint(0, 64, (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(idx).logits
        torch.testing.assert_close(model(idx), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


@pytest.mark.parametrize("field,value", [("pos_encoding", "rope"), ("norm", "rmsnorm"), ("ffn", "swiglu"),
                                         ("n_kv_head", 1), ("bias", False), ("prenorm", False),
                                         ("sliding_window", 8), ("ffn", "relu"), ("type_vocab_size", 2)])
def test_non_gpt2_layouts_raise_naming_the_field(tmp_path, field, value):
    cfg = GPTConfig.preset("tiny", **{field: value})
    with pytest.raises(ValueError, match=field):
        check_gpt2_layout(cfg)
    with pytest.raises(ValueError, match=field):
        export_gpt2(GPT(cfg), tmp_path)


def test_char_tokenizer_and_bad_folders_raise(tmp_path):
    model = GPT(GPTConfig.preset("tiny", vocab_size=260))
    with pytest.raises(ValueError, match="ByteBPETokenizer"):
        export_gpt2(model, tmp_path / "a", CharTokenizer(["a", "b", "c"]))
    with pytest.raises(ValueError, match="vocab_size"):
        export_gpt2(GPT(GPTConfig.preset("tiny", vocab_size=300)), tmp_path / "b", ByteBPETokenizer([]))
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="model_type"):
        import_gpt2(tmp_path / "c")
