"""Architecture figures drawn by code (matplotlib patches, arrows and text), each with its alt text.

`architecture_figure("block" | "gpt" | "families", config=..., highlight=...)` describes the architecture
first (a list of `Node`s read off a GPTConfig the way bloomlib.blocks.Block and bloomlib.GPT read it), then
draws that description and writes the alt text from it, so the picture and the sentence cannot disagree.

The result is an `AccessibleFigure`: the matplotlib Figure plus its alt text. Displayed in a notebook it emits
  * text/html   <img alt="..." src="data:image/png;base64,...">: JupyterLab ranks HTML above PNG and its
                sanitizer keeps <img alt> and data: sources; nbconvert's HTML copies it as is;
  * image/png   with metadata {"alt": ...}: what nbconvert's classic template reads (JupyterLab 4's image
                renderer and nbconvert's lab template set no alt on a bare PNG, hence the HTML above);
  * text/plain  the alt text itself, for consoles, screen readers of plain output and nbval's comparison.
Its Figure is made without pyplot, so the inline backend does not show it a second time, without alt text.
"""
from __future__ import annotations

import base64
import dataclasses
import html
import io
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Iterable, Sequence

import torch

from bloomlib.config import GPTConfig
from bloomlib.masks import visible

KINDS = ("block", "gpt", "families")
PALETTE_STYLE = "tableau-colorblind10"
DISPLAY_DPI = 100  # CSS pixels per figure inch in the HTML output: labels at their point size at 100 % zoom
PNG_DPI = 150  # pixels per inch in the PNG: sharp on high-density screens
GRID_T, GRID_S = 6, 6  # query and key counts of the families' mask grids (target 4 for cross-attention)
GRID_TGT = 4
ADD_RADIUS = 0.19  # inches: the residual-add circle
MIN_FONT = 8.0  # points: the smallest text, 11 px at DISPLAY_DPI
GRID_GAP = 1.0  # inches between two mask grids of one column


def _colours() -> dict[str, str]:
    """Role -> colour: fills light enough for black text, one dark orange for emphasis, blue/grey for masks. The
    course's colour-blind-safe colours, read from matplotlib's style (no rcParams changed)."""
    import matplotlib.style

    palette = matplotlib.style.library[PALETTE_STYLE]["axes.prop_cycle"].by_key()["color"]
    blue, _, grey, dark_grey, mid_blue, dark_orange, _, light_blue, light_orange, light_grey = palette
    return {"norm": light_blue, "attention": light_orange, "ffn": mid_blue, "embedding": light_grey,
            "head": grey, "stack": light_orange, "io": "white", "note": "white", "add": "white",
            "edge": dark_grey, "text": "black", "shape": dark_grey, "highlight": dark_orange,
            "visible": blue, "masked": light_grey}


@dataclass(frozen=True)
class Node:
    """One part of a drawn architecture.

    part:   the name `highlight` uses ("attention", "norm", ...); several nodes may share one.
    role:   how it is drawn (its fill): "io", "norm", "attention", "ffn", "embedding", "head", "stack", "add", "note".
    label:  the first line in the box; detail: the second (smaller) line.
    phrase: the words the alt text uses for it.
    shape:  the tensor shape on the arrow leaving it, e.g. "(B, T, 128)".
    skip_from: for a residual add, how many nodes back the residual branch leaves the main line.
    side:   a node drawn beside this one with an arrow into it (positions added to the embedding, RoPE).
    """

    part: str
    role: str
    label: str
    detail: str = ""
    phrase: str = ""
    shape: str = ""
    skip_from: int = 0
    side: "Node | None" = None


