"""What every measurement over a language model needs: checked ids, eval mode for a while, per-token NLL."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


def check_ids(model: nn.Module, ids: Tensor, *, min_len: int = 2) -> Tensor:
    """A 1-D integer tensor of at least min_len token ids in the model's vocabulary, on the model's device."""
    if not isinstance(ids, Tensor) or ids.dim() != 1 or ids.is_floating_point() or ids.is_complex():
        got = f"{ids.dtype} {tuple(ids.shape)}" if isinstance(ids, Tensor) else type(ids).__name__
        raise ValueError(f"ids must be a 1-D tensor of integer token ids, got {got}")
    if len(ids) < min_len:
        raise ValueError(f"ids must hold at least {min_len} tokens, got {len(ids)}")
    model.transformer.check_token_ids(ids)
    return ids.to(device=next(model.parameters()).device, dtype=torch.long)


def check_int(name: str, value: int, low: int, high: int | None = None, why: str = "") -> int:
    """value itself, or a ValueError naming `name` unless it is an int in [low, high]."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low and (high is None or value <= high)
    if not ok:
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be an int {bounds}{why}, got {value!r}")
    return value


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """The model in eval mode (no dropout) under torch.inference_mode; its previous mode comes back after."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def token_nll(logits: Tensor, targets: Tensor) -> Tensor:
    """logits (..., V), targets (...) -> NLL (...) in natural log, in float32 or the logits' wider dtype."""
    work = torch.promote_types(logits.dtype, torch.float32)
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).to(work), targets.reshape(-1), reduction="none")
    return nll.view(targets.shape)
