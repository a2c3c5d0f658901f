"""Attention heatmaps whose masked cells stand apart: the cells a mask hides are drawn in the explorer's flat grey,
a colour the heatmap's colour map never uses, with no number written in them, and a legend entry says what they are.

    ax = plot_masked_attention(weights, mask, tokens, "Causal self-attention")   # mask: True = may attend
"""
from __future__ import annotations

from typing import Sequence

import torch

from bloomlib.course.explorer import MASKED as MASKED_COLOUR  # the explorer's grey (outside viridis)
from bloomlib.course.viz import plot_attention

MASKED_HATCH = "////"  # hatched as well, so a masked cell also stands apart in grey-scale print


def plot_masked_attention(weights, mask, tokens: Sequence[str], title: str, *, ax=None,
                          annotate: bool | None = None, value_label: str = "attention weight"):
    """`plot_attention` of one (n_q, n_k) matrix, with the cells where `mask` is False (hidden keys) drawn as flat,
    hatched grey patches carrying no number. `mask`: bool or 0/1, (n_q, n_k), True/1 = may attend (the course's
    convention). Returns the Axes; its `masked_cells` attribute lists the (query, key) pairs drawn as masked."""
    import matplotlib.patches as mpatches

    w = torch.as_tensor(weights).detach().float().cpu()
    m = torch.as_tensor(mask).detach().cpu()
    if m.dtype != torch.bool:
        if not ((m == 0) | (m == 1)).all():
            raise ValueError("mask must be boolean or 0/1 (True/1 = may attend), got other values")
        m = m.bool()
    if m.shape != w.shape:
        raise ValueError(f"mask must have the shape of the weights {tuple(w.shape)}, got {tuple(m.shape)}")
    ax = plot_attention(w, tokens, title, ax=ax, annotate=annotate, value_label=value_label)
    hidden = [(i, j) for i, j in (~m).nonzero().tolist()]
    for i, j in hidden:
        ax.add_patch(mpatches.Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor=MASKED_COLOUR, hatch=MASKED_HATCH,
                                        edgecolor="white", linewidth=0.5, zorder=2))
    for text in list(ax.texts):  # no weight written in a masked cell
        x, y = text.get_position()
        if (round(y), round(x)) in set(hidden):
            text.remove()
    if hidden:
        ax.legend(handles=[mpatches.Patch(facecolor=MASKED_COLOUR, hatch=MASKED_HATCH, edgecolor="0.5",
                                          label="masked (hidden key)")],
                  loc="upper left", bbox_to_anchor=(0.0, -0.25 if len(tokens) < 10 else -0.15), frameon=False)
    ax.masked_cells = hidden
    return ax
