"""Checkpoint folders: exact round trips of weights (tied ones stay tied), config, tokenizer and meta."""
import json

import pytest
import torch
from safetensors import safe_open
from torch import nn

from bloomlib import checkpoint
from bloomlib.checkpoint import load_checkpoint, save_checkpoint
from bloomlib.config import GPTConfig
from bloomlib.tokenizer import ByteBPETokenizer, CharTokenizer

TEXT = "the cat sat on the mat; the dog sat on the log. " * 20


class Tiny(nn.Module):
    """A stand-in model: embedding tied to the head, a norm, and a persistent buffer."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.d_model)
        self.norm = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.head.weight = self.wte.weight
        self.register_buffer("scale", torch.tensor(2.0))

    def forward(self, idx):
        return self.head(self.norm(self.wte(idx))) * self.scale


@pytest.fixture(autouse=True)
def register_tiny(monkeypatch):
    monkeypatch.setitem(checkpoint.ARCHITECTURES, "Tiny", Tiny)


def make(dtype=torch.float32, **overrides):
    torch.manual_seed(0)
    model = Tiny(GPTConfig.preset("tiny", **overrides)).to(dtype)
    with torch.no_grad():
        model.norm.weight.uniform_()  # not the default ones, so loading must actually copy
        model.scale.fill_(3.0)
    return model


def assert_same(a: nn.Module, b: nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_round_trip(tmp_path, dtype):
    model = make(dtype)
    tok = ByteBPETokenizer.train(TEXT, 270)
    meta = {"command": "bloomlib train --preset tiny", "val_loss": 1.25, "steps": 10}
    save_checkpoint(tmp_path / "ckpt", model, tok, meta)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors",
                                                                     "tokenizer.json"]
    ck = load_checkpoint(tmp_path / "ckpt")
    assert isinstance(ck.model, Tiny) and ck.architecture == "Tiny" and not ck.model.training
    assert ck.model.config == model.config and ck.meta == meta
    assert_same(model, ck.model)
    assert ck.model.head.weight is ck.model.wte.weight
    idx = torch.randint(64, (2, 5))
    assert torch.equal(ck.model(idx), model(idx))
    assert ck.tokenizer.merges == tok.merges and ck.tokenizer.encode(TEXT) == tok.encode(TEXT)


def test_file_layout_is_plain_safetensors_and_json(tmp_path):
    model = make()
    save_checkpoint(tmp_path, model, CharTokenizer.train(TEXT))
    header = json.loads((tmp_path / "config.json").read_text())
    assert header["architecture"] == "Tiny" and GPTConfig.from_dict(header["config"]) == model.config
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:  # safetensors' own reader
        keys = set(f.keys())
        assert len(keys & {"wte.weight", "head.weight"}) == 1  # the tied matrix is stored once
        for k in keys:
            assert torch.equal(f.get_tensor(k), model.state_dict()[k])
    assert keys | {"wte.weight", "head.weight"} == set(model.state_dict())


def test_no_tokenizer_and_overwrite(tmp_path):
    save_checkpoint(tmp_path, make(), CharTokenizer.train(TEXT))
    save_checkpoint(tmp_path, make())  # a stale tokenizer.json must not survive
    ck = load_checkpoint(tmp_path)
    assert ck.tokenizer is None and ck.meta == {}


def test_missing_files_and_bad_config(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
    save_checkpoint(tmp_path, make())
    (tmp_path / "model.safetensors").rename(tmp_path / "w")
    with pytest.raises(ValueError, match="model.safetensors"):
        load_checkpoint(tmp_path)
    (tmp_path / "w").rename(tmp_path / "model.safetensors")
    cfg = tmp_path / "config.json"
    good = cfg.read_text()
    cfg.unlink()
    with pytest.raises(ValueError, match="config.json"):
        load_checkpoint(tmp_path)
    for text, match in [("{", "not valid JSON"), ('{"config": {}}', "architecture"),
                        (good.replace('"Tiny"', '"Mamba"'), "unknown architecture"),
                        (good.replace('"n_layer": 2', '"n_layers": 2'), "unknown field"),
                        (good.replace('"float32"', '"load"'), "dtype"),
                        (good.replace('"d_model": 32', '"d_model": 16'), "does not match")]:
        cfg.write_text(text)
        with pytest.raises(ValueError, match=match):
            load_checkpoint(tmp_path)


def test_bad_save(tmp_path):
    with pytest.raises(ValueError, match="ARCHITECTURES"):
        save_checkpoint(tmp_path, nn.Linear(2, 2))
    with pytest.raises(ValueError, match="meta"):
        save_checkpoint(tmp_path, make(), meta={"f": object()})


@pytest.mark.parametrize("arch", ["GPT", "Encoder", "EncoderDecoder"])
def test_course_models_round_trip(tmp_path, arch):
    module = pytest.importorskip("bloomlib.model" if arch == "GPT" else "bloomlib.encoder")
    torch.manual_seed(0)
    model = getattr(module, arch)(GPTConfig.preset("tiny")).eval()
    save_checkpoint(tmp_path, model, meta={"steps": 0})
    ck = load_checkpoint(tmp_path)
    assert type(ck.model) is type(model) and ck.architecture == arch and ck.model.config == model.config
    assert_same(model, ck.model)
    src, tgt = torch.randint(64, (2, 16)), torch.randint(64, (2, 8))
    with torch.no_grad():
        args = (src, tgt) if arch == "EncoderDecoder" else (src,)
        assert torch.equal(ck.model(*args), model(*args))
    if arch == "GPT":
        assert ck.model.lm_head.weight is ck.model.transformer.tok_emb.weight


def test_attention_backend_is_chosen_at_load_and_never_saved(tmp_path):
    """How a model runs is not what it is: config.json holds no backend, an old one that does still loads, and
    the backend is picked at load (or later) without changing a logit beyond rounding."""
    from bloomlib import GPT, MultiHeadAttention

    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny")).double().eval()
    model.set_attention_backend("math")
    save_checkpoint(tmp_path, model)
    header = json.loads((tmp_path / "config.json").read_text())
    assert "attn_backend" not in header["config"]
    header["config"]["attn_backend"] = "flash"  # as checkpoints written before this change say
    (tmp_path / "config.json").write_text(json.dumps(header))
    idx = torch.randint(0, 64, (2, 9))
    backends = {}
    for name in (None, "math", "flash"):
        loaded = load_checkpoint(tmp_path, attn_backend=name).model
        backends[name] = {m.backend for m in loaded.modules() if isinstance(m, MultiHeadAttention)}
        torch.testing.assert_close(loaded(idx), model(idx))
    assert backends == {None: {"sdpa"}, "math": {"math"}, "flash": {"flash"}}
    with pytest.raises(ValueError, match="backend"):
        load_checkpoint(tmp_path, attn_backend="cuda")
