"""Attention, step by step: masks, scaled dot-product attention, multi-head attention and its KV cache.

Shapes: attention works on (batch, heads, seq, head_dim); blocks pass (batch, seq, d_model).
Conventions (used by every part of the course):
  * a mask is boolean or 0/1, broadcastable to (batch, heads, n_q, n_k); True/1 = "may attend";
  * a query row with nothing to attend to gets zero weights and zero output (never NaN);
  * causal with n_q != n_k is aligned to the end: query i may attend key j when j <= i + n_k - n_q;
  * a sliding window w lets query position p attend key positions j with p - w < j <= p;
  * GQA: query head h reads key/value head h // (n_heads // n_kv_heads).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from bloomlib.masks import build_attention_mask, visible
from bloomlib.positional import alibi_bias


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() < 2:
            raise ValueError(f"{name} must have shape (..., seq, head_dim), got rank {t.dim()} {tuple(t.shape)}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if not q.dim() == k.dim() == v.dim():
        raise ValueError(f"q, k, v must have the same rank, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must have the same head_dim, got q {tuple(q.shape)} and k {tuple(k.shape)}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"k and v must have the same length, got k {tuple(k.shape)} and v {tuple(v.shape)}")
    if k.shape[:-2] != v.shape[:-2]:
        raise ValueError(f"k and v must have the same batch/head dims, got {tuple(k.shape)} and {tuple(v.shape)}")
    if not q.dtype == k.dtype == v.dtype:
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    try:
        torch.broadcast_shapes(q.shape[:-3], k.shape[:-3])
    except RuntimeError:
        raise ValueError(f"q and k must have the same batch dims, got q {tuple(q.shape)} and k {tuple(k.shape)}"
                         ) from None
    if q.dim() >= 3 and q.shape[-3] != k.shape[-3]:
        if q.dim() != 4 or q.shape[-3] % k.shape[-3]:
            raise ValueError(f"the number of key/value heads ({k.shape[-3]}) must divide the number of query "
                             f"heads ({q.shape[-3]}): q {tuple(q.shape)}, k {tuple(k.shape)}")


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """GQA: (B, n_kv_heads, T, d) -> (B, n_kv_heads * n_rep, T, d), so query head h reads kv head h // n_rep."""
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=-3)


def _as_bool_mask(mask: torch.Tensor, scores_shape: torch.Size) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor):
        mask = torch.as_tensor(mask)
    if mask.dtype != torch.bool:
        if ((mask != 0) & (mask != 1)).any():
            raise ValueError("mask must be boolean or contain only 0/1 (1 = may attend); "
                             "use `bias` for additive float masks")
        mask = mask != 0
    try:  # the mask must broadcast *to* the scores: a larger result would silently add batch dims
        ok = torch.broadcast_shapes(mask.shape, scores_shape) == scores_shape
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(f"mask of shape {tuple(mask.shape)} cannot broadcast to the attention scores "
                         f"(batch, heads, n_q, n_k) = {tuple(scores_shape)}")
    return mask


@dataclass
class AttentionSteps:
    """Every intermediate of scaled dot-product attention (shapes for 4-D inputs).

    scores:  (B, H, n_q, n_k)  q @ k^T
    scaled:  (B, H, n_q, n_k)  scores / sqrt(d_k)
    masked:  (B, H, n_q, n_k)  scaled + bias, with -inf where attending is not allowed
    weights: (B, H, n_q, n_k)  softmax over keys (rows sum to 1, or 0 for a fully masked row)
    output:  (B, H, n_q, d_v)  weights @ v
    """

    scores: torch.Tensor
    scaled: torch.Tensor
    masked: torch.Tensor
    weights: torch.Tensor
    output: torch.Tensor


