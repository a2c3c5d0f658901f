"""`bloomlib bench serve`: what batching, paging, speculation and quantization buy on this machine.

  throughput:   useful output tokens/s for the same mixed-length requests (greedy, EOS ignored) served
                one at a time, in static batches (a batch is admitted only when the previous one has
                finished, and runs until its longest request is done, as a fixed batch tensor does), and
                with continuous batching, at 8 and 32 concurrent requests. Every configuration runs --repeat
                times (default 3), the configurations taking turns, and keeps its best run: on a shared machine
                a single run of each can differ by 30 % from one minute to the next.
  vs_transformers: with the `hf` extra, the same weights in transformers' GPT2LMHeadModel generating one
                padded static batch, against the engine given the same requests at once: useful tokens/s
                and how many requests got identical greedy tokens.
  kv_memory:    during the continuous run, tokens held in the KV cache divided by the slots reserved:
                paged (whole blocks) vs contiguous preallocation (a full context per running request).
  speculative:  draft-and-verify with the course draft model: acceptance rate, target passes per
                generated token, and wall time against plain decoding of the same requests.
  quantization: weight bytes and validation loss of INT8 / INT4 weight-only models against fp32.
Uses the shipped course and draft models when present, else random-init stand-ins (said in the output).
Its measuring pieces (spec_prompts, decode_pass_ms, time_speculative, time_plain, quantization_table) are
also bloomlib.design's, so the lesson-06 tables and this benchmark measure the same way.
"""
from __future__ import annotations

import argparse
import json
import random
import tempfile
import time

import torch
import torch.nn.functional as F

from bloomlib.serving.config import EngineConfig
from bloomlib.serving.engine import LLMEngine
from bloomlib.serving.quantization import quantize_model, weight_bytes
from bloomlib.serving.sequence import SamplingParams
from bloomlib.serving.speculative import SpeculativeDecoder


def load_models():
    """(target, draft, tokenizer, source): the shipped checkpoints, or random stand-ins of the same shapes."""
    from bloomlib.config import GPTConfig
    from bloomlib.model import COURSE_MODEL, DRAFT_MODEL, GPT

    try:
        from bloomlib.checkpoint import load_checkpoint

        target, draft = load_checkpoint(COURSE_MODEL), load_checkpoint(DRAFT_MODEL)
        return target.model, draft.model, target.tokenizer, "course_model + draft_model"
    except (ValueError, OSError):
        torch.manual_seed(0)
        target, draft = GPT(GPTConfig.preset("course")), GPT(GPTConfig.preset("draft"))
        return target.eval(), draft.eval(), None, "random-init stand-ins (course checkpoints not found)"


def make_requests(n: int, vocab: int, context: int, seed: int = 0) -> list[tuple[list[int], int]]:
    rng = random.Random(seed)
    reqs = []
    for _ in range(n):
        p = rng.randint(8, 64)
        reqs.append(([rng.randrange(vocab - 1) for _ in range(p)], min(rng.randint(16, 128), context - p)))
    return reqs


def run_engine(model, reqs, concurrency: int, static: bool, kv_block_size: int, kv_stats: dict | None = None
               ) -> tuple[float, list[list[int]]]:
    """Serve every request; returns (useful output tokens/s, each request's tokens).

    static: static batching, as a fixed batch tensor computes it: a batch is admitted only once the last one has
    ended, and every request in it runs until the batch's longest is done (only its own tokens count)."""
    engine = LLMEngine(model, config=EngineConfig(kv_block_size=kv_block_size, max_num_seqs=concurrency),
                       safety_filter=None)
    todo, outputs, ids, samples = list(reqs), {}, [], []
    t0 = time.perf_counter()
    while todo or engine.has_unfinished():
        if todo and (not static or not engine.has_unfinished()):
            batch, todo = (todo[:concurrency], todo[concurrency:]) if static else (todo, [])
            longest = max(n for _, n in batch)
            ids += [engine.add_request(p, SamplingParams(temperature=0, ignore_eos=True, max_tokens=min(
                longest, engine.context - len(p)) if static else n)) for p, n in batch]
        for out in engine.step():
            if out.finished:
                outputs[out.request_id] = out.token_ids
        if kv_stats is not None and engine.scheduler.running:
            live = sum(len(s) for s in engine.scheduler.running)
            samples.append((live, engine.bm.num_used * kv_block_size, len(engine.scheduler.running) * engine.context))
    elapsed = time.perf_counter() - t0
    if kv_stats is not None and samples:
        live, paged, contiguous = (sum(x) for x in zip(*samples))
        kv_stats.update(paged_utilization=live / paged, contiguous_utilization=live / contiguous,
                        kv_block_size=kv_block_size, bytes_per_token=engine.runner.cache.bytes_per_token)
    return sum(n for _, n in reqs) / elapsed, [outputs[i][:n] for i, (_, n) in zip(ids, reqs)]


