"""Flash-style attention: FlashAttention-2 as tiled PyTorch (tiled.py) and as Triton kernels (triton_kernels.py).

    from bloomlib.kernels import flash_attention
    out = flash_attention(q, k, v, causal=True)   # q (B, H, n_q, d); k, v (B, Hkv, n_k, d)

Backends: "triton" runs the Triton kernels, "torch" the tiled PyTorch version. backend=None picks Triton
for CUDA tensors, and for CPU tensors when you set TRITON_INTERPRET=1 yourself; the tiled version otherwise.
Triton is optional: without it (macOS, Windows) importing this package still works, and Triton requests
warn and use the tiled version.

Native or interpreted is decided once per process, when triton is first imported (triton reads
TRITON_INTERPRET then, and builds its own helpers one way or the other):
  * set TRITON_INTERPRET=1 before anything imports triton to run the kernels through Triton's interpreter
    (slow, on CPU tensors: for tests and lessons);
  * or, when TRITON_INTERPRET is unset, there is no CUDA GPU and nothing has imported triton yet, importing
    bloomlib.kernels sets TRITON_INTERPRET=1 for you. This is the one process-wide switch bloomlib flips
    on its own, and only at import, before triton reads it;
  * when triton was already imported natively (torch.compile imports it, for one) the kernels are native
    and take CUDA tensors only: backend="triton" on CPU tensors raises a RuntimeError saying so, and
    backend=None warns and uses the tiled version if you had asked for the interpreter too late.

Masks follow bloomlib.masks: query i sits at position p = i + n_k - n_q (end-aligned, as when decoding with
a cache). causal: key j visible when j <= p. window w: p - w < j <= p (a window always implies the causal
bound, whether or not causal=True). A query with no visible key gets output 0, log-sum-exp -inf and zero
gradients.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import sys
import warnings

import torch
from torch import Tensor

from bloomlib.kernels import tiled


_ASKED_TO_INTERPRET = os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "yes", "on")
if ("triton" not in sys.modules and "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available()
        and importlib.util.find_spec("triton") is not None):
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported: the documented exception above
try:
    import triton
except Exception as e:  # ImportError, or a broken install
    _TRITON_ERROR: str | None = f"{type(e).__name__}: {e}"
else:
    _TRITON_ERROR = None
    from bloomlib.kernels import triton_kernels

__all__ = ["flash_attention", "triton_status"]

TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
NATIVE_ON_CPU = ("the Triton kernels run natively in this process (triton was imported without TRITON_INTERPRET=1), "
                 "so they take CUDA tensors only; set TRITON_INTERPRET=1 before importing triton or bloomlib.kernels "
                 "to run them on CPU tensors through Triton's interpreter")


def triton_status() -> str:
    """One line for `bloomlib info`: whether the Triton kernels run natively, interpreted, or not at all."""
    if _TRITON_ERROR is not None:
        return f"not installed ({_TRITON_ERROR}); flash_attention uses the tiled PyTorch version"
    if triton_kernels.INTERPRET:
        return f"{triton.__version__} interpreted (TRITON_INTERPRET=1; CPU tensors)"
    if torch.cuda.is_available():
        return f"{triton.__version__} native (CUDA)"
    return f"{triton.__version__} native but no CUDA GPU: {NATIVE_ON_CPU}"


@functools.cache  # each message once per process
def _warn_once(message: str) -> None:
    warnings.warn(message, stacklevel=4)


def triton_unsupported(q: Tensor) -> str | None:
    """Why the Triton kernels cannot take q, or None if they can."""
    d = q.shape[-1]
    if d < 16 or d > 128 or d & (d - 1):
        return f"head dim must be a power of two in 16..128 for the Triton kernels, got {d}"
    if q.dtype not in TRITON_DTYPES:
        return f"dtype must be one of {TRITON_DTYPES} for the Triton kernels, got {q.dtype}"
    return None


def _check(q: Tensor, k: Tensor, v: Tensor, window: int | None, backend: str | None) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor) or t.dim() != 4:
            raise ValueError(f"flash_attention: {name} must be a 4-D tensor (batch, heads, seq, head_dim), "
                             f"got {tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__}")
        if not t.is_floating_point():
            raise ValueError(f"flash_attention: {name} must be floating point, got {t.dtype}")
    if k.shape != v.shape:
        raise ValueError(f"flash_attention: k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(f"flash_attention: q {tuple(q.shape)} and k {tuple(k.shape)} must agree on batch "
                         f"(dim 0) and head_dim (dim 3)")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"flash_attention: kv_heads={k.shape[1]} must divide heads={q.shape[1]} (GQA)")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"flash_attention: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"flash_attention: q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window <= 0):
        raise ValueError(f"flash_attention: window must be a positive int or None, got {window!r}")
    if backend not in (None, "torch", "triton"):
        raise ValueError(f"flash_attention: backend must be None, 'torch' or 'triton', got {backend!r}")


def _pick(q: Tensor, backend: str | None) -> str:
    """The backend for this call, "torch" or "triton"."""
    if backend == "torch" or (backend is None and not (q.is_cuda or _ASKED_TO_INTERPRET)):
        return "torch"
    why = triton_unsupported(q)
    if why is not None:
        if backend == "triton":
            raise ValueError(f"flash_attention: {why} (use backend='torch' for other shapes and dtypes)")
        return "torch"
    if _TRITON_ERROR is not None:
        _warn_once(f"Triton is not installed ({_TRITON_ERROR}); flash_attention uses the tiled PyTorch version")
        return "torch"
    if not (q.is_cuda or triton_kernels.INTERPRET):
        if backend == "triton":
            raise RuntimeError(f"flash_attention: {NATIVE_ON_CPU}")
        _warn_once(f"{NATIVE_ON_CPU}; flash_attention uses the tiled PyTorch version")
        return "torch"
    return "triton"


def flash_attention(q: Tensor, k: Tensor, v: Tensor, causal: bool = False, softmax_scale: float | None = None,
                    window: int | None = None, backend: str | None = None,
                    block_m: int | None = None, block_n: int | None = None) -> Tensor:
    """softmax(q kᵀ · scale + mask) v without ever storing the (n_q, n_k) score matrix. Differentiable.

    q (B, H, n_q, d); k, v (B, Hkv, n_k, d) with Hkv dividing H -> (B, H, n_q, d) in q's dtype.
    softmax_scale defaults to 1/sqrt(d). block_m, block_n: tile sizes (>= 16 for Triton; defaults suit each
    backend). The result does not depend on them beyond rounding.
    """
    _check(q, k, v, window, backend)
    name = _pick(q, backend)
    for b in (block_m, block_n):
        if b is not None and (not isinstance(b, int) or b < (16 if name == "triton" else 1)):
            raise ValueError(f"flash_attention: block sizes must be ints >= {16 if name == 'triton' else 1}, got {b!r}")
    if name == "torch" or q.numel() == 0 or k.shape[2] == 0:
        impl = (tiled.flash_forward, tiled.flash_backward)
        return tiled.FlashAttention.apply(impl, q, k, v, causal, softmax_scale, window, block_m or 64, block_n or 64)
    dtype = q.dtype
    if triton_kernels.INTERPRET and dtype == torch.bfloat16:  # the interpreter's tl.dot is wrong in bf16: use fp32
        q, k, v = q.float(), k.float(), v.float()
    impl = (triton_kernels.forward, triton_kernels.backward)
    out = tiled.FlashAttention.apply(impl, q.contiguous(), k.contiguous(), v.contiguous(), causal, softmax_scale,
                                     window, block_m, block_n)
    return out.to(dtype)
