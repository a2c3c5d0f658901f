"""Alt text for any matplotlib figure, written from what the figure holds, and the lessons' opt-in that shows every
figure with it.

    describe_figure(fig)           # 'A line plot titled "Loss" with 2 lines; x axis "step" from 0 to 150; ...'
    show_figures_with_alt_text()   # a lesson's setup cell, once: every figure the notebook shows carries alt text

`describe_figure` reads each Axes (colour bars are read with the image they belong to): the kind of plot (heatmap,
image, line plot, scatter plot, bar chart, histogram, shaded band), its title, each axis's label, range (rounded to
3 significant digits, never fewer integer digits) and log scale, the categories named on an axis, the legend's
entries, a heatmap's size, colour map, masked cells and colour bar. The same figure gives the same words.

`show_figures_with_alt_text()` registers a display handler for matplotlib's Figure (and for AccessibleFigure) on the
current IPython shell's `display_formatter` and nothing else: a figure shown by `plt.show()`, by the inline backend
at the end of a cell (matplotlib_inline's flush_figures calls `display(figure)`) or as a cell's last value is
published once, as `AccessibleFigure(fig, describe_figure(fig))`'s bundle (HTML <img alt>, PNG with metadata alt,
the alt text as text/plain) and, made by pyplot, closed in pyplot (as `with_alt_text` does) so that the end-of-cell
flush does not show it again. An AccessibleFigure made by `with_alt_text`/`architecture_figure` keeps its author's
text first, followed by the description when its figure holds plotted data. Outside IPython it does nothing; a
second call registers the same handlers again.
"""
from __future__ import annotations

import math

import numpy as np

from bloomlib.course.figures import DISPLAY_DPI, AccessibleFigure, _join, close_in_pyplot

MAX_CATEGORIES = 12  # an axis naming more categories than this is described by their count


def format_number(value: float) -> str:
    """A number for prose: 3 significant digits but every integer digit (4096, 63.5, 0.0123, 1.23e9), no float noise."""
    v = float(value)
    if not math.isfinite(v):
        return str(v)
    if v == 0:
        return "0"
    if 1e-3 <= abs(v) < 1e6:
        digits = max(0, 2 - math.floor(math.log10(abs(v))))
        text = f"{v:.{digits}f}"
        text = text.rstrip("0").rstrip(".") if "." in text else text
        return "0" if text == "-0" else text
    mantissa, exponent = f"{v:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _quote(text: str) -> str:
    return '"' + " ".join(text.split()) + '"'


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _categories(axis) -> list[str]:
    """The labels an axis shows at ticks its author placed (set_xticks(..., labels), categorical data); [] for
    matplotlib's own numeric ticks."""
    from matplotlib.category import StrCategoryFormatter
    from matplotlib.ticker import FixedFormatter, FuncFormatter

    if not isinstance(axis.get_major_formatter(), (FixedFormatter, FuncFormatter, StrCategoryFormatter)):
        return []
    return [" ".join(t.get_text().split()) for t in axis.get_majorticklabels() if t.get_text().strip()]


def _is_number(text: str) -> bool:
    try:
        float(text.replace("\N{MINUS SIGN}", "-").replace(",", ""))
    except ValueError:
        return False
    return True


def _axis(ax, name: str) -> str:
    axis = ax.xaxis if name == "x" else ax.yaxis
    lo, hi = ax.get_xlim() if name == "x" else ax.get_ylim()
    label = axis.get_label().get_text()
    words = f"{name} axis" + (f" {_quote(label)}" if label.strip() else " (unlabelled)")
    words += f" from {format_number(lo)} to {format_number(hi)}"
    if axis.get_scale() != "linear":
        words += f" ({axis.get_scale()} scale)"
    names = _categories(axis)
    if names and all(_is_number(n) for n in names):
        if len(names) <= MAX_CATEGORIES:
            words += ", ticks at " + _join(names)
    elif len(names) > MAX_CATEGORIES:
        words += f", {len(names)} categories from {_quote(names[0])} to {_quote(names[-1])}"
    elif names:
        words += ", categories " + _join([_quote(n) for n in names])
    return words


def _legend(legend) -> str:
    """A legend's title and entries ('' for no legend, or one without entries)."""
    entries = [] if legend is None else [_quote(t.get_text()) for t in legend.get_texts() if t.get_text().strip()]
    if not entries:
        return ""
    title = legend.get_title().get_text()
    return "legend" + (f" {_quote(title)}" if title.strip() else "") + ": " + _join(entries)


