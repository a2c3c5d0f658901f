"""Encoder-only (BERT-style) and encoder-decoder (T5/BART-style) models from the same blocks as GPT.

Encoder:        bidirectional attention; every position sees every other (except padding).
EncoderDecoder: the encoder reads the source once; the decoder is causal over its own tokens and
                cross-attends to the encoder's output (its keys/values are cached while decoding).

A sliding window is causal in this course (position i sees i - w < j <= i): an Encoder refuses a config
with `sliding_window`, and an EncoderDecoder applies it to its decoder's self-attention only.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F

from bloomlib.attention import KVCache
from bloomlib.blocks import make_norm
from bloomlib.config import GPTConfig
from bloomlib.model import Transformer, _init_weights
from bloomlib.sampling import check_sampling_args, draw_next_token


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """hidden (B, T, d), mask (B, T) 1/0 -> (B, d): the mean over the real (mask 1) positions; a row with none is 0.
    One vector per sentence (sentence-transformers' pooling)."""
    m = mask[..., None].to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


class Encoder(nn.Module):
    """BERT-style encoder: (B, T) ids -> (B, T, d_model) contextual hidden states.

    Heads: `mlm_logits(hidden)` -> (B, T, vocab) for masked-language modelling (dense, GELU, norm, tied
    decoder), and `classify(idx)` -> (B, n_classes) from the first ([CLS]) position through BERT's tanh pooler.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if config.sliding_window is not None:
            raise ValueError(f"GPTConfig.sliding_window={config.sliding_window} cannot be used by an Encoder: its "
                             "attention is bidirectional, and a sliding window (i - w < j <= i) is causal; "
                             "set sliding_window=None")
        if config.causal:
            config = dataclasses.replace(config, causal=False)
        self.config = config
        self.transformer = Transformer(config)
        self.mlm_dense = nn.Linear(config.d_model, config.d_model)
        self.mlm_norm = make_norm(config)
        self.mlm_decoder = nn.Linear(config.d_model, config.vocab_size)
        if config.tie_weights:
            self.mlm_decoder.weight = self.transformer.tok_emb.weight
        self.pooler = nn.Linear(config.d_model, config.d_model)
        self.classifier = nn.Linear(config.d_model, config.n_classes) if config.n_classes else None
        self.apply(_init_weights)

    def forward(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None,
                return_attention: bool = False) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """idx (B, T); attention_mask (B, T) with 1 for real tokens, 0 for padding.
        Returns hidden (B, T, d_model), and with return_attention a list of (B, H, T, T) per layer."""
        h, weights = self.transformer(idx, attention_mask=attention_mask, token_type_ids=token_type_ids,
                                      need_weights=return_attention)
        return (h, [w["self"] for w in weights]) if return_attention else h

    def mlm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, T, d_model) -> (B, T, vocab_size)."""
        act = "tanh" if self.config.ffn == "gelu_tanh" else "none"
        return self.mlm_decoder(self.mlm_norm(F.gelu(self.mlm_dense(hidden), approximate=act)))

    def pooled(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, T, d_model) -> (B, d_model): tanh(dense(hidden at position 0))."""
        return torch.tanh(self.pooler(hidden[:, 0]))

    def classify(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) ids -> (B, n_classes) logits."""
        if self.classifier is None:
            raise ValueError("this Encoder has no classification head: set GPTConfig.n_classes > 0")
        return self.classifier(self.pooled(self(idx, attention_mask)))


class EncoderDecoder(nn.Module):
    """Encoder-decoder: source ids (B, S) and target ids (B, T) -> (B, T, vocab_size) next-token logits.

    Both halves share the config (and the token embedding); the decoder adds cross-attention in every block.
    `config.sliding_window` windows the decoder's causal self-attention; the encoder, bidirectional, has no
    window (its config says sliding_window=None).
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Transformer(dataclasses.replace(config, causal=False, sliding_window=None))
        self.decoder = Transformer(dataclasses.replace(config, causal=True), cross_attention=True)
        self.decoder.tok_emb = self.encoder.tok_emb
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_weights:
            self.lm_head.weight = self.encoder.tok_emb.weight
        self.apply(_init_weights)

    def encode(self, src: torch.Tensor, src_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, S) -> (B, S, d_model)."""
        return self.encoder(src, attention_mask=src_mask)[0]

    def decode(self, tgt: torch.Tensor, memory: torch.Tensor, src_mask: torch.Tensor | None = None,
               kv_cache=None) -> torch.Tensor:
        """(B, T) target ids and (B, S, d_model) encoder output -> (B, T, vocab_size)."""
        h, _ = self.decoder(tgt, kv_cache=kv_cache, context=memory, context_mask=src_mask)
        return self.lm_head(h)

    def forward(self, src: torch.Tensor, tgt: torch.Tensor, src_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.decode(tgt, self.encode(src, src_mask), src_mask)

    @torch.no_grad()
    def generate(self, src: torch.Tensor, bos_id: int, max_new_tokens: int, temperature: float = 0.0,
                 top_k: int | None = None, top_p: float | None = None, src_mask: torch.Tensor | None = None,
                 eos_id: int | None = None, generator: torch.Generator | None = None,
                 use_cache: bool = True) -> torch.Tensor:
        """Decode from `bos_id`: returns (B, 1 + n) target ids, n <= max_new_tokens (stops when all rows hit eos_id).
        The source is encoded once; with use_cache the decoder's self- and cross-attention keys/values are cached."""
        check_sampling_args(temperature, top_k, top_p)
        if not 0 <= max_new_tokens < self.config.block_size:
            raise ValueError(f"max_new_tokens must be in [0, block_size={self.config.block_size}), got {max_new_tokens}")
        memory = self.encode(src, src_mask)
        tgt = torch.full((src.shape[0], 1), bos_id, dtype=torch.long, device=src.device)
        cache = KVCache(self.config.n_layer, self.config.block_size) if use_cache else None
        done = torch.zeros(src.shape[0], dtype=torch.bool, device=src.device)
        for _ in range(max_new_tokens):
            step_in = tgt[:, cache.length:] if use_cache else tgt
            logits = self.decode(step_in, memory, src_mask, kv_cache=cache)[:, -1]
            nxt = draw_next_token(logits.float(), temperature, top_k, top_p, generator)  # arguments checked above
            if eos_id is not None:
                nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
                done |= nxt == eos_id
            tgt = torch.cat([tgt, nxt[:, None]], dim=1)
            if eos_id is not None and done.all():
                break
        return tgt
