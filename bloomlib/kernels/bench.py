"""`bloomlib bench flash`: our FlashAttention-2 against plain PyTorch attention and torch's SDPA.

On CUDA: TFLOP/s forward and backward, bf16, causal and not (FLOPs = 4·B·H·n²·d, half when causal,
x2.5 for the backward). On CPU: the largest tensor each implementation creates as n grows (recorded
at the aten level with a TorchDispatchMode), and the wall time of one small call per backend.
"""
from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from bloomlib.kernels import flash_attention, triton_status
from bloomlib.masks import build_attention_mask


def plain_attention(q, k, v, causal: bool = False):
    """softmax(q kᵀ / sqrt(d)) v with the whole score matrix in memory. q (B, H, n_q, d); k, v (B, H, n_k, d)."""
    s = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
    mask = build_attention_mask(q.shape[2], k.shape[2], causal=causal, device=q.device)  # None: all visible
    return torch.softmax(s if mask is None else s.masked_fill(~mask, float("-inf")), -1) @ v


IMPLS = {
    "plain": plain_attention,
    "sdpa": lambda q, k, v, causal=False: F.scaled_dot_product_attention(q, k, v, is_causal=causal),
    "flash": lambda q, k, v, causal=False: flash_attention(q, k, v, causal=causal),
}


class LargestTensor(TorchDispatchMode):
    """Tracks the largest tensor (in bytes) that any aten op returns."""

    def __init__(self):
        super().__init__()
        self.bytes, self.shape = 0, ()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.numel() * t.element_size() > self.bytes:
                self.bytes, self.shape = t.numel() * t.element_size(), tuple(t.shape)
        return out


def _cuda_ms(fn, reps: int = 10) -> float:
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def bench_cuda(ns: list[int], ds: list[int]) -> list[dict]:
    rows = []
    for d in ds:
        for causal in (False, True):
            for n in ns:
                B, H = max(1, 16384 // n), 2048 // d  # 16k tokens per batch, model width 2048 (as in FA's bench)
                q, k, v = (torch.randn(B, H, n, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                           for _ in range(3))
                flops = 4 * B * H * n * n * d * (0.5 if causal else 1.0)
                for name, fn in IMPLS.items():
                    row = dict(impl=name, d=d, causal=causal, n=n, B=B, H=H)
                    try:
                        row["fwd_ms"] = _cuda_ms(lambda: fn(q, k, v, causal))
                        out = fn(q, k, v, causal)
                        do = torch.randn_like(out)
                        row["bwd_ms"] = _cuda_ms(lambda: torch.autograd.grad(out, (q, k, v), do, retain_graph=True))
                        row["fwd_tflops"] = flops / row["fwd_ms"] / 1e9
                        row["bwd_tflops"] = 2.5 * flops / row["bwd_ms"] / 1e9
                        del out, do
                    except torch.OutOfMemoryError:
                        row["error"] = "out of memory"
                    torch.cuda.empty_cache()
                    rows.append(row)
                    print(_fmt(row), flush=True)
    return rows


def _fmt(row: dict) -> str:
    head = f"{row['impl']:>6} d={row['d']:<3} causal={row['causal']!s:<5} n={row['n']:<6}"
    if "error" in row:
        return f"{head} {row['error']}"
    return (f"{head} fwd {row['fwd_ms']:8.3f} ms {row['fwd_tflops']:6.1f} TFLOP/s   "
            f"bwd {row['bwd_ms']:8.3f} ms {row['bwd_tflops']:6.1f} TFLOP/s")


def bench_cpu(ns: list[int], d: int = 64) -> dict:
    memory = []
    for n in ns:
        q, k, v = (torch.randn(1, 4, n, d, requires_grad=True) for _ in range(3))
        for name, fn in IMPLS.items():
            with LargestTensor() as rec:
                fn(q, k, v, True).sum().backward()
            memory.append(dict(impl=name, n=n, largest_bytes=rec.bytes, largest_shape=rec.shape))
            print(f"{name:>6} n={n:<5} largest tensor {rec.bytes / 2**20:8.2f} MiB {rec.shape}", flush=True)
    timing = []
    q, k, v = (torch.randn(1, 2, 128, 32) for _ in range(3))
    for backend in ("torch", "triton"):
        try:
            flash_attention(q, k, v, causal=True, backend=backend)  # warm-up (builds the interpreted kernels)
            t0 = time.perf_counter()
            flash_attention(q, k, v, causal=True, backend=backend)
            seconds = time.perf_counter() - t0
        except (ValueError, RuntimeError) as e:  # e.g. triton missing or broken
            timing.append(dict(backend=backend, error=str(e)))
            continue
        timing.append(dict(backend=backend, shape=[1, 2, 128, 32], causal=True, seconds=seconds))
        print(f"one forward B1 H2 N128 D32 causal, backend={backend}: {seconds:.3f} s", flush=True)
    return dict(memory=memory, timing=timing)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bloomlib bench flash", description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print one JSON object at the end")
    p.add_argument("--n", type=int, nargs="+", help="sequence lengths (default: 512..16k on CUDA, 256..2048 on CPU)")
    p.add_argument("--d", type=int, nargs="+", default=[64, 128], help="head dims (CUDA)")
    p.add_argument("--cpu", action="store_true", help="run the CPU measurements even where CUDA exists")
    args = p.parse_args(argv)
    print(f"triton: {triton_status()}")
    if torch.cuda.is_available() and not args.cpu:
        print(f"device: {torch.cuda.get_device_name()}")
        result = dict(device="cuda", rows=bench_cuda(args.n or [512, 1024, 2048, 4096, 8192, 16384], args.d))
        by = {(r["impl"], r["d"], r["causal"], r["n"]): r for r in result["rows"] if "error" not in r}
        for (impl, d, causal, n), r in by.items():
            if impl == "flash":
                for other in ("plain", "sdpa"):
                    if (other, d, causal, n) in by:
                        o = by[(other, d, causal, n)]
                        print(f"flash/{other} d={d} causal={causal} n={n}: fwd x{o['fwd_ms'] / r['fwd_ms']:.2f} "
                              f"bwd x{o['bwd_ms'] / r['bwd_ms']:.2f}")
    else:
        print("device: cpu (no CUDA here: memory of each implementation and interpreter wall time, no TFLOP/s)")
        result = dict(device="cpu", **bench_cpu(args.n or [256, 512, 1024, 2048]))
    if args.json:
        print(json.dumps(result))
    return 0
