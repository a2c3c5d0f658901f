"""StreamingLLM (Xiao et al. 2023) made concrete: a rolling KV cache with attention sinks, and the per-token
losses that compare it with a dense forward and with the sliding window that recomputes every step.

RollingKVCache is a third cache behind the model's cache interface (after bloomlib.KVCache and the engine's
PagedKVCache): the model's own blocks run over it, and it only decides which keys are kept and where they sit.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from torch import Tensor

from bloomlib.analysis._lm import check_ids, check_int, evaluating, token_nll
from bloomlib.attention import AttentionLayout
from bloomlib.device import small_step_mode

# Why a model whose keys carry their position cannot have its kept keys moved to new positions.
_POSITIONED_KEYS = {
    "rope": "its keys are cached already rotated at the position they were fed at, so moving a kept key to its "
            "in-cache position would need rotating it again",
    "learned": "its positions are added to the input embeddings, so every cached key carries the position it was "
               "fed at and cannot be moved to its in-cache position",
}
_POSITIONED_KEYS["sinusoidal"] = _POSITIONED_KEYS["learned"]


@dataclass
class _Step:
    """One forward's plan, made by `positions` and applied by every layer's `attend`."""

    evict: int                # tokens dropped right after the sinks before the new ones are appended
    layout: AttentionLayout   # in-cache positions of the new queries and of every key they read
    kept: Tensor              # stream index of each token the cache holds after this step
    done: list[bool]          # which layers have stored their keys


class RollingKVCache:
    """Keeps at most `window` tokens: the first `n_sink` ever fed (attention sinks) and the most recent
    `window - n_sink`; the token right after the sinks is evicted when a new one needs room.

    Positions are assigned within the cache, as StreamingLLM does: the kept tokens sit at 0, 1, ... in the order
    they were fed and the new ones right after, so positions stay below `window` however long the stream is.
    Only models whose keys do not depend on position qualify (pos_encoding "alibi" or "none"; see `for_model`):
    ALiBi's bias and causality are then applied at the in-cache positions by the model's own `attend`.

    Feeding: one token per forward always works (old tokens are evicted as needed). Several tokens at once (a
    prompt) work while they fit with the kept ones: length + T <= window; a chunk that would need eviction raises
    a ValueError (its queries would each need a different set of kept keys), so feed the rest one at a time.
    """

    def __init__(self, n_layers: int, window: int, n_sink: int = 0) -> None:
        self.n_layers = check_int("n_layers", n_layers, 1)
        self.window = check_int("window", window, 1)
        self.n_sink = check_int("n_sink", n_sink, 0, window - 1, " (window > n_sink leaves room for recent tokens)")
        self._k: list[Tensor | None] = [None] * n_layers
        self._v: list[Tensor | None] = [None] * n_layers
        self._kept = torch.zeros(0, dtype=torch.long)
        self._fed = 0
        self._step: _Step | None = None

    @classmethod
    def for_model(cls, model: nn.Module, window: int, n_sink: int = 0) -> "RollingKVCache":
        """A cache for a GPT whose keys do not depend on position; ValueError for the others, saying why."""
        config = model.config
        if config.pos_encoding in _POSITIONED_KEYS:
            raise ValueError(f"RollingKVCache re-positions kept keys, so it needs keys that do not depend on their "
                             f"position (pos_encoding 'alibi' or 'none'); this model's pos_encoding is "
                             f"{config.pos_encoding!r}: {_POSITIONED_KEYS[config.pos_encoding]}")
        check_int("window", window, 1, config.block_size, f" (the model's block_size is {config.block_size})")
        return cls(config.n_layer, window, n_sink)

    @property
    def length(self) -> int:
        """How many tokens the cache holds."""
        return len(self._kept)

    @property
    def n_fed(self) -> int:
        """How many tokens were ever fed."""
        return self._fed

    @property
    def kept(self) -> Tensor:
        """(length,) the stream index (0 = the first token fed) of each token held, in the order they were fed."""
        return self._kept.clone()

    def positions(self, T: int, device: torch.device | str | None = None) -> tuple[Tensor, int]:
        """Where the next T tokens sit: right after the kept ones (evicting first when one token needs room)."""
        check_int("T", T, 1)
        evict = max(0, self.length + T - self.window)
        if evict and T > 1:
            raise ValueError(f"RollingKVCache: {T} tokens do not fit next to the {self.length} kept ones in a "
                             f"window of {self.window}; feed at most {self.window - self.length} at once, or one "
                             f"at a time (each token then evicts the oldest non-sink one)")
        start = self.length - evict
        q_pos, k_pos = torch.arange(start, start + T, device=device), torch.arange(start + T, device=device)
        s = self.n_sink
        kept = torch.cat([self._kept[:s], self._kept[s + evict:], torch.arange(self._fed, self._fed + T)])
        layout = AttentionLayout(q_pos[None], k_pos, torch.tensor([start + T], device=device))
        self._step = _Step(evict, layout, kept, [False] * self.n_layers)
        return q_pos, start + T

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor, attend) -> tuple[Tensor, Tensor | None]:
        """Evict, append the new k, v (B, H_kv, T, D), then `attend(q, k_kept, v_kept, layout=...)`."""
        step = self._step
        if step is None or step.done[layer]:
            raise ValueError("RollingKVCache: positions(T) lays out each forward and must come before every "
                             "layer's attend (run the model over the cache)")
        k_all, v_all = self._store(layer, k, v, step.evict)
        step.done[layer] = True
        if all(step.done):  # the step is complete: only now does the bookkeeping move on
            self._kept, self._fed, self._step = step.kept, self._fed + k.shape[2], None
        return attend(q, k_all, v_all, layout=step.layout)

    def _store(self, layer: int, k: Tensor, v: Tensor, evict: int) -> tuple[Tensor, Tensor]:
        old_k, old_v = self._k[layer], self._v[layer]
        if old_k is not None:
            if old_k.shape[0] != k.shape[0]:
                raise ValueError(f"RollingKVCache holds a batch of {old_k.shape[0]}, got keys {tuple(k.shape)}")
            if evict:
                s = self.n_sink
                old_k, old_v = (torch.cat([t[:, :, :s], t[:, :, s + evict:]], dim=2) for t in (old_k, old_v))
            k, v = torch.cat([old_k, k], dim=2), torch.cat([old_v, v], dim=2)
        self._k[layer], self._v[layer] = k, v
        return k, v


def streaming_nll(model: nn.Module, ids: Tensor, *, window: int, n_sink: int = 0,
                  progress: bool = False) -> Tensor:
    """ids (N,) fed one token at a time through a RollingKVCache -> (N - 1,) float32: entry t is the NLL
    (natural log) of ids[t + 1] given what the cache held after ids[t]. The model must take the cache
    (pos_encoding "alibi" or "none"); runs in eval mode, in the model's dtype and on its device."""
    ids = check_ids(model, ids)
    cache = RollingKVCache.for_model(model, window, n_sink)
    nll = torch.empty(len(ids) - 1, device=ids.device)
    steps = range(len(ids) - 1)
    if progress:
        from tqdm.auto import tqdm
        steps = tqdm(steps, desc="streaming", mininterval=1.0)
    with evaluating(model), small_step_mode():  # a loop of one-token steps
        for t in steps:
            logits = model(ids[None, t:t + 1], kv_cache=cache)[0, -1]
            nll[t] = token_nll(logits, ids[t + 1])
    return nll


