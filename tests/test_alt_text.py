"""Alt text for every figure the lessons draw (issue #18, accessibility), and the colour-blind-safe palette rule.

* bloomlib.course.alt_text.describe_figure, checked against figures built here with matplotlib's own API: every
  title and legend label named, axis ranges equal to get_xlim()/get_ylim() rounded, log scales, both panels of a
  two-panel figure, a heatmap's size, masked cells and colour bar;
* show_figures_with_alt_text in a real kernel (nbclient): a figure shown once, as <img alt> + PNG with alt + the
  alt text as text/plain; nothing changes in a kernel that does not call it;
* every image saved in a lesson that calls the opt-in carries alt text; every lesson sets the course palette and
  names only perceptually uniform, colour-vision-friendly colour maps.
"""
from __future__ import annotations

import base64
import html
import re
from pathlib import Path

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.style  # noqa: E402
import nbformat  # noqa: E402

from bloomlib.course import architecture_figure, with_alt_text  # noqa: E402
from bloomlib.course.alt_text import accessible, describe_figure, format_number, with_description  # noqa: E402
from bloomlib.course.figures import DISPLAY_DPI, PALETTE_STYLE  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LESSONS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
OPT_IN = "show_figures_with_alt_text()"
UNIFORM_MAPS = {"viridis", "cividis", "magma", "inferno", "plasma", "Greys", "gray"}


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _range(lo: float, hi: float) -> str:
    """A range as the alt text must read it: each end rounded to 3 significant digits (written here with %g)."""
    return f"from {float(f'{lo:.3g}'):g} to {float(f'{hi:.3g}'):g}"


# ------------------------------------------------------------------------------------------ describe_figure

def test_line_plot_names_title_axes_ranges_and_every_legend_label():
    fig, ax = plt.subplots()
    steps = np.arange(0, 151, 10)
    ax.plot(steps, 4 * np.exp(-steps / 60) + 1.2, label="training loss")
    ax.plot(steps, 4 * np.exp(-steps / 70) + 1.4, "o--", label="validation loss")
    ax.axhline(3.5, color="0.5", ls=":", label="uniform guess")
    ax.set(title="Training a small GPT", xlabel="step", ylabel="cross-entropy loss")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1))
    text = describe_figure(fig)
    assert text.startswith('A line plot titled "Training a small GPT" with 2 lines and 1 reference line'), text
    for label in ("training loss", "validation loss", "uniform guess", "step", "cross-entropy loss"):
        assert f'"{label}"' in text, (label, text)
    assert f'x axis "step" {_range(*ax.get_xlim())}' in text, (ax.get_xlim(), text)
    assert f'y axis "cross-entropy loss" {_range(*ax.get_ylim())}' in text, (ax.get_ylim(), text)
    assert not re.search(r"\d\.\d{4,}", text), f"float noise in {text!r}"


def test_log_scale_and_explicit_limits():
    fig, ax = plt.subplots()
    ax.loglog([64, 128, 256, 512], [1.0, 4.1, 16.3, 65.0], "o-", label="attention time")
    ax.set(xlabel="sequence length T", ylabel="milliseconds", xlim=(50, 600), ylim=(0.5, 100))
    text = describe_figure(fig)
    assert 'x axis "sequence length T" from 50 to 600 (log scale)' in text, text
    assert 'y axis "milliseconds" from 0.5 to 100 (log scale)' in text, text
    assert text.startswith("An untitled line plot with 1 line"), text
    ax.set_xticks([64, 128, 256, 512], ["64", "128", "256", "512"])
    assert "(log scale), ticks at 64, 128, 256 and 512;" in describe_figure(fig)


def test_two_subplots_are_both_described_in_order_with_the_figure_title_and_legend():
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3), layout="constrained")
    left.plot([0, 1, 2], [0.2, 0.5, 0.9], label="per-digit accuracy")
    left.set(title="Accuracy", xlabel="step", ylabel="accuracy")
    left.legend()
    right.bar(["greedy", "top-p", "penalty"], [0.31, 0.72, 0.88], color=["C0", "C1", "C2"])
    right.set(title="distinct-2", xlabel="decoding", ylabel="share of distinct bigrams")
    fig.suptitle("Decoding compared")
    fig.legend(["run A"], loc="outside right center")
    text = describe_figure(fig)
    assert text.startswith('A figure of 2 panels titled "Decoding compared". Panel 1: a line plot titled "Accuracy"'), text
    panel_2 = text.index("Panel 2: a bar chart titled \"distinct-2\" with 3 bars")
    assert text.index('"per-digit accuracy"') < panel_2
    assert 'categories "greedy", "top-p" and "penalty"' in text, text
    assert f'y axis "share of distinct bigrams" {_range(*right.get_ylim())}' in text, text
    assert text.endswith('Figure legend: "run A".'), text


