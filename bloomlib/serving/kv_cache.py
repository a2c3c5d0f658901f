"""The engine's paged KV cache: what `bloomlib.KVCache` is to one sequence, this is to a whole batch of them.

Keys and values live in one pool of pages per layer, each page holding `page_size` token slots; a sequence
owns the pages its block table lists (bloomlib.serving.block_manager decides which), so position p of a
sequence lives in slot `table[p // page_size] * page_size + p % page_size`.

An engine step feeds several sequences at once, each from its own start position, packed into one row
(1, N) of tokens, so the model's matmuls run on all of them together. `prepare` lays the step out once;
then the model's own blocks run over it, calling the two methods of the cache interface:
  positions(N)                    -> the packed tokens' positions (for learned/sinusoidal embeddings and RoPE)
  attend(layer, q, k, v, attend)  -> stores k, v in the sequences' slots, then, for each group of sequences,
                                     gathers their pages and calls the model's own `attend` with an
                                     AttentionLayout that says where every query and key sits.
Decoding sequences (one query each, packed first) and prefilling ones form separate groups, so that one long
prompt does not pad every decode query to its length.
"""
from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import torch

from bloomlib.attention import AttentionLayout


@dataclass
class _Group:
    """Some sequences of a step, their queries padded to T each."""

    shape: tuple[int, int]          # (b, T)
    queries: torch.Tensor | None    # (b * T,) index of each padded query among the packed tokens
    kept: torch.Tensor | None       # (n,) the real queries among the b * T ...
    packed: torch.Tensor | None     # (n,) ... and where each sits among the packed tokens
    pages: torch.Tensor             # (b * max_pages,) page ids, row by row (padding entries are never visible)
    layout: AttentionLayout
    first: int | None               # decoding rows (one query each, packed together): their first packed token,
                                    # so their queries and outputs are a slice (and the three indexes are None)


