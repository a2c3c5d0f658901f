"""Positional information: self-attention alone cannot tell positions apart (it is permutation-invariant).

Four interchangeable schemes, chosen by GPTConfig.pos_encoding:
  * "sinusoidal": a fixed signal added to the embeddings (sin at even, cos at odd indices);
  * "learned":    a trained embedding per position, added to the embeddings;
  * "rope":       queries and keys rotated by an angle proportional to their position (relative by construction);
  * "alibi":      a per-head linear penalty on the distance, added to the attention scores.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from bloomlib.masks import end_aligned_positions


def sinusoidal_encoding(seq_len: int, d_model: int, base: float = 10000.0) -> torch.Tensor:
    """(seq_len, d_model): PE[p, 2i] = sin(p / base^(2i/d)), PE[p, 2i+1] = cos(p / base^(2i/d))."""
    if d_model % 2:
        raise ValueError(f"sinusoidal encoding needs an even d_model, got {d_model}")
    freq = base ** (-torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
    angles = torch.arange(seq_len, dtype=torch.float64)[:, None] * freq  # (seq_len, d_model/2)
    return torch.stack((angles.sin(), angles.cos()), dim=-1).reshape(seq_len, d_model).float()  # sin, cos interleaved


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Split the last dim into halves (a, b) and return (-b, a): a 90-degree rotation of each (a_i, b_i) pair."""
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


class RotaryEmbedding(nn.Module):
    """RoPE (Su et al. 2021), in the "rotate half" layout used by LLaMA-style checkpoints.

    Pair i of a head vector, (x[i], x[i + d/2]), is rotated by the angle position * theta^(-2i/d),
    so q_m . k_n depends only on the offset m - n.
    """

    def __init__(self, head_dim: int, max_len: int, theta: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"RoPE needs an even head_dim, got {head_dim}")
        inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        angles = torch.arange(max_len, dtype=torch.float64)[:, None] * inv_freq  # (max_len, head_dim/2)
        angles = torch.cat((angles, angles), dim=-1)
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x: (B, H, T, head_dim); positions: (T,) integer positions. Returns x rotated, same shape."""
        if positions.max() >= self.cos.shape[0]:
            raise ValueError(f"RoPE position {int(positions.max())} beyond its table of {self.cos.shape[0]}")
        cos, sin = self.cos[positions].to(x.dtype), self.sin[positions].to(x.dtype)
        return x * cos + rotate_half(x) * sin


def alibi_slopes(n_head: int) -> torch.Tensor:
    """ALiBi's per-head slopes (Press et al. 2022): a geometric sequence starting at 2^(-8/n).

    For n not a power of two, the slopes of the closest smaller power of two are followed by every
    other slope of the next one (as in the paper's reference code).
    """
    def power_of_two(n: int) -> list[float]:
        start = 2 ** (-8 / n)
        return [start ** (i + 1) for i in range(n)]

    if n_head <= 0:
        raise ValueError(f"n_head must be positive, got {n_head}")
    closest = 2 ** math.floor(math.log2(n_head))  # n_head itself for a power of two: no extra slopes
    return torch.tensor(power_of_two(closest) + power_of_two(2 * closest)[0::2][: n_head - closest])


def alibi_bias(slopes: torch.Tensor, n_q: int, n_k: int, *, q_pos: torch.Tensor | None = None,
               k_pos: torch.Tensor | None = None) -> torch.Tensor:
    """Additive bias -slope_h * |p_i - j|: (H, n_q, n_k) with queries aligned to the end (p_i = i + n_k - n_q),
    or at explicit positions q_pos (..., n_q) and k_pos (n_k,) -> (..., H, n_q, n_k)."""
    if q_pos is None:
        q_pos, k_pos = end_aligned_positions(n_q, n_k, slopes.device)
    dist = (q_pos[..., :, None] - k_pos[None, :]).abs()[..., None, :, :]  # (..., 1, n_q, n_k)
    return -slopes[:, None, None] * dist
