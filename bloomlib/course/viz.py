"""Seeing attention: a matplotlib heatmap, and BertViz's head / model views working with no network.

BertViz's stock views load require.js, d3 and jQuery from a CDN, so offline (and in JupyterLab 4) they
stay empty. Here the same views are rendered with the d3 v5 shipped by mpld3 and the jQuery shipped by
sphinxcontrib-jquery, inlined into the output once per kernel (`inline_js_libraries`) and never fetched.
Attention is a list (one entry per layer) of (1, heads, seq, seq) tensors, from any model.
"""
from __future__ import annotations

import importlib.resources
import math
import re
from typing import Sequence

import torch

_LIBRARIES = {  # global name -> (package that ships it, file inside the package)
    "d3": ("mpld3", "js/d3.v5.min.js"),
    "jQuery": ("sphinxcontrib.jquery", "jquery.js"),
}
_INSTALL = "pip install bertviz mpld3 sphinxcontrib-jquery   (or: pip install -e '.[lab]')"
_emitted = False  # the libraries were put into this kernel's page already


def _read_library(name: str) -> str:
    package, path = _LIBRARIES[name]
    try:
        source = importlib.resources.files(package).joinpath(path).read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError) as e:
        raise ImportError(f"bloomlib.course.viz needs the {name} JavaScript shipped by the {package!r} package: "
                          f"{_INSTALL}") from e
    # keep the copyright line, drop its "https://" so the page holds no address at all
    source = source.replace("// https://d3js.org v", "// d3js.org v", 1)
    # run as a plain script even where an AMD/CommonJS loader exists, so the library lands on window
    return f"(function (define, module, exports) {{\n{source}\n}}).call(window);"


def inline_js_libraries() -> "IPython.display.HTML":  # noqa: F821
    """d3 and jQuery as inline <script> tags (≈330 KB): display once per notebook, before the views."""
    from IPython.display import HTML

    global _emitted
    _emitted = True
    return HTML("".join(f'<script type="text/javascript">\n{_read_library(n)}\n</script>\n' for n in _LIBRARIES))


def _bertviz():
    try:
        import bertviz
    except ImportError as e:
        raise ImportError(f"bloomlib.course.viz.head_view / model_view need BertViz: {_INSTALL}") from e
    return bertviz


def _check(attention: Sequence[torch.Tensor], tokens: Sequence[str]) -> list[torch.Tensor]:
    if isinstance(attention, torch.Tensor) or not len(attention):
        raise ValueError("attention must be a non-empty list (one per layer) of (1, heads, seq, seq) tensors")
    n = len(tokens)
    out = []
    for i, a in enumerate(attention):
        a = torch.as_tensor(a).detach().cpu().double().round(decimals=4)  # 4 decimals keep the output small
        if a.dim() == 3:
            a = a[None]
        if a.dim() != 4 or a.shape[0] != 1 or a.shape[-2:] != (n, n):
            raise ValueError(f"attention[{i}] must have shape (1, heads, {n}, {n}) for {n} tokens, "
                             f"got {tuple(a.shape)}")
        out.append(a)
    return out


_REQUIRE_TAG = re.compile(r"<script[^>]*require[^>]*></script>")
_HEADER = re.compile(r"/\*\*.*?\*\*/", re.S)
_CONFIG = re.compile(r"require\.config\(\{.*?\}\);", re.S)
_CALL = re.compile(r"requirejs\(\['jquery', 'd3'\],\s*function\s*\(\$, d3\)\s*\{")


