"""The decoder-only GPT, built from bloomlib's blocks, with generation and a few counting helpers.

Read top to bottom: embeddings -> N blocks -> final norm -> language-model head.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from bloomlib.attention import KVCache, set_attention_backend
from bloomlib.blocks import Block, apply_dropout, make_norm
from bloomlib.config import GPTConfig
from bloomlib.device import small_step_mode
from bloomlib.positional import RotaryEmbedding, alibi_slopes, sinusoidal_encoding
from bloomlib.sampling import apply_repetition_penalty, check_sampling_args, draw_next_token

COURSE_MODEL = Path(__file__).parent / "assets" / "course_model"
DRAFT_MODEL = Path(__file__).parent / "assets" / "draft_model"


class Transformer(nn.Module):
    """Embeddings and a stack of blocks: (B, T) token ids -> (B, T, d_model) hidden states.

    The trunk shared by GPT (causal), Encoder (bidirectional) and both halves of EncoderDecoder.
    """

    def __init__(self, config: GPTConfig, cross_attention: bool = False) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = nn.Embedding(config.block_size, config.d_model) if config.pos_encoding == "learned" else None
        if config.pos_encoding == "sinusoidal":
            self.register_buffer("pos_table", sinusoidal_encoding(config.block_size, config.d_model), persistent=False)
        self.type_emb = nn.Embedding(config.type_vocab_size, config.d_model) if config.type_vocab_size else None
        self.embed_norm = make_norm(config) if config.embed_norm else None
        self.dropout = nn.Dropout(config.dropout)
        self.rope = (RotaryEmbedding(config.head_dim, config.block_size, config.rope_theta)
                     if config.pos_encoding == "rope" else None)
        if config.pos_encoding == "alibi":
            self.register_buffer("alibi_slopes", alibi_slopes(config.n_head), persistent=False)
        self.blocks = nn.ModuleList(Block(config, cross_attention) for _ in range(config.n_layer))
        self.final_norm = make_norm(config) if config.final_norm else None

    def embed(self, idx: torch.Tensor, positions: torch.Tensor, token_type_ids: torch.Tensor | None = None):
        """(B, T) ids at (T,) positions -> (B, T, d_model): token embedding + absolute position (if any)."""
        x = self.tok_emb(idx)
        if self.pos_emb is not None:
            x = x + self.pos_emb(positions)
        elif self.config.pos_encoding == "sinusoidal":
            x = x + self.pos_table[positions]
        if self.type_emb is not None:
            x = x + self.type_emb(torch.zeros_like(idx) if token_type_ids is None else token_type_ids)
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        return apply_dropout(self.dropout, x)

    def check_token_ids(self, idx: torch.Tensor) -> None:
        """Raise ValueError unless every id in idx is in [0, vocab_size)."""
        if idx.numel():
            lo, hi = map(int, torch.aminmax(idx))
            if lo < 0 or hi >= self.config.vocab_size:
                raise ValueError(f"token ids must be in [0, {self.config.vocab_size}), got [{lo}, {hi}]")

    def forward(self, idx: torch.Tensor, *, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, kv_cache: KVCache | None = None,
                context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None,
                need_weights: bool = False, check_ids: bool = True) -> tuple[torch.Tensor, list[dict]]:
        """idx: (B, T) token ids. attention_mask: (B, n_k) 1 = real token, 0 = padding (keys to ignore).
        kv_cache: past keys/values (a KVCache or the engine's paged cache): it says where the T new tokens sit.
        context / context_mask: encoder output (B, S, d_model) and its padding mask (B, S) for cross-attention.
        check_ids=False skips the id-range check (generation checks the prompt once, not every step).
        Returns (hidden (B, T, d_model), per-layer attention weights (empty unless need_weights)).
        """
        if idx.dim() != 2 or idx.dtype not in (torch.long, torch.int, torch.int16, torch.uint8):
            raise ValueError(f"idx must be integer token ids of shape (batch, seq), got {idx.dtype} {tuple(idx.shape)}")
        B, T = idx.shape
        if kv_cache is None:
            positions, end = torch.arange(T, device=idx.device), T
        else:
            positions, end = kv_cache.positions(T, idx.device)
        if end > self.config.block_size:
            raise ValueError(f"sequence of {end} tokens is longer than the context window "
                             f"(block_size={self.config.block_size})")
        if check_ids:
            self.check_token_ids(idx)
        x = self.embed(idx, positions, token_type_ids)
        mask = None if attention_mask is None else _padding_mask(attention_mask, B, end, "attention_mask")
        cmask = None if context_mask is None else _padding_mask(context_mask, B, context.shape[1], "context_mask")
        alibi = self.alibi_slopes.to(x.dtype) if self.config.pos_encoding == "alibi" else None
        all_weights = []
        for i, block in enumerate(self.blocks):
            x, w = block(x, mask=mask, alibi=alibi, rope=self.rope, positions=positions, kv_cache=kv_cache,
                         layer=i, context=context, context_mask=cmask, need_weights=need_weights)
            if need_weights:
                all_weights.append(w)
        if self.final_norm is not None:
            x = self.final_norm(x)
        return x, all_weights


def _padding_mask(mask: torch.Tensor, batch: int, n_k: int, name: str) -> torch.Tensor:
    """(B, n_k) 1/0 (or bool) -> (B, 1, 1, n_k) boolean, True = may attend."""
    if mask.shape != (batch, n_k):
        raise ValueError(f"{name} must have shape (batch, n_keys) = {(batch, n_k)}, got {tuple(mask.shape)}")
    return (mask != 0)[:, None, None, :]


class GPT(nn.Module):
    """Decoder-only transformer language model: (B, T) token ids -> (B, T, vocab_size) next-token logits."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if not config.causal:
            raise ValueError("GPT needs a causal config (config.causal=True); use bloomlib.Encoder for bidirectional")
        self.config = config
        self.transformer = Transformer(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_weights:
            self.lm_head.weight = self.transformer.tok_emb.weight
        self.apply(_init_weights)

    def forward(self, idx: torch.Tensor, *, kv_cache: KVCache | None = None,
                return_attention: bool = False) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """idx (B, T) -> logits (B, T, vocab_size); with return_attention also a list of (B, H, T, n_k) per layer."""
        h, weights = self.transformer(idx, kv_cache=kv_cache, need_weights=return_attention)
        logits = self.lm_head(h)
        return (logits, [w["self"] for w in weights]) if return_attention else logits

    def set_attention_backend(self, backend: str) -> None:
        """Compute attention with "sdpa", "math" or "flash" from now on (a runtime choice, not saved)."""
        set_attention_backend(self, backend)

    def new_kv_cache(self) -> KVCache:
        return KVCache(self.config.n_layer, self.config.block_size)

    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, repetition_penalty: float = 1.0, stop_tokens=None,
                 generator: torch.Generator | None = None, use_cache: bool = True) -> torch.Tensor:
        """Autoregressive sampling. idx: (B, T) prompt -> (B, T + n) prompt and new tokens, n <= max_new_tokens.

        temperature 0 is greedy; temperature, then top-k, then top-p; None turns a filter off.
        A row that produces one of `stop_tokens` stops; it is filled with that token while the others go on,
        and generation ends early once every row has stopped. When the sequence reaches the context window
        the oldest tokens are dropped (the cache is then rebuilt from the last block_size tokens at every step).
        """
        check_sampling_args(temperature, top_k, top_p, repetition_penalty)
        if idx.dim() != 2 or idx.shape[1] == 0:
            raise ValueError(f"idx must be a non-empty (batch, seq) prompt, got shape {tuple(idx.shape)}")
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        self.transformer.check_token_ids(idx)  # once: every later token comes from the model's own vocabulary
        with small_step_mode():  # inference mode, and oneDNN off for the loop (see there why)
            out = self._generate(idx, max_new_tokens, temperature, top_k, top_p, repetition_penalty,
                                 stop_tokens, generator, use_cache)
        return out.clone()  # an ordinary tensor, usable with autograd afterwards

    def _generate(self, idx, max_new_tokens, temperature, top_k, top_p, repetition_penalty, stop_tokens,
                  generator, use_cache) -> torch.Tensor:
        B, T0 = idx.shape
        seq = torch.empty(B, T0 + max_new_tokens, dtype=torch.long, device=idx.device)  # filled in place
        seq[:, :T0] = idx  # long, whatever the prompt's dtype: new ids may not fit a uint8 or int16 prompt
        stops = torch.tensor(sorted(set(stop_tokens or [])), dtype=torch.long, device=idx.device)
        finished = torch.zeros(B, dtype=torch.bool, device=idx.device)
        fill = torch.zeros_like(finished, dtype=torch.long)
        block = self.config.block_size
        cache, fed = None, 0  # fed: how many tokens of the current window the cache holds
        n = T0  # tokens so far
        for _ in range(max_new_tokens):
            if not use_cache:
                h = self._last_hidden(seq[:, max(0, n - block):n], None)
            elif cache is None or n > block:  # (re)build the cache on the last window
                cache = self.new_kv_cache()
                h = self._last_hidden(seq[:, max(0, n - block):n], cache)
            else:
                h = self._last_hidden(seq[:, fed:n], cache)
            fed = n
            logits = apply_repetition_penalty(self.lm_head(h).float(), seq[:, :n], repetition_penalty)
            nxt = draw_next_token(logits, temperature, top_k, top_p, generator)  # arguments checked above
            if len(stops):
                nxt = torch.where(finished, fill, nxt)
                newly = ~finished & torch.isin(nxt, stops)
                fill = torch.where(newly, nxt, fill)
                finished |= newly
            seq[:, n] = nxt
            n += 1
            if len(stops) and finished.all():
                break
        return seq[:, :n]

    def _last_hidden(self, idx: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
        """(B, T) ids -> (B, d_model) final hidden state of the last position (ids already checked)."""
        h, _ = self.transformer(idx, kv_cache=cache, check_ids=False)
        return h[:, -1]


def _init_weights(module: nn.Module) -> None:
    """GPT-2's initialisation: normal(0, 0.02) weights, zero biases."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


def count_parameters(model: nn.Module, non_embedding: bool = False) -> int:
    """Number of distinct parameters (tied weights once); non_embedding leaves out token/position embeddings."""
    total = sum(p.numel() for p in model.parameters())  # parameters() lists a shared (tied) tensor once
    if non_embedding:
        for name, mod in model.named_modules():
            if name.endswith(("tok_emb", "pos_emb", "type_emb")):
                total -= mod.weight.numel()
    return total


def flops_per_token(config: GPTConfig, n_params: int, seq_len: int | None = None) -> float:
    """Training FLOPs per token, as in nanoGPT's estimate_mfu (PaLM appendix B):
    6 N for the matmuls (2 forward, 4 backward) + 12 L H d_head T for attention scores and mixing."""
    T = config.block_size if seq_len is None else seq_len
    return 6 * n_params + 12 * config.n_layer * config.n_head * config.head_dim * T
