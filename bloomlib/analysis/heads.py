"""How spread out each attention head is: entropy of its weights, against a head that spreads evenly.

A query row of attention weights is a probability distribution over the keys it may see. Its entropy
(nats) is 0 when the row puts all its weight on one key and log(n) when it spreads evenly over n visible keys,
so entropy / log(n) in [0, 1] compares heads whatever their context length or mask:

    att = attention_weights(model, ids)          # per layer (B, H, T, T), the model's own need_weights path
    table = classify_heads(att)                  # [{"layer", "head", "entropy", "normalized", "label"}, ...]

Masked weights are exact zeros (0 * log 0 = 0), so a causal query i sees i + 1 keys, a padded key none.
A softmax can also underflow to an exact 0 on a key it was allowed to see; pass the model's mask to
`uniform_entropy` / `normalized_entropy` / `classify_heads` when that matters (it adds to the count of
visible keys, never to the entropy).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from torch import Tensor

from bloomlib.analysis._lm import evaluating

# Defaults of classify_heads, measured on the course's models (see the Lesson 05 notebook and tests/test_heads.py):
# near-uniform heads (kv-recall layer 0, several MiniLM layer-0 heads) measure 0.90-0.93 and an exactly uniform
# head 1.0; heads with a known one-key job measure far below 0.3 (MiniLM's previous-token head 0.00, its
# next-token head 0.26, the kv-recall head that reads the queried value 0.19-0.24 on the query row).
UNIFORM_ABOVE = 0.9
SHARP_BELOW = 0.3


def check_weights(weights: Tensor, name: str = "weights") -> Tensor:
    """weights (..., n_q, n_k) itself, or a ValueError unless every row is a probability distribution:
    a float tensor, entries finite and >= 0, each row summing to 1 (within 1e-3; 1e-2 for 16-bit dtypes) or
    all zero (a query with nothing visible, which the course's attention gives zero weights)."""
    if not isinstance(weights, Tensor) or not weights.is_floating_point() or weights.dim() < 2:
        got = f"{weights.dtype} {tuple(weights.shape)}" if isinstance(weights, Tensor) else type(weights).__name__
        raise ValueError(f"{name} must be a floating-point tensor of shape (..., n_queries, n_keys), got {got}")
    if weights.shape[-1] == 0:
        raise ValueError(f"{name} has no keys (shape {tuple(weights.shape)})")
    if not bool(torch.isfinite(weights).all()):
        raise ValueError(f"{name} holds NaN or infinite values")
    if bool((weights < 0).any()):
        raise ValueError(f"{name} holds negative values ({float(weights.min()):.3g}): not a probability distribution")
    sums = weights.sum(-1, dtype=torch.float64)
    bad = ((sums - 1).abs() > (1e-2 if torch.finfo(weights.dtype).bits <= 16 else 1e-3)) & (sums != 0)
    if bool(bad.any()):
        worst = float(sums[bad][(sums[bad] - 1).abs().argmax()])
        raise ValueError(f"{name}: {int(bad.sum())} rows do not sum to 1 (one sums to {worst:.6g}); rows must be "
                         "probability distributions over the keys (or all zero for a query that sees nothing)")
    return weights


def _visible(weights_or_mask: Tensor, mask: Tensor | None = None) -> Tensor:
    """(..., n_q, n_k) bool: the keys each query may see (nonzero weights, or the given boolean mask)."""
    if weights_or_mask.dtype != torch.bool:
        weights_or_mask = check_weights(weights_or_mask, "weights_or_mask") != 0
    if mask is None:
        return weights_or_mask
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        got = f"{mask.dtype}" if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"mask must be a boolean tensor (True = may attend), got {got}")
    try:
        shape = torch.broadcast_shapes(mask.shape, weights_or_mask.shape)
    except RuntimeError:
        shape = None
    if shape != weights_or_mask.shape:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to the weights' "
                         f"{tuple(weights_or_mask.shape)}")
    return mask.expand(shape) | weights_or_mask


def _ratio(h: Tensor, u: Tensor) -> Tensor:
    """h / u clamped to [0, 1], and 0 where u is 0 (no query had a choice)."""
    return torch.where(u > 0, h / u.clamp(min=torch.finfo(u.dtype).tiny), torch.zeros_like(h)).clamp(0, 1)


