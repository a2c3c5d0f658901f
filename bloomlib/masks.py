"""Who may attend whom: the one visibility rule of the course, and the masks built from it.

A query at absolute position p may see the key at absolute position j when
  * causal (or windowed):  j <= p
  * sliding window w:      p - w < j            (a window always implies the causal bound)
  * context length c:      j < c                (keys past a sequence's end, e.g. in a padded gather)
With no cache, query i of n_q sits at position i + n_k - n_q: queries are aligned to the end of the keys,
as when decoding after a cache. The dense masks, the tiled kernel's tile skipping, paged attention and the
benchmarks all call `visible` (or `visible_key_range`, the same rule for a run of queries); the Triton
kernels hold its one translation into Triton (`triton_kernels._visible`).
"""
from __future__ import annotations

import torch


def visible(q_pos: torch.Tensor, k_pos: torch.Tensor, *, causal: bool = False, window: int | None = None,
            context_len: torch.Tensor | int | None = None) -> torch.Tensor:
    """Boolean mask, True where the query at q_pos may attend the key at k_pos.

    q_pos: (..., n_q) and k_pos: (..., n_k) integer positions -> (..., n_q, n_k) (batch dims broadcast).
    context_len: an int, or (...,) per batch row: keys at positions >= context_len are not visible.
    """
    if window is not None and window <= 0:
        raise ValueError(f"window must be a positive integer, got {window}")
    q, k = q_pos[..., :, None], k_pos[..., None, :]
    ok = (k <= q) if causal or window is not None else (q == q) & (k == k)  # (..., n_q, n_k)
    if window is not None:
        ok &= k > q - window
    if context_len is not None:
        c = torch.as_tensor(context_len, device=q_pos.device)
        ok = ok & (k < (c[..., None, None] if c.dim() else c))
    return ok


def visible_key_range(first_q: int, last_q: int, n_k: int, *, causal: bool = False,
                      window: int | None = None) -> tuple[int, int]:
    """[lo, hi): the keys that queries at positions first_q..last_q may see, by the rule of `visible`
    (a kernel skips every key tile outside it)."""
    lo, hi = 0, n_k
    if causal or window is not None:
        hi = min(n_k, last_q + 1)
    if window is not None:
        lo = max(0, first_q - window + 1)
    return lo, max(lo, hi)


def end_aligned_positions(n_q: int, n_k: int, device: torch.device | str | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(q_pos (n_q,), k_pos (n_k,)): the last n_q of n_k positions are the queries'."""
    return torch.arange(n_k - n_q, n_k, device=device), torch.arange(n_k, device=device)


def build_attention_mask(n_q: int, n_k: int, *, causal: bool = False, window: int | None = None,
                         device: torch.device | str | None = None) -> torch.Tensor | None:
    """Boolean (n_q, n_k) mask, True where query i may attend key j; None when everything is allowed.

    Queries are aligned to the end of the keys: query i sits at position i + n_k - n_q.
    """
    if not causal and window is None:
        return None
    return visible(*end_aligned_positions(n_q, n_k, device), causal=causal, window=window)


def causal_mask(seq_len: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(seq_len, seq_len) boolean lower-triangular mask: position i may attend positions j <= i."""
    return build_attention_mask(seq_len, seq_len, causal=True, device=device)
