"""Leaving the notebook: bloomlib GPT <-> Hugging Face GPT-2 folders (config.json + model.safetensors).

A GPT with GPT-2's layout (learned positions, pre-LN LayerNorm with biases, GELU, full multi-head attention)
exports to a folder that transformers' GPT2LMHeadModel (and so vLLM: `vllm serve FOLDER`) loads.
A ByteBPETokenizer goes along as vocab.json + merges.txt in GPT-2's byte-to-unicode format.
Tokenizer caveat: GPT2TokenizerFast pre-splits text with GPT-2's regex (\\p{L}, \\p{N}), ours with Python's `re`
(letters [^\\W\\d_], digits \\d). They agree on ASCII text; they may split some non-ASCII text differently
(e.g. "x²": "²" is a letter for `re`, a number for GPT-2), and then the ids may differ. Decoding always agrees.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from bloomlib.config import GPTConfig
from bloomlib.model import GPT
from bloomlib.tokenizer import ByteBPETokenizer, Tokenizer

EOT = "<|endoftext|>"
ACTIVATIONS = {"gelu": "gelu", "gelu_tanh": "gelu_new"}  # bloomlib ffn -> GPT-2 activation_function
FROM_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}


def check_gpt2_layout(config: GPTConfig) -> None:
    """Raise ValueError naming the first GPTConfig field that GPT-2's architecture cannot express."""
    need = {"pos_encoding": "learned", "norm": "layernorm", "prenorm": True, "bias": True, "causal": True,
            "n_kv_head": config.n_head, "sliding_window": None, "type_vocab_size": 0, "embed_norm": False,
            "final_norm": True}
    for field, want in need.items():
        if getattr(config, field) != want:
            raise ValueError(f"GPTConfig.{field}={getattr(config, field)!r} is not GPT-2 layout (needs {want!r})")
    if config.ffn not in ACTIVATIONS:
        raise ValueError(f"GPTConfig.ffn={config.ffn!r} is not GPT-2 layout (needs one of {sorted(ACTIVATIONS)})")


def gpt2_config(config: GPTConfig, eos_id: int | None = None) -> dict:
    """The Hugging Face GPT2Config (as a dict) of a GPT-2-layout GPTConfig."""
    check_gpt2_layout(config)
    eos = config.vocab_size - 1 if eos_id is None else eos_id
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": config.vocab_size,
            "n_positions": config.block_size, "n_embd": config.d_model, "n_layer": config.n_layer,
            "n_head": config.n_head, "n_inner": config.d_ff, "activation_function": ACTIVATIONS[config.ffn],
            "layer_norm_epsilon": config.norm_eps, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
            "bos_token_id": eos, "eos_token_id": eos, "tie_word_embeddings": config.tie_weights,
            "torch_dtype": "float32"}


def _gpt2_layout(model: GPT) -> list[tuple[torch.Tensor, str, bool]]:
    """(our tensors, GPT2LMHeadModel name, transposed). GPT-2's Conv1D stores (in, out), our Linear's .T;
    its c_attn stacks q, k, v along the output features, as our qkv_proj does."""
    t = model.transformer
    out = [(t.tok_emb.weight, "transformer.wte.weight", False), (t.pos_emb.weight, "transformer.wpe.weight", False)]
    for i, b in enumerate(t.blocks):
        p, a = f"transformer.h.{i}.", b.attn
        for ours, theirs in ((b.norm1, "ln_1"), (b.norm2, "ln_2"), (a.qkv_proj, "attn.c_attn"),
                             (a.o_proj, "attn.c_proj"), (b.ffn.up, "mlp.c_fc"), (b.ffn.down, "mlp.c_proj")):
            out += [(ours.weight, p + theirs + ".weight", isinstance(ours, torch.nn.Linear)),
                    (ours.bias, p + theirs + ".bias", False)]
    out += [(t.final_norm.weight, "transformer.ln_f.weight", False),
            (t.final_norm.bias, "transformer.ln_f.bias", False)]
    if not model.config.tie_weights:
        out.append((model.lm_head.weight, "lm_head.weight", False))
    return out


def gpt2_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """bloomlib GPT weights under GPT2LMHeadModel's names (float32, on the CPU)."""
    return {name: (w.T if transposed else w).detach().float().cpu().contiguous()
            for w, name, transposed in _gpt2_layout(model)}


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (used to write byte tokens as JSON strings)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    extra = iter(range(256, 512))
    return {b: chr(b if b in keep else next(extra)) for b in range(256)}