def head_entropy(weights: Tensor) -> Tensor:
    """weights (..., n_q, n_k) -> (...,): the mean over the n_q queries of each row's entropy in nats
    (0 * log 0 = 0: masked keys add nothing). float32, or float64 for float64 weights. ValueError unless the rows
    are probability distributions (see check_weights)."""
    w = check_weights(weights)
    w = w.to(torch.promote_types(w.dtype, torch.float32))
    row_entropy = -(w * torch.where(w > 0, w, torch.ones_like(w)).log()).sum(-1)  # a zero weight takes log 1: adds 0
    return row_entropy.mean(-1)


def uniform_entropy(weights_or_mask: Tensor, mask: Tensor | None = None) -> Tensor:
    """(..., n_q, n_k) weights or a boolean mask (True = may attend) -> (...,): the mean over queries of log(number
    of visible keys), the entropy of a head that spreads evenly over what each query may see (a query that sees
    nothing counts 0). With weights, visible = nonzero, or also True in `mask` (broadcastable) when given."""
    if not isinstance(weights_or_mask, Tensor) or weights_or_mask.dim() < 2:
        got = tuple(weights_or_mask.shape) if isinstance(weights_or_mask, Tensor) else type(weights_or_mask).__name__
        raise ValueError(f"weights_or_mask must be a tensor of shape (..., n_queries, n_keys), got {got}")
    dtype = torch.promote_types(weights_or_mask.dtype, torch.float32)  # float32 for a boolean mask
    n = _visible(weights_or_mask, mask).sum(-1).clamp(min=1)
    return n.to(dtype).log().mean(-1)


def normalized_entropy(weights: Tensor, mask: Tensor | None = None) -> Tensor:
    """weights (..., n_q, n_k) -> (...,) in [0, 1]: head_entropy / uniform_entropy. 0 = every query on one key,
    1 = spread evenly over every visible key.

    Rows with at most one visible key (a causal query 0) have entropy 0 and log(1) = 0: they add 0 to both
    means, so the ratio is that of the rows that had a choice, each weighted by its own log(n_visible) (a ratio of
    means, not a mean of per-row ratios). A head none of whose queries had a choice gets 0."""
    return _ratio(head_entropy(weights), uniform_entropy(weights, mask))


