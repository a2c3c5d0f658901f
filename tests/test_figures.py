"""bloomlib.course.figures: architecture figures drawn from a GPTConfig, checked against the modules that
bloomlib.blocks.Block and bloomlib.GPT really build, and displayed with their alt text where JupyterLab and
nbconvert read it."""
from __future__ import annotations

import base64
import dataclasses
import html
import io
import re
import warnings

import matplotlib
import matplotlib.style
import pytest
import torch

matplotlib.use("Agg")

from matplotlib.colors import to_rgba  # noqa: E402
from matplotlib.patches import Circle, FancyBboxPatch, Rectangle  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from bloomlib import GPT, GPTConfig  # noqa: E402
from bloomlib.blocks import Block  # noqa: E402
from bloomlib.course import AccessibleFigure, architecture_figure, with_alt_text  # noqa: E402
from bloomlib.course import figures  # noqa: E402

CONFIGS = {
    "course": GPTConfig.preset("course"),
    "gpt2": GPTConfig.preset("gpt2"),
    "llama-7b-gqa": GPTConfig.preset("llama-7b", n_kv_head=8),
    "bert-base": GPTConfig.preset("bert-base"),
    "mistral-7b": GPTConfig.preset("mistral-7b"),
    "attention-only-alibi": GPTConfig.preset("tiny", ffn="none", pos_encoding="alibi", n_kv_head=1),
    "sinusoidal-relu-post": GPTConfig.preset("tiny", pos_encoding="sinusoidal", ffn="relu", prenorm=False,
                                             final_norm=False, embed_norm=True, tie_weights=False),
}
CAUSAL = [k for k, c in CONFIGS.items() if c.causal]
PALETTE = [to_rgba(c) for c in matplotlib.style.library["tableau-colorblind10"]["axes.prop_cycle"].by_key()["color"]]


def _texts(fig) -> list[Text]:
    return [t for t in fig.findobj(Text) if t.get_text().strip()]


def _labels(fig) -> list[str]:
    return [t.get_text() for t in _texts(fig)]


def _meta(cls, *args):
    with torch.device("meta"):  # the module structure without allocating 7B parameters
        return cls(*args)


def _in_order(fig, labels: list[str]) -> list[str]:
    """The given labels as drawn, top to bottom (by the y of their Text)."""
    found = [(t.get_position()[1], t.get_text()) for t in _texts(fig) if t.get_text() in labels]
    return [text for _, text in sorted(found, reverse=True)]


@pytest.mark.parametrize("name", CONFIGS)
def test_block_labels_name_what_block_builds(name):
    config = CONFIGS[name]
    block = _meta(Block, config)
    result = architecture_figure("block", config=config)
    labels, alt = _labels(result.figure), result.alt_text
    norms = [type(m).__name__ for m in (block.norm1, block.norm2) if m is not None]  # torch's class names
    assert sum(label == norms[0] for label in labels) == len(norms)
    assert norms[0] in alt
    other = {"LayerNorm": "RMSNorm", "RMSNorm": "LayerNorm"}[norms[0]]
    assert other not in " ".join(labels) and other not in alt
    attn = block.attn
    (att_label,) = [t for t in labels if "self-attention" in t]
    assert att_label.startswith("Masked") == attn.causal
    details = " ".join(labels)
    assert f"{attn.n_head} heads" in details and f"{attn.n_head} heads" in alt
    grouped = 1 < attn.n_kv_head < attn.n_head
    assert (f"GQA: {attn.n_kv_head} K/V heads" in details) == grouped
    assert (f"{attn.n_kv_head} key/value heads" in alt) == grouped
    assert ("MQA" in details) == (attn.n_kv_head == 1 < attn.n_head)
    assert (f"window {attn.sliding_window}" in details) == (attn.sliding_window is not None)
    if block.ffn is None:
        assert not any("feed-forward" in t for t in labels) and "feed-forward" not in alt
    else:
        (ffn_label,) = [t for t in labels if "feed-forward" in t]
        assert ffn_label.startswith("SwiGLU") == (block.ffn.gate is not None)
        assert ("SwiGLU" in alt) == (block.ffn.gate is not None)
        d, hidden = block.ffn.down.out_features, block.ffn.up.out_features
        assert f"{d}→{hidden}→{d}" in details or f"Linear {d}→{hidden}" in details
        assert f"{d} → {hidden} → {d}" in alt
    shape = f"(B, T, {config.d_model})"
    assert labels.count(shape) == len(result.description) - 1  # one on every arrow of the main line
    assert shape in alt
    assert labels.count("+") == (1 if block.ffn is None else 2)  # one residual add per sublayer


