"""Measurements of the Analyze lesson: diversity of generated text, loss against position and context,
attention sinks, and the time and peak memory of a call."""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from numbers import Integral

import torch
import torch.nn as nn
from torch import Tensor

from bloomlib.analysis._lm import check_ids, check_int, evaluating, token_nll

IntSequences = Sequence[int] | Tensor | Sequence[Sequence[int] | Tensor]


def _as_sequences(sequences: IntSequences) -> list[list[int]]:
    """One sequence (list of ints, 1-D tensor) or several (a list of them, a 2-D tensor) -> lists of ints."""
    def one(s) -> list[int]:
        if isinstance(s, Tensor):
            if s.dim() != 1 or s.is_floating_point() or s.is_complex():
                raise ValueError(f"a sequence must be a 1-D integer tensor, got {s.dtype} {tuple(s.shape)}")
            return s.tolist()
        if isinstance(s, (list, tuple)) and all(isinstance(x, Integral) for x in s):
            return [int(x) for x in s]
        raise ValueError(f"a sequence must be a list of ints or a 1-D integer tensor, got {type(s).__name__}")

    if isinstance(sequences, Tensor) and sequences.dim() == 2:
        return [one(row) for row in sequences]
    if isinstance(sequences, Tensor) or (isinstance(sequences, (list, tuple))
                                         and all(isinstance(x, Integral) for x in sequences)):
        return [one(sequences)]
    if not isinstance(sequences, (list, tuple)):
        raise ValueError(f"sequences must be a sequence of ints, a tensor, or a list of them, "
                         f"got {type(sequences).__name__}")
    return [one(s) for s in sequences]


def _ngrams(sequences: IntSequences, n: int) -> list[list[tuple[int, ...]]]:
    """Each sequence's n-grams in order; ValueError when there are none at all."""
    check_int("n", n, 1)
    grams = [[tuple(s[i:i + n]) for i in range(len(s) - n + 1)] for s in _as_sequences(sequences)]
    if not any(grams):
        raise ValueError(f"no {n}-grams: every sequence is shorter than n={n}")
    return grams


def distinct_n(sequences: IntSequences, n: int) -> float:
    """Corpus-level distinct-n (Li et al. 2016): distinct n-grams / all n-grams, over every sequence
    (n-grams never cross from one sequence to the next). 1.0 = no n-gram repeats. ValueError without n-grams."""
    grams = _ngrams(sequences, n)
    return len({g for seq in grams for g in seq}) / sum(len(seq) for seq in grams)


def repeated_ngram_rate(sequences: IntSequences, n: int) -> float:
    """The fraction of n-grams that already occurred earlier in the same sequence, pooled over the
    sequences (0.0 = no repetition). ValueError without n-grams."""
    grams = _ngrams(sequences, n)
    repeated = sum(len(seq) - len(set(seq)) for seq in grams)  # every occurrence of an n-gram but its first
    return repeated / sum(len(seq) for seq in grams)


def _check_length(model: nn.Module, length: int) -> int:
    """A chunk of `length` tokens feeds length - 1 of them (the last one is only a target)."""
    block = model.config.block_size
    return check_int("length", length, 2, block + 1, f" (length - 1 tokens are fed; block_size is {block})")


def loss_by_position(model: nn.Module, ids: Tensor, length: int, *, batch_size: int = 16,
                     max_chunks: int | None = None) -> Tensor:
    """ids (N,) cut into non-overlapping chunks of `length` tokens (the first max_chunks of them), each run
    from scratch -> (length - 1,) float32: entry t is the mean NLL of predicting token t + 1 of a chunk from
    its tokens 0..t (how the loss falls as a position sees more context). Eval mode, the model's device."""
    ids = check_ids(model, ids)
    length, batch_size = _check_length(model, length), check_int("batch_size", batch_size, 1)
    n = len(ids) // length if max_chunks is None else min(len(ids) // length, check_int("max_chunks", max_chunks, 1))
    if n == 0:
        raise ValueError(f"ids hold {len(ids)} tokens, fewer than one chunk of length={length}")
    chunks = ids[:n * length].view(n, length)
    total = 0
    with evaluating(model):
        for x in chunks.split(batch_size):
            total = total + token_nll(model(x[:, :-1]), x[:, 1:]).sum(0)
    return (total / n).float()