def run_transformers(model, reqs) -> tuple[float, list[list[int]]] | None:
    """The peer a user would pick: the same weights in transformers' GPT2LMHeadModel (export_gpt2), all requests
    in one left-padded batch, greedy `generate` up to the longest request. Returns (useful tokens/s, each
    request's first max_tokens tokens), or None without the `hf` extra."""
    try:
        from transformers import GPT2LMHeadModel
    except ImportError:
        return None
    from bloomlib.interop import export_gpt2

    with tempfile.TemporaryDirectory() as folder:
        export_gpt2(model, folder)
        hf = GPT2LMHeadModel.from_pretrained(folder).eval()
    width = max(len(p) for p, _ in reqs)
    ids = torch.tensor([[0] * (width - len(p)) + p for p, _ in reqs])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p, _ in reqs])
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = hf.generate(ids, attention_mask=mask, max_new_tokens=max(n for _, n in reqs), do_sample=False,
                          eos_token_id=None, pad_token_id=0)
    elapsed = time.perf_counter() - t0
    tokens = [row[width:width + n].tolist() for row, (_, n) in zip(out, reqs)]
    return sum(n for _, n in reqs) / elapsed, tokens


def bench_throughput(model, n_requests: int, kv_block_size: int, repeat: int = 3) -> tuple[dict, dict]:
    """Useful tokens/s of every configuration: each runs `repeat` times, the configurations taking turns (so that a
    slow spell of a shared machine falls on all of them alike), and keeps its best run."""
    reqs = make_requests(n_requests, model.config.vocab_size, model.config.block_size)
    runs = {"one_at_a_time": (1, False)} | {f"{kind}_{c}": (c, kind == "static")
                                            for c in (8, 32) for kind in ("static", "continuous")}
    best, kv = dict.fromkeys(runs, 0.0), {}
    for _ in range(repeat):
        for name, (c, static) in runs.items():
            tok_s, _ = run_engine(model, reqs, c, static, kv_block_size, kv if name == "continuous_32" else None)
            best[name] = max(best[name], tok_s)
    out = {"requests": n_requests, "output_tokens": sum(n for _, n in reqs), "repeat": repeat,
           **{f"{name}_tok_s": tok_s for name, tok_s in best.items()}}
    out["continuous_32_vs_one_at_a_time"] = out["continuous_32_tok_s"] / out["one_at_a_time_tok_s"]
    out["continuous_32_vs_static_32"] = out["continuous_32_tok_s"] / out["static_32_tok_s"]
    return out, kv


def bench_vs_transformers(model, n_requests: int, kv_block_size: int, repeat: int = 3) -> dict | None:
    """The engine (continuous batching, all requests at once) against transformers' static batch, same requests;
    the two take turns `repeat` times and each keeps its best run (one run is a fraction of a second)."""
    reqs = make_requests(n_requests, model.config.vocab_size, model.config.block_size, seed=2)
    hf = ours = (0.0, [])
    for _ in range(repeat):
        if (theirs := run_transformers(model, reqs)) is None:
            return None
        hf = max(hf, theirs, key=lambda r: r[0])
        ours = max(ours, run_engine(model, reqs, n_requests, False, kv_block_size), key=lambda r: r[0])
    return {"requests": n_requests, "output_tokens": sum(n for _, n in reqs), "engine_tok_s": ours[0],
            "transformers_static_batch_tok_s": hf[0], "engine_vs_transformers": ours[0] / hf[0],
            "identical_greedy_requests": sum(a == b for a, b in zip(ours[1], hf[1]))}


def spec_prompts(target, tok, n: int, length: int = 48, seed: int = 1) -> list[list[int]]:
    """n prompts: the first `length` token ids of windows of the course corpus (with a tokenizer), else
    make_requests' random prompts (8 to 64 ids)."""
    if tok is None:
        return [p for p, _ in make_requests(n, target.config.vocab_size, target.config.block_size, seed=seed)]
    from bloomlib.training.data import load_corpus

    text = load_corpus()
    rng = random.Random(seed)
    starts = [rng.randrange(len(text) - 400) for _ in range(n)]
    return [tok.encode(text[s:s + 200])[:length] for s in starts]


def decode_pass_ms(runner, table: list[int], passes: int = 64) -> float:
    """Milliseconds of one single-token decode pass of a ModelRunner (a 32-token prefill first), mean of `passes`."""
    runner.forward([list(range(32))], [0], [table])
    t0 = time.perf_counter()
    for i in range(32, 32 + passes):
        runner.forward([[i]], [i], [table])
    return (time.perf_counter() - t0) / passes * 1e3


