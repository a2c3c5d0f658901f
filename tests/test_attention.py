"""bloomlib.attention against torch's own attention and float64 math written here.

Reference masks are built in this file from the conventions in CONTRIBUTING.md (True = may attend;
causal aligned to the end; window i - w < j <= i; GQA head h reads kv head h // (H / H_kv)).
"""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import bloomlib
from bloomlib.attention import attention_steps

try:
    from bloomlib.kernels import flash_attention  # noqa: F401

    _FLASH_SKIP = None
except Exception as e:  # noqa: BLE001
    _FLASH_SKIP = f"bloomlib.kernels.flash_attention cannot be imported: {type(e).__name__}: {e}"


BACKENDS = ["sdpa", "math", pytest.param("flash", marks=pytest.mark.skipif(_FLASH_SKIP is not None,
                                                                         reason=str(_FLASH_SKIP)))]


def qkv(B=2, H=4, n_q=5, n_k=5, d=8, H_kv=None, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    H_kv = H if H_kv is None else H_kv
    q = torch.randn(B, H, n_q, d, generator=g, dtype=dtype)
    k = torch.randn(B, H_kv, n_k, d, generator=g, dtype=dtype)
    v = torch.randn(B, H_kv, n_k, d, generator=g, dtype=dtype)
    return q, k, v


def reference_allowed(n_q, n_k, causal=False, window=None):
    """(n_q, n_k) bool from the written rule: query i sits at position p = i + n_k - n_q."""
    rows = []
    for i in range(n_q):
        p = i + n_k - n_q
        row = []
        for j in range(n_k):
            ok = True
            if causal or window is not None:
                ok = ok and j <= p
            if window is not None:
                ok = ok and j > p - window
            row.append(ok)
        rows.append(row)
    return torch.tensor(rows, dtype=torch.bool)


def reference_attention64(q, k, v, allowed=None, bias=None):
    """float64 attention by hand: exp of shifted scores (+ bias), normalised; rows with no allowed key are zero."""
    q, k, v = q.double(), k.double(), v.double()
    if k.shape[1] != q.shape[1]:
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    scores = torch.einsum("bhid,bhjd->bhij", q, k) / math.sqrt(q.shape[-1])
    if bias is not None:
        scores = scores + bias.double()
    allowed = torch.ones_like(scores, dtype=torch.bool) if allowed is None else allowed.expand_as(scores)
    shifted = scores - scores.masked_fill(~allowed, -1e300).amax(-1, keepdim=True).clamp_min(-1e300)
    e = torch.where(allowed, shifted.exp(), torch.zeros_like(scores))
    total = e.sum(-1, keepdim=True)
    w = torch.where(total > 0, e / total.clamp_min(1e-300), torch.zeros_like(e))
    return torch.einsum("bhij,bhjd->bhid", w, v), w


def check(q, k, v, out, w, allowed_ref, torch_out=None, atol=1e-5):
    ref_out, ref_w = reference_attention64(q, k, v, allowed_ref)
    torch.testing.assert_close(out.double(), ref_out, atol=atol, rtol=1e-5)
    torch.testing.assert_close(w.double(), ref_w, atol=atol, rtol=1e-5)
    if torch_out is not None:
        torch.testing.assert_close(out, torch_out, atol=atol, rtol=1e-5)


def test_no_mask_matches_torch_and_float64():
    q, k, v = qkv(n_q=4, n_k=6)
    out, w = bloomlib.scaled_dot_product_attention(q, k, v)
    check(q, k, v, out, w, None, F.scaled_dot_product_attention(q, k, v))
    assert out.shape == (2, 4, 4, 8) and w.shape == (2, 4, 4, 6)


@pytest.mark.parametrize("kind", ["bool", "int01", "float01"])
def test_boolean_and_01_masks(kind):
    q, k, v = qkv(n_q=5, n_k=6)
    g = torch.Generator().manual_seed(1)
    allowed = torch.rand(2, 1, 5, 6, generator=g) > 0.4
    allowed[..., 0] = True  # every row keeps a key (torch's sdpa is then defined)
    mask = {"bool": allowed, "int01": allowed.long(), "float01": allowed.float()}[kind]
    out, w = bloomlib.scaled_dot_product_attention(q, k, v, mask=mask)
    check(q, k, v, out, w, allowed, F.scaled_dot_product_attention(q, k, v, attn_mask=allowed))
    assert (w[~allowed.expand_as(w)] == 0).all()


def test_padding_mask():
    q, k, v = qkv(n_q=6, n_k=6)
    lengths = torch.tensor([6, 3])
    pad = (torch.arange(6)[None, :] < lengths[:, None])[:, None, None, :]  # (B, 1, 1, n_k)
    out, w = bloomlib.scaled_dot_product_attention(q, k, v, mask=pad)
    check(q, k, v, out, w, pad, F.scaled_dot_product_attention(q, k, v, attn_mask=pad))
    assert (w[1, :, :, 3:] == 0).all()


def test_causal_square_matches_torch_is_causal():
    q, k, v = qkv(n_q=7, n_k=7)
    out, w = bloomlib.scaled_dot_product_attention(q, k, v, is_causal=True)
    check(q, k, v, out, w, reference_allowed(7, 7, causal=True),
          F.scaled_dot_product_attention(q, k, v, is_causal=True))
    assert torch.equal(bloomlib.causal_mask(7), torch.ones(7, 7, dtype=torch.bool).tril())


@pytest.mark.parametrize("n_q,n_k", [(1, 6), (3, 7), (5, 9)])
def test_causal_rectangular_is_aligned_to_the_end(n_q, n_k):
    q, k, v = qkv(n_q=n_q, n_k=n_k)
    out, w = bloomlib.scaled_dot_product_attention(q, k, v, is_causal=True)
    allowed = reference_allowed(n_q, n_k, causal=True)
    # torch's is_causal aligns to the start, so the reference mask is given explicitly
    check(q, k, v, out, w, allowed, F.scaled_dot_product_attention(q, k, v, attn_mask=allowed))
    # the last query (the newest token) sees every key
    assert (w[..., -1, :] > 0).all()
    # the public mask builder states the same rule
    assert torch.equal(bloomlib.build_attention_mask(n_q, n_k, causal=True), allowed)


@pytest.mark.parametrize("n_q,n_k,window", [(8, 8, 3), (3, 9, 2), (6, 6, 1), (4, 4, 10)])
def test_sliding_window(n_q, n_k, window):
    q, k, v = qkv(n_q=n_q, n_k=n_k)
    out, w = bloomlib.scaled_dot_product_attention(q, k, v, is_causal=True, window=window)
    allowed = reference_allowed(n_q, n_k, causal=True, window=window)
    check(q, k, v, out, w, allowed, F.scaled_dot_product_attention(q, k, v, attn_mask=allowed))
    assert ((w > 0).sum(-1) <= window).all()


@pytest.mark.parametrize("H,H_kv", [(4, 2), (4, 1), (6, 3)])
def test_gqa_matches_torch_enable_gqa(H, H_kv):
    q, k, v = qkv(H=H, H_kv=H_kv, n_q=5, n_k=5)
    out, w = bloomlib.scaled_dot_product_attention(q, k, v, is_causal=True)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    check(q, k, v, out, w, reference_allowed(5, 5, causal=True), expected)
    # query head h reads kv head h // (H / H_kv)
    rep = H // H_kv
    for h in range(H):
        o_h, _ = bloomlib.scaled_dot_product_attention(q[:, h:h + 1], k[:, h // rep:h // rep + 1],
                                                       v[:, h // rep:h // rep + 1], is_causal=True)
        torch.testing.assert_close(out[:, h:h + 1], o_h)


def test_fully_masked_row_gives_zero_weights_output_and_finite_gradients():
    q, k, v = qkv(n_q=4, n_k=5)
    q, k, v = (t.clone().requires_grad_() for t in (q, k, v))
    mask = torch.ones(4, 5, dtype=torch.bool)
    mask[2] = False
    out, w = bloomlib.scaled_dot_product_attention(q, k, v, mask=mask)
    assert not out.isnan().any() and not w.isnan().any()
    assert (w[:, :, 2] == 0).all() and (out[:, :, 2] == 0).all()
    torch.testing.assert_close(w[:, :, [0, 1, 3]].sum(-1), torch.ones(2, 4, 3))
    (out.square().sum() + w.square().sum()).backward()
    for t in (q, k, v):
        assert t.grad is not None and t.grad.isfinite().all()
    assert (q.grad[:, :, 2] == 0).all()
    check(q.detach(), k.detach(), v.detach(), out.detach(), w.detach(), mask)


def test_window_and_padding_can_empty_a_row():
    q, k, v = qkv(B=1, H=2, n_q=4, n_k=4)
    pad = torch.tensor([[[[True, True, False, False]]]])
    out, w = bloomlib.scaled_dot_product_attention(q, k, v, mask=pad, is_causal=True, window=1)
    allowed = reference_allowed(4, 4, causal=True, window=1) & pad
    check(q, k, v, out, w, allowed)
    assert (out[0, :, 2:] == 0).all()


def test_attention_steps_are_consistent():
    q, k, v = qkv(n_q=5, n_k=5)
    s = attention_steps(q, k, v, is_causal=True)
    torch.testing.assert_close(s.scores, torch.einsum("bhid,bhjd->bhij", q, k))
    torch.testing.assert_close(s.scaled, s.scores / math.sqrt(8))
    allowed = reference_allowed(5, 5, causal=True)
    assert torch.isinf(s.masked[..., ~allowed]).all() and (s.masked[..., ~allowed] < 0).all()
    torch.testing.assert_close(s.masked[..., allowed], s.scaled[..., allowed])
    torch.testing.assert_close(s.weights.sum(-1), torch.ones(2, 4, 5))
    torch.testing.assert_close(s.weights, torch.softmax(s.masked, dim=-1))
    torch.testing.assert_close(s.output, s.weights @ v)


def test_additive_bias_matches_torch_float_mask():
    q, k, v = qkv(n_q=5, n_k=5)
    bias = torch.randn(4, 5, 5, generator=torch.Generator().manual_seed(3))
    out, _ = bloomlib.scaled_dot_product_attention(q, k, v, bias=bias)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=bias))


# --- bad input ------------------------------------------------------------------------------------------------

def test_wrong_rank_raises():
    with pytest.raises(ValueError, match="rank|shape"):
        bloomlib.scaled_dot_product_attention(torch.randn(8), torch.randn(8), torch.randn(8))
    with pytest.raises(ValueError, match="rank"):
        bloomlib.scaled_dot_product_attention(torch.randn(1, 2, 3, 4), torch.randn(2, 3, 4), torch.randn(2, 3, 4))


def test_mismatched_head_dim_raises():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="head_dim"):
        bloomlib.scaled_dot_product_attention(q, k[..., :4], v)


def test_mismatched_batch_or_dtype_raises():
    q, k, v = qkv(B=2)
    k3, v3 = qkv(B=3)[1:]
    with pytest.raises(ValueError, match="batch"):
        bloomlib.scaled_dot_product_attention(q, k3, v3)
    with pytest.raises(ValueError, match="dtype"):
        bloomlib.scaled_dot_product_attention(q, k.double(), v.double())


def test_kv_heads_must_divide_query_heads():
    q, k, v = qkv(H=4, H_kv=3)
    with pytest.raises(ValueError, match="divide"):
        bloomlib.scaled_dot_product_attention(q, k, v)


@pytest.mark.parametrize("shape", [(3, 3), (2, 4, 5, 4), (3, 1, 5, 5), (1, 1, 1, 5, 5)])
def test_mask_that_cannot_broadcast_raises(shape):
    """Including masks that would silently enlarge the output (a batch of 3, an extra leading dim)."""
    q, k, v = qkv(B=2, H=4, n_q=5, n_k=5)
    with pytest.raises(ValueError, match="broadcast"):
        bloomlib.scaled_dot_product_attention(q, k, v, mask=torch.ones(shape, dtype=torch.bool))


def test_non_binary_mask_raises():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="0/1"):
        bloomlib.scaled_dot_product_attention(q, k, v, mask=torch.full((5, 5), 2))