def _offline(html: str) -> str:
    """BertViz's returned HTML, rewired to call its view with window.jQuery / window.d3 (no loader, no CDN)."""
    vis_id = re.search(r'id="(bertviz-[0-9a-f]+)"', html).group(1)
    html = _CONFIG.sub("", _HEADER.sub("", _REQUIRE_TAG.sub("", html)))
    guard = (f"if (!$ || !d3) {{ document.getElementById('{vis_id}').textContent = "
             "'Run bloomlib.course.viz.inline_js_libraries() in a cell above, then this cell again.'; return; }")
    html, n = _CALL.subn("(function ($, d3) {" + guard, html, count=1)
    end = html.rstrip().rfind("});")
    if n != 1 or end < 0:
        raise RuntimeError("this BertViz version's output has an unexpected layout (bloomlib.course.viz knows 1.4)")
    return html[:end] + "})(window.jQuery, window.d3);" + html[end + 3:]


def _view(kind: str, attention, tokens, include_libraries: bool | None, **kwargs):
    from IPython.display import HTML

    attention = _check(attention, tokens)
    fn = getattr(_bertviz(), f"{kind}_view")
    html = _offline(fn(attention, list(map(str, tokens)), html_action="return", **kwargs).data)
    if include_libraries or (include_libraries is None and not _emitted):
        html = inline_js_libraries().data + html
    return HTML(html)


def head_view(attention: Sequence[torch.Tensor], tokens: Sequence[str], *, layer: int | None = None,
              heads: list[int] | None = None, include_libraries: bool | None = None, **kwargs):
    """BertViz's head view (lines from each token to the tokens it attends to, one colour per head).

    attention: per layer, (1, H, T, T) (or (H, T, T)); tokens: T strings. include_libraries: None puts
    d3/jQuery in the first view of the kernel only; True always; False never. Returns IPython HTML.
    """
    return _view("head", attention, tokens, include_libraries, layer=layer, heads=heads, **kwargs)


def model_view(attention: Sequence[torch.Tensor], tokens: Sequence[str], *, include_libraries: bool | None = None,
               **kwargs):
    """BertViz's model view: a thumbnail per (layer, head); click one to enlarge. Arguments as head_view."""
    return _view("model", attention, tokens, include_libraries, **kwargs)


def plot_attention(weights, tokens: Sequence[str], title: str, *, query_tokens: Sequence[str] | None = None,
                   ax=None, annotate: bool | None = None, value_label: str = "attention weight"):
    """Heatmap of one (n_q, n_k) matrix (weights, or scores with value_label="score"): rows are queries,
    columns the keys. Viridis (colour-blind safe), values written in the cells when it is small. Returns the Axes.
    """
    import matplotlib.pyplot as plt

    w = torch.as_tensor(weights).detach().float().cpu()
    query_tokens = tokens if query_tokens is None else query_tokens
    if w.dim() != 2 or w.shape != (len(query_tokens), len(tokens)):
        raise ValueError(f"weights must have shape (n_queries, n_keys) = ({len(query_tokens)}, {len(tokens)}), "
                         f"got {tuple(w.shape)}")
    if ax is None:
        _, ax = plt.subplots(figsize=(1 + 0.5 * len(tokens), 0.8 + 0.45 * len(query_tokens)))
    finite = w[w.isfinite()]
    lo = min(0.0, float(finite.min())) if finite.numel() else 0.0
    hi = max(1.0 if lo == 0.0 else lo + 1e-6, float(finite.max())) if finite.numel() else 1.0
    image = ax.imshow(w.numpy(), cmap="viridis", vmin=lo, vmax=hi)
    ax.set_xticks(range(len(tokens)), [str(t) for t in tokens], rotation=45, ha="right")
    ax.set_yticks(range(len(query_tokens)), [str(t) for t in query_tokens])
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query (attending)")
    ax.set_title(title)
    if annotate or (annotate is None and w.numel() <= 100):
        for (i, j), v in zip(torch.cartesian_prod(torch.arange(w.shape[0]), torch.arange(w.shape[1])).tolist(),
                             w.flatten().tolist()):
            light = (v - lo) / (hi - lo) > 0.6 if math.isfinite(v) else False  # dark text on the light end
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8, color="black" if light else "white")
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label=value_label)
    return ax
