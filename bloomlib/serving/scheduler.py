"""Continuous batching (Orca / vLLM / nano-vllm): which sequences run in the next step.

Every step decodes one token for each running sequence and, in the same forward pass, prefills the
waiting requests it can admit (while blocks, a sequence limit and a per-step token budget allow), so an
arrival never stalls the running batch for a step. When a decoding sequence needs a block and none is
free, the most recently admitted running sequence is preempted: its blocks are freed and it goes back
to the front of the waiting queue, to be recomputed from its tokens later.
"""
from __future__ import annotations

from collections import deque

from bloomlib.serving.block_manager import BlockManager
from bloomlib.serving.sequence import Sequence, Status


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int) -> None:
        self.bm, self.max_num_seqs, self.max_num_batched_tokens = block_manager, max_num_seqs, max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: deque[Sequence] = deque()
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> list[Sequence]:
        """The sequences to run this step: each running one decodes a token (the newest are preempted when
        blocks run out), then waiting ones are admitted for prefill while the sequence limit, free blocks
        and the token budget allow. Each feeds token_ids[num_computed:]."""
        scheduled = []
        while self.running:
            seq = self.running.popleft()
            while not self.bm.can_grow(seq, len(seq)):
                if self.running:
                    self.preempt(self.running.pop())
                else:
                    self.preempt(seq)
                    break
            else:
                self.bm.grow(seq, len(seq))
                scheduled.append(seq)
        self.running.extend(scheduled)
        num_tokens = len(scheduled)
        while self.waiting and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if scheduled and num_tokens + len(seq) > self.max_num_batched_tokens or not self.bm.can_allocate(seq):
                break
            self.bm.allocate(seq)
            seq.num_computed = seq.num_cached_tokens
            num_tokens += len(seq) - seq.num_computed
            seq.status = Status.RUNNING
            self.running.append(self.waiting.popleft())
            scheduled.append(seq)
        return scheduled

    def preempt(self, seq: Sequence) -> None:
        seq.status = Status.WAITING
        self.bm.free_sequence(seq)
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def finish(self, seq: Sequence) -> None:
        """Remove a finished or cancelled sequence from the queues and free its blocks at once."""
        for queue in (self.running, self.waiting):
            if seq in queue:
                queue.remove(seq)
        self.bm.free_sequence(seq)
        seq.status = Status.FINISHED