def _params(temperature: float, max_tokens: int, seed: int) -> SamplingParams:
    return SamplingParams(temperature=temperature, max_tokens=max_tokens, ignore_eos=True, seed=seed)


def time_speculative(spec: SpeculativeDecoder, prompts, temperature: float, max_tokens: int, seed: int = 0
                     ) -> tuple[float, list[list[int]]]:
    """(seconds, completions) for every prompt in turn (prompt i sampled with seed + i); spec.stats accumulates."""
    t0 = time.perf_counter()
    out = [spec.generate(p, _params(temperature, max_tokens, seed + i)).completion_ids for i, p in enumerate(prompts)]
    return time.perf_counter() - t0, out


def time_plain(target, prompts, temperature: float, max_tokens: int, seed: int = 0) -> tuple[float, list[list[int]]]:
    """(seconds, completions): the same requests decoded plainly, one at a time, by the engine."""
    plain = LLMEngine(target, config=EngineConfig(max_num_seqs=1), safety_filter=None)
    out = []
    t0 = time.perf_counter()
    for i, p in enumerate(prompts):
        plain.add_request(p, _params(temperature, max_tokens, seed + i))
        while plain.has_unfinished():
            out += [o.token_ids for o in plain.step() if o.finished]
    return time.perf_counter() - t0, out


def bench_speculative(target, draft, tok, n: int, k: int, max_tokens: int) -> dict:
    prompts = spec_prompts(target, tok, n)
    res = {"k": k, "requests": n, "max_tokens": max_tokens}
    spec = SpeculativeDecoder(target, draft, k=k)
    res["target_ms_per_pass"] = decode_pass_ms(spec.target, spec.table)
    res["draft_ms_per_pass"] = decode_pass_ms(spec.draft, spec.table)
    res["draft_cost_vs_target"] = res["draft_ms_per_pass"] / res["target_ms_per_pass"]
    for name, temp in (("greedy", 0.0), ("sampled_t1", 1.0)):
        spec = SpeculativeDecoder(target, draft, k=k, tokenizer=tok)
        t_spec, _ = time_speculative(spec, prompts, temp, max_tokens)
        t_plain, _ = time_plain(target, prompts, temp, max_tokens)
        s = spec.stats
        res[name] = {"acceptance_rate": s.acceptance_rate, "target_passes_per_token": s.target_passes_per_token,
                     "draft_passes_per_token": s.draft_passes / s.generated,
                     "wall_time_speculative_s": t_spec, "wall_time_plain_s": t_plain,
                     "speedup": t_plain / t_spec}
    return res