def sliding_window_loss(model: nn.Module, ids: Tensor, length: int, *, stride: int, batch_size: int = 16,
                        max_windows: int | None = None) -> float:
    """Press et al.'s sliding-window evaluation: the mean NLL over windows ids[s : s + length] for
    s = 0, stride, 2 * stride, ... (whole windows only, the first max_windows of them). The first window counts
    all its length - 1 predictions, each later one only its last `stride` (each with at least length - stride
    tokens of context), so every target is counted once; the at most stride - 1 tokens after the last whole
    window are not scored. stride = length - 1 is plain non-overlapping evaluation."""
    ids = check_ids(model, ids)
    length, batch_size = _check_length(model, length), check_int("batch_size", batch_size, 1)
    stride = check_int("stride", stride, 1, length - 1, f" (each window of length={length} has length - 1 predictions)")
    if len(ids) < length:
        raise ValueError(f"ids hold {len(ids)} tokens, fewer than one window of length={length}")
    windows = ids.unfold(0, length, stride)
    if max_windows is not None:
        windows = windows[:check_int("max_windows", max_windows, 1)]
    counted = torch.zeros(len(windows), length - 1, dtype=torch.bool, device=ids.device)
    counted[:, -stride:] = True
    counted[0] = True
    total = 0.0
    with evaluating(model):
        for x, c in zip(windows.split(batch_size), counted.split(batch_size)):
            total += float(token_nll(model(x[:, :-1]), x[:, 1:])[c].sum())
    return total / int(counted.sum())


def attention_sink_share(weights: Tensor) -> Tensor:
    """weights (..., n_q, n_k) -> (...,): the mean over queries 1..n_q - 1 of the weight on key 0 (query 0
    can only see key 0 under a causal mask, so it says nothing and is left out)."""
    if not isinstance(weights, Tensor) or weights.dim() < 2 or weights.shape[-2] < 2 or not weights.is_floating_point():
        got = f"{weights.dtype} {tuple(weights.shape)}" if isinstance(weights, Tensor) else type(weights).__name__
        raise ValueError(f"weights must be a floating-point tensor (..., n_q >= 2, n_k), got {got}")
    return weights[..., 1:, 0].mean(-1)


def sink_heads(weights_per_layer: Sequence[Tensor] | Tensor, threshold: float = 0.3) -> Tensor:
    """Which heads are attention sinks (Gu et al., ICLR 2025): those whose mean weight on the first token,
    over queries 1.. and over the batch, exceeds `threshold` (their epsilon, 0.3).

    weights_per_layer: one (B, H, n_q, n_k) tensor per layer (GPT(..., return_attention=True)'s list), or a
    stacked (n_layer, B, H, n_q, n_k) tensor -> (n_layer, H) bool.
    """
    if not (isinstance(threshold, (int, float)) and not isinstance(threshold, bool) and 0 <= threshold <= 1):
        raise ValueError(f"threshold must be a number in [0, 1], got {threshold!r}")
    if len(weights_per_layer) == 0:
        raise ValueError("weights_per_layer is empty: expected one (B, H, n_q, n_k) tensor per layer")
    shares = []
    for i, w in enumerate(weights_per_layer):
        if not isinstance(w, Tensor) or w.dim() != 4:
            got = tuple(w.shape) if isinstance(w, Tensor) else type(w).__name__
            raise ValueError(f"weights_per_layer[{i}] must have shape (batch, heads, n_q, n_k), got {got}")
        shares.append(attention_sink_share(w).mean(0))
    return torch.stack(shares) > threshold