def _join(items: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    items = [i for i in items if i]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _norm_name(config: GPTConfig) -> str:
    return "RMSNorm" if config.norm == "rmsnorm" else "LayerNorm"


_ACTIVATION = {"gelu": "GELU", "gelu_tanh": "GELU (tanh)", "relu": "ReLU", "swiglu": "SwiGLU"}


def _attention_node(config: GPTConfig) -> Node:
    """The self-attention sublayer as bloomlib.blocks.Block builds it from config (MultiHeadAttention)."""
    h, kv = config.n_head, config.n_kv_head
    heads = f"{h} head{'s' * (h > 1)}"
    label = "Masked multi-head self-attention" if config.causal else "Multi-head self-attention"
    extras = []  # (the box's detail, the alt text's words) of each variant the config uses
    if kv == 1 and h > 1:
        extras.append(("MQA: 1 K/V head", "multi-query: 1 key/value head"))
    elif kv < h:
        extras.append((f"GQA: {kv} K/V heads", f"grouped-query: {kv} key/value heads"))
    if config.pos_encoding == "rope":
        extras.append(("RoPE on q, k", "RoPE rotating queries and keys"))
    elif config.pos_encoding == "alibi":
        extras.append(("ALiBi bias", "an ALiBi distance bias on the scores"))
    if config.causal and config.sliding_window is not None:
        extras.append((f"window {config.sliding_window}", f"a sliding window of {config.sliding_window} tokens"))
    phrase = ("masked" if config.causal else "bidirectional") + f" multi-head self-attention with {heads}"
    phrase += f" ({'; '.join(words for _, words in extras)})" if extras else ""
    return Node("attention", "attention", label, " · ".join([heads] + [d for d, _ in extras]), phrase)


def _ffn_node(config: GPTConfig) -> Node:
    """The feed-forward sublayer as bloomlib.blocks.FeedForward computes it."""
    d, f, act = config.d_model, config.d_ff, _ACTIVATION[config.ffn]
    detail = (f"down(SiLU(gate x) ⊙ up x): {d}→{f}→{d}" if config.ffn == "swiglu"
              else f"Linear {d}→{f}, {act}, Linear {f}→{d}")
    return Node("ffn", "ffn", f"{act} feed-forward (FFN)", detail, f"a {act} feed-forward network ({d} → {f} → {d})")


def _shape(config: GPTConfig) -> str:
    return f"(B, T, {config.d_model})"


def describe_block(config: GPTConfig) -> tuple[list[Node], str]:
    """(nodes top to bottom, title) of one transformer block as bloomlib.blocks.Block(config) builds it.

    Pre-LN sublayer: norm -> f -> add (x + f(norm(x))); post-LN: f -> add -> norm (norm(x + f(x))).
    Attention-only configs (ffn="none") have the attention sublayer alone.
    """
    shape, norm = _shape(config), _norm_name(config)
    sublayers = [_attention_node(config)] + ([] if config.ffn == "none" else [_ffn_node(config)])
    nodes = [Node("input", "io", "Input x", "the residual stream", f"the input {shape}", shape)]
    for i, sub in enumerate(sublayers):
        sub = dataclasses.replace(sub, shape=shape)
        norm_node = Node("norm", "norm", norm, phrase=norm, shape=shape)
        add = Node("residual", "add", "+", shape=shape, skip_from=2 if config.prenorm else 1,
                   phrase="a residual add (the sublayer's input plus its output)" if i == 0 else "a second residual add")
        nodes += [norm_node, sub, add] if config.prenorm else [sub, add, norm_node]
    nodes.append(Node("output", "io", "Output", "to the next block", f"the output is again {shape}"))
    kind = "pre-LN" if config.prenorm else "post-LN"
    extra = ", attention only" if config.ffn == "none" else ""
    return nodes, (f"One {kind} transformer block{extra}: d_model = {config.d_model}, {config.n_head} heads, "
                   f"{norm}{'' if config.ffn == 'none' else ', ' + _ACTIVATION[config.ffn]}")


def _block_alt(nodes: list[Node], config: GPTConfig) -> str:
    steps = [_join([n.phrase for n in nodes[i:i + 3]]) for i in range(1, len(nodes) - 1, 3)]  # 3 nodes a sublayer
    kind = "pre-LN" if config.prenorm else "post-LN"
    where = ("each sublayer normalises its input and adds its output back to the stream" if config.prenorm
             else "each residual sum is normalised")
    return (f"A {kind} transformer block ({where}): {nodes[0].phrase} goes through " + "; then ".join(steps)
            + f"; {nodes[-1].phrase}. Every arrow carries a {_shape(config)} tensor (batch, tokens, d_model).")


def _block_summary(config: GPTConfig) -> tuple[str, str]:
    """The block in a few words (the GPT figure's stacked box) and in a phrase (its alt text)."""
    kind = "pre-LN" if config.prenorm else "post-LN"
    h, kv = config.n_head, config.n_kv_head
    heads = f"{h} heads" + (f", {kv} K/V" if kv < h else "")
    act = "no" if config.ffn == "none" else _ACTIVATION[config.ffn]
    short = " · ".join([kind, _norm_name(config), heads, f"{act} FFN"])
    return short, (f"each {kind} with {_norm_name(config)}, {_attention_node(config).phrase} and "
                   + ("no FFN" if config.ffn == "none" else f"a {act} FFN"))


def describe_gpt(config: GPTConfig) -> tuple[list[Node], str]:
    """(nodes top to bottom, title) of bloomlib.GPT(config): embeddings, n_layer blocks, final norm, LM head."""
    if not config.causal:
        raise ValueError("config: the decoder-only GPT figure needs a causal config (config.causal=True), as "
                         "bloomlib.GPT does; draw kind='block' or 'families' for a bidirectional encoder")
    d, v, shape = config.d_model, config.vocab_size, _shape(config)
    pe, norm, table = config.pos_encoding, _norm_name(config), f"{config.block_size} × {d}"
    nodes = [Node("tokens", "io", "Token ids", f"vocabulary of {v}", "token ids (B, T)", "(B, T)")]
    positions = {"learned": Node("positions", "embedding", "Position embedding", f"learned, {table}",
                                 f"a learned position embedding ({table})"),
                 "sinusoidal": Node("positions", "embedding", "Sinusoidal positions", f"fixed, {table}",
                                    f"fixed sinusoidal positions ({table})")}.get(pe)
    nodes.append(Node("embedding", "embedding", "Token embedding", f"{v} × {d} table",
                      f"the token embedding ({v} × {d}) gives a vector per token", shape))
    if positions is not None:
        nodes.append(Node("positions", "add", "+", phrase=f"{positions.phrase} is added", shape=shape,
                          side=positions))
    if config.embed_norm:
        nodes.append(Node("embed_norm", "norm", norm, "after the embeddings", f"a {norm}", shape))
    inside = None
    if pe in ("rope", "alibi"):
        inside = Node("positions", "note", "Positions inside attention",
                      "RoPE rotates q, k" if pe == "rope" else "ALiBi biases the scores",
                      "positions enter inside attention (RoPE on queries and keys)" if pe == "rope"
                      else "positions enter inside attention (an ALiBi bias)")
    n, (short, long) = config.n_layer, _block_summary(config)
    nodes.append(Node("blocks", "stack", f"{n} × transformer block", short,
                      f"{n} transformer block{'s' * (n > 1)}, {long}", shape, side=inside))
    if config.final_norm:
        nodes.append(Node("final_norm", "norm", f"Final {norm}", phrase=f"a final {norm}", shape=shape))
    tied = ", tied to the token embedding" if config.tie_weights else ""
    nodes.append(Node("lm_head", "head", "LM head", f"Linear {d} → {v}{tied}",
                      f"the LM head (Linear {d} → {v}{tied}) giving logits (B, T, {v})", f"(B, T, {v}) logits"))
    nodes.append(Node("probabilities", "io", "Next-token probabilities", f"softmax over {v} tokens",
                      f"a softmax giving next-token probabilities (B, T, {v})"))
    return nodes, f"A decoder-only GPT: {n} blocks, d_model = {d}, vocabulary {v}"


def _gpt_alt(nodes: list[Node], config: GPTConfig) -> str:
    return ("A decoder-only GPT, top to bottom: " + "; ".join(n.phrase for n in nodes) + "."
            + f" The residual stream between the parts is {_shape(config)}.")


@dataclass(frozen=True)
class Family:
    """One column of the families figure: its chain(s) of nodes and its attention masks (True = may attend)."""

    part: str
    title: str
    attention: str
    chains: tuple[tuple[Node | None, ...], ...]
    masks: tuple[tuple[str, torch.Tensor], ...]
    phrase: str
    config_note: str = ""


def _mask_phrase(mask: torch.Tensor) -> str:
    n_q, n_k = mask.shape
    return f"a {n_q} × {n_k} grid with {int(mask.sum())} of {mask.numel()} cells visible"


def describe_families(config: GPTConfig | None = None) -> tuple[list[Family], str]:
    """(columns, title): encoder-only (BERT), decoder-only (GPT), encoder-decoder (T5), with their masks
    from bloomlib.masks.visible. A config marks its own family and, if causal, draws the decoder's mask with
    its sliding window."""
    window = config.sliding_window if config is not None and config.causal else None
    q, k, tgt = torch.arange(GRID_T), torch.arange(GRID_S), torch.arange(GRID_TGT)
    full = visible(q, k)
    causal = visible(q, q, causal=True, window=window)
    dec_self, cross = visible(tgt, tgt, causal=True, window=window), visible(tgt, k)
    note = "" if config is None else (f"this config: {config.n_layer} layers, d_model {config.d_model}, "
                                      f"{config.n_head} heads")
    win = f", window {window}" if window is not None else ""

    def io(part: str, label: str, detail: str = "") -> Node:
        return Node(part, "io", label, detail)

    def stack(part: str, label: str, detail: str) -> Node:
        return Node(part, "stack", label, detail)

    encoder = Family(
        "encoder-only", "Encoder-only (BERT)", "bidirectional self-attention",
        ((io("encoder-only", "Tokens", "the whole text"), stack("encoder-only", "N × encoder block", "sees both sides"),
          io("encoder-only", "A vector per token", "→ masked tokens, classes")),),
        (("self-attention:\nevery token sees all", full),),
        "Encoder-only (BERT): bidirectional self-attention, every token attends every token "
        f"(the mask is {_mask_phrase(full)}); it outputs a vector per token",
        note if config is not None and not config.causal else "")
    decoder = Family(
        "decoder-only", "Decoder-only (GPT)", "causal self-attention" + win,
        ((io("decoder-only", "Tokens so far"), stack("decoder-only", "N × decoder block", "masked self-attention"),
          io("decoder-only", "Next-token probabilities")),),
        ((f"causal self-attention:\ntoken i sees tokens ≤ i{win}", causal),),
        f"Decoder-only (GPT): causal self-attention, token i attends only tokens up to i"
        + (f" and no further back than {window - 1} before it (a band" if window is not None else " (a lower-triangular")
        + f" mask, {_mask_phrase(causal)}); it outputs next-token probabilities",
        note if config is not None and config.causal else "")
    enc_dec = Family(
        "encoder-decoder", "Encoder-decoder (T5)", "encoder + decoder with cross-attention",
        ((io("encoder-decoder", "Source tokens"), stack("encoder-decoder", "N × encoder", "bidirectional"), None),
         (io("encoder-decoder", "Target so far"), stack("encoder-decoder", "N × decoder", "causal + cross"),
          io("encoder-decoder", "Next target token"))),
        ((f"decoder self-attention:\ncausal{win}", dec_self), ("cross-attention:\ntarget × all source", cross)),
        "Encoder-decoder (T5): a bidirectional encoder reads the source; each decoder block has causal "
        f"self-attention over the target so far ({_mask_phrase(dec_self)}) and cross-attention from every "
        f"target token to every encoder output ({_mask_phrase(cross)}); it outputs the next target token")
    return [encoder, decoder, enc_dec], "Three transformer families and their attention masks"


def _families_alt(families: list[Family]) -> str:
    notes = [f" The {f.title.split(' (')[0].lower()} column is marked with {f.config_note}." for f in families
             if f.config_note]
    return ("Three transformer families side by side, each with its attention mask as a grid (rows are "
            "queries, columns keys; blue cells may attend, grey cells are masked). "
            + ". ".join(f.phrase for f in families) + "." + "".join(notes))


def _parts_of(kind: str, description) -> tuple[str, ...]:
    if kind == "families":
        return tuple(f.part for f in description) + ("cross-attention", "masks")
    names = []
    for n in description:
        names += [n.part] + ([n.side.part] if n.side is not None else [])
    return tuple(dict.fromkeys(names))


def _check_highlight(highlight: str | Iterable[str] | None, known: tuple[str, ...], kind: str) -> frozenset[str]:
    if highlight is None:
        return frozenset()
    names = [highlight] if isinstance(highlight, str) else list(highlight)
    bad = [h for h in names if not isinstance(h, str) or h not in known]
    if bad:
        raise ValueError(f"highlight: {bad} not among the parts of the {kind!r} figure for this config; "
                         f"choose from {list(known)}")
    return frozenset(names)


# ---------------------------------------------------------------------------------------------- drawing

@dataclass
class _Canvas:
    """An Axes in inch units (1 data unit = 1 inch), so font sizes and box sizes agree."""

    ax: object
    colours: dict[str, str]
    highlight: frozenset[str]
    box_h: float = 0.62

    def box(self, node: Node, x: float, y: float, w: float, *, size: float = 10.0) -> None:
        from matplotlib.patches import Circle, FancyBboxPatch

        c, lit = self.colours, node.part in self.highlight
        edge = c["highlight"] if lit else c["edge"]
        lw = 3.0 if lit else 1.0
        if node.role == "add":
            self.ax.add_patch(Circle((x, y), ADD_RADIUS, facecolor=c["add"], edgecolor=edge, linewidth=lw, zorder=3))
            self.ax.text(x, y, "+", ha="center", va="center", fontsize=13, fontweight="bold", zorder=4)
            return
        h, style = self.box_h, "round,pad=0,rounding_size=0.08"
        if node.role == "stack":  # two shadows behind: many blocks
            for off in (0.12, 0.06):
                self.ax.add_patch(FancyBboxPatch((x - w / 2 + off, y - h / 2 + off), w, h, zorder=0.5, boxstyle=style,
                                                 facecolor=c[node.role], edgecolor=c["edge"], linewidth=0.8))
        self.ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle=style, facecolor=c[node.role],
                                         edgecolor=edge, linewidth=lw, zorder=2,
                                         linestyle="--" if node.role == "note" else "-"))
        self.ax.text(x, y + 0.11 if node.detail else y, node.label, ha="center", va="center", fontsize=size,
                     fontweight="bold" if lit else "normal", zorder=4)
        if node.detail:
            self.ax.text(x, y - 0.14, node.detail, ha="center", va="center", fontsize=max(MIN_FONT, size - 1.5),
                         zorder=4)

    def title(self, text: str) -> None:
        """The title at the top centre: "Heading: details" is drawn as a bold heading over a details line."""
        width, height = self.ax.get_xlim()[1], self.ax.get_ylim()[1]
        head, _, rest = text.partition(": ")
        self.ax.text(width / 2, height - 0.28, head, ha="center", va="center", fontsize=12, fontweight="bold")
        if rest:
            self.ax.text(width / 2, height - 0.55, rest, ha="center", va="center", fontsize=10)

    def half_height(self, node: Node) -> float:
        return ADD_RADIUS if node.role == "add" else self.box_h / 2

    def arrow(self, xy0: tuple[float, float], xy1: tuple[float, float], *, path=None, label: str = "") -> None:
        from matplotlib.patches import FancyArrowPatch

        kw = dict(arrowstyle="-|>", mutation_scale=12, color=self.colours["edge"], linewidth=1.2, zorder=1,
                  shrinkA=0, shrinkB=0)
        self.ax.add_patch(FancyArrowPatch(path=path, **kw) if path is not None else FancyArrowPatch(xy0, xy1, **kw))
        if label:
            (x0, y0), (x1, y1) = xy0, xy1
            self.ax.text((x0 + x1) / 2 + 0.08, (y0 + y1) / 2, label, ha="left", va="center",
                         fontsize=8.5, style="italic", color=self.colours["shape"], zorder=4)

    def chain(self, nodes: Sequence[Node | None], x: float, top: float, w: float, step: float, *,
              shapes: bool = True, size: float = 10.0, side_dx: float = 0.0, side_w: float = 2.6) -> None:
        """Draw nodes top to bottom at x (None leaves a gap); arrows between neighbours, residual branches on
        the left, side nodes at x + side_dx."""
        from matplotlib.path import Path as MplPath

        ys = [top - i * step for i in range(len(nodes))]
        for i, node in enumerate(nodes):
            if node is None:
                continue
            self.box(node, x, ys[i], w, size=size)
            nxt = nodes[i + 1] if i + 1 < len(nodes) else None
            if nxt is not None:
                self.arrow((x, ys[i] - self.half_height(node)), (x, ys[i + 1] + self.half_height(nxt)),
                           label=node.shape if shapes else "")
            if node.skip_from:
                src = nodes[i - node.skip_from - 1]
                # the branch leaves the arrow into the sublayer, a little below the node that feeds it
                y0 = ys[i - node.skip_from - 1] - self.half_height(src) - 0.12
                xl = x - w / 2 - 0.35
                path = MplPath([(x, y0), (xl, y0), (xl, ys[i]), (x - ADD_RADIUS, ys[i])],
                               [MplPath.MOVETO, MplPath.LINETO, MplPath.LINETO, MplPath.LINETO])
                self.arrow(None, None, path=path)
                self.ax.plot([x], [y0], "o", color=self.colours["edge"], markersize=4, zorder=3)
                self.ax.text(xl - 0.06, (y0 + ys[i]) / 2, "residual", rotation=90, ha="right", va="center",
                             fontsize=8.5, color=self.colours["shape"])
            if node.side is not None and side_dx:
                self.box(node.side, x + side_dx, ys[i], side_w, size=size - 0.5)
                reach = ADD_RADIUS if node.role == "add" else w / 2
                self.arrow((x + side_dx - side_w / 2, ys[i]), (x + reach, ys[i]))

    def grid(self, mask: torch.Tensor, x0: float, y_top: float, cell: float, caption: str, name: str) -> None:
        """The mask as cells, row i = query i from the top, column j = key j; each cell's gid is name[i,j]."""
        from matplotlib.patches import Rectangle

        c, lit = self.colours, "masks" in self.highlight
        n_q, n_k = mask.shape
        for i in range(n_q):
            for j in range(n_k):
                r = Rectangle((x0 + j * cell, y_top - (i + 1) * cell), cell, cell, zorder=2, linewidth=0.6,
                              facecolor=c["visible"] if mask[i, j] else c["masked"], edgecolor="white")
                r.set_gid(f"{name}[{i},{j}]")
                self.ax.add_patch(r)
        if lit:
            self.ax.add_patch(Rectangle((x0, y_top - n_q * cell), n_k * cell, n_q * cell, fill=False, zorder=3,
                                        edgecolor=c["highlight"], linewidth=3))
        self.ax.text(x0 + n_k * cell / 2, y_top - n_q * cell - 0.12, caption, ha="center", va="top", fontsize=8.5,
                     wrap=False)
        self.ax.text(x0 - 0.06, y_top - n_q * cell / 2, "queries", rotation=90, ha="right", va="center",
                     fontsize=MIN_FONT, color=c["shape"])
        self.ax.text(x0 + n_k * cell / 2, y_top + 0.05, "keys", ha="center", va="bottom", fontsize=MIN_FONT,
                     color=c["shape"])