def test_bad_window_raises():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="window"):
        bloomlib.scaled_dot_product_attention(q, k, v, is_causal=True, window=0)


# --- MultiHeadAttention ---------------------------------------------------------------------------------------

def copy_from_torch_mha(ref: nn.MultiheadAttention, d: int, n_head: int, **kw) -> bloomlib.MultiHeadAttention:
    """torch stacks W_Q, W_K, W_V as rows of in_proj_weight: the layout of our qkv_proj (kv_proj: W_K, W_V)."""
    mha = bloomlib.MultiHeadAttention(d, n_head, **kw)
    w, b = ref.in_proj_weight.detach(), ref.in_proj_bias.detach()
    pairs = ((mha.q_proj, w[:d], b[:d]), (mha.kv_proj, w[d:], b[d:])) if mha.cross else ((mha.qkv_proj, w, b),)
    with torch.no_grad():
        for lin, w, b in pairs + ((mha.o_proj, ref.out_proj.weight, ref.out_proj.bias),):
            lin.weight.copy_(w)
            lin.bias.copy_(b)
    return mha


@pytest.mark.parametrize("backend", ["sdpa", "math"])
@pytest.mark.parametrize("causal,padding", [(False, False), (False, True), (True, False), (True, True)])
def test_mha_matches_torch_multihead_attention(backend, causal, padding):
    torch.manual_seed(0)
    d, H, B, T = 16, 4, 2, 6
    ref = nn.MultiheadAttention(d, H, batch_first=True).eval()
    with torch.no_grad():
        ref.in_proj_bias.normal_()
        ref.out_proj.bias.normal_()
    mha = copy_from_torch_mha(ref, d, H, causal=causal, backend=backend).eval()
    x = torch.randn(B, T, d)
    keep = torch.ones(B, T, dtype=torch.bool)
    if padding:
        keep[1, 4:] = False
    ref_out, ref_w = ref(x, x, x, key_padding_mask=~keep if padding else None,
                         attn_mask=~torch.ones(T, T, dtype=torch.bool).tril() if causal else None,
                         need_weights=True, average_attn_weights=False)
    mask = keep[:, None, None, :] if padding else None
    out, _ = mha(x, mask=mask)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    out_w, w = mha(x, mask=mask, need_weights=True)
    torch.testing.assert_close(out_w, ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w, ref_w, atol=1e-6, rtol=1e-5)