@dataclasses.dataclass(frozen=True)
class Measurement:
    """seconds: the best wall time of the runs; peak_bytes: the most tensor memory allocated during one run
    above what was allocated when it started (its temporaries and its result)."""

    seconds: float
    peak_bytes: int


def measure(fn: Callable[[], object], *, repeats: int = 3, warmup: int = 1,
            device: torch.device | str | None = None) -> Measurement:
    """Time fn() (best of `repeats`, after `warmup` untimed calls) and measure its peak memory in one more call.

    device: where fn allocates; by default the device of the first tensor fn returns (CPU if none).
      * CUDA: torch.cuda.max_memory_allocated after reset_peak_memory_stats, minus what was allocated before.
      * CPU: torch.profiler with profile_memory=True records every allocation and free of torch's CPU allocator
        in order; the peak of their running sum is taken. It counts the bytes tensors request, exactly
        (torch.empty(n) reads 4 n), not the allocator's padding or Python objects. The profiled call is not
        timed (profiling slows every op), and the lines kineto prints on stderr as it starts and stops are
        dropped (see _kineto_quiet).
    Other devices raise a ValueError. CUDA is synchronised around every timed call when it is in use.
    """
    if not callable(fn):
        raise ValueError(f"fn must be callable with no arguments, got {type(fn).__name__}")
    check_int("repeats", repeats, 1)
    check_int("warmup", warmup, 0)
    for _ in range(warmup):
        fn()
    best, result = math.inf, None
    for _ in range(repeats):
        _synchronize()
        start = time.perf_counter()
        result = fn()
        _synchronize()
        best = min(best, time.perf_counter() - start)
    dev = torch.device(device) if device is not None else _device_of(result)
    del result
    if dev.type == "cuda":
        return Measurement(best, _cuda_peak(fn, dev))
    if dev.type == "cpu":
        return Measurement(best, _cpu_peak(fn))
    raise ValueError(f"measure: peak memory is measured on cpu and cuda, not {dev.type}")


def _synchronize() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _device_of(result: object) -> torch.device:
    """The device of the first tensor in result (a tensor, or tuples/lists/dicts/dataclasses holding them)."""
    def first_tensor(x: object) -> Tensor | None:
        if isinstance(x, Tensor):
            return x
        if dataclasses.is_dataclass(x) and not isinstance(x, type):
            x = [getattr(x, f.name) for f in dataclasses.fields(x)]
        elif isinstance(x, dict):
            x = list(x.values())
        if not isinstance(x, (list, tuple)):
            return None
        return next((t for t in map(first_tensor, x) if t is not None), None)

    found = first_tensor(result)
    return torch.device("cpu") if found is None else found.device


def _cuda_peak(fn: Callable[[], object], device: torch.device) -> int:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def _cpu_peak(fn: Callable[[], object]) -> int:
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _kineto_quiet():
        prof.start()
    try:
        fn()
    finally:
        with _kineto_quiet():
            prof.stop()
    cpu = (DeviceType.CPU, DeviceType.MKLDNN, DeviceType.IDEEP)
    # The raw records, in the order they happened (prof.events() folds them into each op's net total).
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]" and e.device_type() in cpu]
    sizes = (e.nbytes() for e in sorted(events, key=lambda e: e.start_ns()))
    return max(itertools.accumulate(sizes, initial=0))  # the peak of their running sum


@contextlib.contextmanager
def _kineto_quiet() -> Iterator[None]:
    """File descriptor 2 sent to the null device while the profiler starts or stops, then restored.

    Kineto (torch >= 2.13) writes "USDT:<time> <pid> ... profiler_start" / "profiler_stop" to fd 2 at every
    start and stop, straight from C++ (a notebook shows it as cell output), and only KINETO_LOG_LEVEL read once
    per process turns that off. fn itself runs with stderr untouched.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
