"""Turning other inputs into tokens: what ViT, Whisper and BERT put in front of the same transformer blocks.

- ViT:     `patchify` cuts an image into p x p patches; `PatchEmbedding` projects each to d_model, prepends a
           learned [CLS] vector and adds learned positions.
- Whisper: `mel_spectrogram` (STFT power on a triangular mel filterbank, HTK scale) and `AudioFrontend`
           (two conv1d, the second with stride 2, each followed by GELU) turn a signal into frame tokens.
- BERT:    `bert_inputs` adds [CLS] / [SEP] / [PAD] ids after a tokenizer's vocabulary, with the padding
           mask and the token-type (segment) ids.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from bloomlib.positional import sinusoidal_encoding


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, n_patches, C * p * p), patches in row-major order, each flattened as (C, p, p)."""
    if images.dim() != 4:
        raise ValueError(f"images must have shape (batch, channels, height, width), got {tuple(images.shape)}")
    B, C, H, W = images.shape
    p = patch_size
    if not isinstance(p, int) or p <= 0:
        raise ValueError(f"patch_size must be a positive int, got {p!r}")
    if H % p or W % p:
        raise ValueError(f"image size {H}x{W} is not divisible by patch_size={p}")
    x = images.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5)  # (B, nh, nw, C, p, p)
    return x.reshape(B, (H // p) * (W // p), C * p * p)


class PatchEmbedding(nn.Module):
    """ViT's input: (B, C, H, W) images -> (B, 1 + n_patches, d_model) tokens ([CLS] first, then the patches)."""

    def __init__(self, image_size: int, patch_size: int, in_channels: int, d_model: int) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size={image_size} is not divisible by patch_size={patch_size}")
        self.image_size, self.patch_size, self.in_channels = image_size, patch_size, in_channels
        self.n_patches = (image_size // patch_size) ** 2
        self.proj = nn.Linear(in_channels * patch_size**2, d_model)
        self.cls = nn.Parameter(torch.zeros(1, 1, d_model))
        self.pos = nn.Parameter(torch.randn(1, 1 + self.n_patches, d_model) * 0.02)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        expected = (self.in_channels, self.image_size, self.image_size)
        if images.dim() != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"images must have shape (batch, {', '.join(map(str, expected))}), "
                             f"got {tuple(images.shape)}")
        x = self.proj(patchify(images, self.patch_size))
        return torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos


def mel_filterbank(n_freqs: int, n_mels: int, sample_rate: int, f_min: float = 0.0, f_max: float | None = None,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(n_freqs, n_mels) triangular filters on the FFT bins 0 .. sample_rate/2, centres evenly spaced in mel
    (HTK scale: mel = 2595 log10(1 + f / 700))."""
    f_max = sample_rate / 2 if f_max is None else f_max
    if n_freqs < 2 or n_mels < 1 or not 0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(f"need n_freqs >= 2, n_mels >= 1 and 0 <= f_min < f_max <= sample_rate/2, got "
                         f"n_freqs={n_freqs}, n_mels={n_mels}, f_min={f_min}, f_max={f_max}, sample_rate={sample_rate}")
    mels = torch.linspace(2595.0 * math.log10(1.0 + f_min / 700.0), 2595.0 * math.log10(1.0 + f_max / 700.0),
                          n_mels + 2, dtype=torch.float64)
    edges = 700.0 * (10 ** (mels / 2595.0) - 1.0)  # n_mels + 2 frequencies: left, centre, right of each triangle
    freqs = torch.linspace(0, sample_rate / 2, n_freqs, dtype=torch.float64)[:, None]
    left, centre, right = edges[:-2], edges[1:-1], edges[2:]
    up, down = (freqs - left) / (centre - left), (right - freqs) / (right - centre)
    return torch.clamp(torch.minimum(up, down), min=0.0).to(dtype)


def mel_spectrogram(signal: torch.Tensor, sample_rate: int, n_fft: int = 400, hop: int = 160,
                    n_mels: int = 80) -> torch.Tensor:
    """(..., n_samples) -> (..., n_mels, n_frames) mel power; frames centred (reflect padding), periodic Hann window.

    Defaults are Whisper's at 16 kHz: 25 ms windows every 10 ms, 80 mel bands. Take the log yourself.
    """
    if signal.dim() < 1 or signal.shape[-1] <= n_fft // 2 or not signal.is_floating_point():
        raise ValueError(f"signal must be a float tensor (..., n_samples) with more than n_fft/2 = {n_fft // 2} "
                         f"samples, got {signal.dtype} {tuple(signal.shape)}")
    flat = signal.reshape(-1, signal.shape[-1])
    spec = torch.stft(flat, n_fft, hop, window=torch.hann_window(n_fft, dtype=signal.dtype, device=signal.device),
                      center=True, pad_mode="reflect", return_complex=True)
    power = spec.abs() ** 2  # (N, n_fft // 2 + 1, n_frames)
    fb = mel_filterbank(n_fft // 2 + 1, n_mels, sample_rate, dtype=power.dtype).to(power.device)
    return (fb.T @ power).reshape(*signal.shape[:-1], n_mels, power.shape[-1])


class AudioFrontend(nn.Module):
    """Whisper's stem: (B, n_mels, n_frames) log-mel -> (B, ceil(n_frames / 2), d_model) frame tokens.

    conv1d(k=3) + GELU, conv1d(k=3, stride 2) + GELU, then fixed sinusoidal positions.
    """

    def __init__(self, n_mels: int, d_model: int, max_frames: int = 3000) -> None:
        super().__init__()
        self.n_mels = n_mels
        self.conv1 = nn.Conv1d(n_mels, d_model, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(d_model, d_model, kernel_size=3, stride=2, padding=1)
        self.register_buffer("pos", sinusoidal_encoding(math.ceil(max_frames / 2), d_model), persistent=False)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        if mel.dim() != 3 or mel.shape[1] != self.n_mels:
            raise ValueError(f"mel must have shape (batch, n_mels={self.n_mels}, n_frames), got {tuple(mel.shape)}")
        x = F.gelu(self.conv2(F.gelu(self.conv1(mel)))).transpose(1, 2)
        if x.shape[1] > self.pos.shape[0]:
            raise ValueError(f"{mel.shape[2]} frames exceed max_frames={2 * self.pos.shape[0]}")
        return x + self.pos[: x.shape[1]]


@dataclass
class BertInputs:
    """input_ids, attention_mask (1 = real token, 0 = padding) and token_type_ids (0 first segment, 1 second),
    each (B, max_len); the special ids sit right after the tokenizer's vocabulary: vocab_size = theirs + 3."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor
    cls_id: int
    sep_id: int
    pad_id: int
    vocab_size: int


def bert_inputs(tokenizer, sentences: Sequence[str | tuple[str, str]], max_len: int) -> BertInputs:
    """[CLS] a [SEP] (or [CLS] a [SEP] b [SEP] for a pair), padded with [PAD] to max_len.

    Too long ("longest first", as Hugging Face tokenizers): the shorter segment keeps up to half the room
    (the first one on a tie), the longer one the rest; tokens are cut from the end."""
    cls_id, sep_id, pad_id = tokenizer.vocab_size, tokenizer.vocab_size + 1, tokenizer.vocab_size + 2
    rows, types = [], []
    for s in sentences:
        segs = [tokenizer.encode(t) for t in ((s,) if isinstance(s, str) else s)]
        if len(segs) not in (1, 2):
            raise ValueError(f"each item must be a str or a pair of str, got {s!r}")
        budget = max_len - 1 - len(segs)
        if budget < len(segs):
            raise ValueError(f"max_len={max_len} leaves no room for tokens besides [CLS]/[SEP]")
        if len(segs) == 1:
            segs = [segs[0][:budget]]
        elif len(segs[0]) + len(segs[1]) > budget:
            short = 1 if len(segs[0]) > len(segs[1]) else 0
            n_short = min(len(segs[short]), budget // 2)
            segs[short], segs[1 - short] = segs[short][:n_short], segs[1 - short][:budget - n_short]
        ids = [cls_id] + segs[0] + [sep_id] + (segs[1] + [sep_id] if len(segs) == 2 else [])
        rows.append(ids + [pad_id] * (max_len - len(ids)))
        types.append([0] * (len(segs[0]) + 2) + [1] * (len(ids) - len(segs[0]) - 2) + [0] * (max_len - len(ids)))
    input_ids = torch.tensor(rows, dtype=torch.long)
    return BertInputs(input_ids, (input_ids != pad_id).long(), torch.tensor(types, dtype=torch.long),
                      cls_id, sep_id, pad_id, tokenizer.vocab_size + 3)