@pytest.mark.parametrize("name", ["gpt2", "bert-base", "sinusoidal-relu-post", "attention-only-alibi"])
def test_norm_position_matches_the_block_output(name):
    """Post-LN blocks end with a norm: their output rows have mean 0 and variance 1 (LayerNorm with its initial
    weight 1 and bias 0); pre-LN blocks do not. The figure must put the norm where the real block does."""
    config = dataclasses.replace(CONFIGS[name], d_model=8 * CONFIGS[name].n_head, d_ff=None, vocab_size=64)
    torch.manual_seed(0)
    block = Block(config).eval()
    x = 3 * torch.randn(2, 5, config.d_model, dtype=torch.float64) + 1
    with torch.no_grad():
        y, _ = block.double()(x)
    normalised = torch.allclose(y.mean(-1), torch.zeros(2, 5, dtype=torch.float64), atol=1e-6) and torch.allclose(
        y.var(-1, unbiased=False), torch.ones(2, 5, dtype=torch.float64), atol=1e-3)
    result = architecture_figure("block", config=config)
    norm = type(block.norm1).__name__
    order = _in_order(result.figure, [norm, "+", "Masked multi-head self-attention", "Multi-head self-attention"])
    assert (order[-1] == norm) == normalised  # the last part before the output
    assert (order[0] == norm) == (not normalised)  # pre-LN starts with the norm


@pytest.mark.parametrize("name", CAUSAL)
def test_gpt_labels_name_what_gpt_builds(name):
    config = CONFIGS[name]
    model = _meta(GPT, config)
    trunk = model.transformer
    result = architecture_figure("gpt", config=config)
    labels, alt = _labels(result.figure), result.alt_text
    details = " | ".join(labels)
    assert f"{len(trunk.blocks)} × transformer block" in labels
    assert f"{len(trunk.blocks)} transformer block" in alt
    emb = trunk.tok_emb
    assert f"{emb.num_embeddings} × {emb.embedding_dim} table" in labels
    assert ("Position embedding" in labels) == (trunk.pos_emb is not None)
    if trunk.pos_emb is not None:
        assert f"learned, {trunk.pos_emb.num_embeddings} × {trunk.pos_emb.embedding_dim}" in labels
        assert "learned position embedding" in alt
    has_table = hasattr(trunk, "pos_table")
    assert ("Sinusoidal positions" in labels) == has_table
    assert (labels.count("+") == 1) == (trunk.pos_emb is not None or has_table)  # the position add
    assert ("RoPE" in details) == (trunk.rope is not None) == ("RoPE" in alt)
    assert ("ALiBi" in details) == hasattr(trunk, "alibi_slopes") == ("ALiBi" in alt)
    if trunk.final_norm is not None:
        assert f"Final {type(trunk.final_norm).__name__}" in labels
    else:
        assert not any(t.startswith("Final") for t in labels) and "final" not in alt
    if trunk.embed_norm is not None:
        assert type(trunk.embed_norm).__name__ in labels
    head = model.lm_head
    tied = head.weight is emb.weight
    (head_detail,) = [t for t in labels if t.startswith(f"Linear {head.in_features} → {head.out_features}")]
    assert ("tied" in head_detail) == tied == ("tied" in alt)
    assert f"(B, T, {head.out_features}) logits" in labels and f"(B, T, {head.out_features})" in alt
    assert f"(B, T, {config.d_model})" in labels


def _reference_masks(window):
    """Who may attend whom, written with torch.tril/triu (not bloomlib.masks)."""
    def causal(n):
        m = torch.tril(torch.ones(n, n, dtype=torch.bool))
        return m if window is None else m & torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1 - window)

    t, s, tgt = figures.GRID_T, figures.GRID_S, figures.GRID_TGT
    return {"encoder-only:0": torch.ones(t, s, dtype=torch.bool), "decoder-only:0": causal(t),
            "encoder-decoder:0": causal(tgt), "encoder-decoder:1": torch.ones(tgt, s, dtype=torch.bool)}


