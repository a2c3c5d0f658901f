"""Runs a bloomlib GPT over the engine's paged KV cache: the model's own blocks, the runtime's own cache.

One call serves prefill (many new tokens, possibly after a cached prefix), decode (one token per sequence)
and speculative verification (k + 1 tokens per sequence), all packed into one row of tokens. Nothing here
knows how a block computes: embeddings, positions, attention, norms and FFNs are `model.transformer`'s.
"""
from __future__ import annotations

import torch

from bloomlib.device import small_step_mode
from bloomlib.serving.kv_cache import PagedKVCache


class ModelRunner:
    """Holds a PagedKVCache of `num_pages` pages of `page_size` tokens for `model` and runs steps over it."""

    def __init__(self, model: torch.nn.Module, num_pages: int, page_size: int) -> None:
        cfg = model.config
        if getattr(model.transformer, "type_emb", None) is not None:
            raise ValueError("the serving engine serves decoder-only GPTs without token types")
        if any(getattr(m, "backend", None) == "flash" for m in model.modules()):
            raise ValueError("the engine's paged cache needs the 'sdpa' or 'math' attention backend; "
                             "call model.set_attention_backend('sdpa') first")
        self.model, self.config = model.eval(), cfg
        weight = model.transformer.tok_emb.weight
        self.device = weight.device
        self.cache = PagedKVCache(cfg.n_layer, num_pages, page_size, cfg.n_kv_head, cfg.head_dim,
                                  dtype=weight.dtype, device=weight.device)

    def forward(self, tokens: list[list[int]], starts: list[int], block_tables: list[list[int]],
                last_only: bool = True) -> torch.Tensor | list[torch.Tensor]:
        """Sequence i feeds tokens[i] at positions starts[i], starts[i] + 1, ...; its KV for positions
        < starts[i] must already be in the cache. Returns the logits of each sequence's last token (B, V), or
        with last_only=False a list of (len(tokens[i]), V)."""
        lens = [len(t) for t in tokens]
        if min(lens) == 0:
            raise ValueError("every sequence must feed at least one token")
        order = self.cache.packing_order(lens)
        self.cache.prepare([starts[i] for i in order], [lens[i] for i in order], [block_tables[i] for i in order])
        ids = torch.tensor([[t for i in order for t in tokens[i]]], dtype=torch.long, device=self.device)
        with small_step_mode():
            h, _ = self.model.transformer(ids, kv_cache=self.cache, check_ids=False)     # (1, N, d_model)
            h = h.squeeze(0)
            if last_only and len(h) > len(lens):  # some sequence fed several tokens: keep each one's last
                h = h[torch.tensor([lens[i] for i in order], device=self.device).cumsum(0) - 1]
            logits = self.model.lm_head(h)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        back = sorted(range(len(order)), key=order.__getitem__)  # where sequence i sits in the packing
        if last_only:
            return logits if back == sorted(back) else logits[torch.tensor(back, device=self.device)]
        per_seq = logits.split([lens[i] for i in order])
        return [per_seq[j] for j in back]
