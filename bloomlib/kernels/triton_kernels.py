"""FlashAttention-2 forward and backward as Triton kernels (same algorithm and masks as tiled.py).

Kernels are written below as plain functions and turned into Triton kernels by `kernels(interpret)`:
`triton.jit` reads TRITON_INTERPRET when a kernel is *defined*, so we define each function twice,
once natively (CUDA tensors) and once with TRITON_INTERPRET=1 set around `triton.jit` (CPU tensors),
and cache both. Inputs are made contiguous, so a (batch, head) slice starts at (b * H + h) * n * D.

One program handles BLOCK_M query rows (forward, dQ) or BLOCK_N keys (dK, dV) of one (batch, head).
Block sizes are >= 16 (GPU dots need it); the head dim D is a power of two in 16..128, so it needs no mask.
"""
from __future__ import annotations

import contextlib
import functools
import os

import torch
import triton
import triton.language as tl

NEG_INF: tl.constexpr = tl.constexpr(float("-inf"))  # a global a kernel reads must be a constexpr


def _attn_fwd(Q, K, V, O, L, scale, n_q, n_k, H, GROUP, window,
              CAUSAL: tl.constexpr, WINDOW: tl.constexpr, PREC: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr):
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    kv_bh = (bh // H) * (H // GROUP) + (bh % H) // GROUP  # GQA: query head h reads kv head h // GROUP
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    q_ptrs = Q + bh.to(tl.int64) * n_q * D + offs_m[:, None] * D + offs_d[None, :]
    k_base = K + kv_bh.to(tl.int64) * n_k * D
    v_base = V + kv_bh.to(tl.int64) * n_k * D
    q = tl.load(q_ptrs, mask=offs_m[:, None] < n_q, other=0.0)
    m_i = tl.full([BLOCK_M], NEG_INF, tl.float32)   # running row max
    l_i = tl.zeros([BLOCK_M], tl.float32)           # running row sum
    acc = tl.zeros([BLOCK_M, D], tl.float32)        # unnormalised output
    pos = offs_m + (n_k - n_q)                      # absolute position of each query (end-aligned)
    lo = 0
    hi = n_k
    if CAUSAL:  # skip key tiles entirely above the diagonal ...
        hi = tl.minimum(n_k, start_m + BLOCK_M + n_k - n_q)
    if WINDOW:  # ... and those entirely before the window
        lo = tl.maximum(0, start_m + n_k - n_q - window + 1) // BLOCK_N * BLOCK_N
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        k = tl.load(k_base + cols[:, None] * D + offs_d[None, :], mask=cols[:, None] < n_k, other=0.0)
        v = tl.load(v_base + cols[:, None] * D + offs_d[None, :], mask=cols[:, None] < n_k, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * scale
        ok = cols[None, :] < n_k
        if CAUSAL:
            ok = ok & (cols[None, :] <= pos[:, None])
        if WINDOW:
            ok = ok & (cols[None, :] > pos[:, None] - window)
        s = tl.where(ok, s, NEG_INF)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == NEG_INF, 0.0, m_new)  # rows that have seen no key yet
        p = tl.exp(s - m_safe[:, None])
        alpha = tl.exp(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
        m_i = m_new
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    out = acc / l_safe[:, None]
    lse = tl.where(empty, NEG_INF, m_i + tl.log(l_safe))
    tl.store(O + bh.to(tl.int64) * n_q * D + offs_m[:, None] * D + offs_d[None, :],
             out.to(O.dtype.element_ty), mask=offs_m[:, None] < n_q)
    tl.store(L + bh.to(tl.int64) * n_q + offs_m, lse, mask=offs_m < n_q)


def _attn_bwd_dkdv(Q, K, V, DO, L, Dr, DK, DV, scale, n_q, n_k, H, GROUP, window,
                   CAUSAL: tl.constexpr, WINDOW: tl.constexpr, PREC: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr):
    """One program: BLOCK_N keys of one kv head; loops over the query heads of its group and their rows."""
    start_n = tl.program_id(0) * BLOCK_N
    kv_bh = tl.program_id(1)
    H_kv = H // GROUP
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    kv_off = kv_bh.to(tl.int64) * n_k * D + offs_n[:, None] * D + offs_d[None, :]
    k = tl.load(K + kv_off, mask=offs_n[:, None] < n_k, other=0.0)
    v = tl.load(V + kv_off, mask=offs_n[:, None] < n_k, other=0.0)
    dk = tl.zeros([BLOCK_N, D], tl.float32)
    dv = tl.zeros([BLOCK_N, D], tl.float32)
    lo = 0
    hi = n_q
    if CAUSAL:  # first query row whose position reaches this tile's first key
        lo = tl.maximum(0, start_n - (n_k - n_q)) // BLOCK_M * BLOCK_M
    if WINDOW:  # rows past the last one whose window still covers this tile's last key
        hi = tl.minimum(n_q, start_n + BLOCK_N + window - 1 - (n_k - n_q))
    for g in range(0, GROUP):
        bh = (kv_bh // H_kv) * H + (kv_bh % H_kv) * GROUP + g
        for start_m in range(lo, hi, BLOCK_M):
            rows = start_m + offs_m
            row_off = bh.to(tl.int64) * n_q * D + rows[:, None] * D + offs_d[None, :]
            q = tl.load(Q + row_off, mask=rows[:, None] < n_q, other=0.0)
            do = tl.load(DO + row_off, mask=rows[:, None] < n_q, other=0.0)
            lse = tl.load(L + bh.to(tl.int64) * n_q + rows, mask=rows < n_q, other=0.0)
            lse = tl.where(lse == NEG_INF, 0.0, lse)  # empty rows: all scores are -inf, P = 0 anyway
            Di = tl.load(Dr + bh.to(tl.int64) * n_q + rows, mask=rows < n_q, other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=PREC) * scale
            pos = rows + (n_k - n_q)
            ok = (rows[:, None] < n_q) & (offs_n[None, :] < n_k)
            if CAUSAL:
                ok = ok & (offs_n[None, :] <= pos[:, None])
            if WINDOW:
                ok = ok & (offs_n[None, :] > pos[:, None] - window)
            p = tl.exp(tl.where(ok, s, NEG_INF) - lse[:, None])  # P recomputed from L
            dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PREC)
            dp = tl.dot(do, tl.trans(v), input_precision=PREC)
            ds = p * (dp - Di[:, None])
            dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PREC)
    tl.store(DK + kv_off, (dk * scale).to(DK.dtype.element_ty), mask=offs_n[:, None] < n_k)
    tl.store(DV + kv_off, dv.to(DV.dtype.element_ty), mask=offs_n[:, None] < n_k)


def _attn_bwd_dq(Q, K, V, DO, L, Dr, DQ, scale, n_q, n_k, H, GROUP, window,
                 CAUSAL: tl.constexpr, WINDOW: tl.constexpr, PREC: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr):
    """One program: BLOCK_M query rows; streams key tiles like the forward pass (no atomics needed)."""
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    kv_bh = (bh // H) * (H // GROUP) + (bh % H) // GROUP
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    row_off = bh.to(tl.int64) * n_q * D + offs_m[:, None] * D + offs_d[None, :]
    q = tl.load(Q + row_off, mask=offs_m[:, None] < n_q, other=0.0)
    do = tl.load(DO + row_off, mask=offs_m[:, None] < n_q, other=0.0)
    lse = tl.load(L + bh.to(tl.int64) * n_q + offs_m, mask=offs_m < n_q, other=0.0)
    lse = tl.where(lse == NEG_INF, 0.0, lse)
    Di = tl.load(Dr + bh.to(tl.int64) * n_q + offs_m, mask=offs_m < n_q, other=0.0)
    k_base = K + kv_bh.to(tl.int64) * n_k * D
    v_base = V + kv_bh.to(tl.int64) * n_k * D
    dq = tl.zeros([BLOCK_M, D], tl.float32)
    pos = offs_m + (n_k - n_q)
    lo = 0
    hi = n_k
    if CAUSAL:
        hi = tl.minimum(n_k, start_m + BLOCK_M + n_k - n_q)
    if WINDOW:
        lo = tl.maximum(0, start_m + n_k - n_q - window + 1) // BLOCK_N * BLOCK_N
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        k = tl.load(k_base + cols[:, None] * D + offs_d[None, :], mask=cols[:, None] < n_k, other=0.0)
        v = tl.load(v_base + cols[:, None] * D + offs_d[None, :], mask=cols[:, None] < n_k, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * scale
        ok = cols[None, :] < n_k
        if CAUSAL:
            ok = ok & (cols[None, :] <= pos[:, None])
        if WINDOW:
            ok = ok & (cols[None, :] > pos[:, None] - window)
        p = tl.exp(tl.where(ok, s, NEG_INF) - lse[:, None])
        dp = tl.dot(do, tl.trans(v), input_precision=PREC)
        ds = p * (dp - Di[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PREC)
    tl.store(DQ + row_off, (dq * scale).to(DQ.dtype.element_ty), mask=offs_m[:, None] < n_q)


@contextlib.contextmanager
def _interpret_env(on: bool):
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1" if on else "0"
    try:
        yield
    finally:
        if old is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = old


@functools.cache
def _interpreted_twin(f):
    from triton.runtime.interpreter import InterpretedFunction

    return InterpretedFunction(f.fn)


@contextlib.contextmanager
def _stdlib_for_interpreter():
    """tl.sum, tl.max, tl.zeros... are @triton.jit functions too, built for the GPU when triton was imported
    without TRITON_INTERPRET=1, and an interpreted kernel cannot call those. During an interpreted launch,
    swap in interpreted twins (the interpreter itself patches tl the same way around every launch)."""
    from triton.runtime.jit import JITFunction

    saved = {name: f for name, f in vars(tl).items() if isinstance(f, JITFunction)}
    try:
        for name, f in saved.items():
            setattr(tl, name, _interpreted_twin(f))
        yield
    finally:
        for name, f in saved.items():
            setattr(tl, name, f)


@functools.cache
def kernels(interpret: bool) -> tuple:
    """(fwd, bwd_dkdv, bwd_dq) defined natively or for the interpreter; built once each."""
    with _interpret_env(interpret):
        return tuple(triton.jit(f) for f in (_attn_fwd, _attn_bwd_dkdv, _attn_bwd_dq))


def _config(q: torch.Tensor, k: torch.Tensor, causal: bool, window: int | None, interpret: bool,
            block_m: int | None, block_n: int | None, backward: bool = False) -> dict:
    """Keyword arguments shared by every launch. The interpreter likes big tiles (fewer Python steps)."""
    d = q.shape[3]
    if interpret:
        bm, bn = 64, 64
    elif q.dtype == torch.float32 and d > 64:  # fixed choices (autotuning needs a driver) that keep shared
        bm, bn = (32, 32) if backward else (64, 32)  # memory under ~100 KB (checked by compiling for sm_89)
    else:
        bm, bn = (64, 64) if backward else (128 if d <= 64 else 64, 64)
    return dict(n_q=q.shape[2], n_k=k.shape[2], H=q.shape[1], GROUP=q.shape[1] // k.shape[1],
                window=window or 0, CAUSAL=causal or window is not None, WINDOW=window is not None,
                PREC="ieee" if q.dtype == torch.float32 else None,  # fp32 dots would default to TF32 on GPU
                BLOCK_M=block_m or bm, BLOCK_N=block_n or bn, D=d, num_warps=4 if d <= 64 else 8, num_stages=2)


def forward(q, k, v, causal=False, scale=None, window=None, interpret=False, block_m=None, block_n=None):
    """q (B, H, n_q, d), k/v (B, Hkv, n_k, d), contiguous -> O (B, H, n_q, d), L (B, H, n_q) float32."""
    B, H, n_q, d = q.shape
    scale = d ** -0.5 if scale is None else scale
    o = torch.empty_like(q)
    L = torch.empty((B, H, n_q), dtype=torch.float32, device=q.device)
    cfg = _config(q, k, causal, window, interpret, block_m, block_n)
    with _stdlib_for_interpreter() if interpret else contextlib.nullcontext():
        kernels(interpret)[0][(triton.cdiv(n_q, cfg["BLOCK_M"]), B * H)](q, k, v, o, L, scale, **cfg)
    return o, L


def backward(do, q, k, v, o, L, causal=False, scale=None, window=None, interpret=False, block_m=None, block_n=None):
    """Gradients dq, dk, dv (dk, dv already summed over each GQA group)."""
    B, H, n_q, d = q.shape
    scale = d ** -0.5 if scale is None else scale
    _, bwd_dkdv, bwd_dq = kernels(interpret)
    do = do.contiguous()
    Dr = (do.float() * o.float()).sum(-1)  # D = rowsum(dO * O), (B, H, n_q): O(n) memory, plain torch
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    cfg = _config(q, k, causal, window, interpret, block_m, block_n, backward=True)
    with _stdlib_for_interpreter() if interpret else contextlib.nullcontext():
        bwd_dkdv[(triton.cdiv(k.shape[2], cfg["BLOCK_N"]), B * k.shape[1])](q, k, v, do, L, Dr, dk, dv, scale, **cfg)
        bwd_dq[(triton.cdiv(n_q, cfg["BLOCK_M"]), B * H)](q, k, v, do, L, Dr, dq, scale, **cfg)
    return dq, dk, dv


class TritonFlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal, scale, window, interpret, block_m, block_n):
        o, L = forward(q, k, v, causal, scale, window, interpret, block_m, block_n)
        ctx.save_for_backward(q, k, v, o, L)
        ctx.args = (causal, scale, window, interpret, block_m, block_n)
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, L = ctx.saved_tensors
        return *backward(do, q, k, v, o, L, *ctx.args), None, None, None, None, None, None