@pytest.mark.parametrize("config", [None, GPTConfig.preset("tiny", sliding_window=3), CONFIGS["bert-base"]],
                         ids=["none", "window3", "bert"])
def test_families_grids_show_the_masks(config):
    result = architecture_figure("families", config=config)
    window = config.sliding_window if config is not None else None
    cells = {}
    for r in result.figure.findobj(Rectangle):
        m = re.fullmatch(r"(.+)\[(\d+),(\d+)\]", r.get_gid() or "")
        if m:
            cells[(m[1], int(m[2]), int(m[3]))] = r.get_facecolor()
    colours = set(cells.values())
    assert len(colours) == 2
    for name, mask in _reference_masks(window).items():
        for (i, j), ok in zip(torch.cartesian_prod(torch.arange(mask.shape[0]), torch.arange(mask.shape[1])).tolist(),
                              mask.flatten().tolist()):
            colour = cells[(name, i, j)]
            r, g, b, _ = colour
            assert (r == g == b) == (not ok), (name, i, j)  # masked: a grey; visible: a colour
    labels = _labels(result.figure)
    for title in ("Encoder-only (BERT)", "Decoder-only (GPT)", "Encoder-decoder (T5)"):
        assert title in labels and title.split(" (")[0] in result.alt_text
    for word in ("bidirectional", "causal", "cross-attention"):
        assert word in result.alt_text
    assert any("may attend" in t for t in labels) and any(t == "masked" for t in labels)  # the legend
    if config is not None:
        note = f"this config: {config.n_layer} layers, d_model {config.d_model}, {config.n_head} heads"
        assert any(note in t for t in labels) and note in result.alt_text


@pytest.mark.parametrize("kind,name", [("block", "course"), ("block", "llama-7b-gqa"), ("block", "bert-base"),
                                       ("gpt", "course"), ("gpt", "mistral-7b"), ("families", "course")])
def test_figure_is_readable_and_colour_blind_safe(kind, name):
    """Drawn without missing glyphs; fonts >= 8 pt; every box label inside its box; no two texts overlap;
    every fill from tableau-colorblind10 (or white)."""
    result = architecture_figure(kind, config=CONFIGS[name])
    fig = result.figure
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Glyph ... missing from font" is a warning
        png = result.png(dpi=40)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)  # a renderer, to measure the drawn texts
    canvas.draw()
    renderer = canvas.get_renderer()
    fig_box = fig.bbox
    texts = [t for t in _texts(fig) if t.get_figure() is fig]
    boxes = [p for p in fig.findobj(FancyBboxPatch) if p.get_zorder() >= 2 and p.axes is not None]
    extents = []
    for t in texts:
        assert t.get_fontsize() >= 8.0, t.get_text()
        e = t.get_window_extent(renderer)
        assert fig_box.x0 - 1 <= e.x0 and e.x1 <= fig_box.x1 + 1 and fig_box.y0 - 1 <= e.y0 and e.y1 <= fig_box.y1 + 1, \
            t.get_text()
        for p in boxes:
            pe = p.get_window_extent(renderer)
            cx, cy = (e.x0 + e.x1) / 2, (e.y0 + e.y1) / 2
            if pe.contains(cx, cy):
                assert pe.x0 <= e.x0 and e.x1 <= pe.x1, f"{t.get_text()!r} overflows its box"
        extents.append((t.get_text(), e))
    for a in range(len(extents)):
        for b in range(a + 1, len(extents)):
            (ta, ea), (tb, eb) = extents[a], extents[b]
            assert not ea.overlaps(eb), f"{ta!r} overlaps {tb!r}"
    for p in fig.findobj(lambda a: isinstance(a, (FancyBboxPatch, Circle, Rectangle))):
        face = p.get_facecolor()
        if face[3] == 0 or not p.get_visible():
            continue
        assert face in PALETTE or face == to_rgba("white"), face


