"""Paged KV memory bookkeeping (vLLM's PagedAttention, nano-vllm's BlockManager).

The KV cache is one pool of `num_blocks` blocks of `kv_block_size` token slots per layer
(EngineConfig.kv_block_size; not the model's context window, GPTConfig.block_size). A sequence owns a
*block table*: the ids of its blocks in order, so token position p lives in slot
`block_table[p // kv_block_size] * kv_block_size + p % kv_block_size`. Only the last block of a sequence is ever
partly empty, so at most kv_block_size - 1 slots per sequence are wasted.

Prefix caching: a full block is named by a hash chained over (parent block's hash, its token ids), so equal
hashes mean equal prefixes; a hit is confirmed by comparing token ids. Blocks nobody references keep their
contents and hash and are reused on a hit, or evicted least-recently-used when a fresh block is needed.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict, deque
from typing import Sequence as Seq


def block_hash(parent: bytes | None, token_ids: Seq[int]) -> bytes:
    """Chained hash of a full block: sha256(parent hash, token ids)."""
    h = hashlib.sha256(parent or b"")
    h.update(b",".join(str(t).encode() for t in token_ids))
    return h.digest()


class Block:
    __slots__ = ("id", "ref_count", "hash", "token_ids")

    def __init__(self, block_id: int) -> None:
        self.id, self.ref_count, self.hash, self.token_ids = block_id, 0, None, ()


class BlockManager:
    """Allocates blocks to sequences (objects with `token_ids`, `block_table`, `num_cached_tokens`)."""

    def __init__(self, num_blocks: int, kv_block_size: int, enable_prefix_caching: bool = True) -> None:
        if num_blocks <= 0 or kv_block_size <= 0:
            raise ValueError(f"num_blocks and kv_block_size must be positive, got {num_blocks}, {kv_block_size}")
        self.num_blocks, self.kv_block_size, self.prefix_caching = num_blocks, kv_block_size, enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free: deque[int] = deque(range(num_blocks))       # empty blocks
        self.evictable: OrderedDict[int, None] = OrderedDict()  # ref 0 but hashed; oldest first
        self.hash_to_block: dict[bytes, int] = {}
        self.lookups = self.hits = 0                            # full prompt blocks looked up / found
        self.evictions = 0                                      # cached blocks evicted to make room

    # ---- counters
    @property
    def num_free(self) -> int:
        """Blocks a new sequence can take (empty + evictable cached)."""
        return len(self.free) + len(self.evictable)

    @property
    def num_used(self) -> int:
        return self.num_blocks - self.num_free

    @property
    def num_cached(self) -> int:
        """Blocks holding a reusable prefix that nobody references right now."""
        return len(self.evictable)

    @property
    def hit_rate(self) -> float:
        return self.hits / self.lookups if self.lookups else 0.0

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.kv_block_size)

    # ---- allocation
    def _take_block(self) -> Block:
        if self.free:
            block = self.blocks[self.free.popleft()]
        else:  # evict the least recently used cached block
            block = self.blocks[self.evictable.popitem(last=False)[0]]
            del self.hash_to_block[block.hash]
            self.evictions += 1
            block.hash, block.token_ids = None, ()
        block.ref_count = 1
        return block

    def _cached_prefix(self, token_ids: list[int]) -> list[Block]:
        """Blocks holding a prefix of token_ids. The block holding the last token is never taken: its logits
        must be computed."""
        found, parent = [], None
        if not self.prefix_caching:
            return found
        bs = self.kv_block_size
        for i in range((len(token_ids) - 1) // bs):
            ids = tuple(token_ids[i * bs:(i + 1) * bs])
            parent = block_hash(parent, ids)
            bid = self.hash_to_block.get(parent)
            if bid is None or self.blocks[bid].token_ids != ids:
                break
            found.append(self.blocks[bid])
        return found

    def can_allocate(self, seq) -> bool:
        cached = self._cached_prefix(seq.token_ids)
        reusable_free = sum(b.ref_count == 0 for b in cached)  # cached blocks counted in num_free
        return self.num_free - reusable_free >= self.blocks_needed(len(seq.token_ids)) - len(cached)

    def allocate(self, seq) -> None:
        """Give a waiting sequence blocks for all its tokens, reusing cached prefix blocks."""
        if seq.block_table:
            raise ValueError(f"sequence {seq.request_id} already has blocks")
        cached = self._cached_prefix(seq.token_ids)
        self.lookups += (len(seq.token_ids) - 1) // self.kv_block_size if self.prefix_caching else 0
        self.hits += len(cached)
        for block in cached:
            if block.ref_count == 0:
                del self.evictable[block.id]
            block.ref_count += 1
            seq.block_table.append(block.id)
        seq.num_cached_tokens = len(cached) * self.kv_block_size
        self.grow(seq, len(seq.token_ids))

    def register_full_blocks(self, seq, num_tokens: int) -> None:
        """Hash the sequence's full blocks among its first num_tokens (whose KV is now computed)."""
        if not self.prefix_caching:
            return
        bs, parent = self.kv_block_size, None
        for i in range(num_tokens // bs):
            block = self.blocks[seq.block_table[i]]
            if block.hash is None:
                ids = tuple(seq.token_ids[i * bs:(i + 1) * bs])
                h = block_hash(parent, ids)
                if h not in self.hash_to_block:
                    self.hash_to_block[h] = block.id
                    block.hash, block.token_ids = h, ids
                parent = h
            else:
                parent = block.hash

    def can_grow(self, seq, num_tokens: int) -> bool:
        return self.num_free >= self.blocks_needed(num_tokens) - len(seq.block_table)

    def grow(self, seq, num_tokens: int) -> None:
        """Make the block table hold at least num_tokens positions."""
        for _ in range(self.blocks_needed(num_tokens) - len(seq.block_table)):
            seq.block_table.append(self._take_block().id)

    def free_sequence(self, seq) -> None:
        """Drop the sequence's references; unreferenced hashed blocks stay cached (tail blocks evicted first)."""
        for bid in reversed(seq.block_table):
            block = self.blocks[bid]
            block.ref_count -= 1
            if block.ref_count == 0:
                if block.hash is not None:
                    self.evictable[bid] = None
                else:
                    self.free.append(bid)
        seq.block_table.clear()
        seq.num_cached_tokens = 0
