"""Weight-only quantization of a GPT's Linear layers (as in gpt-fast), in plain torch.

INT8: symmetric, one scale per output channel: w ~ q * s, q in [-127, 127], s = max|w_row| / 127.
INT4: asymmetric, one (scale, zero) per group of `group_size` input columns: w ~ (q - z) * s, q in [0, 15],
two values packed per byte. Weights are dequantized in forward (activations stay in floating point), so the
gain is memory (and bandwidth on hardware with int kernels), not FLOPs.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F


class Int8Linear(nn.Module):
    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        w = linear.weight.detach().double()
        scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-12)                  # (out,)
        self.register_buffer("qweight", (w / scale[:, None]).round().clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale.to(linear.weight.dtype))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone())
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def dequantize(self) -> torch.Tensor:
        return self.qweight.to(self.scale.dtype) * self.scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantize().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


class Int4Linear(nn.Module):
    def __init__(self, linear: nn.Linear, group_size: int = 32) -> None:
        super().__init__()
        out_f, in_f = linear.weight.shape
        if group_size <= 0 or in_f % group_size or group_size % 2:
            raise ValueError(f"group_size={group_size} must be even and divide in_features={in_f}")
        w = linear.weight.detach().double().view(out_f, in_f // group_size, group_size)
        lo, hi = w.amin(-1).clamp(max=0), w.amax(-1).clamp(min=0)           # keep 0 exactly representable
        scale = ((hi - lo) / 15).clamp(min=1e-12)                            # (out, groups)
        zero = (-lo / scale).round().clamp(0, 15)
        q = (w / scale[..., None] + zero[..., None]).round().clamp(0, 15).to(torch.uint8).view(out_f, in_f)
        self.register_buffer("qweight", q[:, 0::2] | (q[:, 1::2] << 4))     # (out, in/2) packed nibbles
        self.register_buffer("scale", scale.to(linear.weight.dtype))
        self.register_buffer("zero", zero.to(torch.uint8))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone())
        self.in_features, self.out_features, self.group_size = in_f, out_f, group_size

    def unpack(self) -> torch.Tensor:
        """(out, in) uint8 values in [0, 15]."""
        return torch.stack((self.qweight & 15, self.qweight >> 4), dim=-1).view(self.out_features, -1)

    def dequantize(self) -> torch.Tensor:
        q = self.unpack().view(self.out_features, -1, self.group_size).to(self.scale.dtype)
        return ((q - self.zero[..., None].to(q.dtype)) * self.scale[..., None]).view(self.out_features, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantize().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


def quantize_model(model: nn.Module, bits: int = 8, group_size: int = 32) -> nn.Module:
    """A copy of `model` whose nn.Linear layers are Int8Linear (bits=8) or Int4Linear (bits=4).
    A head tied to the token embedding is left alone (quantizing it would store the matrix twice)."""
    if bits not in (8, 4):
        raise ValueError(f"bits must be 8 or 4, got {bits}")
    model = copy.deepcopy(model)
    tied = getattr(getattr(model, "config", None), "tie_weights", False)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear) and not (tied and child is getattr(model, "lm_head", None)):
                setattr(parent, name, Int8Linear(child) if bits == 8 else Int4Linear(child, group_size))
    return model


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the parameters (shared ones once) and of the quantized weights, scales and zero points."""
    seen, total = set(), 0
    for t in list(model.parameters()) + [b for m in model.modules() if isinstance(m, (Int8Linear, Int4Linear))
                                         for b in m.buffers(recurse=False)]:
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total