def quantization_table(model, val_ids: torch.Tensor, *, bits=(8, 4), group_size: int = 32) -> list[dict]:
    """Weight-only quantization, bytes against quality: one row for the model as it is ("fp32" for a float32
    model), then one per entry of `bits` ("int8", "int4"): name, bits, weight_bytes (quantization.weight_bytes),
    bytes_ratio (to the first row), val_loss (mean next-token loss over up to 16 non-overlapping windows of
    block_size tokens of val_ids, a 1-D id tensor) and loss_change (val_loss minus the first row's)."""
    if not isinstance(val_ids, torch.Tensor) or val_ids.dim() != 1 or val_ids.is_floating_point() or len(val_ids) < 2:
        got = f"{val_ids.dtype} {tuple(val_ids.shape)}" if isinstance(val_ids, torch.Tensor) else type(val_ids).__name__
        raise ValueError(f"val_ids must be a 1-D tensor of at least 2 integer token ids, got {got}")
    T = min(model.config.block_size, len(val_ids) - 1)
    n = min(16, (len(val_ids) - 1) // T)
    x = torch.stack([val_ids[i * T:(i + 1) * T] for i in range(n)])
    y = torch.stack([val_ids[i * T + 1:(i + 1) * T + 1] for i in range(n)])

    @torch.no_grad()
    def loss(m) -> float:
        return float(F.cross_entropy(m(x).flatten(0, 1).float(), y.flatten()))

    dtype = next(model.parameters()).dtype
    base, size = loss(model), weight_bytes(model)
    rows = [{"name": {torch.bfloat16: "bf16"}.get(dtype, f"fp{torch.finfo(dtype).bits}"),
             "bits": torch.finfo(dtype).bits, "weight_bytes": size, "bytes_ratio": 1.0, "val_loss": base,
             "loss_change": 0.0}]
    for b in bits:
        q = quantize_model(model, bits=b, group_size=group_size)
        lq, qsize = loss(q), weight_bytes(q)
        rows.append({"name": f"int{b}", "bits": b, "weight_bytes": qsize, "bytes_ratio": qsize / size,
                     "val_loss": lq, "loss_change": lq - base})
    return rows


def bench_quantization(model, tok, group_size: int) -> dict:
    cfg = model.config
    if tok is not None:
        from bloomlib.training.data import load_corpus, train_val_split

        _, val = train_val_split(tok.encode(load_corpus()))
    else:
        val = torch.randint(0, cfg.vocab_size, (20 * cfg.block_size,), generator=torch.Generator().manual_seed(0))
    base, *quantized = quantization_table(model, val, group_size=group_size)
    res = {"fp32": {"weight_bytes": base["weight_bytes"], "val_loss": base["val_loss"]}}
    for row in quantized:
        res[row["name"]] = {k: row[k] for k in ("weight_bytes", "val_loss", "loss_change", "bytes_ratio")}
    res["int4"]["group_size"] = group_size
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bloomlib bench serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--requests", type=int, default=256, help="requests per throughput run")
    p.add_argument("--hf-requests", type=int, default=32, help="requests in the comparison with transformers")
    p.add_argument("--kv-block-size", type=int, default=8, help="tokens per KV-cache page")
    p.add_argument("--spec-requests", type=int, default=8)
    p.add_argument("--spec-k", type=int, default=4)
    p.add_argument("--spec-max-tokens", type=int, default=64)
    p.add_argument("--group-size", type=int, default=32, help="INT4 group size")
    p.add_argument("--repeat", type=int, default=3, help="runs of each throughput configuration, best kept")
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error(f"--repeat must be at least 1, got {args.repeat}")
    target, draft, tok, source = load_models()
    report = {"models": source, "threads": torch.get_num_threads()}
    report["throughput"], report["kv_memory"] = bench_throughput(target, args.requests, args.kv_block_size,
                                                                 args.repeat)
    report["vs_transformers"] = bench_vs_transformers(target, args.hf_requests, args.kv_block_size, args.repeat)
    report["speculative"] = bench_speculative(target, draft, tok, args.spec_requests, args.spec_k,
                                              args.spec_max_tokens)
    report["quantization"] = bench_quantization(target, tok, args.group_size)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"models: {source}")
    th = report["throughput"]
    print(f"throughput ({th['requests']} requests, {th['output_tokens']} output tokens), tokens/s, best of "
          f"{th['repeat']} runs taken in turn:")
    print(f"  one at a time      {th['one_at_a_time_tok_s']:8.1f}")
    for c in (8, 32):
        static, continuous = th[f"static_{c}_tok_s"], th[f"continuous_{c}_tok_s"]
        print(f"  static {c:2d} / continuous {c:2d}  {static:8.1f} / {continuous:8.1f}")
    print(f"  continuous 32 vs one at a time: {th['continuous_32_vs_one_at_a_time']:.2f}x, "
          f"vs static 32: {th['continuous_32_vs_static_32']:.2f}x")
    hf = report["vs_transformers"]
    if hf is None:
        print("transformers comparison skipped: install the hf extra (pip install -e '.[hf]')")
    else:
        print(f"{hf['requests']} requests at once: engine {hf['engine_tok_s']:.1f} tokens/s, transformers' static "
              f"batch {hf['transformers_static_batch_tok_s']:.1f} ({hf['engine_vs_transformers']:.2f}x), identical "
              f"greedy tokens in {hf['identical_greedy_requests']}/{hf['requests']}")
    kv = report["kv_memory"]
    print(f"KV memory held by live tokens (KV block size {kv['kv_block_size']}): paged {kv['paged_utilization']:.1%}, "
          f"contiguous preallocation {kv['contiguous_utilization']:.1%}")
    sp = report["speculative"]
    print(f"one decode pass: target {sp['target_ms_per_pass']:.2f} ms, draft {sp['draft_ms_per_pass']:.2f} ms "
          f"({sp['draft_cost_vs_target']:.0%}: per-call overhead, not FLOPs, dominates tiny models on a CPU)")
    for name in ("greedy", "sampled_t1"):
        s = sp[name]
        print(f"speculative k={args.spec_k} {name}: acceptance {s['acceptance_rate']:.2f}, target passes/token "
              f"{s['target_passes_per_token']:.2f}, wall time {s['wall_time_speculative_s']:.2f}s vs plain "
              f"{s['wall_time_plain_s']:.2f}s")
    q = report["quantization"]
    for name in ("fp32", "int8", "int4"):
        extra = f", loss change {q[name]['loss_change']:+.4f}" if name != "fp32" else ""
        print(f"{name}: {q[name]['weight_bytes'] / 1e6:.3f} MB, val loss {q[name]['val_loss']:.4f}{extra}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
