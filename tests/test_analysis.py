"""bloomlib.analysis against references written here from the definitions: float64 quadratic formulas, explicit
loops of plain model forwards, F.cross_entropy, collections.Counter, tensor byte counts."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bloomlib.analysis import linear_attention, linear_attention_weights


# ---------------------------------------------------------------- linear attention

def quadratic_linear_attention(q, k, v, causal, eps=1e-6):
    """float64: phi(Q) phi(K)^T, masked by torch.tril (end-aligned), normalised row-wise (+ eps), times V."""
    phi = lambda x: F.elu(x.double()) + 1  # noqa: E731
    a = phi(q) @ phi(k).transpose(-2, -1)
    if causal:
        n_q, n_k = q.shape[2], k.shape[2]
        a = a * torch.tril(torch.ones(n_q, n_k, dtype=torch.float64), diagonal=n_k - n_q)
    w = a / (a.sum(-1, keepdim=True) + eps)
    return w @ v.double(), w


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n_q,n_k", [(37, 37), (5, 37), (1, 37), (37, 20)])
@pytest.mark.parametrize("chunk_size", [1, 8, 64])
def test_linear_attention_matches_quadratic_formula(causal, n_q, n_k, chunk_size):
    g = torch.Generator().manual_seed(n_q * 100 + n_k)
    q, k = torch.randn(2, 3, n_q, 8, generator=g), torch.randn(2, 3, n_k, 8, generator=g)
    v = torch.randn(2, 3, n_k, 5, generator=g)
    ref_out, ref_w = quadratic_linear_attention(q, k, v, causal)
    out = linear_attention(q.double(), k.double(), v.double(), causal=causal, chunk_size=chunk_size)
    assert out.shape == (2, 3, n_q, 5) and out.dtype == torch.float64
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-10)
    w = linear_attention_weights(q.double(), k.double(), causal=causal)
    torch.testing.assert_close(w, ref_w, rtol=1e-10, atol=1e-10)
    out32 = linear_attention(q, k, v, causal=causal, chunk_size=chunk_size)
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), ref_out, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_linear_attention_weights_rows_sum_to_one_and_reproduce_the_output(causal):
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, 16, 4, generator=g) for _ in range(3))
    w = linear_attention_weights(q, k, causal=causal)
    assert w.shape == (1, 2, 16, 16)
    torch.testing.assert_close(w.sum(-1), torch.ones(1, 2, 16))
    if causal:
        assert (w.triu(1) == 0).all()
    torch.testing.assert_close(w @ v, linear_attention(q, k, v, causal=causal))


@pytest.mark.parametrize("shapes,match", [
    (((1, 2, 4, 8), (1, 2, 5, 8), (1, 2, 6, 8)), "length"),
    (((1, 2, 4, 8), (1, 2, 5, 4), (1, 2, 5, 8)), "head_dim"),
    (((1, 2, 4, 8), (1, 3, 5, 8), (1, 3, 5, 8)), "heads"),
    (((2, 2, 4, 8), (1, 2, 5, 8), (1, 2, 5, 8)), "batch"),
    (((2, 4, 8), (2, 5, 8), (2, 5, 8)), "4-D"),
])
def test_linear_attention_bad_shapes_raise(shapes, match):
    q, k, v = (torch.randn(*s) for s in shapes)
    with pytest.raises(ValueError, match=match):
        linear_attention(q, k, v)


def test_linear_attention_bad_dtypes_raise():
    q = torch.randn(1, 1, 4, 8)
    with pytest.raises(ValueError, match="floating point"):
        linear_attention(q, q.long(), q)
    with pytest.raises(ValueError, match="float64"):
        linear_attention(q, q.double(), q)
    with pytest.raises(ValueError, match="chunk_size"):
        linear_attention(q, q, q, causal=True, chunk_size=0)
