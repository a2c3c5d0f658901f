"""Positional encodings against the papers' formulas, computed here with math / complex numbers."""
import cmath
import math

import pytest
import torch

import bloomlib
from bloomlib.positional import RotaryEmbedding, alibi_bias, alibi_slopes, sinusoidal_encoding


def test_sinusoidal_is_sin_at_even_cos_at_odd():
    T, d = 12, 16
    pe = sinusoidal_encoding(T, d)
    assert pe.shape == (T, d)
    for p in range(T):
        for i in range(d):
            angle = p / 10000 ** ((i - i % 2) / d)
            expected = math.sin(angle) if i % 2 == 0 else math.cos(angle)
            assert abs(pe[p, i].item() - expected) < 1e-6, (p, i)


def test_sinusoidal_odd_d_model_raises():
    with pytest.raises(ValueError, match="d_model"):
        sinusoidal_encoding(4, 7)


def rope_reference(x: list[float], pos: int, theta: float = 10000.0) -> list[float]:
    """Rotate-half RoPE with complex numbers: pair (x[i], x[i + d/2]) times e^(i * pos * theta^(-2i/d))."""
    d = len(x)
    out = [0.0] * d
    for i in range(d // 2):
        z = complex(x[i], x[i + d // 2]) * cmath.exp(1j * pos * theta ** (-2 * i / d))
        out[i], out[i + d // 2] = z.real, z.imag
    return out


def test_rope_matches_complex_rotation():
    d = 8
    rope = RotaryEmbedding(d, max_len=32)
    x = torch.randn(1, 2, 5, d, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    positions = torch.tensor([0, 3, 7, 20, 31])
    y = rope(x, positions)
    for h in range(2):
        for t, p in enumerate(positions.tolist()):
            expected = rope_reference(x[0, h, t].tolist(), p)
            torch.testing.assert_close(y[0, h, t], torch.tensor(expected, dtype=torch.float64), atol=1e-6, rtol=1e-6)


def test_rope_dot_product_depends_only_on_the_offset():
    d = 16
    rope = RotaryEmbedding(d, max_len=64)
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(1, 1, 1, d, dtype=torch.float64, generator=g), torch.randn(1, 1, 1, d, dtype=torch.float64,
                                                                                 generator=g)

    def dot(m, n):
        return (rope(q, torch.tensor([m])) * rope(k, torch.tensor([n]))).sum().item()

    for m, n in [(5, 2), (3, 9), (0, 0), (10, 1)]:
        for s in (1, 7, 30):
            assert abs(dot(m, n) - dot(m + s, n + s)) < 1e-5 * (1 + abs(dot(m, n)))
    # and the offset does matter (the property is not vacuous)
    assert abs(dot(5, 2) - dot(5, 3)) > 1e-3
    # position 0 is the identity
    torch.testing.assert_close(rope(q, torch.tensor([0])), q)


def test_rope_errors():
    with pytest.raises(ValueError, match="head_dim"):
        RotaryEmbedding(7, 8)
    with pytest.raises(ValueError, match="position"):
        RotaryEmbedding(8, 4)(torch.randn(1, 1, 5, 8), torch.arange(5))


def paper_slopes(n: int) -> list[float]:
    """Press et al. 2022: for n a power of two, slope_i = 2^(-8 i / n), i = 1..n. Otherwise take the
    2^floor(log2 n) slopes, then the odd-indexed (1st, 3rd, ...) slopes of 2 * that power, until n."""
    def pow2(m):
        return [2.0 ** (-8.0 * i / m) for i in range(1, m + 1)]

    p = 1
    while p * 2 <= n:
        p *= 2
    if p == n:
        return pow2(n)
    extra = [s for i, s in enumerate(pow2(2 * p)) if i % 2 == 0]
    return pow2(p) + extra[: n - p]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 8, 12, 16])
def test_alibi_slopes_follow_the_paper(n):
    got = alibi_slopes(n).tolist()
    assert len(got) == n
    for a, b in zip(got, paper_slopes(n)):
        assert abs(a - b) < 1e-7 * max(1.0, b)


def test_alibi_slopes_known_values():
    # the paper's example: 8 heads -> 1/2, 1/4, ..., 1/256
    assert alibi_slopes(8).tolist() == [2.0 ** -i for i in range(1, 9)]


def test_alibi_bias_shape_sign_and_end_alignment():
    slopes = alibi_slopes(4)
    b = alibi_bias(slopes, 3, 6)
    assert b.shape == (4, 3, 6)
    for h in range(4):
        for i in range(3):
            p = i + 6 - 3
            for j in range(6):
                assert abs(b[h, i, j].item() - (-slopes[h].item() * abs(p - j))) < 1e-6
    assert (b <= 0).all()
    # a square bias is zero on the diagonal and more negative further away
    sq = alibi_bias(slopes, 5, 5)
    assert (sq.diagonal(dim1=-2, dim2=-1) == 0).all()
    assert (sq[:, 4, :-1] < sq[:, 4, 1:]).all()


def test_alibi_bad_heads_raises():
    with pytest.raises(ValueError, match="n_head"):
        alibi_slopes(0)


def test_unknown_positional_scheme_raises():
    with pytest.raises(ValueError, match="pos_encoding"):
        bloomlib.GPTConfig(pos_encoding="rotary")