def classify_heads(weights_per_layer: Sequence[Tensor], *, uniform_above: float = UNIFORM_ABOVE,
                   sharp_below: float = SHARP_BELOW, mask: Tensor | None = None) -> list[dict]:
    """Label every head of every layer by its normalized entropy.

    weights_per_layer: one (B, H, n_q, n_k) tensor per layer (attention_weights' list), or them stacked
    (n_layer, B, H, n_q, n_k) as for metrics.sink_heads. mask: optional boolean
    (True = may attend), broadcastable to each layer's weights. Returns one dict per (layer, head), in order:
    {"layer", "head", "entropy" (nats, mean over batch and queries), "normalized" (over batch and queries as in
    normalized_entropy), "label"}: "uniform" when normalized >= uniform_above (the head barely prefers any key),
    "sharp" when normalized < sharp_below (nearly one key per query), else "mixed".
    The defaults (0.9, 0.3) are set from measured heads; see UNIFORM_ABOVE / SHARP_BELOW.
    """
    for name, value in (("uniform_above", uniform_above), ("sharp_below", sharp_below)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    if sharp_below > uniform_above:
        raise ValueError(f"sharp_below={sharp_below} must not exceed uniform_above={uniform_above}")
    if isinstance(weights_per_layer, Tensor) and weights_per_layer.dim() == 5:
        weights_per_layer = list(weights_per_layer)
    if isinstance(weights_per_layer, Tensor) or len(weights_per_layer) == 0:
        raise ValueError("weights_per_layer must be a non-empty list of (batch, heads, n_q, n_k) tensors, one per "
                         "layer, or them stacked (n_layer, batch, heads, n_q, n_k)")
    rows = []
    for layer, w in enumerate(weights_per_layer):
        if not isinstance(w, Tensor) or w.dim() != 4:
            got = tuple(w.shape) if isinstance(w, Tensor) else type(w).__name__
            raise ValueError(f"weights_per_layer[{layer}] must have shape (batch, heads, n_q, n_k), got {got}")
        h = head_entropy(w).mean(0)                          # (H,): every batch row has n_q queries
        u = uniform_entropy(w, mask).mean(0)
        norm = _ratio(h, u)
        for head, (e, n) in enumerate(zip(h.tolist(), norm.tolist())):
            label = "uniform" if n >= uniform_above else "sharp" if n < sharp_below else "mixed"
            rows.append({"layer": layer, "head": head, "entropy": e, "normalized": n, "label": label})
    return rows


def attention_weights(model: nn.Module, ids: Tensor, *, attention_mask: Tensor | None = None) -> list[Tensor]:
    """The model's own attention weights: `model(ids, return_attention=True)` (the path the lessons use, which
    computes weights with the step-by-step math) in eval mode without gradients.

    model: a bloomlib GPT or Encoder (e.g. interop.pretrained.minilm()'s). ids: (T,) or (B, T) token ids.
    attention_mask (Encoder only): (B, T) 1 = real token, 0 = padding. Returns one (B, H, T, T) tensor per
    layer, B = 1 for 1-D ids: the (1, H, T, T) list bloomlib.course.viz.head_view / model_view take.
    """
    from bloomlib.encoder import Encoder
    from bloomlib.model import GPT

    if not isinstance(model, (GPT, Encoder)):
        raise ValueError(f"model must be a bloomlib GPT or Encoder, got {type(model).__name__}")
    if not isinstance(ids, Tensor) or ids.dim() not in (1, 2) or ids.is_floating_point() or ids.is_complex():
        got = f"{ids.dtype} {tuple(ids.shape)}" if isinstance(ids, Tensor) else type(ids).__name__
        raise ValueError(f"ids must be integer token ids of shape (T,) or (batch, T), got {got}")
    ids = (ids[None] if ids.dim() == 1 else ids).to(device=next(model.parameters()).device, dtype=torch.long)
    kwargs = {}
    if attention_mask is not None:
        if not isinstance(model, Encoder):
            raise ValueError("attention_mask is for an Encoder (padding); a GPT's causal mask is built in")
        if not isinstance(attention_mask, Tensor):
            raise ValueError(f"attention_mask must be a (batch, T) tensor, got {type(attention_mask).__name__}")
        mask = attention_mask[None] if attention_mask.dim() == 1 else attention_mask
        kwargs["attention_mask"] = mask.to(ids.device)
    with evaluating(model):
        _, weights = model(ids, return_attention=True, **kwargs)
    return [w.clone() for w in weights]  # ordinary tensors (inference_mode's are read-only outside it)


def strongest_head(weights_per_layer: Sequence[Tensor], pairs: Sequence[tuple[int, int]]) -> tuple[int, int, float]:
    """(layer, head, weight): the head whose weight from query q to key k, averaged over the (q, k) `pairs`, is the
    largest (the first such head in layer-then-head order on a tie). weights_per_layer: one (1, H, T, T) tensor per
    layer (attention_weights' list for one sequence), or them stacked (n_layer, 1, H, T, T)."""
    if isinstance(weights_per_layer, Tensor) and weights_per_layer.dim() == 5:
        weights_per_layer = list(weights_per_layer)
    if isinstance(weights_per_layer, Tensor) or len(weights_per_layer) == 0:
        raise ValueError("weights_per_layer must be a non-empty list of (1, heads, T, T) tensors, one per layer")
    shapes = {tuple(w.shape) if isinstance(w, Tensor) else None for w in weights_per_layer}
    shape = shapes.pop() if len(shapes) == 1 else None
    if shape is None or len(shape) != 4 or shape[0] != 1 or shape[2] != shape[3]:
        raise ValueError(f"every layer's weights must have one shape (1, heads, T, T), got {sorted(map(str, shapes | {shape}))}")
    pairs = [tuple(p) for p in pairs]
    T = shape[-1]
    if not pairs or any(len(p) != 2 or not all(isinstance(i, int) and -T <= i < T for i in p) for p in pairs):
        raise ValueError(f"pairs must be a non-empty list of (query, key) token indices below T={T}, got {pairs}")
    stacked = torch.stack([w[0] for w in weights_per_layer])          # (layers, H, T, T)
    q, k = torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])
    mean = stacked[:, :, q, k].mean(-1)                                 # (layers, H)
    layer, head = divmod(int(mean.flatten().argmax()), mean.shape[1])
    return layer, head, float(mean[layer, head])
