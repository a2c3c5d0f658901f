"""FlashAttention-2 forward and backward as Triton kernels (same algorithm and masks as tiled.py).

Interpreted or native is fixed when triton is first imported (bloomlib.kernels arranges that, see its
docstring): triton.language's own @jit functions (tl.sum, tl.max...) are built then, natively or for the
interpreter, and the kernels below are built the same way (`jit`), so that they can call them.
Inputs are made contiguous, so a (batch, head) slice starts at (b * H + h) * n * D.

One program handles BLOCK_M query rows (forward, dQ) or BLOCK_N keys (dK, dV) of one (batch, head).
Block sizes are >= 16 (GPU dots need it); the head dim D is a power of two in 16..128, so it needs no mask.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction

INTERPRET: bool = isinstance(tl.sum, InterpretedFunction)
jit = InterpretedFunction if INTERPRET else JITFunction  # what triton.jit chose when triton was imported
NEG_INF: tl.constexpr = tl.constexpr(float("-inf"))  # a global a kernel reads must be a constexpr


@jit
def _query_block(n_q, n_k, H, GROUP, BLOCK_M: tl.constexpr):
    """This program's first query row (axis 0 counts blocks of BLOCK_M), and where its query head
    bh = b * H + h (axis 1) starts in Q and its kv head h // GROUP (GQA) in K, as row numbers (int64:
    offsets into a large tensor must not overflow)."""
    bh = tl.program_id(1)
    kv_bh = (bh // H) * (H // GROUP) + (bh % H) // GROUP
    return tl.program_id(0) * BLOCK_M, bh.to(tl.int64) * n_q, kv_bh.to(tl.int64) * n_k


@jit
def _tile(start, n, BLOCK: tl.constexpr, D: tl.constexpr):
    """Rows start .. start + BLOCK - 1 of an (n, D) row-major matrix: their indices (BLOCK,), element
    offsets (BLOCK, D) and mask (BLOCK, 1), False for rows >= n (which are read as 0 and never written)."""
    idx = start + tl.arange(0, BLOCK)
    return idx, idx[:, None] * D + tl.arange(0, D)[None, :], idx[:, None] < n


@jit
def _visible(rows, cols, n_q, n_k, window, CAUSAL: tl.constexpr, WINDOW: tl.constexpr):
    """(len(rows), len(cols)) bool, True where query row i may attend key j: bloomlib.masks.visible in Triton.

    Query i sits at position p = i + n_k - n_q (end-aligned). Key j is visible when j <= p (CAUSAL, which a
    window implies), p - window < j (WINDOW), and both are real rows: j < n_k, i < n_q."""
    pos = rows[:, None] + (n_k - n_q)
    ok = (rows[:, None] < n_q) & (cols[None, :] < n_k)
    if CAUSAL:
        ok = ok & (cols[None, :] <= pos)
    if WINDOW:
        ok = ok & (cols[None, :] > pos - window)
    return ok


@jit
def _scores(q, k, rows, cols, scale, n_q, n_k, window,
            CAUSAL: tl.constexpr, WINDOW: tl.constexpr, PREC: tl.constexpr):
    """q (BLOCK_M, D), k (BLOCK_N, D) -> q kᵀ · scale (BLOCK_M, BLOCK_N) float32, -inf where not _visible."""
    s = tl.dot(q, tl.trans(k), input_precision=PREC) * scale
    return tl.where(_visible(rows, cols, n_q, n_k, window, CAUSAL, WINDOW), s, NEG_INF)


@jit
def _key_tiles(start_m, n_q, n_k, window, CAUSAL: tl.constexpr, WINDOW: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """[lo, hi): the keys that query rows start_m .. start_m + BLOCK_M - 1 may see, lo rounded down to a
    tile start (masks.visible_key_range). The key tiles outside are skipped."""
    lo = 0
    hi = n_k
    if CAUSAL:  # the last row sees keys up to its own position
        hi = tl.minimum(n_k, start_m + BLOCK_M + n_k - n_q)
    if WINDOW:  # the first row sees keys after its position - window
        lo = tl.maximum(0, start_m + n_k - n_q - window + 1) // BLOCK_N * BLOCK_N
    return lo, hi


@jit
def _attn_fwd(Q, K, V, O, L, scale, n_q, n_k, H, GROUP, window,
              CAUSAL: tl.constexpr, WINDOW: tl.constexpr, PREC: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr):
    """One program: BLOCK_M query rows of one (batch, head); streams the key tiles they may see."""
    start_m, q_first, kv_first = _query_block(n_q, n_k, H, GROUP, BLOCK_M)
    rows, q_off, q_ok = _tile(start_m, n_q, BLOCK_M, D)
    q = tl.load(Q + q_first * D + q_off, mask=q_ok, other=0.0)
    m_i = tl.full([BLOCK_M], NEG_INF, tl.float32)   # running row max
    l_i = tl.zeros([BLOCK_M], tl.float32)           # running row sum
    acc = tl.zeros([BLOCK_M, D], tl.float32)        # unnormalised output
    lo, hi = _key_tiles(start_m, n_q, n_k, window, CAUSAL, WINDOW, BLOCK_M, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        cols, kv_off, kv_ok = _tile(start_n, n_k, BLOCK_N, D)
        k = tl.load(K + kv_first * D + kv_off, mask=kv_ok, other=0.0)
        v = tl.load(V + kv_first * D + kv_off, mask=kv_ok, other=0.0)
        s = _scores(q, k, rows, cols, scale, n_q, n_k, window, CAUSAL, WINDOW, PREC)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == NEG_INF, 0.0, m_new)  # rows that have seen no key yet
        p = tl.exp(s - m_safe[:, None])
        alpha = tl.exp(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
        m_i = m_new
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    tl.store(O + q_first * D + q_off, (acc / l_safe[:, None]).to(O.dtype.element_ty), mask=q_ok)
    tl.store(L + q_first + rows, tl.where(empty, NEG_INF, m_i + tl.log(l_safe)), mask=rows < n_q)


@jit
def _attn_bwd_dkdv(Q, K, V, DO, L, Dr, DK, DV, scale, n_q, n_k, H, GROUP, window,
                   CAUSAL: tl.constexpr, WINDOW: tl.constexpr, PREC: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr):
    """One program: BLOCK_N keys of one kv head; loops over the query heads of its group and their rows."""
    start_n = tl.program_id(0) * BLOCK_N
    kv_bh = tl.program_id(1)
    H_kv = H // GROUP
    kv_first = kv_bh.to(tl.int64) * n_k  # this (batch, kv head)'s first row in K, V, DK, DV
    cols, kv_off, kv_ok = _tile(start_n, n_k, BLOCK_N, D)
    k = tl.load(K + kv_first * D + kv_off, mask=kv_ok, other=0.0)
    v = tl.load(V + kv_first * D + kv_off, mask=kv_ok, other=0.0)
    dk = tl.zeros([BLOCK_N, D], tl.float32)
    dv = tl.zeros([BLOCK_N, D], tl.float32)
    lo = 0
    hi = n_q
    if CAUSAL:  # first query row whose position reaches this tile's first key
        lo = tl.maximum(0, start_n - (n_k - n_q)) // BLOCK_M * BLOCK_M
    if WINDOW:  # rows past the last one whose window still covers this tile's last key
        hi = tl.minimum(n_q, start_n + BLOCK_N + window - 1 - (n_k - n_q))
    for g in range(0, GROUP):
        q_first = ((kv_bh // H_kv) * H + (kv_bh % H_kv) * GROUP + g).to(tl.int64) * n_q  # query head's first row
        for start_m in range(lo, hi, BLOCK_M):
            rows, q_off, q_ok = _tile(start_m, n_q, BLOCK_M, D)
            q = tl.load(Q + q_first * D + q_off, mask=q_ok, other=0.0)
            do = tl.load(DO + q_first * D + q_off, mask=q_ok, other=0.0)
            lse = tl.load(L + q_first + rows, mask=rows < n_q, other=0.0)
            Di = tl.load(Dr + q_first + rows, mask=rows < n_q, other=0.0)
            p = tl.exp(_scores(q, k, rows, cols, scale, n_q, n_k, window, CAUSAL, WINDOW, PREC) - lse[:, None])
            dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PREC)
            ds = p * (tl.dot(do, tl.trans(v), input_precision=PREC) - Di[:, None])
            dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PREC)
    tl.store(DK + kv_first * D + kv_off, (dk * scale).to(DK.dtype.element_ty), mask=kv_ok)
    tl.store(DV + kv_first * D + kv_off, dv.to(DV.dtype.element_ty), mask=kv_ok)


@jit
def _attn_bwd_dq(Q, K, V, DO, L, Dr, DQ, scale, n_q, n_k, H, GROUP, window,
                 CAUSAL: tl.constexpr, WINDOW: tl.constexpr, PREC: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr):
    """One program: BLOCK_M query rows; streams key tiles like the forward pass (no atomics needed)."""
    start_m, q_first, kv_first = _query_block(n_q, n_k, H, GROUP, BLOCK_M)
    rows, q_off, q_ok = _tile(start_m, n_q, BLOCK_M, D)
    q = tl.load(Q + q_first * D + q_off, mask=q_ok, other=0.0)
    do = tl.load(DO + q_first * D + q_off, mask=q_ok, other=0.0)
    lse = tl.load(L + q_first + rows, mask=rows < n_q, other=0.0)
    Di = tl.load(Dr + q_first + rows, mask=rows < n_q, other=0.0)
    dq = tl.zeros([BLOCK_M, D], tl.float32)
    lo, hi = _key_tiles(start_m, n_q, n_k, window, CAUSAL, WINDOW, BLOCK_M, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        cols, kv_off, kv_ok = _tile(start_n, n_k, BLOCK_N, D)
        k = tl.load(K + kv_first * D + kv_off, mask=kv_ok, other=0.0)
        v = tl.load(V + kv_first * D + kv_off, mask=kv_ok, other=0.0)
        p = tl.exp(_scores(q, k, rows, cols, scale, n_q, n_k, window, CAUSAL, WINDOW, PREC) - lse[:, None])
        ds = p * (tl.dot(do, tl.trans(v), input_precision=PREC) - Di[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PREC)
    tl.store(DQ + q_first * D + q_off, (dq * scale).to(DQ.dtype.element_ty), mask=q_ok)


def _config(q: torch.Tensor, k: torch.Tensor, causal: bool, window: int | None, block_m: int | None,
            block_n: int | None, backward: bool = False) -> dict:
    """Keyword arguments shared by every launch. The interpreter likes big tiles (fewer Python steps)."""
    d = q.shape[3]
    if INTERPRET:
        bm, bn = 64, 64
    elif q.dtype == torch.float32 and d > 64:  # fixed choices (autotuning needs a driver) that keep shared
        bm, bn = (32, 32) if backward else (64, 32)  # memory under ~100 KB (checked by compiling for sm_90)
    else:
        bm, bn = (64, 64) if backward else (128 if d <= 64 else 64, 64)
    return dict(n_q=q.shape[2], n_k=k.shape[2], H=q.shape[1], GROUP=q.shape[1] // k.shape[1],
                window=window or 0, CAUSAL=causal or window is not None, WINDOW=window is not None,
                PREC="ieee" if q.dtype == torch.float32 else None,  # fp32 dots would default to TF32 on GPU
                BLOCK_M=block_m or bm, BLOCK_N=block_n or bn, D=d, num_warps=4 if d <= 64 else 8, num_stages=2)


def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False, scale: float | None = None,
            window: int | None = None, block_m: int | None = None, block_n: int | None = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """q (B, H, n_q, d), k/v (B, Hkv, n_k, d), contiguous -> O (B, H, n_q, d), L (B, H, n_q) float32."""
    B, H, n_q, d = q.shape
    scale = d ** -0.5 if scale is None else scale
    o = torch.empty_like(q)
    L = torch.empty((B, H, n_q), dtype=torch.float32, device=q.device)
    cfg = _config(q, k, causal, window, block_m, block_n)
    _attn_fwd[(triton.cdiv(n_q, cfg["BLOCK_M"]), B * H)](q, k, v, o, L, scale, **cfg)
    return o, L


def backward(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor, L: torch.Tensor,
             causal: bool = False, scale: float | None = None, window: int | None = None,
             block_m: int | None = None, block_n: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients dq, dk, dv (dk, dv already summed over each GQA group)."""
    B, H, n_q, d = q.shape
    scale = d ** -0.5 if scale is None else scale
    do = do.contiguous()
    Dr = (do.float() * o.float()).sum(-1)  # D = rowsum(dO * O), (B, H, n_q): O(n) memory, plain torch
    L = L.masked_fill(L == float("-inf"), 0.0)  # rows that see no key: every score is -inf, so P = 0 anyway
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    cfg = _config(q, k, causal, window, block_m, block_n, backward=True)
    _attn_bwd_dkdv[(triton.cdiv(k.shape[2], cfg["BLOCK_N"]), B * k.shape[1])](q, k, v, do, L, Dr, dk, dv, scale, **cfg)
    _attn_bwd_dq[(triton.cdiv(n_q, cfg["BLOCK_M"]), B * H)](q, k, v, do, L, Dr, dq, scale, **cfg)
    return dq, dk, dv