def _new_canvas(width: float, height: float, highlight: frozenset[str]) -> tuple[object, _Canvas]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DISPLAY_DPI, facecolor="white")
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.set_axis_off()
    return fig, _Canvas(ax, _colours(), highlight)


def _draw_chain(nodes: list[Node], title: str, highlight: frozenset[str], *, width: float, step: float, x: float,
                box_w: float, **side: float):
    """The block and GPT figures: one chain of nodes at x, side nodes (side_dx, side_w) to its right."""
    height = 1.15 + step * (len(nodes) - 1) + 0.7
    fig, cv = _new_canvas(width, height, highlight)
    cv.title(title)
    cv.chain(nodes, x, height - 1.15, box_w, step, **side)
    return fig


def _draw_families(families: list[Family], title: str, highlight: frozenset[str]):
    from matplotlib.patches import Patch

    widths, height, step = (3.4, 3.4, 5.2), 7.0, 0.95
    fig, cv = _new_canvas(sum(widths), height, highlight)
    cv.title(title)
    left, cell = 0.0, 0.2
    for fam, w in zip(families, widths):
        centre, lit = left + w / 2, fam.part in highlight
        cv.ax.text(centre, height - 0.8, fam.title, ha="center", va="center", fontsize=11,
                   fontweight="bold", color=cv.colours["highlight"] if lit else "black")
        cv.ax.text(centre, height - 1.1, fam.attention, ha="center", va="center", fontsize=9)
        if fam.config_note:
            cv.ax.text(centre, height - 1.38, f"◆ {fam.config_note}", ha="center", va="center", fontsize=8,
                       color=cv.colours["highlight"])
        top = height - 2.0
        xs = [centre] if len(fam.chains) == 1 else [left + w * 0.27, left + w * 0.73]
        box_w = 2.7 if len(fam.chains) == 1 else 1.9
        for chain, x in zip(fam.chains, xs):
            cv.chain(chain, x, top, box_w, step, shapes=False, size=9.0)
        if len(fam.chains) == 2:  # the decoder reads the encoder's output in every block
            y = top - step
            lit_cross = "cross-attention" in highlight
            cv.arrow((xs[0] + box_w / 2 + 0.14, y), (xs[1] - box_w / 2, y))
            cv.ax.text(xs[0] + 0.2, y - 0.45, "→ the encoder's output feeds\ncross-attention in every\ndecoder block",
                       ha="center", va="top", fontsize=8.5, fontweight="bold" if lit_cross else "normal",
                       color=cv.colours["highlight"] if lit_cross else cv.colours["shape"], zorder=5)
        grids_w = sum(m.shape[1] * cell for _, m in fam.masks) + GRID_GAP * (len(fam.masks) - 1)
        gx, gy = centre - grids_w / 2, top - 2 * step - 0.75
        for k, (caption, mask) in enumerate(fam.masks):
            cv.grid(mask, gx, gy, cell, caption, f"{fam.part}:{k}")
            gx += mask.shape[1] * cell + GRID_GAP
        left += w
    handles = [Patch(facecolor=cv.colours["visible"], label="may attend"),
               Patch(facecolor=cv.colours["masked"], label="masked")]
    fig.legend(handles=handles, loc="lower center", ncol=2, frameon=False, fontsize=9,
               title="attention mask cells: rows are queries, columns are keys", title_fontsize=9)
    return fig


