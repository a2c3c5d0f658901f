"""bloomlib.course.masked: masked cells of an attention heatmap in their own colour, checked against torch's
own triangular mask and matplotlib's colour map (a masked cell's colour is none that viridis gives a weight)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.colors as mcolors  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from bloomlib.course.masked import MASKED_COLOUR, plot_masked_attention  # noqa: E402


def _causal_weights(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    mask = torch.ones(n, n, dtype=torch.bool).tril()
    scores = torch.randn(n, n, generator=torch.Generator().manual_seed(0)).masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1), mask


def test_masked_cells_are_exactly_the_hidden_keys_and_carry_no_number():
    weights, mask = _causal_weights(5)
    ax = plot_masked_attention(weights, mask, list("abcde"), "causal")
    expected = sorted(zip(*np.triu_indices(5, k=1)))  # numpy's upper triangle = the keys a causal mask hides
    assert sorted(ax.masked_cells) == [tuple(map(int, p)) for p in expected]
    written = {(round(t.get_position()[1]), round(t.get_position()[0])) for t in ax.texts}
    assert written == {(i, j) for i in range(5) for j in range(i + 1)}  # numbers only in the 15 visible cells
    assert [p.get_label() for p in ax.get_legend().get_patches()] == ["masked (hidden key)"]
    plt.close("all")


def test_masked_colour_is_not_a_colour_the_weights_can_take():
    grey = np.array(mcolors.to_rgb(MASKED_COLOUR))
    viridis = plt.get_cmap("viridis")(np.linspace(0, 1, 256))[:, :3]
    assert np.abs(viridis - grey).sum(axis=1).min() > 0.3


def test_no_mask_draws_no_patch_and_no_legend():
    weights, _ = _causal_weights(3)
    ax = plot_masked_attention(weights, torch.ones(3, 3), list("abc"), "full")
    assert ax.masked_cells == [] and ax.get_legend() is None and len(ax.texts) == 9
    plt.close("all")


@pytest.mark.parametrize("mask, words", [(torch.ones(3, 4, dtype=torch.bool), "shape of the weights"),
                                         (torch.full((3, 3), 2.0), "boolean or 0/1")])
def test_bad_mask_is_a_value_error(mask, words):
    weights, _ = _causal_weights(3)
    with pytest.raises(ValueError, match=words):
        plot_masked_attention(weights, mask, list("abc"), "bad")