def dense_nll(model: nn.Module, ids: Tensor) -> Tensor:
    """ids (N,) with N <= block_size, one forward and no eviction -> (N - 1,) float32 NLL of ids[1:]."""
    ids = check_ids(model, ids)
    block = model.config.block_size
    if len(ids) > block:
        raise ValueError(f"dense_nll runs one forward: {len(ids)} ids do not fit the context window "
                         f"(block_size={block}); use streaming_nll or sliding_recompute_nll")
    with evaluating(model):
        return token_nll(model(ids[None])[0, :-1], ids[1:]).float()


def sliding_recompute_nll(model: nn.Module, ids: Tensor, *, window: int, batch_size: int = 1) -> Tensor:
    """ids (N,) -> (N - 1,) float32: entry t is the NLL of ids[t + 1] from a forward, from scratch, over
    ids[max(0, t - window + 1) : t + 1] (token t and the window - 1 before it), at positions 0, 1, ...

    The slow baseline of StreamingLLM (every step recomputes window tokens). The first window's predictions
    come from one causal forward over ids[:window] (each sees exactly its prefix); the later windows run
    batch_size at a time (1, the default, times the per-token cost honestly). Any pos_encoding works.
    """
    ids = check_ids(model, ids)
    window = check_int("window", window, 1, model.config.block_size,
                       f" (the model's block_size is {model.config.block_size})")
    batch_size = check_int("batch_size", batch_size, 1)
    n = len(ids)
    head = min(window, n - 1)
    with evaluating(model):
        nll = [token_nll(model(ids[None, :head])[0], ids[1:head + 1])]
        targets = ids[window + 1:]  # ids[t + 1] for t >= window, each after the window ids[t - window + 1 : t + 1]
        windows = ids[1:n - 1].unfold(0, window, 1) if len(targets) else None
        for b in range(0, len(targets), batch_size):
            logits = model(windows[b:b + batch_size])[:, -1]
            nll.append(token_nll(logits, targets[b:b + batch_size]))
    return torch.cat(nll).float()
