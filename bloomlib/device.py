"""Where and how to compute: device choice (cuda, then mps, then cpu), dtype, autocast, seeding."""
from __future__ import annotations

import contextlib
import os
import random

import torch


def get_device(prefer: str | None = None) -> torch.device:
    """`prefer`, else $BLOOMLIB_DEVICE, else the best available: cuda, then mps, then cpu."""
    choice = prefer or os.environ.get("BLOOMLIB_DEVICE")
    if choice:
        return torch.device(choice)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def default_dtype(device: torch.device | str) -> torch.dtype:
    """bfloat16 on a CUDA GPU that supports it, float32 everywhere else."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def autocast(device: torch.device | str):
    """bf16 autocast on CUDA (matmuls in bf16, reductions in fp32); a no-op context elsewhere."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA); returns a torch.Generator seeded the same way."""
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:
        pass
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    return torch.Generator().manual_seed(seed)