# ---------------------------------------------------------------------------------------------- output

@dataclass
class AccessibleFigure:
    """A matplotlib Figure with its alt text, displayed with the alt text attached (see the module docstring).

    figure: the Figure; alt_text: one or two sentences that say what it shows; title: its drawn title;
    parts: the names `highlight` accepts for it (architecture figures); description: what it was drawn from;
    dpi: pixels per inch of its PNG; tight: crop the PNG to what is drawn (what the inline backend does for a
    pyplot figure, so a legend placed outside the axes is kept), its display width then read off the PNG.
    """

    figure: object
    alt_text: str
    title: str = ""
    parts: tuple[str, ...] = ()
    description: object = field(default=None, repr=False)
    dpi: int = PNG_DPI
    tight: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.alt_text, str) or not self.alt_text.strip():
            raise ValueError("alt_text must be a non-empty string that says what the figure shows")

    def png(self, dpi: int | None = None) -> bytes:
        """The figure as PNG bytes, the alt text in its Description chunk (no software version: stable bytes)."""
        buf = io.BytesIO()
        self.figure.savefig(buf, format="png", dpi=self.dpi if dpi is None else dpi, facecolor="white",
                            bbox_inches="tight" if self.tight else None,
                            metadata={"Software": None, "Title": self.title or None, "Description": self.alt_text})
        return buf.getvalue()

    def width_px(self, png: bytes | None = None) -> int:
        """Display width in CSS pixels: the figure's inches at DISPLAY_DPI (tight: the PNG's, made by png())."""
        if not self.tight:
            return round(self.figure.get_figwidth() * DISPLAY_DPI)
        png = self.png() if png is None else png
        return round(int.from_bytes(png[16:20], "big") * DISPLAY_DPI / self.dpi)  # IHDR width, pixels

    def html(self, png: bytes | None = None) -> str:
        """<img> with the alt text and the PNG inlined as a data: URI."""
        png = self.png() if png is None else png
        data = base64.b64encode(png).decode("ascii")
        return (f'<img src="data:image/png;base64,{data}" alt="{html.escape(self.alt_text, quote=True)}" '
                f'width="{self.width_px(png)}">')

    def savefig(self, path: str | Path, dpi: int | None = None) -> Path:
        """Write the PNG (alt text in its metadata) to path; returns the path."""
        path = Path(path)
        path.write_bytes(self.png(dpi))
        return path

    def _repr_mimebundle_(self, include=None, exclude=None) -> tuple[dict, dict]:
        png = self.png()
        return ({"text/html": self.html(png), "image/png": base64.b64encode(png).decode("ascii"),
                 "text/plain": f"[figure] {self.alt_text}"},
                {"image/png": {"alt": self.alt_text, "width": self.width_px(png)}})