class PagedKVCache:
    """pages: (n_layer, num_pages, page_size, 2, n_kv_head, head_dim), the keys ([..., 0, :, :]) and values
    ([..., 1, :, :]) of a slot side by side, so that one gather per layer reads both."""

    def __init__(self, n_layer: int, num_pages: int, page_size: int, n_kv_head: int, head_dim: int, *,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> None:
        self.pages = torch.zeros(n_layer, num_pages, page_size, 2, n_kv_head, head_dim, dtype=dtype, device=device)
        self.page_size = page_size
        self._gathered = self.pages.new_empty(0)  # reused by every gather: a fresh buffer each time costs page faults
        self._step: tuple[torch.Tensor, torch.Tensor, int, list[_Group]] | None = None

    @property
    def bytes_per_token(self) -> int:
        n_layer, _, _, two, n_kv_head, head_dim = self.pages.shape
        return n_layer * two * n_kv_head * head_dim * self.pages.element_size()

    def prepare(self, starts: list[int], lens: list[int], block_tables: list[list[int]]) -> None:
        """Lay out one step: sequence i feeds lens[i] tokens at positions starts[i], starts[i] + 1, ... (its
        keys and values before starts[i] are already cached), packed one sequence after another, the decoding
        ones (one token each) first (`packing_order`)."""
        dev, ps = self.pages.device, self.page_size
        positions = [p for s, n in zip(starts, lens) for p in range(s, s + n)]
        slots = [table[p // ps] * ps + p % ps for s, n, table in zip(starts, lens, block_tables)
                 for p in range(s, s + n)]
        offsets = list(itertools.accumulate(lens, initial=0))
        d = next((i for i, n in enumerate(lens) if n > 1), len(lens))  # decoding rows are 0..d-1
        if 1 in lens[d:]:
            raise ValueError("prepare: decoding sequences (one token each) must be packed before the others")
        groups = [self._group(list(rows), starts, lens, offsets, block_tables)
                  for rows in (range(d), range(d, len(lens))) if rows]
        end = max(s + n for s, n in zip(starts, lens))
        self._step = (torch.tensor(positions, device=dev), torch.tensor(slots, device=dev), end, groups)

    @staticmethod
    def packing_order(lens: list[int]) -> list[int]:
        """The order `prepare` wants sequences in: the decoding ones first (the scheduler's order already)."""
        return sorted(range(len(lens)), key=lambda i: lens[i] > 1)

    def _group(self, rows, starts, lens, offsets, block_tables) -> _Group:
        dev, T = self.pages.device, max(lens[i] for i in rows)
        width = max(-(-(starts[i] + lens[i]) // self.page_size) for i in rows)  # pages the longest one reads
        tensor = functools.partial(torch.tensor, dtype=torch.long, device=dev)
        pages = tensor([p for i in rows for p in (block_tables[i] + [0] * width)[:width]])
        k_pos = torch.arange(width * self.page_size, device=dev)
        if T == 1:
            pos = tensor([starts[i] for i in rows])
            layout = AttentionLayout(pos[:, None], k_pos, pos + 1)
            return _Group((len(rows), 1), None, None, None, pages, layout, rows[0])
        context = tensor([starts[i] + lens[i] for i in rows])
        queries = [offsets[i] + min(t, lens[i] - 1) for i in rows for t in range(T)]  # padding repeats the last
        kept = [j * T + t for j, i in enumerate(rows) for t in range(lens[i])]
        q_pos = tensor([starts[i] + min(t, lens[i] - 1) for i in rows for t in range(T)]).view(len(rows), T)
        return _Group((len(rows), T), tensor(queries), tensor(kept), tensor([queries[j] for j in kept]), pages,
                      AttentionLayout(q_pos, k_pos, context), None)

    def _prepared(self):
        if self._step is None:
            raise ValueError("PagedKVCache.prepare(...) must lay out the step before the model runs over it")
        return self._step

    def positions(self, T: int, device: torch.device | str | None = None) -> tuple[torch.Tensor, int]:
        positions, _, end, _ = self._prepared()
        if T != len(positions):
            raise ValueError(f"the step was prepared for {len(positions)} packed tokens, got {T}")
        return positions, end

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attend):
        """q (1, H, N, D), k and v (1, H_kv, N, D) for the N packed tokens -> (out (1, H, N, D), None)."""
        # Tensor methods (select, narrow, unsqueeze) rather than indexing: a one-token step is so small that
        # Python's slower x[...] shows in the time per token.
        _, slots, _, groups = self._prepared()
        pages = self.pages.select(0, layer)
        n_pages, ps, _, n_kv, D = pages.shape
        slot_kv = pages.view(n_pages * ps, 2, n_kv, D)
        slot_kv.select(1, 0).index_copy_(0, slots, k.squeeze(0).transpose(0, 1).to(pages.dtype))  # (N, H_kv, D)
        slot_kv.select(1, 1).index_copy_(0, slots, v.squeeze(0).transpose(0, 1).to(pages.dtype))
        q, out = q.squeeze(0), None                                                    # (H, N, D)
        for g in groups:
            b, T = g.shape
            if g.first is not None:  # decoding rows: a slice of the packed tokens
                og = self._attend_group(g, q.narrow(1, g.first, b).transpose(0, 1).unsqueeze(2), pages, attend)
                og = og.squeeze(2).transpose(0, 1)                                     # (H, b, D)
                if b == q.shape[1]:  # every sequence decodes: the output is this group's
                    return og.unsqueeze(0), None
                out = torch.empty_like(q) if out is None else out
                out.narrow(1, g.first, b).copy_(og)
                continue
            out = torch.empty_like(q) if out is None else out
            qg = q.index_select(1, g.queries).view(-1, b, T, D).transpose(0, 1)     # (b, H, T, D)
            og = self._attend_group(g, qg, pages, attend)                           # (b, H, T, D)
            out.index_copy_(1, g.packed, og.transpose(0, 1).reshape(-1, b * T, D).index_select(1, g.kept))
        return out.unsqueeze(0), None

    def _attend_group(self, g: _Group, qg: torch.Tensor, pages: torch.Tensor, attend) -> torch.Tensor:
        """qg (b, H, T, D) over the keys in the group's pages -> (b, H, T, D)."""
        n = len(g.pages)
        if len(self._gathered) < n:
            with torch.inference_mode(False):  # a normal tensor: it may be written in and out of inference mode
                self._gathered = pages.new_empty(max(n, len(pages)), *pages.shape[1:])
        kv = torch.index_select(pages, 0, g.pages, out=self._gathered.narrow(0, 0, n))
        kv = kv.view(g.shape[0], -1, *pages.shape[2:]).to(qg.dtype)                         # (b, n_k, 2, H_kv, D)
        return attend(qg, kv.select(2, 0).transpose(1, 2), kv.select(2, 1).transpose(1, 2), layout=g.layout)[0]