def _colour_range(mappable) -> str:
    lo, hi = mappable.get_clim()
    bar = getattr(mappable, "colorbar", None)
    if bar is not None:
        label = (bar.ax.get_ylabel() if bar.orientation == "vertical" else bar.ax.get_xlabel()).strip()
        words = "colour bar" + (f" {_quote(label)}" if label else "")
    else:
        words = "colours"
    if lo is None or hi is None:
        return words
    return f"{words} from {format_number(lo)} to {format_number(hi)}"


def _heatmap(mappable, ax, shape: tuple[int, ...]) -> list[tuple[str | None, str]]:
    rows, cols = shape[:2]
    words = f"{rows} × {cols} cells ({mappable.get_cmap().name} colour map"
    data = mappable.get_array()
    masked = int(np.ma.count_masked(data)) if data is not None else 0
    masked += len(getattr(ax, "masked_cells", ()) or ())  # bloomlib.course.masked draws them as patches
    if masked:
        words += f", {masked} masked cell{'s' * (masked != 1)} in their own colour"
    return [("heatmap", words + ")"), (None, _colour_range(mappable))]


def _bars(container) -> tuple[str, int]:
    """('bar chart' | 'histogram', number of bars): a histogram's bars touch, a bar chart's stand apart."""
    rects = list(container.patches)
    if not rects:
        return "bar chart", 0
    vertical = container.orientation == "vertical"
    spans = sorted((r.get_x(), r.get_x() + r.get_width()) if vertical else (r.get_y(), r.get_y() + r.get_height())
                   for r in rects)
    touching = len(spans) > 2 and all(math.isclose(a[1], b[0], rel_tol=1e-6, abs_tol=1e-9)
                                      for a, b in zip(spans, spans[1:]))
    return ("histogram" if touching else "bar chart"), len(rects)


def _is_reference(line, ax) -> bool:
    """axhline / axvline: a line drawn across the whole Axes (one of its coordinates in Axes units)."""
    return tuple(line.get_transform().contains_branch_seperately(ax.transData)) != (True, True)


def _contents(ax) -> list[tuple[str | None, str]]:
    """What an Axes plots as (kind of plot, what it holds) pairs (kind "": no kind of its own, such as reference
    lines; None: a detail such as a colour bar's range); [] when it plots nothing (an Axes turned off that
    holds no image: a drawing made of patches, lines and text, like the architecture figures)."""
    from matplotlib.collections import LineCollection, PathCollection, PolyCollection, QuadMesh
    from matplotlib.container import BarContainer

    parts: list[tuple[str, str]] = []
    for image in ax.images:
        shape = np.shape(image.get_array())
        parts += [("image", f"{shape[0]} × {shape[1]} pixels")] if len(shape) == 3 else _heatmap(image, ax, shape)
    if not ax.axison:
        return parts
    bars: dict[str, list[int]] = {}
    for container in ax.containers:
        if isinstance(container, BarContainer):
            kind, n = _bars(container)
            bars.setdefault(kind, []).append(n)
    for kind, counts in bars.items():
        groups = f" in {len(counts)} series" if len(counts) > 1 else ""
        parts.append((kind, _plural(sum(counts), "bar") + groups))
    for coll in ax.collections:
        if isinstance(coll, QuadMesh):
            parts += _heatmap(coll, ax, np.shape(coll.get_array()))
        elif isinstance(coll, PathCollection):
            parts.append(("scatter plot", _plural(len(coll.get_offsets()), "point")))
            if getattr(coll, "colorbar", None) is not None:
                parts.append((None, _colour_range(coll)))
        elif isinstance(coll, PolyCollection):
            parts.append(("", "a shaded band"))
        elif isinstance(coll, LineCollection) and len(coll.get_segments()):
            parts.append(("", _plural(len(coll.get_segments()), "line segment")))
    data_lines = [line for line in ax.lines if not _is_reference(line, ax)]
    curves = [line for line in data_lines if line.get_linestyle() not in ("None", " ", "")]
    points = [line for line in data_lines if line not in curves and line.get_marker() not in (None, "None", "")]
    reference = [line for line in ax.lines if line not in data_lines]
    if curves:
        parts.append(("line plot", _plural(len(curves), "line")))
    if points:
        parts.append(("scatter plot", _plural(sum(len(line.get_xdata()) for line in points), "marked point")))
    if reference:
        parts.append(("", _plural(len(reference), "reference line")))
    return parts


