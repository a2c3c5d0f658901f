"""The repeating unit of a transformer: norm, attention, residual, norm, feed-forward, residual.

Pre-LN (GPT-2 onwards):  x = x + attn(norm(x));  x = x + ffn(norm(x))
Post-LN (original, BERT): x = norm(x + attn(x)); x = norm(x + ffn(x))
Attention-only (ffn="none"): the attention sublayer alone.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from bloomlib.attention import KVCache, MultiHeadAttention
from bloomlib.config import GPTConfig


def make_norm(config: GPTConfig) -> nn.Module:
    """LayerNorm (mean and variance) or RMSNorm (root mean square only), over the last dim."""
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.d_model, eps=config.norm_eps)
    return nn.LayerNorm(config.d_model, eps=config.norm_eps, bias=config.bias)


def apply_dropout(dropout: nn.Dropout, x: torch.Tensor) -> torch.Tensor:
    """dropout(x), skipped when it would change nothing (eval mode or p = 0).

    A one-token decoding step is so small that even a do-nothing module call shows in the time per token.
    """
    return dropout(x) if dropout.training and dropout.p > 0 else x


class FeedForward(nn.Module):
    """Position-wise MLP, (B, T, d_model) -> (B, T, d_model), applied to every position independently.

    gelu / gelu_tanh / relu: down(act(up(x)));  swiglu: down(silu(gate(x)) * up(x)).
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.kind = config.ffn
        self.up = nn.Linear(config.d_model, config.d_ff, bias=config.bias)
        self.gate = nn.Linear(config.d_model, config.d_ff, bias=config.bias) if config.ffn == "swiglu" else None
        self.down = nn.Linear(config.d_ff, config.d_model, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "swiglu":
            h = F.silu(self.gate(x)) * self.up(x)
        elif self.kind == "relu":
            h = F.relu(self.up(x))
        else:
            h = F.gelu(self.up(x), approximate="tanh" if self.kind == "gelu_tanh" else "none")
        return apply_dropout(self.dropout, self.down(h))


class Block(nn.Module):
    """One transformer block: self-attention (+ cross-attention in a decoder that reads an encoder) + FFN
    (no FFN, and no norm2, when config.ffn is "none").

    x: (B, T, d_model) -> (B, T, d_model).
    """

    def __init__(self, config: GPTConfig, cross_attention: bool = False) -> None:
        super().__init__()
        self.prenorm = config.prenorm

        def attention(cross: bool) -> MultiHeadAttention:
            causal = config.causal and not cross
            return MultiHeadAttention(config.d_model, config.n_head, config.n_kv_head, bias=config.bias,
                                      causal=causal, sliding_window=config.sliding_window if causal else None,
                                      dropout=config.dropout, cross=cross)

        self.norm1, self.attn = make_norm(config), attention(cross=False)
        self.norm_cross = make_norm(config) if cross_attention else None
        self.cross_attn = attention(cross=True) if cross_attention else None
        attention_only = config.ffn == "none"
        self.norm2 = None if attention_only else make_norm(config)
        self.ffn = None if attention_only else FeedForward(config)
        self.dropout = nn.Dropout(config.dropout)

    def _residual(self, x: torch.Tensor, out: torch.Tensor, norm: nn.Module) -> torch.Tensor:
        """The residual connection x + out; post-LN normalises the sum (pre-LN normalised the sublayer's input)."""
        x = x + apply_dropout(self.dropout, out)
        return x if self.prenorm else norm(x)

    def forward(self, x: torch.Tensor, *, mask: torch.Tensor | None = None, alibi: torch.Tensor | None = None,
                rope=None, positions: torch.Tensor | None = None, kv_cache: KVCache | None = None, layer: int = 0,
                context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None,
                need_weights: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor | None]]:
        """Returns (x, weights) with weights {"self": (B, H, T, n_k), "cross": (B, H, T, S)} when need_weights.
        kv_cache: a KVCache, or the serving engine's paged cache (any object with the same interface).

        Each sublayer: pre-LN x = x + f(norm(x)); post-LN x = norm(x + f(x)).
        """
        weights: dict[str, torch.Tensor | None] = {}
        h = self.norm1(x) if self.prenorm else x
        out, weights["self"] = self.attn(h, mask=mask, alibi=alibi, rope=rope, positions=positions,
                                         kv_cache=kv_cache, layer=layer, need_weights=need_weights)
        x = self._residual(x, out, self.norm1)
        if self.cross_attn is not None:
            if context is None:
                raise ValueError("this block has cross-attention: pass the encoder output as `context`")
            h = self.norm_cross(x) if self.prenorm else x
            out, weights["cross"] = self.cross_attn(h, context=context, mask=context_mask, kv_cache=kv_cache,
                                                    layer=layer, need_weights=need_weights)
            x = self._residual(x, out, self.norm_cross)
        if self.ffn is None:  # attention-only
            return x, weights
        h = self.norm2(x) if self.prenorm else x
        return self._residual(x, self.ffn(h), self.norm2), weights