def test_highlight_marks_the_named_parts():
    config = CONFIGS["llama-7b-gqa"]
    plain = architecture_figure("block", config=config)
    lit = architecture_figure("block", config=config, highlight=["norm", "attention"])
    orange = to_rgba(figures._colours()["highlight"])

    def marked(fig):
        return [p for p in fig.findobj(FancyBboxPatch) if p.get_edgecolor() == orange]

    assert marked(plain.figure) == [] and len(marked(lit.figure)) == 3  # two RMSNorm boxes, one attention
    assert all(p.get_linewidth() > 1 for p in marked(lit.figure))
    bold = {t.get_text() for t in _texts(lit.figure) if t.get_fontweight() == "bold" and t.get_fontsize() < 12}
    assert bold == {"RMSNorm", "Masked multi-head self-attention"}
    assert "Highlighted: attention and norm." in lit.alt_text and "Highlighted" not in plain.alt_text
    fam = architecture_figure("families", highlight="masks")
    assert sum(1 for p in fam.figure.findobj(Rectangle) if p.get_edgecolor() == orange) == 4  # every grid


def test_display_output_carries_the_alt_text():
    from IPython.core.formatters import DisplayFormatter
    from PIL import Image

    result = architecture_figure("block", highlight="ffn")
    data, metadata = DisplayFormatter().format(result)
    assert data["text/plain"] == f"[figure] {result.alt_text}"
    img = re.fullmatch(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)" alt="([^"]*)" width="(\d+)">',
                       data["text/html"])
    assert img is not None
    assert html.unescape(img[2]) == result.alt_text
    png = base64.b64decode(img[1])
    assert base64.b64decode(data["image/png"]) == png
    assert metadata["image/png"]["alt"] == result.alt_text
    picture = Image.open(io.BytesIO(png))
    assert picture.text["Description"] == result.alt_text and "Software" not in picture.text
    assert picture.size[0] == round(result.figure.get_figwidth() * figures.PNG_DPI)
    assert int(img[3]) == round(result.figure.get_figwidth() * 100)  # CSS px: 100 per figure inch
    assert result.png() == result.png()  # the same bytes each time (the notebook output does not churn)


def test_nbconvert_html_keeps_the_alt_text():
    """The exported page holds <img ... alt="..."> for both of nbconvert's HTML templates."""
    import nbformat
    from IPython.core.formatters import DisplayFormatter
    from nbconvert import HTMLExporter

    result = architecture_figure("families")
    data, metadata = DisplayFormatter().format(result)
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("architecture_figure('families')")
    cell.outputs = [nbformat.v4.new_output("display_data", data=data, metadata=metadata)]
    nb.cells = [cell]
    escaped = html.escape(result.alt_text, quote=True)
    for template in ("lab", "classic"):
        body, _ = HTMLExporter(template_name=template).from_notebook_node(nb)
        alts = [html.unescape(a) for a in re.findall(r'<img[^>]*\balt="([^"]*)"', body)]
        assert result.alt_text in alts, template
        assert escaped in body


def test_with_alt_text_wraps_a_pyplot_figure():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    fig.suptitle("a line")
    number = fig.number
    wrapped = with_alt_text(fig, "A falling line from (0, 1) to (1, 0).")
    assert number not in plt.get_fignums()  # not shown a second time, without alt text, by the inline backend
    assert wrapped.title == "a line"
    data, metadata = wrapped._repr_mimebundle_()
    assert 'alt="A falling line from (0, 1) to (1, 0)."' in data["text/html"]


def test_bad_input_raises_value_error_naming_the_choices():
    with pytest.raises(ValueError, match=r"kind='decoder' is unknown.*'block', 'gpt', 'families'"):
        architecture_figure("decoder")
    with pytest.raises(ValueError, match=r"highlight: \['atention'\].*'attention'.*'ffn'"):
        architecture_figure("block", highlight="atention")
    with pytest.raises(ValueError, match=r"highlight: \['ffn'\].*\['input', 'norm', 'attention', 'residual', 'output'\]"):
        architecture_figure("block", config=CONFIGS["attention-only-alibi"], highlight=["attention", "ffn"])
    with pytest.raises(ValueError, match=r"highlight: \['positions'\]"):
        architecture_figure("families", highlight="positions")
    with pytest.raises(ValueError, match=r"config: the decoder-only GPT figure needs a causal config"):
        architecture_figure("gpt", config=CONFIGS["bert-base"])
    with pytest.raises(ValueError, match=r"config must be a bloomlib GPTConfig"):
        architecture_figure("block", config={"d_model": 128})
    with pytest.raises(ValueError, match="alt_text must be a non-empty string"):
        AccessibleFigure(architecture_figure("block").figure, "  ")
    with pytest.raises(ValueError, match="figure must be a matplotlib Figure"):
        with_alt_text("not a figure", "alt")