def attention_steps(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                    is_causal: bool = False, *, window: int | None = None, scale: float | None = None,
                    bias: torch.Tensor | None = None, dropout_p: float = 0.0) -> AttentionSteps:
    """Scaled dot-product attention, returning every intermediate (see AttentionSteps).

    q: (..., H, n_q, d_k); k: (..., H_kv, n_k, d_k); v: (..., H_kv, n_k, d_v); H_kv must divide H.
    mask: boolean or 0/1, broadcastable to (..., H, n_q, n_k); True = may attend.
    is_causal / window: see the module docstring (aligned to the end when n_q != n_k).
    bias: an additive float bias broadcastable to the scores (e.g. ALiBi).
    """
    _check_qkv(q, k, v)
    if q.dim() == 4 and q.shape[1] != k.shape[1]:
        k, v = repeat_kv(k, q.shape[1] // k.shape[1]), repeat_kv(v, q.shape[1] // v.shape[1])
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = q @ k.transpose(-2, -1)
    scaled = scores * scale
    masked = scaled if bias is None else scaled + bias
    allowed = None
    if mask is not None:
        allowed = _as_bool_mask(mask.to(q.device) if isinstance(mask, torch.Tensor) else mask, scores.shape)
    structural = build_attention_mask(q.shape[-2], k.shape[-2], causal=is_causal, window=window, device=q.device)
    if structural is not None:
        allowed = structural if allowed is None else allowed & structural
    if allowed is not None:
        masked = masked.masked_fill(~allowed, float("-inf"))
        row_has_key = allowed.any(dim=-1, keepdim=True)
        # A row with no key would be softmax(-inf, ..., -inf) = NaN: give it zeros instead (and zero gradients).
        weights = torch.softmax(masked.masked_fill(~row_has_key, 0.0), dim=-1) * row_has_key
    else:
        weights = torch.softmax(masked, dim=-1)
    attended = F.dropout(weights, p=dropout_p) if dropout_p > 0 else weights
    return AttentionSteps(scores, scaled, masked, weights, attended @ v)


def scaled_dot_product_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                 mask: torch.Tensor | None = None, is_causal: bool = False, *,
                                 window: int | None = None, scale: float | None = None,
                                 bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T / sqrt(d_k) + bias, masked) v. Returns (output (..., n_q, d_v), weights (..., n_q, n_k)).

    Arguments as in `attention_steps`.
    """
    steps = attention_steps(q, k, v, mask, is_causal, window=window, scale=scale, bias=bias)
    return steps.output, steps.weights


@dataclass
class AttentionLayout:
    """Where the queries and keys of one attention call sit, when keys were gathered from a cache per sequence.

    q_pos (B, n_q) and k_pos (n_k,) absolute positions; context_len (B,): row b has keys only below it (the rest
    of its gather is padding). Masks and ALiBi biases are built once per layout and shared by every layer.
    """

    q_pos: torch.Tensor
    k_pos: torch.Tensor
    context_len: torch.Tensor
    _built: dict = field(default_factory=dict, repr=False)

    def bias(self, causal: bool, window: int | None, alibi: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
        """(B, 1 or H, n_q, n_k) additive: 0 where bloomlib.masks' rule lets a query see a key, -inf elsewhere,
        plus the ALiBi bias at these positions when `alibi` holds the slopes."""
        key = (causal, window, alibi is not None, dtype)
        if key not in self._built:
            seen = visible(self.q_pos, self.k_pos, causal=causal, window=window, context_len=self.context_len)
            bias = torch.zeros(seen.shape, dtype=dtype, device=seen.device).masked_fill_(~seen, float("-inf"))[:, None]
            if alibi is not None:
                bias = bias + alibi_bias(alibi.to(dtype), 0, 0, q_pos=self.q_pos, k_pos=self.k_pos)
            self._built[key] = bias
        return self._built[key]


class KVCache:
    """Keys and values of the positions seen so far, one slot per layer, preallocated to `max_len`.

    Every cache the model runs with (this one, and the serving engine's PagedKVCache) has the same small interface:
      positions(T, device) -> (positions (T,), end)   where the next T tokens sit; end = context length after them
      attend(layer, q, k, v, attend) -> (out, weights)   store the new k, v (B, n_kv_heads, T, head_dim), then run
                                                     `attend(q, k_all, v_all, layout=...)` over what the queries read
    `cross` holds each layer's cross-attention keys/values, computed once per source (encoder-decoder).
    """

    def __init__(self, n_layers: int, max_len: int) -> None:
        self.max_len = max_len
        self._k: list[torch.Tensor | None] = [None] * n_layers
        self._v: list[torch.Tensor | None] = [None] * n_layers
        self._len = [0] * n_layers
        self.cross: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * n_layers

    @property
    def length(self) -> int:
        return self._len[-1]

    def positions(self, T: int, device: torch.device | str | None = None) -> tuple[torch.Tensor, int]:
        """The next T tokens continue after the cached ones."""
        return torch.arange(self.length, self.length + T, device=device), self.length + T

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attend):
        """Queries are the last positions of one contiguous sequence: the end-aligned rule applies as is."""
        k_all, v_all = self.append(layer, k, v)
        return attend(q, k_all, v_all)

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        start, end = self._len[layer], self._len[layer] + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache is full: {end} positions exceed max_len={self.max_len}")
        if self._k[layer] is None:
            B, H, _, D = k.shape
            self._k[layer] = k.new_empty(B, H, self.max_len, D)
            self._v[layer] = v.new_empty(B, H, self.max_len, v.shape[-1])
        k_all, v_all = self._k[layer], self._v[layer]
        k_all.narrow(2, start, end - start).copy_(k)  # narrow/copy_: the same as [:, :, start:end] = k, cheaper
        v_all.narrow(2, start, end - start).copy_(v)
        self._len[layer] = end
        return k_all.narrow(2, 0, end), v_all.narrow(2, 0, end)


BACKENDS = ("sdpa", "math", "flash")


class MultiHeadAttention(nn.Module):
    """Multi-head attention: MHA, GQA (n_kv_head < n_head) or MQA (n_kv_head = 1).

    x: (B, T, d_model) -> (B, T, d_model).
    Self-attention makes queries, keys and values with one matmul: `qkv_proj` stacks W_Q, W_K and W_V as
    rows (as GPT-2 and vLLM do), and the output is split into q (n_head heads), k and v (n_kv_head heads each).
    Cross-attention (cross=True, used with a `context` (B, S, d_model)) takes queries from x (`q_proj`) and
    keys and values from the context (`kv_proj`, W_K and W_V stacked). `o_proj` maps the heads back to d_model.
    backend (a runtime choice, see `set_backend`): "sdpa" uses torch's fused F.scaled_dot_product_attention,
    "math" bloomlib's step-by-step attention, "flash" bloomlib.kernels.flash_attention. Weights, when asked
    for, always come from "math".
    """

    def __init__(self, d_model: int, n_head: int, n_kv_head: int | None = None, *, bias: bool = True,
                 causal: bool = False, sliding_window: int | None = None, dropout: float = 0.0,
                 backend: str = "sdpa", cross: bool = False) -> None:
        super().__init__()
        n_kv_head = n_head if n_kv_head is None else n_kv_head
        if d_model % n_head:
            raise ValueError(f"n_head={n_head} must divide d_model={d_model}")
        if n_head % n_kv_head:
            raise ValueError(f"n_kv_head={n_kv_head} must divide n_head={n_head}")
        if cross and (causal or sliding_window):
            raise ValueError("cross-attention reads the whole context: it cannot be causal or windowed")
        self.n_head, self.n_kv_head, self.head_dim = n_head, n_kv_head, d_model // n_head
        self.causal, self.sliding_window, self.dropout = causal, sliding_window, dropout
        self.cross = cross
        self.set_backend(backend)
        q_dim, kv_dim = n_head * self.head_dim, n_kv_head * self.head_dim
        if cross:
            self.q_proj = nn.Linear(d_model, q_dim, bias=bias)
            self.kv_proj = nn.Linear(d_model, 2 * kv_dim, bias=bias)
        else:
            self.qkv_proj = nn.Linear(d_model, q_dim + 2 * kv_dim, bias=bias)
        self.o_proj = nn.Linear(q_dim, d_model, bias=bias)

    def set_backend(self, backend: str) -> None:
        """Choose how attention is computed ("sdpa", "math" or "flash"); the weights do not change."""
        if backend not in BACKENDS:
            raise ValueError(f"attention backend {backend!r} is unknown; choose one of {BACKENDS}")
        self.backend = backend

    def _heads(self, x: torch.Tensor, n: int) -> torch.Tensor:  # (B, T, n*hd) -> (B, n, T, hd)
        B, T, _ = x.shape
        return x.view(B, T, n, self.head_dim).transpose(1, 2)

    def project(self, x: torch.Tensor, context: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The projections, split into heads: q (B, n_head, T, hd), k and v (B, n_kv_head, T or S, hd).

        For cross-attention without a context, k and v are None (the caller has them cached)."""
        if not self.cross:
            H, KV = self.n_head, self.n_kv_head
            return self._heads(self.qkv_proj(x), H + 2 * KV).split([H, KV, KV], dim=1)
        q = self._heads(self.q_proj(x), self.n_head)
        if context is None:
            return q, None, None
        k, v = self._heads(self.kv_proj(context), 2 * self.n_kv_head).chunk(2, dim=1)
        return q, k, v

    def forward(self, x: torch.Tensor, *, context: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                bias: torch.Tensor | None = None, alibi: torch.Tensor | None = None, rope=None,
                positions: torch.Tensor | None = None, kv_cache=None, layer: int = 0,
                need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: (B, T, d_model). mask: boolean, broadcastable to (B, H, T, n_k), True = may attend (e.g. padding).
        context: (B, S, d_model), the sequence a cross-attention module reads (required when cross=True).
        bias: additive (H, T, n_k) or broadcastable. alibi: ALiBi slopes (H,), biased at the keys' positions.
        rope: a RotaryEmbedding applied at `positions` (T,).
        kv_cache: a KVCache (or the engine's paged cache): new keys/values are stored at slot `layer` and the
        queries read every cached key they may see (for cross-attention the keys are computed once).
        Returns (output (B, T, d_model), weights (B, H, T, n_k) or None).
        """
        if x.dim() != 3:
            raise ValueError(f"x must have shape (batch, seq, d_model), got {tuple(x.shape)}")
        if self.cross != (context is not None):
            raise ValueError("cross-attention needs `context` (the encoder output)" if self.cross else
                             "this module does self-attention; build MultiHeadAttention(..., cross=True) "
                             "to attend to a `context`")
        if rope is not None and self.cross:
            raise ValueError("RoPE does not apply to cross-attention")
        B, T, _ = x.shape
        attend = functools.partial(self.attend, mask=mask, bias=bias, alibi=alibi, need_weights=need_weights)
        if self.cross:
            cached = kv_cache.cross[layer] if kv_cache is not None else None
            q, k, v = self.project(x, None if cached is not None else context)
            if cached is not None:
                k, v = cached
            elif kv_cache is not None:
                kv_cache.cross[layer] = (k, v)
            out, weights = attend(q, k, v)
        else:
            q, k, v = self.project(x)
            if rope is not None:
                q, k = rope(q, positions), rope(k, positions)
            out, weights = attend(q, k, v) if kv_cache is None else kv_cache.attend(layer, q, k, v, attend)
        out = out.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)
        return self.o_proj(out), weights

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, layout: AttentionLayout | None = None,
               mask: torch.Tensor | None = None, bias: torch.Tensor | None = None, alibi: torch.Tensor | None = None,
               need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """q (B, H, n_q, hd); k, v (B, H_kv, n_k, hd) -> (out (B, H, n_q, hd), weights (B, H, n_q, n_k) or None).

        Who may see whom is bloomlib.masks' rule with this module's causal flag and window: queries aligned to
        the end of the keys, or at `layout`'s positions (keys gathered from a paged cache).
        """
        causal, window, n_q, n_k = self.causal, self.sliding_window, q.shape[2], k.shape[2]
        if mask is not None:  # a caller's mask (padding): checked once here, a boolean from now on
            mask = _as_bool_mask(mask.to(q.device), torch.Size((q.shape[0], self.n_head, n_q, n_k)))
        if layout is not None:  # the rule at the layout's positions, as an additive mask shared by every layer
            extra = layout.bias(causal, window, alibi, q.dtype)
            bias = extra if bias is None else bias + extra
            causal, window = False, None
        elif alibi is not None:
            b = alibi_bias(alibi, n_q, n_k).to(q.dtype)
            bias = b if bias is None else bias + b
        return self._attend(q, k, v, mask, bias, causal, window, need_weights)

    def _attend(self, q, k, v, mask, bias, causal, window, need_weights):
        n_q, n_k = q.shape[2], k.shape[2]
        dropout = self.dropout if self.training else 0.0
        if need_weights or self.backend == "math":
            steps = attention_steps(q, k, v, mask, causal, window=window, bias=bias, dropout_p=dropout)
            return steps.output, steps.weights if need_weights else None
        if self.backend == "flash":
            if mask is not None or bias is not None:
                raise ValueError("the 'flash' attention backend supports causal and sliding-window masks only, "
                                 "not padding masks, ALiBi or a paged cache; use 'sdpa' or 'math'")
            if dropout > 0:
                raise ValueError("the 'flash' attention backend has no attention dropout: set dropout=0 or use 'sdpa'")
            from bloomlib.kernels import flash_attention
            return flash_attention(q, k, v, causal=causal, window=window), None
        k, v = repeat_kv(k, self.n_head // self.n_kv_head), repeat_kv(v, self.n_head // self.n_kv_head)
        if mask is None and bias is None and window is None and (not causal or n_q == n_k or n_q == 1):
            # torch's is_causal aligns to the start, so use it only when that agrees with ours (n_q == n_k);
            # a single query at the end may attend every key.
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=causal and n_q > 1), None
        allowed = build_attention_mask(n_q, n_k, causal=causal, window=window, device=q.device)
        if mask is not None:
            allowed = mask if allowed is None else mask & allowed
        attn_mask = allowed
        if bias is not None:
            attn_mask = bias.to(q.dtype) if allowed is None else bias.to(q.dtype).masked_fill(~allowed, float("-inf"))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout)
        if allowed is not None:  # zero the rows with nothing to attend to (torch gives NaN there)
            out = out.masked_fill(~allowed.any(-1, keepdim=True), 0.0)
        return out, None


def set_attention_backend(model: nn.Module, backend: str) -> nn.Module:
    """Run every attention module of `model` with `backend` ("sdpa", "math" or "flash"); returns the model."""
    for module in model.modules():
        if isinstance(module, MultiHeadAttention):
            module.set_backend(backend)
    return model
