"""Measurements of emergence and in-context learning (the Evaluate lesson).

- Schaeffer et al. 2023 ("Are emergent abilities a mirage?"): `addition_accuracy` scores multi-digit addition
  per answer digit and by exact match; with L answer digits each right with probability p, exact match is about
  p ** L, so a smooth rise of p reads as a sudden jump of exact match.
- Olsson et al. 2022 (induction heads): `prefix_matching_score` and `previous_token_score` find the two heads of
  the induction circuit in attention weights over a repeated random block; `in_context_score` is their measure
  of in-context learning (late loss minus early loss) over `per_position_loss`; `phase_change` finds the plateau
  and sudden drop of a training loss curve that come with induction heads forming.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from torch import Tensor

from bloomlib.analysis._lm import check_int, evaluating
from bloomlib.analysis.metrics import loss_by_position
from bloomlib.training.data import IGNORE, TaskBatch, addition_task


def addition_accuracy(model: nn.Module, n_digits: int, *, n_samples: int = 1000, seed: int = 0,
                      reverse_answer: bool = False) -> dict:
    """Accuracy of `model` (a GPT trained on data.addition_task) on n_samples fresh sums of two n_digits numbers.

    The n_digits + 1 answer digits are decoded greedily (model.generate at temperature 0): each digit is predicted
    after the model's own earlier digits, as when it answers for real, so exact match is the honest "it can add".
    reverse_answer must be what the model trained with (the sum least-significant digit first).
    Returns {"exact_match": fraction of sums with every digit right, "per_digit": fraction of answer digits right,
    "per_position": [fraction right at answer position k, in the order generated], "n_samples": n_samples}.
    """
    check_int("n_digits", n_digits, 1, 18)
    check_int("n_samples", n_samples, 1)
    check_int("seed", seed, 0)
    if not isinstance(reverse_answer, bool):
        raise ValueError(f"reverse_answer must be a bool, got {reverse_answer!r}")
    config = model.config
    need = 3 * n_digits + 2  # the prompt (2 n + 2 tokens) and the first n answer digits are fed
    if config.vocab_size < 12 or config.block_size < need:
        raise ValueError(f"model: {n_digits}-digit addition needs vocab_size >= 12 and block_size >= {need}, "
                         f"got {config.vocab_size} and {config.block_size}")
    batch = addition_task(n_samples, n_digits, reverse_answer, generator=torch.Generator().manual_seed(seed))
    with evaluating(model):
        out = model.generate(batch.prompts.to(next(model.parameters()).device), n_digits + 1, temperature=0.0)
    right = (out[:, batch.prompt_len:].cpu() == batch.answers).double()  # (N, n + 1)
    return {"exact_match": right.prod(1).mean().item(), "per_digit": right.mean().item(),
            "per_position": right.mean(0).tolist(), "n_samples": n_samples}


def _check_weights(weights: Tensor, min_len: int) -> int:
    """weights (..., T, T) of one causal pass over T >= min_len tokens -> T."""
    ok = isinstance(weights, Tensor) and weights.is_floating_point() and weights.dim() >= 2
    if not ok or weights.shape[-1] != weights.shape[-2] or weights.shape[-1] < min_len:
        got = f"{weights.dtype} {tuple(weights.shape)}" if isinstance(weights, Tensor) else type(weights).__name__
        raise ValueError(f"weights must be a floating-point tensor (..., T, T) with T >= {min_len}, got {got}")
    return weights.shape[-1]


def prefix_matching_score(weights: Tensor, block_len: int) -> Tensor:
    """weights (..., T, T) over a sequence made of a random block of block_len tokens repeated -> (...,): the mean,
    over the queries i >= block_len (those in a repeat), of the weight on key i - block_len + 1, the token right
    after the query's previous copy: what an induction head attends to (1 for a perfect one)."""
    check_int("block_len", block_len, 1)
    T = _check_weights(weights, block_len + 1)
    i = torch.arange(block_len, T, device=weights.device)
    return weights[..., i, i - block_len + 1].mean(-1)


def previous_token_score(weights: Tensor) -> Tensor:
    """weights (..., T, T) -> (...,): the mean over queries i >= 1 of the weight on key i - 1 (the previous token),
    high on the earlier-layer head whose output an induction head's keys read."""
    T = _check_weights(weights, 2)
    i = torch.arange(1, T, device=weights.device)
    return weights[..., i, i - 1].mean(-1)


def per_position_loss(model: nn.Module, batch: TaskBatch, *, batch_size: int = 16) -> Tensor:
    """The mean NLL at each input position of a TaskBatch whose every target is the next token (e.g.
    data.repeated_tokens_task's) -> (T,) float32, T = batch.inputs.shape[1]: loss_by_position over its sequences."""
    if not isinstance(batch, TaskBatch):
        raise ValueError(f"batch must be a TaskBatch, got {type(batch).__name__}")
    if (batch.targets == IGNORE).any() or not torch.equal(batch.inputs[:, 1:], batch.targets[:, :-1]):
        raise ValueError(f"batch ({batch.name}) must hold whole sequences: every target the next input token")
    seqs = torch.cat([batch.inputs, batch.targets[:, -1:]], dim=1)  # (N, T + 1)
    return loss_by_position(model, seqs.flatten(), seqs.shape[1], batch_size=batch_size)


def in_context_score(losses: Tensor, early: int, late: int) -> float:
    """Olsson et al.'s in-context learning score: losses[late] - losses[early] (their tokens 500 and 50), from a
    1-D per-position loss; negative means later tokens, which see more context, are predicted better."""
    if not isinstance(losses, Tensor) or losses.dim() != 1 or not losses.is_floating_point():
        got = f"{losses.dtype} {tuple(losses.shape)}" if isinstance(losses, Tensor) else type(losses).__name__
        raise ValueError(f"losses must be a 1-D floating-point tensor (one loss per position), got {got}")
    check_int("early", early, 0, len(losses) - 2, f" (losses has {len(losses)} positions)")
    check_int("late", late, early + 1, len(losses) - 1, f" (after early={early}; losses has {len(losses)} positions)")
    return float(losses[late] - losses[early])


def phase_change(steps: Sequence[int], losses: Sequence[float], window: int) -> dict:
    """The sharpest fall of a loss curve: the largest drop losses(s) - losses(s') over recorded steps s < s' at most
    `window` steps apart (the earliest such pair on a tie), and how flat the curve was in the window before s.

    steps: increasing training steps of the recorded losses (e.g. a zoo checkpoint's meta["history"]).
    Returns {"start": s, "end": s', "drop": nats lost from s to s' (negative if the loss only rose),
    "plateau": max - min of the losses recorded at steps in [s - window, s] (small: a plateau before the fall)}.
    """
    steps, losses = [int(s) for s in steps], [float(v) for v in losses]
    if len(steps) != len(losses) or len(steps) < 2 or any(b <= a for a, b in zip(steps, steps[1:])):
        raise ValueError(f"steps must increase and match losses, at least 2 of each; got {len(steps)} steps, "
                         f"{len(losses)} losses")
    check_int("window", window, 1)
    pairs = [(a, b) for a in range(len(steps)) for b in range(a + 1, len(steps)) if steps[b] - steps[a] <= window]
    if not pairs:
        raise ValueError(f"window={window} is shorter than every gap between recorded steps")
    a, b = max(pairs, key=lambda p: (losses[p[0]] - losses[p[1]], -p[0], -p[1]))
    before = [v for s, v in zip(steps, losses) if steps[a] - window <= s <= steps[a]]
    return {"start": steps[a], "end": steps[b], "drop": losses[a] - losses[b], "plateau": max(before) - min(before)}
