"""Speculative decoding (Leviathan et al. 2023; Chen et al. 2023): a small draft model proposes k tokens, the
target scores all of them in one forward pass, and a rejection rule keeps the output distributed exactly as
the target's:

    keep draft token x with probability min(1, p(x) / q(x));
    on the first rejection, sample from norm(max(0, p - q)) and stop;
    if all k are kept, sample one more token from the target's next distribution (a free "bonus" token).

p and q are the target's and draft's distributions after the request's temperature / top-k / top-p.
Temperature 0 keeps x iff it is the target's argmax, so greedy output equals the target's greedy output.
Both models keep paged KV caches; rejecting tokens just shortens the valid length (no copy).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from bloomlib.sampling import filter_logits
from bloomlib.serving.model_runner import ModelRunner
from bloomlib.serving.sequence import SamplingParams, Sequence


@dataclass
class SpecStats:
    generated: int = 0       # tokens emitted
    proposed: int = 0        # draft tokens scored by the target
    accepted: int = 0        # draft tokens kept
    rejected: int = 0        # draft tokens rejected (at most one per target pass; later proposals go unjudged)
    target_passes: int = 0   # target forward passes
    draft_passes: int = 0

    @property
    def acceptance_rate(self) -> float:
        """Kept / judged draft tokens: an estimate of the paper's alpha = E[sum min(p, q)]."""
        judged = self.accepted + self.rejected
        return self.accepted / judged if judged else 0.0

    @property
    def target_passes_per_token(self) -> float:
        return self.target_passes / self.generated if self.generated else 0.0


class SpeculativeDecoder:
    """Draft-and-verify generation for one request at a time. target, draft: GPTs sharing a tokenizer."""

    def __init__(self, target: torch.nn.Module, draft: torch.nn.Module, k: int = 4, tokenizer=None,
                 kv_block_size: int = 16) -> None:
        if target.config.vocab_size != draft.config.vocab_size:
            raise ValueError(f"draft vocab_size={draft.config.vocab_size} != target vocab_size="
                             f"{target.config.vocab_size}")
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k (draft tokens per step) must be a positive integer, got {k!r}")
        self.k, self.tokenizer = k, tokenizer
        self.context = min(target.config.block_size, draft.config.block_size)
        n = -(-self.context // kv_block_size)  # one sequence at a time: its pages are simply 0, 1, ..., n - 1
        self.target, self.draft = ModelRunner(target, n, kv_block_size), ModelRunner(draft, n, kv_block_size)
        self.table = list(range(n))
        self.stats = SpecStats()

    def _dist(self, logits: torch.Tensor, p: SamplingParams) -> torch.Tensor:
        if p.temperature == 0:
            return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).to(torch.float64)
        return torch.softmax(filter_logits(logits.double(), p.temperature, p.top_k, p.top_p), dim=-1)

    @staticmethod
    def _draw(probs: torch.Tensor, g: torch.Generator | None) -> int:
        return int(torch.multinomial(probs.float(), 1, generator=g))

    @torch.no_grad()
    def generate(self, prompt, params: SamplingParams | None = None) -> Sequence:
        """Returns the finished Sequence (completion_ids, text, finish_reason); self.stats accumulates."""
        params = params or SamplingParams()
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        if not ids or len(ids) + params.max_tokens > self.context:
            raise ValueError(f"prompt ({len(ids)} tokens) + max_tokens ({params.max_tokens}) must fit the context "
                             f"window of {self.context} tokens (and the prompt must not be empty)")
        seq = Sequence("spec", ids, params, self.tokenizer, safety=None)
        eos = self.tokenizer.eos_id if self.tokenizer is not None else None
        g, st = seq.generator, self.stats
        n_t = n_d = 0  # tokens whose KV each cache holds
        while not seq.is_finished:
            n = len(seq)
            gamma = min(self.k, params.max_tokens - seq.num_completion_tokens, self.context - n)
            drafts, qs = [], []
            for _ in range(gamma):   # draft: gamma single-token steps (the first also catches up)
                feed = (seq.token_ids + drafts)[n_d:]
                logits = self.draft.forward([feed], [n_d], [self.table])[0]
                n_d += len(feed)
                st.draft_passes += 1
                qs.append(self._dist(logits, params))
                drafts.append(self._draw(qs[-1], g))
            feed = (seq.token_ids + drafts)[n_t:]  # target: score every draft token at once
            logits = self.target.forward([feed], [n_t], [self.table], last_only=False)[0][-(gamma + 1):]
            st.target_passes += 1
            st.proposed += gamma
            ps = self._dist(logits, params)
            emitted = []
            for i, x in enumerate(drafts):
                p, q = ps[i], qs[i]
                if float(torch.rand((), generator=g, dtype=torch.float64)) < min(1.0, float(p[x] / q[x])):
                    emitted.append(x)
                    continue
                residual = (p - q).clamp(min=0)
                emitted.append(self._draw(residual / residual.sum(), g))
                st.rejected += 1
                break
            else:
                emitted.append(self._draw(ps[gamma], g))
            st.accepted += len(emitted) - 1  # every emitted token but the last is a kept draft token
            n_t = n + len(emitted) - 1       # KV beyond the kept draft tokens is stale: just forget it
            n_d = min(n_t, n + gamma - 1)    # the draft never fed its last proposal
            for x in emitted:
                seq.append_token(x, eos)
                st.generated += 1
                if seq.is_finished:
                    break
        seq.take_text()
        return seq