def save_gpt2_tokenizer(tokenizer: ByteBPETokenizer, folder: str | Path, block_size: int) -> None:
    """vocab.json + merges.txt (+ tokenizer_config.json) that GPT2TokenizerFast loads; eos becomes <|endoftext|>."""
    if not isinstance(tokenizer, ByteBPETokenizer):
        raise ValueError(f"only a ByteBPETokenizer has a GPT-2 form, got {type(tokenizer).__name__}; "
                         "pass tokenizer=None to export the weights alone")
    table = bytes_to_unicode()
    pieces = ["".join(table[x] for x in tb) for tb in tokenizer._token_bytes[:-1]] + [EOT]
    if len(set(pieces)) != len(pieces):
        raise ValueError("two tokens of this tokenizer have the same bytes; GPT-2's vocab.json cannot hold both")
    folder = Path(folder)
    (folder / "vocab.json").write_text(json.dumps({p: i for i, p in enumerate(pieces)}, ensure_ascii=False),
                                       encoding="utf-8")
    lines = [f"{pieces[a]} {pieces[b]}" for a, b in tokenizer.merges]
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(lines) + "\n", encoding="utf-8")
    special = {"bos_token": EOT, "eos_token": EOT, "unk_token": EOT}
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "GPT2Tokenizer", "model_max_length": block_size, "add_prefix_space": False, **special},
        indent=2), encoding="utf-8")


def export_gpt2(model: GPT, folder: str | Path, tokenizer: Tokenizer | None = None) -> Path:
    """Write a Hugging Face GPT-2 folder: config.json, model.safetensors (+ tokenizer files for a byte BPE)."""
    if not isinstance(model, GPT):
        raise ValueError(f"export_gpt2 needs a bloomlib GPT, got {type(model).__name__}")
    eos = tokenizer.eos_id if tokenizer is not None else None
    config = gpt2_config(model.config, eos)
    if tokenizer is not None and tokenizer.vocab_size != model.config.vocab_size:
        raise ValueError(f"tokenizer vocab_size={tokenizer.vocab_size} != GPTConfig.vocab_size="
                         f"{model.config.vocab_size}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if tokenizer is not None:
        save_gpt2_tokenizer(tokenizer, folder, model.config.block_size)
    save_file(gpt2_state_dict(model), str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return folder


def import_gpt2(folder: str | Path) -> GPT:
    """A Hugging Face GPT-2 folder (config.json + model.safetensors) -> bloomlib GPT in eval mode."""
    folder = Path(folder)
    hf = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if hf.get("model_type") != "gpt2":
        raise ValueError(f"config.json model_type={hf.get('model_type')!r} is not 'gpt2'")
    act = hf.get("activation_function", "gelu_new")
    if act not in FROM_ACTIVATIONS:
        raise ValueError(f"config.json activation_function={act!r} is not supported ({sorted(FROM_ACTIVATIONS)})")
    for key, want in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False)):
        if hf.get(key, want) != want:
            raise ValueError(f"config.json {key}={hf[key]!r} is not supported (needs {want!r})")
    sd = load_file(str(folder / "model.safetensors"))
    tied = hf.get("tie_word_embeddings", True) or "lm_head.weight" not in sd
    config = GPTConfig(vocab_size=hf["vocab_size"], block_size=hf["n_positions"], n_layer=hf["n_layer"],
                       n_head=hf["n_head"], d_model=hf["n_embd"], d_ff=hf.get("n_inner") or 4 * hf["n_embd"],
                       norm_eps=hf.get("layer_norm_epsilon", 1e-5), ffn=FROM_ACTIVATIONS[act], tie_weights=tied)
    model = GPT(config)
    with torch.no_grad():
        for ours, name, transposed in _gpt2_layout(model):
            key = name if name in sd else name.removeprefix("transformer.")
            if key not in sd:
                raise ValueError(f"{folder / 'model.safetensors'} lacks {name}")
            w = sd[key].T if transposed else sd[key]
            if w.shape != ours.shape:
                want = tuple(ours.T.shape if transposed else ours.shape)
                raise ValueError(f"{name} has shape {tuple(sd[key].shape)}, expected {want}")
            ours.copy_(w)
    return model.eval()