def close_in_pyplot(figure) -> None:
    """Close a Figure made by pyplot in pyplot (its data stays), so the inline backend does not show it again."""
    if getattr(figure.canvas, "manager", None) is not None:
        import matplotlib.pyplot as plt

        plt.close(figure)


def with_alt_text(figure, alt_text: str, title: str = "") -> AccessibleFigure:
    """Wrap any matplotlib Figure (a lesson's own plot) so it displays with its alt text.

    A Figure made by pyplot is closed in pyplot (its data stays) so the inline backend does not also show
    it without alt text.
    """
    from matplotlib.figure import Figure

    if not isinstance(figure, Figure):
        raise ValueError(f"figure must be a matplotlib Figure, got {type(figure).__name__}")
    close_in_pyplot(figure)
    suptitle = getattr(figure, "_suptitle", None)  # Figure.get_suptitle is matplotlib >= 3.8 only
    return AccessibleFigure(figure, alt_text, title or (suptitle.get_text() if suptitle is not None else ""))


def architecture_figure(kind: str = "block", *, config: GPTConfig | None = None,
                        highlight: str | Iterable[str] | None = None) -> AccessibleFigure:
    """Draw one architecture figure with its alt text.

    kind: "block" (one transformer block as bloomlib.blocks.Block(config) builds it, (B, T, d_model) on the
    arrows), "gpt" (bloomlib.GPT(config): embeddings, the blocks, final norm, LM head, probabilities; needs a
    causal config) or "families" (encoder-only, decoder-only, encoder-decoder with their attention masks).
    config: a GPTConfig (default: the course preset). highlight: a part name or names to emphasise (thick
    dark-orange outline, bold label), e.g. "attention"; `.parts` of a result lists the names a figure has.
    """
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is unknown; choose one of {KINDS}")
    if config is None and kind != "families":
        config = GPTConfig.preset("course")
    if config is not None and not isinstance(config, GPTConfig):
        raise ValueError(f"config must be a bloomlib GPTConfig or None, got {type(config).__name__}")
    if kind == "block":
        description, title = describe_block(config)
        alt, draw = _block_alt(description, config), partial(_draw_chain, width=6.8, step=0.95, x=3.3, box_w=4.0)
    elif kind == "gpt":
        description, title = describe_gpt(config)
        alt = _gpt_alt(description, config)
        draw = partial(_draw_chain, width=8.6, step=1.0, x=2.75, box_w=4.5, side_dx=4.15, side_w=2.9)
    else:
        description, title = describe_families(config)
        alt, draw = _families_alt(description), _draw_families
    parts = _parts_of(kind, description)
    lit = _check_highlight(highlight, parts, kind)
    if lit:
        alt += f" Highlighted: {_join(sorted(lit))}."
    return AccessibleFigure(draw(description, title, lit), alt, title, parts, description)