def test_heatmap_size_masked_cells_colour_map_and_colour_bar():
    fig, ax = plt.subplots()
    weights = np.tril(np.full((6, 6), 1 / 6))
    shown = np.ma.masked_where(np.triu(np.ones((6, 6), dtype=bool), 1), weights)
    image = ax.imshow(shown, cmap="cividis", vmin=0, vmax=0.5)
    fig.colorbar(image, ax=ax, label="attention weight")
    ax.set(title="Causal attention", xlabel="key position", ylabel="query position")
    text = describe_figure(fig)
    assert text.startswith('A heatmap titled "Causal attention" with 6 × 6 cells (cividis colour map, 15 masked '
                           'cells in their own colour); colour bar "attention weight" from 0 to 0.5'), text
    assert f'y axis "query position" {_range(*ax.get_ylim())}' in text  # images run top to bottom: 5.5 to -0.5
    assert text.count("heatmap") == 1, "the colour bar's own Axes is not a second panel"


def test_masked_cells_drawn_by_the_course_helper_are_counted():
    from bloomlib.course.masked import plot_masked_attention

    mask = np.tril(np.ones((4, 4), dtype=bool))
    ax = plot_masked_attention(np.tril(np.full((4, 4), 0.25)), mask, list("abcd"), "Masked")
    text = describe_figure(ax.figure)
    assert "4 × 4 cells (viridis colour map, 6 masked cells in their own colour)" in text, text
    assert '"masked (hidden key)"' in text and 'categories "a", "b", "c" and "d"' in text, text


def test_histogram_scatter_and_bar_are_told_apart():
    rng = np.random.default_rng(0)
    fig, (a, b, c) = plt.subplots(1, 3)
    a.hist(rng.normal(size=200), bins=12)
    b.scatter(rng.normal(size=30), rng.normal(size=30))
    c.bar([0, 1, 2], [3, 1, 2], width=0.5)
    text = describe_figure(fig)
    assert "Panel 1: an untitled histogram with 12 bars" in text, text
    assert "Panel 2: an untitled scatter plot with 30 points" in text, text
    assert "Panel 3: an untitled bar chart with 3 bars" in text, text


def test_same_figure_same_words_and_bad_input():
    def build():
        fig, ax = plt.subplots()
        ax.plot(np.linspace(0, 1, 7), np.sin(np.linspace(0, 3, 7)), label="sin")
        ax.legend()
        return fig

    assert describe_figure(build()) == describe_figure(build())
    with pytest.raises(ValueError, match="matplotlib Figure"):
        describe_figure(plt.subplots()[1])


def test_a_drawing_has_no_plotted_data_and_keeps_its_authors_text():
    block = architecture_figure("block")
    assert describe_figure(block.figure) == "A figure with no plotted data."
    assert with_description(block) is block  # shown exactly as before


@pytest.mark.parametrize("value, words", [(0, "0"), (4096, "4096"), (63.5, "63.5"), (-0.5, "-0.5"),
                                          (0.012345, "0.0123"), (1.0499999, "1.05"), (0.99999, "1"),
                                          (123456.7, "123457"), (2.5e9, "2.5e9"), (-3e-5, "-3e-5")])
def test_format_number(value, words):
    assert format_number(value) == words


def test_authors_text_comes_first_then_the_description():
    fig, ax = plt.subplots()
    ax.plot([1, 2, 3], [3, 2, 1])
    ax.set_title("Falling")
    shown = with_description(with_alt_text(fig, "The loss falls."))
    assert shown.alt_text.startswith("The loss falls. In detail: A line plot titled \"Falling\""), shown.alt_text


def test_cropped_png_width_is_read_off_the_png():
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([0, 1], [0, 1], label="a label placed far outside the axes")
    ax.legend(loc="upper left", bbox_to_anchor=(1.05, 1))
    shown = accessible(fig)
    png = shown.png()
    width = int.from_bytes(png[16:20], "big")
    assert width > 4 * DISPLAY_DPI, "the legend outside the axes is kept in the PNG"
    assert shown.width_px(png) == round(width * DISPLAY_DPI / shown.dpi)
    data, metadata = shown._repr_mimebundle_()
    assert metadata["image/png"]["alt"] == shown.alt_text == describe_figure(fig)


# ------------------------------------------------------------------------------- the opt-in, in a kernel

def _run(cells: list[str], tmp_path: Path) -> list[list[dict]]:
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    return [c.outputs for c in nb.cells]


def _img_alt(output: dict) -> str:
    found = re.search(r'<img [^>]*alt="([^"]*)"', output["data"]["text/html"])
    assert found, output["data"]["text/html"][:300]
    return html.unescape(found.group(1))