def test_mha_cross_attention_matches_torch():
    torch.manual_seed(1)
    d, H = 16, 2
    ref = nn.MultiheadAttention(d, H, batch_first=True).eval()
    mha = copy_from_torch_mha(ref, d, H, cross=True).eval()
    x, ctx = torch.randn(2, 3, d), torch.randn(2, 7, d)
    keep = torch.tensor([[1] * 7, [1] * 4 + [0] * 3], dtype=torch.bool)
    out, _ = mha(x, context=ctx, mask=keep[:, None, None, :])
    ref_out, _ = ref(x, ctx, ctx, key_padding_mask=~keep)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)


def expanded_mha(gqa: bloomlib.MultiHeadAttention) -> bloomlib.MultiHeadAttention:
    """An MHA whose k/v heads are GQA's kv heads repeated, so that query head h reads kv head h // rep."""
    d, H, KV, hd = gqa.qkv_proj.in_features, gqa.n_head, gqa.n_kv_head, gqa.head_dim
    mha = bloomlib.MultiHeadAttention(d, H, causal=gqa.causal, backend="math")

    def expand(t: torch.Tensor) -> torch.Tensor:  # rows [q (H*hd); k (KV*hd); v (KV*hd)] -> [q; k; v] with H heads
        q, k, v = t.split([H * hd, KV * hd, KV * hd])
        k, v = (x.view(KV, hd, -1).repeat_interleave(H // KV, 0).reshape(H * hd, *t.shape[1:]) for x in (k, v))
        return torch.cat([q, k, v])

    with torch.no_grad():
        mha.qkv_proj.weight.copy_(expand(gqa.qkv_proj.weight))
        mha.qkv_proj.bias.copy_(expand(gqa.qkv_proj.bias))
        mha.o_proj.load_state_dict(gqa.o_proj.state_dict())
    return mha


@pytest.mark.parametrize("n_kv", [1, 2, 4])
def test_gqa_and_mqa_equal_mha_with_repeated_kv_heads(n_kv):
    torch.manual_seed(2)
    gqa = bloomlib.MultiHeadAttention(16, 4, n_kv, causal=True)
    assert gqa.qkv_proj.out_features == (4 + 2 * n_kv) * 4  # 4 query heads, n_kv key and n_kv value heads
    x = torch.randn(2, 5, 16)
    out, _ = gqa(x)
    torch.testing.assert_close(out, expanded_mha(gqa)(x)[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["sdpa", "math"])
def test_gqa_with_as_many_kv_heads_is_mha(backend):
    """n_kv_head = n_head is plain multi-head attention: torch's nn.MultiheadAttention, in float64."""
    torch.manual_seed(3)
    ref = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    with torch.no_grad():
        ref.in_proj_bias.normal_()
        ref.out_proj.bias.normal_()
    mha = copy_from_torch_mha(ref, 16, 4, n_kv_head=4, causal=True, backend=backend).double().eval()
    ref.double()
    assert mha.n_kv_head == 4 and mha.qkv_proj.weight.shape == ref.in_proj_weight.shape
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    causal = ~torch.ones(5, 5, dtype=torch.bool).tril()  # torch: True = may NOT attend
    ref_out, ref_w = ref(x, x, x, attn_mask=causal, need_weights=True, average_attn_weights=False)
    torch.testing.assert_close(mha(x)[0], ref_out, atol=1e-12, rtol=1e-12)
    out, w = mha(x, need_weights=True)
    torch.testing.assert_close(out, ref_out, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(w, ref_w, atol=1e-12, rtol=1e-12)


def reference_mha64(mha: bloomlib.MultiHeadAttention, x: torch.Tensor, n_q: int | None = None,
                    allowed: torch.Tensor | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Self-attention by hand in float64 from the module's weights, for the last n_q positions of x over all of x.

    The weight layout is the documented one: qkv_proj's rows are W_Q (n_head heads), W_K and W_V (n_kv_head heads
    each), every head head_dim consecutive rows; o_proj maps the concatenated heads back to d_model.
    """
    B, T, _ = x.shape
    n_q = T if n_q is None else n_q
    H, KV, hd = mha.n_head, mha.n_kv_head, mha.head_dim
    W, b = mha.qkv_proj.weight.detach().double(), mha.qkv_proj.bias.detach().double()
    y = x.double() @ W.T + b
    q, k, v = (t.reshape(B, T, -1, hd).transpose(1, 2) for t in y.split([H * hd, KV * hd, KV * hd], dim=-1))
    out, _ = reference_attention64(q[:, :, T - n_q:], k, v, allowed, bias)
    out = out.transpose(1, 2).reshape(B, n_q, H * hd)
    return out @ mha.o_proj.weight.detach().double().T + mha.o_proj.bias.detach().double()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n_kv,window,n_new", [(4, None, 6), (2, None, 6), (1, 3, 6), (2, 2, 1), (4, None, 2)])
def test_backends_match_float64_attention_over_a_kv_cache(backend, n_kv, window, n_new):
    """Causal self-attention over a cache of 6 - n_new earlier positions (end-aligned when n_new < 6), and over
    the whole sequence, against float64 attention written here."""
    torch.manual_seed(4)
    mha = bloomlib.MultiHeadAttention(32, 4, n_kv, causal=True, sliding_window=window, backend=backend).eval()
    x = torch.randn(2, 6, 32)
    cache = bloomlib.KVCache(1, 6)
    if n_new < 6:
        mha(x[:, :6 - n_new], kv_cache=cache)
    cached = mha(x[:, 6 - n_new:], kv_cache=cache)[0]
    expected = reference_mha64(mha, x, n_new, reference_allowed(n_new, 6, causal=True, window=window))
    torch.testing.assert_close(cached.double(), expected, atol=2e-5, rtol=1e-4)
    full = mha(x)[0]
    expected_full = reference_mha64(mha, x, 6, reference_allowed(6, 6, causal=True, window=window))
    torch.testing.assert_close(full.double(), expected_full, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("backend", ["sdpa", "math"])
def test_backends_match_float64_attention_with_padding_and_bias(backend):
    torch.manual_seed(5)
    mha = bloomlib.MultiHeadAttention(16, 2, backend=backend).eval()
    x = torch.randn(2, 5, 16)
    keep = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], dtype=torch.bool)[:, None, None, :]
    bias = bloomlib.alibi_bias(bloomlib.alibi_slopes(2), 5, 5)
    expected = reference_mha64(mha, x, allowed=keep, bias=bias)
    assert not torch.allclose(reference_mha64(mha, x, allowed=keep), expected, atol=1e-3)  # the bias matters
    assert not torch.allclose(reference_mha64(mha, x, bias=bias), expected, atol=1e-3)  # and so does the mask
    torch.testing.assert_close(mha(x, mask=keep, bias=bias)[0].double(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(_FLASH_SKIP is not None, reason=str(_FLASH_SKIP))
def test_flash_backend_refuses_padding_masks():
    mha = bloomlib.MultiHeadAttention(16, 2, backend="flash")
    with pytest.raises(ValueError, match="flash"):
        mha(torch.randn(1, 3, 16), mask=torch.ones(1, 1, 1, 3, dtype=torch.bool))


@pytest.mark.parametrize("backend", ["sdpa", "math"])
def test_mha_fully_masked_row_is_zero_with_finite_gradients(backend):
    torch.manual_seed(6)
    mha = bloomlib.MultiHeadAttention(16, 2, backend=backend, bias=False)
    x = torch.randn(1, 4, 16, requires_grad=True)
    mask = torch.ones(1, 1, 4, 4, dtype=torch.bool)
    mask[..., 1, :] = False
    out, _ = mha(x, mask=mask)
    assert (out[0, 1] == 0).all() and out.isfinite().all()
    out.sum().backward()
    assert x.grad.isfinite().all() and all(p.grad.isfinite().all() for p in mha.parameters())


def test_mha_bad_input_raises():
    with pytest.raises(ValueError, match="n_head"):
        bloomlib.MultiHeadAttention(30, 4)
    with pytest.raises(ValueError, match="n_kv_head"):
        bloomlib.MultiHeadAttention(32, 4, 3)
    with pytest.raises(ValueError, match="shape"):
        bloomlib.MultiHeadAttention(16, 2)(torch.randn(4, 16))
    with pytest.raises(ValueError, match="broadcast"):
        bloomlib.MultiHeadAttention(16, 2)(torch.randn(2, 4, 16), mask=torch.ones(3, 1, 1, 4, dtype=torch.bool))
    x = torch.randn(2, 4, 16)
    with pytest.raises(ValueError, match="cross=True"):
        bloomlib.MultiHeadAttention(16, 2)(x, context=x)
    with pytest.raises(ValueError, match="needs `context`"):
        bloomlib.MultiHeadAttention(16, 2, cross=True)(x)
    with pytest.raises(ValueError, match="cannot be causal"):
        bloomlib.MultiHeadAttention(16, 2, causal=True, cross=True)


def test_kv_cache_overflow_raises():
    cache = bloomlib.KVCache(1, 3)
    mha = bloomlib.MultiHeadAttention(16, 2, causal=True)
    mha(torch.randn(1, 3, 16), kv_cache=cache)
    with pytest.raises(ValueError, match="max_len"):
        mha(torch.randn(1, 1, 16), kv_cache=cache)
