"""FlashAttention-2 in plain PyTorch, one tile at a time, to be read next to the paper (Dao, 2307.08691).

Nothing here is fast: the point is that every step of the kernel is visible, and that no tensor of
shape (n_q, n_k) is ever created. Work is vectorised over batch and heads; the loops run over tiles
of the sequence. GQA is handled by viewing q as (batch, kv_heads, group, n, d), so that one key/value
head broadcasts over its group of query heads without being copied.

Masks follow bloomlib.masks (`visible`): query i sits at absolute position p = i + n_k - n_q;
causal: key j is visible when j <= p; window w (implies the causal bound): p - w < j <= p.
A query that sees no key gets output 0, log-sum-exp -inf and zero gradients.
"""
from __future__ import annotations

import torch
from torch import Tensor

from bloomlib import masks


def key_range(m0: int, m1: int, n_q: int, n_k: int, causal: bool, window: int | None, block_n: int) -> range:
    """Start of every key tile that query rows [m0, m1) may see; tiles wholly outside are skipped."""
    off = n_k - n_q  # query row i sits at position i + off
    lo, hi = masks.visible_key_range(m0 + off, m1 - 1 + off, n_k, causal=causal, window=window)
    return range(lo // block_n * block_n, hi, block_n)


def tile_mask(m0: int, m1: int, n0: int, n1: int, n_q: int, n_k: int, causal: bool, window: int | None,
              device: torch.device) -> Tensor | None:
    """(m1 - m0, n1 - n0) bool, True = may attend; None when the whole tile is visible."""
    if not causal and window is None:
        return None
    off = n_k - n_q
    return masks.visible(torch.arange(m0 + off, m1 + off, device=device), torch.arange(n0, n1, device=device),
                         causal=causal, window=window)


def _grouped(q: Tensor, k: Tensor) -> tuple[Tensor, int]:
    """(B, H, n, d) -> (B, Hkv, G, n, d), G = H // Hkv: query head h reads kv head h // G."""
    B, H, n, d = q.shape
    G = H // k.shape[1]
    return q.view(B, H // G, G, n, d), G


def flash_forward(q: Tensor, k: Tensor, v: Tensor, causal: bool = False, scale: float | None = None,
                  window: int | None = None, block_m: int = 64, block_n: int = 64) -> tuple[Tensor, Tensor]:
    """FlashAttention-2 forward. q (B, H, n_q, d); k, v (B, Hkv, n_k, d).

    Returns O (B, H, n_q, d) in q's dtype and L = log-sum-exp of each score row (B, H, n_q) in the
    compute dtype (float64 for float64 inputs, else float32).
    """
    B, H, n_q, d = q.shape
    n_k = k.shape[2]
    scale = d ** -0.5 if scale is None else scale
    ct = torch.float64 if q.dtype == torch.float64 else torch.float32
    qg, G = _grouped(q, k)
    kg, vg = k[:, :, None], v[:, :, None]  # (B, Hkv, 1, n_k, d): broadcast over the group
    O = torch.empty(qg.shape, dtype=q.dtype, device=q.device)
    L = torch.empty(qg.shape[:-1], dtype=ct, device=q.device)
    for m0 in range(0, n_q, block_m):
        m1 = min(m0 + block_m, n_q)
        qi = qg[..., m0:m1, :].to(ct)                                              # (B, Hkv, G, bm, d)
        m = torch.full(qi.shape[:-1], float("-inf"), dtype=ct, device=q.device)    # running row max
        l = torch.zeros(qi.shape[:-1], dtype=ct, device=q.device)                  # running row sum
        acc = torch.zeros(qi.shape, dtype=ct, device=q.device)                     # unnormalised output
        for n0 in key_range(m0, m1, n_q, n_k, causal, window, block_n):
            n1 = min(n0 + block_n, n_k)
            s = qi @ kg[..., n0:n1, :].to(ct).transpose(-1, -2) * scale               # (B, Hkv, G, bm, bn)
            mask = tile_mask(m0, m1, n0, n1, n_q, n_k, causal, window, q.device)
            if mask is not None:
                s = s.masked_fill(~mask, float("-inf"))
            m_new = torch.maximum(m, s.amax(-1))
            m_safe = m_new.masked_fill(m_new == float("-inf"), 0.0)  # rows that have seen nothing yet
            p = torch.exp(s - m_safe[..., None])
            alpha = torch.exp(m - m_safe)            # rescales what was accumulated under the old max
            l = l * alpha + p.sum(-1)
            acc = acc * alpha[..., None] + p @ vg[..., n0:n1, :].to(ct)
            m = m_new
        empty = l == 0
        O[..., m0:m1, :] = (acc / l.masked_fill(empty, 1.0)[..., None]).to(q.dtype)  # divide once, at the end
        L[..., m0:m1] = (m + torch.log(l.masked_fill(empty, 1.0))).masked_fill(empty, float("-inf"))
    return O.view(B, H, n_q, d), L.view(B, H, n_q)


def flash_backward(do: Tensor, q: Tensor, k: Tensor, v: Tensor, o: Tensor, L: Tensor, causal: bool = False,
                   scale: float | None = None, window: int | None = None, block_m: int = 64,
                   block_n: int = 64) -> tuple[Tensor, Tensor, Tensor]:
    """FlashAttention-2 backward: recompute P from L tile by tile. Returns dq, dk, dv in the input dtypes.

    do, o (B, H, n_q, d); L (B, H, n_q) from flash_forward. (The GPU kernel loops over key tiles
    outside so that dK, dV need no atomics; here += on a full-size buffer is just as simple.)
    """
    B, H, n_q, d = q.shape
    n_k = k.shape[2]
    scale = d ** -0.5 if scale is None else scale
    ct = L.dtype
    qg, G = _grouped(q, k)
    dog, _ = _grouped(do, k)
    Lg = L.view(qg.shape[:-1])
    Dg = (do.to(ct) * o.to(ct)).sum(-1).view(qg.shape[:-1])  # D = rowsum(dO * O) = rowsum(P * dP)
    kg, vg = k[:, :, None], v[:, :, None]
    dq = torch.empty(qg.shape, dtype=q.dtype, device=q.device)
    dk = torch.zeros(k.shape, dtype=ct, device=q.device)
    dv = torch.zeros(v.shape, dtype=ct, device=q.device)
    for m0 in range(0, n_q, block_m):
        m1 = min(m0 + block_m, n_q)
        qi, doi = qg[..., m0:m1, :].to(ct), dog[..., m0:m1, :].to(ct)
        Li, Di = Lg[..., m0:m1, None], Dg[..., m0:m1, None]
        Li = Li.masked_fill(Li == float("-inf"), 0.0)  # empty rows: every score is -inf, so P = 0 anyway
        dqi = torch.zeros(qi.shape, dtype=ct, device=q.device)
        for n0 in key_range(m0, m1, n_q, n_k, causal, window, block_n):
            n1 = min(n0 + block_n, n_k)
            kj, vj = kg[..., n0:n1, :].to(ct), vg[..., n0:n1, :].to(ct)
            s = qi @ kj.transpose(-1, -2) * scale
            mask = tile_mask(m0, m1, n0, n1, n_q, n_k, causal, window, q.device)
            if mask is not None:
                s = s.masked_fill(~mask, float("-inf"))
            p = torch.exp(s - Li)                                   # P recomputed, never stored
            dv[..., n0:n1, :] += (p.transpose(-1, -2) @ doi).sum(2)  # sum over the query heads of a group
            dp = doi @ vj.transpose(-1, -2)
            ds = p * (dp - Di)                                      # softmax backward
            dqi += ds @ kj * scale
            dk[..., n0:n1, :] += (ds.transpose(-1, -2) @ qi).sum(2) * scale
        dq[..., m0:m1, :] = dqi.to(q.dtype)
    return dq.view(q.shape), dk.to(k.dtype), dv.to(v.dtype)


class FlashAttention(torch.autograd.Function):
    """Autograd around impl = (forward, backward): (flash_forward, flash_backward) here, or the Triton kernels'
    pair with the same arguments. Forward saves q, k, v, O and L only (O(n) extra memory)."""

    @staticmethod
    def forward(ctx, impl: tuple, q, k, v, causal: bool, scale: float | None, window: int | None, block_m, block_n):
        fwd, ctx.bwd = impl
        o, L = fwd(q, k, v, causal, scale, window, block_m, block_n)
        ctx.save_for_backward(q, k, v, o, L)
        ctx.args = (causal, scale, window, block_m, block_n)
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, L = ctx.saved_tensors
        return None, *ctx.bwd(do, q, k, v, o, L, *ctx.args), None, None, None, None, None
