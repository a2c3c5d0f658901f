"""`bloomlib bench core`: what the KV cache buys, and how close training gets to the machine's matmul speed.

Every figure is a ratio of two timings taken in the same run, so a busy machine affects both sides.
  kv_cache_speedup: time to generate N new tokens by recomputing the whole sequence at every step,
                    divided by the time with the KV cache (greedy, same tokens).
  train_mfu:        model FLOP/s while training (nanoGPT's estimate_mfu count: 6N + 12 L H d T per token),
                    divided by the best FLOP/s of several large square matmuls measured here.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from bloomlib.config import GPTConfig
from bloomlib.device import autocast, get_device
from bloomlib.model import GPT, count_parameters, flops_per_token


def _best_time(fn, repeats: int) -> float:
    """Minimum wall time of fn() over `repeats` runs (after one warm-up run)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def matmul_flops(device: torch.device, sizes=(1024, 2048), repeats: int = 3) -> float:
    """Best FLOP/s of an n x n @ n x n matmul (2 n^3 FLOPs) over the given sizes."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
        best = max(best, 2 * n**3 / _best_time(lambda: a @ b, repeats))
    return best


def kv_cache_speedup(config: GPTConfig, device: torch.device, batch: int, prompt_len: int, new_tokens: int,
                     repeats: int = 2) -> dict:
    """Greedy generation of `new_tokens` after a random prompt, with and without the KV cache (best of `repeats`)."""
    torch.manual_seed(0)
    model = GPT(config).to(device).eval()
    idx = torch.randint(config.vocab_size, (batch, prompt_len), device=device)
    outs = {}

    def run(use_cache: bool):
        outs[use_cache] = model.generate(idx, new_tokens, temperature=0, use_cache=use_cache)

    t_cache = _best_time(lambda: run(True), repeats)
    t_full = _best_time(lambda: run(False), repeats)
    return {"batch": batch, "prompt_tokens": prompt_len, "new_tokens": new_tokens,
            "seconds_with_cache": round(t_cache, 4), "seconds_recomputing": round(t_full, 4),
            "ms_per_step_with_cache": round(1e3 * t_cache / new_tokens, 3),
            "speedup": round(t_full / t_cache, 2), "same_tokens": bool(torch.equal(outs[True], outs[False]))}


def train_mfu(config: GPTConfig, device: torch.device, batch: int, steps: int, peak: float) -> dict:
    """Model FLOP/s of a training step (forward, backward, AdamW) relative to `peak` FLOP/s."""
    torch.manual_seed(0)
    model = GPT(config).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(config.vocab_size, (batch, config.block_size), device=device)

    def step():
        with autocast(device):
            logits = model(x)
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), x.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    seconds = _best_time(step, steps)
    n_params = count_parameters(model, non_embedding=True)
    flops = flops_per_token(config, n_params) * batch * config.block_size
    return {"batch": batch, "seq_len": config.block_size, "params_non_embedding": n_params,
            "step_seconds": round(seconds, 4), "model_flops_per_s": round(flops / seconds / 1e9, 2),
            "mfu": round(flops / seconds / peak, 3)}


def main(argv: list[str] | None = None) -> int:
    """Measure kv_cache_speedup and train_mfu on the course model's shape (random weights: speed only)."""
    p = argparse.ArgumentParser(prog="bloomlib bench core", description=main.__doc__)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--device", default=None)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = get_device(args.device)
    prompt = 16
    # The course model's shape, with a context window long enough for prompt + new tokens without cropping.
    gen_cfg = GPTConfig.preset("course", block_size=max(256, prompt + args.new_tokens))
    peak = matmul_flops(device)
    # best of 5 at batch 1 (each run is short, so the minimum is what steadies the ratio); best of 2 at batch 8
    kv1 = kv_cache_speedup(gen_cfg, device, batch=1, prompt_len=prompt, new_tokens=args.new_tokens, repeats=5)
    kv8 = kv_cache_speedup(gen_cfg, device, batch=8, prompt_len=prompt, new_tokens=args.new_tokens)
    train_cfg = GPTConfig.preset("course")
    mfu = train_mfu(train_cfg, device, batch=16, steps=3, peak=peak)
    result = {
        "device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "model": "course preset: 4 layers, 4 heads, d_model 128, vocab 512 (random weights)",
        "matmul_peak_gflops": round(peak / 1e9, 1),
        "kv_cache_speedup": kv1["speedup"], "kv_cache_speedup_batch8": kv8["speedup"],
        "train_mfu": mfu["mfu"], "kv_cache": [kv1, kv8], "train": mfu,
    }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:26} {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
