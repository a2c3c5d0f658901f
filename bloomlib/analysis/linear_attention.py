"""Linear attention (Katharopoulos et al. 2020, "Transformers are RNNs"): softmax replaced by a kernel.

With the feature map phi(x) = elu(x) + 1 (positive everywhere), the attention of query i is

    out_i = phi(q_i) . S / (phi(q_i) . z),   S = sum_j phi(k_j) v_j^T  (D, D_v),   z = sum_j phi(k_j)  (D,)

the sums over every key, or over the keys j <= i when causal. S and z do not depend on i, so the cost is
linear in T and no (T, T) matrix is ever formed. Causal attention keeps running sums and walks the sequence
in chunks: inside a chunk the (chunk, chunk) block is formed and masked, the earlier chunks enter through S, z.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from bloomlib.masks import build_attention_mask


def feature_map(x: Tensor) -> Tensor:
    """phi(x) = elu(x) + 1, the paper's positive feature map."""
    return F.elu(x) + 1


def _check(q: Tensor, k: Tensor, v: Tensor | None) -> None:
    named = (("q", q), ("k", k)) + ((("v", v),) if v is not None else ())
    for name, t in named:
        if not isinstance(t, Tensor) or t.dim() != 4:
            got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"linear_attention: {name} must be a 4-D tensor (batch, heads, seq, head_dim), got {got}")
        if not t.is_floating_point():
            raise ValueError(f"linear_attention: {name} must be floating point, got {t.dtype}")
        if t.dtype != q.dtype or t.device != q.device:
            raise ValueError(f"linear_attention: {name} is {t.dtype} on {t.device}, q is {q.dtype} on {q.device}")
    if q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(f"linear_attention: q {tuple(q.shape)} and k {tuple(k.shape)} must agree on batch, heads "
                         f"and head_dim (dims 0, 1 and 3)")
    if v is not None and v.shape[:3] != k.shape[:3]:
        raise ValueError(f"linear_attention: k {tuple(k.shape)} and v {tuple(v.shape)} must agree on batch, heads "
                         f"and length (dims 0, 1 and 2)")


def linear_attention(q: Tensor, k: Tensor, v: Tensor, *, causal: bool = False, eps: float = 1e-6,
                     chunk_size: int = 64) -> Tensor:
    """q (B, H, n_q, D), k (B, H, n_k, D), v (B, H, n_k, D_v) -> (B, H, n_q, D_v), in q's dtype.

    causal: query i may see key j when j <= i + n_k - n_q (bloomlib's end alignment; with n_q == n_k, j <= i).
    eps is added to the denominator (a query that sees no key gets 0). chunk_size: the causal walk's block
    length (memory O(T * D + chunk_size**2 + D * D_v) per head; the result does not depend on it beyond rounding).
    Half-precision inputs are summed in float32.
    """
    _check(q, k, v)
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"linear_attention: chunk_size must be a positive int, got {chunk_size!r}")
    work = torch.promote_types(q.dtype, torch.float32)
    fq, fk, v_ = feature_map(q.to(work)), feature_map(k.to(work)), v.to(work)
    if not causal:
        S = fk.transpose(-2, -1) @ v_                                  # (B, H, D, D_v)
        z = fk.sum(-2)                                                 # (B, H, D)
        return ((fq @ S) / ((fq @ z[..., None]) + eps)).to(q.dtype)
    n_q, n_k = q.shape[2], k.shape[2]
    out = fq.new_zeros(*q.shape[:3], v.shape[-1])
    offset = n_k - n_q  # query i sits at key position i + offset
    first = max(0, -offset)  # queries before it see no key and keep output 0
    prefix = max(0, offset)  # keys every query sees
    S = fk[:, :, :prefix].transpose(-2, -1) @ v_[:, :, :prefix]
    z = fk[:, :, :prefix].sum(-2)
    for start in range(first, n_q, chunk_size):
        stop = min(start + chunk_size, n_q)
        qc = fq[:, :, start:stop]
        kc, vc = fk[:, :, start + offset:stop + offset], v_[:, :, start + offset:stop + offset]
        a = (qc @ kc.transpose(-2, -1)).tril()                        # (B, H, c, c): j <= i inside the chunk
        num = a @ vc + qc @ S
        den = a.sum(-1, keepdim=True) + qc @ z[..., None]
        out[:, :, start:stop] = num / (den + eps)
        S = S + kc.transpose(-2, -1) @ vc
        z = z + kc.sum(-2)
    return out.to(q.dtype)


def linear_attention_weights(q: Tensor, k: Tensor, *, causal: bool = False, eps: float = 1e-6) -> Tensor:
    """The attention matrix linear attention implies: (B, H, n_q, n_k), phi(q) phi(k)^T normalised row-wise.

    Quadratic in T (for plots and checks); linear_attention(q, k, v) == weights @ v. Rows sum to 1 (up to eps),
    or to 0 for a causal query that sees no key. causal follows bloomlib.masks (end-aligned).
    """
    _check(q, k, None)
    work = torch.promote_types(q.dtype, torch.float32)
    a = feature_map(q.to(work)) @ feature_map(k.to(work)).transpose(-2, -1)
    allowed = build_attention_mask(q.shape[2], k.shape[2], causal=causal, device=q.device)
    if allowed is not None:
        a = a * allowed
    return (a / (a.sum(-1, keepdim=True) + eps)).to(q.dtype)
