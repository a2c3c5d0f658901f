"""Choosing the next token from logits: temperature, top-k, top-p (nucleus), repetition penalty.

Order (the course's convention): repetition penalty, then temperature, then top-k, then top-p,
then a draw from the softmax. Temperature 0 means greedy (argmax).
"""
from __future__ import annotations

import torch


def check_sampling_args(temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                        repetition_penalty: float = 1.0) -> None:
    """Raise ValueError naming the first argument that is out of range."""
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and (not isinstance(top_k, int) or top_k <= 0):
        raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p}")
    if not repetition_penalty > 0:
        raise ValueError(f"repetition_penalty must be > 0 (1 = off), got {repetition_penalty}")


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """(..., V) -> same shape with everything below the k-th largest logit set to -inf (ties at the k-th kept)."""
    k = min(k, logits.shape[-1])
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """(..., V): keep the smallest set of most likely tokens whose probability mass reaches p.

    The token whose probability makes the running total cross p is kept: a token is dropped only
    when the mass of the tokens ranked above it already reaches p.
    """
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs
    drop_sorted = mass_before >= p
    drop_sorted[..., 0] = False  # the most likely token always stays
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def apply_repetition_penalty(logits: torch.Tensor, previous: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL (Keskar et al. 2019): for every token already in `previous` (B, T), divide its logit by `penalty`
    when positive and multiply it when negative. logits: (B, V). penalty 1.0 does nothing."""
    if penalty == 1.0:
        return logits
    seen = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, previous, True)
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def filter_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None) -> torch.Tensor:
    """Temperature (> 0), then top-k, then top-p: the logits a sample is drawn from, (..., V)."""
    logits = logits / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    return logits


def sample_next_token(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                      top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """logits (B, V) -> next token ids (B,). Temperature 0 is greedy."""
    check_sampling_args(temperature, top_k, top_p)
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (batch, vocab), got {tuple(logits.shape)}")
    return draw_next_token(logits, temperature, top_k, top_p, generator)


def draw_next_token(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """sample_next_token without its checks, for a loop that checked its arguments once."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(filter_logits(logits.float(), temperature, top_k, top_p), dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