def test_opt_in_shows_every_figure_once_with_its_alt_text(tmp_path):
    outputs = _run([
        "import matplotlib.pyplot as plt\nfrom bloomlib.course import show_figures_with_alt_text, with_alt_text, "
        "architecture_figure\nshow_figures_with_alt_text()\nshow_figures_with_alt_text()  # a second call: harmless",
        "plt.plot([0, 1, 2], [1, 3, 2], label='rising then falling')\nplt.title('One line')\nplt.legend()\nplt.show()",
        "fig, ax = plt.subplots()\nax.bar(['a', 'b'], [1, 2])\nax.set_title('Shown at the end of the cell');",
        "fig, ax = plt.subplots()\nax.plot([1, 2], [2, 1])\nax.set_title('A cell value')\nfig",
        "fig, ax = plt.subplots()\nax.plot([1, 2], [2, 1])\nax.set_title('Mine')\nwith_alt_text(fig, 'Author text.')",
        "block = architecture_figure('block')\nblock",
        "print(block.alt_text)",
    ], tmp_path)
    figures = outputs[1:6]
    for cell in figures:
        assert len(cell) == 1, f"one output per figure, got {[o.get('output_type') for o in cell]}"
    for cell, title in zip(figures[:4], ["One line", "Shown at the end of the cell", "A cell value", "Mine"]):
        out = cell[0]
        alt = _img_alt(out)
        assert f'titled "{title}"' in alt, alt
        assert out["data"]["text/plain"] == f"[figure] {alt}"
        assert out["metadata"]["image/png"]["alt"] == alt
        assert base64.b64decode(out["data"]["image/png"])[:8] == b"\x89PNG\r\n\x1a\n"
    assert '"rising then falling"' in _img_alt(figures[0][0])
    assert _img_alt(figures[3][0]).startswith("Author text. In detail: A line plot titled \"Mine\"")
    assert _img_alt(figures[4][0]) == outputs[6][0]["text"].strip(), "an architecture figure keeps its own text"


def test_without_the_opt_in_nothing_changes(tmp_path):
    outputs = _run(["import matplotlib.pyplot as plt\nimport bloomlib.course",
                    "plt.plot([0, 1], [1, 0])\nplt.title('Plain')\nplt.show()"], tmp_path)
    (out,) = outputs[1]
    assert "text/html" not in out["data"] and "image/png" in out["data"]
    assert not out.get("metadata", {}).get("image/png", {}).get("alt")


# ------------------------------------------------------------------------------------------- the lessons

def _code(lesson: Path) -> list[str]:
    return [c.source for c in nbformat.read(lesson, as_version=4).cells if c.cell_type == "code"]


def _images(lesson: Path):
    nb = nbformat.read(lesson, as_version=4)
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            if "image/png" in output.get("data", {}):
                yield index, output


@pytest.mark.parametrize("lesson", LESSONS, ids=[p.stem for p in LESSONS])
def test_every_image_a_lesson_shows_has_alt_text(lesson):
    if not any(OPT_IN in src for src in _code(lesson)):
        pytest.skip(f"{lesson.name} does not call bloomlib.course.{OPT_IN} in its setup cell yet")
    assert OPT_IN in _code(lesson)[0], "the opt-in belongs in the setup cell (the first code cell)"
    images = list(_images(lesson))
    assert images, f"{lesson.name} saves no image output"
    for index, output in images:
        found = re.search(r'<img [^>]*alt="([^"]+)"', output["data"].get("text/html", ""))
        alt = output.get("metadata", {}).get("image/png", {}).get("alt", "")
        assert (found and found.group(1).strip()) or alt.strip(), f"{lesson.name} cell {index}: an image without alt text"


@pytest.mark.parametrize("lesson", LESSONS, ids=[p.stem for p in LESSONS])
def test_every_lesson_uses_the_course_palette_and_uniform_colour_maps(lesson):
    code = _code(lesson)
    assert f'plt.style.use("{PALETTE_STYLE}")' in code[0], f"{lesson.name}: the setup cell must set the course palette"
    named = []
    for src in code:
        named += re.findall(r"""cmap\s*=\s*["']([^"']+)["']""", src)
        named += re.findall(r"""(?:get_cmap\(|colormaps\[)\s*["']([^"']+)["']""", src)
        for variable in re.findall(r"cmap\s*=\s*([A-Za-z_]\w*)\b(?!\s*[.(\[])", src):
            assigned = "\n".join(code)
            assert re.search(rf"""\b{variable}\s*=\s*(?:plt\.get_cmap|matplotlib\.colormaps\[|plt\.colormaps\[)""",
                             assigned), f"{lesson.name}: cmap={variable} is not made from a named colour map"
    bad = sorted({name for name in named if name.removesuffix("_r") not in UNIFORM_MAPS})
    assert not bad, f"{lesson.name} names colour maps that are not perceptually uniform: {bad}"


def test_the_course_palette_keeps_a_uniform_default_colour_map():
    with matplotlib.style.context(PALETTE_STYLE):
        assert matplotlib.rcParams["image.cmap"] in UNIFORM_MAPS
    assert PALETTE_STYLE in matplotlib.style.available