def describe_axes(ax) -> str:
    """One Axes in a sentence without its final full stop ('' when it plots nothing)."""
    parts = _contents(ax)
    if not parts:
        return ""
    kinds = list(dict.fromkeys(kind for kind, _ in parts if kind)) or ["plot"]
    titles = [ax.get_title(loc) for loc in ("left", "center", "right") if ax.get_title(loc).strip()]
    words = (f"A {_join(kinds)} titled {_quote(' '.join(titles))}" if titles else f"An untitled {_join(kinds)}")
    words += " with " + _join([w for kind, w in parts if kind is not None])
    details = [w for kind, w in parts if kind is None] + [_axis(ax, "x"), _axis(ax, "y"), _legend(ax.get_legend())]
    return words + "; " + "; ".join(d for d in details if d)


def describe_figure(fig) -> str:
    """Alt text for a matplotlib Figure, written from what it holds: one sentence per Axes that plots data (its kind,
    title, axes with their ranges and scales, legend, colour bar; a heatmap's size and masked cells), then the
    figure's own legend. Colour bars are described with their image; axes that only hold a drawing are left out.
    """
    from matplotlib.figure import Figure

    if not isinstance(fig, Figure):
        raise ValueError(f"fig must be a matplotlib Figure, got {type(fig).__name__}")
    panels = [d for d in (describe_axes(ax) for ax in fig.axes if not hasattr(ax, "_colorbar")) if d]
    suptitle = getattr(fig, "_suptitle", None)
    head = suptitle.get_text().strip() if suptitle is not None else ""
    legends = [text for text in map(_legend, fig.legends) if text]
    if not panels:
        return f"A figure titled {_quote(head)} with no plotted data." if head else "A figure with no plotted data."
    if len(panels) == 1:
        text = (f"A figure titled {_quote(head)}. " if head else "") + panels[0] + "."
    else:
        text = f"A figure of {len(panels)} panels" + (f" titled {_quote(head)}" if head else "") + ". "
        text += " ".join(f"Panel {i}: {p[0].lower() + p[1:]}." for i, p in enumerate(panels, 1))
    if legends:
        text += " Figure " + "; ".join(legends) + "."
    return text


def plots_data(fig) -> bool:
    """Whether any Axes of the figure plots data (an architecture drawing does not)."""
    return any(_contents(ax) for ax in fig.axes if not hasattr(ax, "_colorbar"))


def accessible(fig) -> AccessibleFigure:
    """A pyplot or lesson Figure as the opt-in displays it: its description as alt text, cropped like the inline
    backend's PNG, at DISPLAY_DPI."""
    suptitle = getattr(fig, "_suptitle", None)
    return AccessibleFigure(fig, describe_figure(fig), suptitle.get_text() if suptitle is not None else "",
                            dpi=DISPLAY_DPI, tight=True)


def with_description(figure: AccessibleFigure) -> AccessibleFigure:
    """An author's AccessibleFigure with the figure's description after the author's text, shown like `accessible`
    (when it plots data; a drawing such as an architecture figure is returned as it is)."""
    if not plots_data(figure.figure):
        return figure
    own = figure.alt_text.strip()
    text = own + ("" if own.endswith((".", "!", "?")) else ".") + " In detail: " + describe_figure(figure.figure)
    return AccessibleFigure(figure.figure, text, figure.title, figure.parts, figure.description,
                            dpi=DISPLAY_DPI, tight=True)


def _publish(figure: AccessibleFigure) -> None:
    from IPython.display import publish_display_data

    publish_display_data(*figure._repr_mimebundle_())


def _show_figure(fig) -> None:
    """Publish a Figure with its alt text; a pyplot figure is then closed in pyplot (its data stays), so the inline
    backend's end-of-cell flush does not show it a second time (a Figure as a cell's value)."""
    _publish(accessible(fig))
    close_in_pyplot(fig)


def _show_accessible(figure: AccessibleFigure) -> None:
    _publish(with_description(figure))


def show_figures_with_alt_text() -> None:
    """From now on in this IPython shell, every matplotlib figure the notebook shows (plt.show(), the end of a
    cell, a Figure as a cell's value, display(fig)) is published once with alt text: describe_figure(fig), after
    the author's own text for an AccessibleFigure. Registers two handlers on this shell's display formatter; no
    effect outside IPython; calling it again is harmless."""
    from IPython import get_ipython
    from matplotlib.figure import Figure

    shell = get_ipython()
    if shell is None:
        return
    handlers = shell.display_formatter.ipython_display_formatter
    handlers.for_type(Figure, _show_figure)
    handlers.for_type(AccessibleFigure, _show_accessible)
