"""Runs a bloomlib GPT's weights over a paged KV cache.

The runner reuses the model's modules (embeddings, norms, projections, FFNs, head) but does its own attention:
the new tokens of every sequence are packed into one flat (N, d_model) batch for the matmuls, their keys and
values are written into cache slots, and each sequence's queries then read its keys/values through its block
table (`paged_attention`). The same call serves prefill (many new tokens, possibly after a cached prefix),
decode (one token per sequence) and speculative verification (k + 1 tokens per sequence).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def slot_mapping(block_table: torch.Tensor, positions: torch.Tensor, block_size: int) -> torch.Tensor:
    """Cache slot of each position: block_table[..., p // block_size] * block_size + p % block_size.
    block_table: (B, max_blocks); positions: (B, T) -> (B, T)."""
    return block_table.gather(-1, positions // block_size) * block_size + positions % block_size


def attention_layout(block_tables: torch.Tensor, context_lens: torch.Tensor, q_positions: torch.Tensor,
                     block_size: int, window: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each sequence's keys live and which of them each query may see (shared by all layers).

    Returns slots (B, n_k): cache slot of key position j of sequence b (n_k = longest context), and
    allowed (B, 1, T, n_k): key j <= query position, j < context length (and within the window).
    """
    B, n_k = block_tables.shape[0], int(context_lens.max())
    k_pos = torch.arange(n_k, device=block_tables.device)
    slots = slot_mapping(block_tables, k_pos.expand(B, n_k).clamp(max=block_tables.shape[1] * block_size - 1),
                         block_size)
    qp, kp = q_positions[:, None, :, None], k_pos[None, None, None, :]        # (B, 1, T, 1), (1, 1, 1, n_k)
    allowed = (kp <= qp) & (kp < context_lens[:, None, None, None])
    if window is not None:
        allowed &= kp > qp - window
    return slots, allowed


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                    context_lens: torch.Tensor, q_positions: torch.Tensor, block_size: int, *,
                    alibi_slopes: torch.Tensor | None = None, window: int | None = None,
                    layout: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Causal attention of queries over keys/values stored in a block-paged cache.

    q: (B, T, H, D) queries of B sequences (padded to T); q_positions: (B, T) their absolute positions.
    k_cache, v_cache: (num_slots, H_kv, D), slot = block * block_size + offset.
    block_tables: (B, max_blocks) block ids (padding entries are ignored); context_lens: (B,) cached length.
    Query at position p attends the sequence's keys at positions j <= p, j < context_len (and p - window < j).
    layout: attention_layout(...) when already computed (it is the same for every layer). Returns (B, T, H, D).
    """
    H = q.shape[2]
    slots, allowed = layout or attention_layout(block_tables, context_lens, q_positions, block_size, window)
    flat = slots.flatten()
    k = k_cache.index_select(0, flat).view(*slots.shape, *k_cache.shape[1:]).transpose(1, 2)  # (B, H_kv, n_k, D)
    v = v_cache.index_select(0, flat).view(*slots.shape, *v_cache.shape[1:]).transpose(1, 2)
    mask = allowed
    if alibi_slopes is not None:
        dist = (q_positions[:, None, :, None] - torch.arange(slots.shape[1], device=q.device)).abs().to(q.dtype)
        mask = (-alibi_slopes.to(q.dtype)[None, :, None, None] * dist).masked_fill(~allowed, float("-inf"))
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, attn_mask=mask, enable_gqa=k.shape[1] != H)
    return out.transpose(1, 2)


class ModelRunner:
    """Holds a paged KV cache for `model` and runs batches of (new tokens, start position, block table)."""

    def __init__(self, model: torch.nn.Module, num_blocks: int, block_size: int) -> None:
        cfg = model.config
        if getattr(model.transformer, "type_emb", None) is not None:
            raise ValueError("the serving engine serves decoder-only GPTs without token types")
        self.model, self.config, self.block_size = model.eval(), cfg, block_size
        p = next(model.parameters())
        self.device = p.device
        self.dtype = model.transformer.tok_emb.weight.dtype
        shape = (cfg.n_layer, num_blocks * block_size, cfg.n_kv_head, cfg.head_dim)
        self.k_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.v_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)

    @property
    def kv_bytes_per_token(self) -> int:
        c = self.config
        return 2 * c.n_layer * c.n_kv_head * c.head_dim * self.k_cache.element_size()

    def _group(self, rows: list[int], lens, starts, offsets, block_tables):
        """Padded (len(rows), T) views of some sequences' queries, and their attention layout."""
        dev, T = self.device, max(lens[i] for i in rows)
        pos_pad = torch.zeros(len(rows), T, dtype=torch.long, device=dev)  # padding queries sit at position 0
        flat_index = torch.zeros(len(rows), T, dtype=torch.long, device=dev)
        valid = torch.zeros(len(rows), T, dtype=torch.bool, device=dev)
        for j, i in enumerate(rows):
            n = lens[i]
            pos_pad[j, :n] = torch.arange(starts[i], starts[i] + n)
            flat_index[j, :n] = torch.arange(offsets[i], offsets[i] + n)
            valid[j, :n] = True
        width = max(len(block_tables[i]) for i in rows)
        tables = torch.tensor([block_tables[i] + [0] * (width - len(block_tables[i])) for i in rows], device=dev)
        ctx = torch.tensor([starts[i] + lens[i] for i in rows], device=dev)
        layout = attention_layout(tables, ctx, pos_pad, self.block_size, self.config.sliding_window)
        return flat_index, valid, pos_pad, tables, ctx, layout

    @torch.no_grad()
    def forward(self, tokens: list[list[int]], starts: list[int], block_tables: list[list[int]],
                last_only: bool = True) -> torch.Tensor | list[torch.Tensor]:
        """Sequence i feeds tokens[i] at positions starts[i], starts[i] + 1, ...; its KV for positions
        < starts[i] must already be in the cache. Returns the logits of each sequence's last token (B, V), or
        with last_only=False a list of (len(tokens[i]), V)."""
        tr, cfg, dev, bs = self.model.transformer, self.config, self.device, self.block_size
        lens = [len(t) for t in tokens]
        if min(lens) == 0:
            raise ValueError("every sequence must feed at least one token")
        if max(s + n for s, n in zip(starts, lens)) > cfg.block_size:
            raise ValueError(f"a sequence is longer than the context window (block_size={cfg.block_size})")
        N, offsets = sum(lens), [0]
        for n in lens:
            offsets.append(offsets[-1] + n)
        ids = torch.tensor([t for seq in tokens for t in seq], dtype=torch.long, device=dev)
        pos = torch.tensor([p for s, n in zip(starts, lens) for p in range(s, s + n)], device=dev)   # (N,)
        slots = torch.tensor([b[p // bs] * bs + p % bs for b, s, n in zip(block_tables, starts, lens)
                              for p in range(s, s + n)], device=dev)                                  # (N,)
        slopes = getattr(tr, "alibi_slopes", None) if cfg.pos_encoding == "alibi" else None
        # decoding sequences (one query) and prefilling ones attend separately, so that one long prompt
        # does not pad every decode query to its length
        groups = [self._group(rows, lens, starts, offsets, block_tables) for rows in
                  ([i for i, n in enumerate(lens) if n == 1], [i for i, n in enumerate(lens) if n > 1]) if rows]

        x = tr.embed(ids[None], pos)[0]                                   # (N, d_model)
        for layer, blk in enumerate(tr.blocks):
            att = blk.attn
            h = blk.norm1(x) if blk.prenorm else x
            q, k, v = att.qkv_proj(h).view(N, att.n_head + 2 * att.n_kv_head, att.head_dim).split(
                [att.n_head, att.n_kv_head, att.n_kv_head], dim=1)           # (N, heads, D) each
            if tr.rope is not None:
                q = tr.rope(q.transpose(0, 1)[None], pos)[0].transpose(0, 1)
                k = tr.rope(k.transpose(0, 1)[None], pos)[0].transpose(0, 1)
            self.k_cache[layer].index_copy_(0, slots, k.to(self.dtype))
            self.v_cache[layer].index_copy_(0, slots, v.to(self.dtype))
            o = torch.empty_like(q)                                       # (N, H, D)
            for flat_index, valid, pos_pad, tables, ctx, layout in groups:
                o[flat_index[valid]] = paged_attention(q[flat_index], self.k_cache[layer], self.v_cache[layer],
                                                       tables, ctx, pos_pad, bs, alibi_slopes=slopes,
                                                       layout=layout)[valid]
            a = att.o_proj(o.reshape(N, att.n_head * att.head_dim))
            x = x + a if blk.prenorm else blk.norm1(x + a)
            f = blk.ffn(blk.norm2(x) if blk.prenorm else x)
            x = x + f if blk.prenorm else blk.norm2(x + f)
        if last_only:
            x = x[torch.tensor(lens, device=dev).cumsum(0) - 1]
        if tr.final_norm is not None:
            x = tr.final_norm(x)
        logits = self.model.lm_head(x)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        return logits if last_only else list(logits.split(lens))
