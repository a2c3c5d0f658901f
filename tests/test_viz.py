"""bloomlib.course.viz: BertViz views that need no network, and the matplotlib heatmap."""
from __future__ import annotations

import re
import sys

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

from bloomlib.course import viz  # noqa: E402

TOKENS = ["the", "cat", "sat", "zebra42"]
# XML namespace names are identifiers that d3 passes to createElementNS; a browser never fetches them
NAMESPACES = {"http://www.w3.org/1999/xhtml", "http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink",
              "http://www.w3.org/XML/1998/namespace", "http://www.w3.org/2000/xmlns/"}


def _attention(layers=2, heads=3, n=len(TOKENS)):
    g = torch.Generator().manual_seed(0)
    return [torch.softmax(torch.randn(1, heads, n, n, generator=g), -1) for _ in range(layers)]


def _assert_offline(html: str):
    urls = set(re.findall(r"[a-z]+://[^\s\"'()<>]*", html))
    assert urls <= NAMESPACES, urls - NAMESPACES
    for bad in ("//cdn", "cdnjs", "require.js", "require.config", "requirejs(", "@import"):
        assert bad not in html, bad
    assert not re.search(r"<(script|link|img|iframe)[^>]*\b(src|href)\s*=", html)


@pytest.mark.parametrize("view", ["head_view", "model_view"])
def test_views_are_self_contained(view, monkeypatch):
    monkeypatch.setattr(viz, "_emitted", False)
    html = getattr(viz, view)(_attention(), TOKENS).data
    _assert_offline(html)
    for t in TOKENS:
        assert f'"{t}"' in html
    d3 = viz.importlib.resources.files("mpld3").joinpath("js/d3.v5.min.js").read_text()
    jq = viz.importlib.resources.files("sphinxcontrib.jquery").joinpath("jquery.js").read_text()
    assert d3.splitlines()[1][:2000] in html and jq[200:2200] in html  # the shipped sources, inlined
    assert html.count("})(window.jQuery, window.d3);") == 1 and "const params" in html
    again = getattr(viz, view)(_attention(), TOKENS).data  # the kernel has the libraries now: not repeated
    _assert_offline(again)
    assert d3.splitlines()[1][:2000] not in again and len(again) < 50_000
    assert getattr(viz, view)(_attention(), TOKENS, include_libraries=True).data.count("jQuery v3") == 1


def test_attention_values_reach_the_view():
    att = _attention(layers=1, heads=1)
    html = viz.head_view(att, TOKENS, include_libraries=False).data
    params = re.search(r"const params = (\{.*?\});", html).group(1)
    import json

    got = torch.tensor(json.loads(params)["attention"][0]["attn"])
    assert torch.allclose(got, att[0], atol=1e-4)


def test_bad_attention_shapes_raise_value_error():
    with pytest.raises(ValueError, match=r"attention\[1\] must have shape \(1, heads, 4, 4\)"):
        viz.head_view([_attention()[0], torch.rand(1, 2, 3, 3)], TOKENS)
    with pytest.raises(ValueError, match="non-empty list"):
        viz.model_view(torch.rand(1, 2, 4, 4), TOKENS)


def test_missing_bertviz_is_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "bertviz", None)  # import bertviz now raises ImportError
    with pytest.raises(ImportError, match="need BertViz: pip install bertviz"):
        viz.head_view(_attention(), TOKENS)


def test_missing_javascript_package_is_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(viz._LIBRARIES, "d3", ("no_such_package_xyz", "d3.js"))
    with pytest.raises(ImportError, match="'no_such_package_xyz' package"):
        viz.inline_js_libraries()


def test_plot_attention_draws_the_weights():
    w = torch.softmax(torch.randn(3, 4, generator=torch.Generator().manual_seed(1)), -1)
    ax = viz.plot_attention(w, TOKENS, "demo", query_tokens=["q0", "q1", "q2"])
    assert ax.get_title() == "demo" and ax.get_xlabel().startswith("key") and ax.get_ylabel().startswith("query")
    assert torch.allclose(torch.as_tensor(ax.images[0].get_array().data), w)
    assert [t.get_text() for t in ax.get_xticklabels()] == TOKENS
    assert len(ax.texts) == 12 and ax.texts[0].get_text() == f"{w[0, 0].item():.2f}"
    scores = torch.tensor([[-2.0, 0.5], [float("-inf"), 3.0]])  # masked (-inf) entries, negative scores
    ax2 = viz.plot_attention(scores, ["a", "b"], "scores", value_label="score")
    assert ax2.images[0].get_clim() == (-2.0, 3.0) and ax2.images[0].colorbar.ax.get_ylabel() == "score"
    with pytest.raises(ValueError, match=r"\(n_queries, n_keys\) = \(3, 4\)"):
        viz.plot_attention(w.T, TOKENS, "bad", query_tokens=["q0", "q1", "q2"])
    import matplotlib.pyplot as plt

    plt.close("all")


@pytest.mark.slow
def test_views_draw_in_a_real_browser_without_network(tmp_path):
    """Headless Chromium: the views draw their SVG with the inlined d3/jQuery and request nothing; a view
    whose libraries are absent says so instead of failing silently."""
    pytest.importorskip("playwright.sync_api")
    from pathlib import Path

    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        pytest.skip("needs /usr/bin/chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    pages = {"head": viz.inline_js_libraries().data + viz.head_view(_attention(), TOKENS, include_libraries=False).data,
             "model": viz.model_view(_attention(), TOKENS, include_libraries=True).data,
             "bare": viz.head_view(_attention(), TOKENS, include_libraries=False).data}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=["--no-sandbox"])
        try:
            got = {}
            for name, body in pages.items():
                (tmp_path / f"{name}.html").write_text(f"<html><body>{body}</body></html>")
                page, errors, requests = browser.new_page(), [], []
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.on("request", lambda r: requests.append(r.url))
                page.goto((tmp_path / f"{name}.html").as_uri())
                page.wait_for_timeout(500)
                got[name] = (page.evaluate("Array.from(document.querySelectorAll('svg text')).map(t => t.textContent)"),
                             page.evaluate("document.body.innerText"), errors,
                             [u for u in requests if not u.startswith("file:")])
        finally:
            browser.close()
    head, model, bare = got["head"], got["model"], got["bare"]
    assert head[0] == TOKENS + TOKENS and head[2] == [] and head[3] == []  # left and right token columns
    assert {"Layers", "Heads"} <= set(model[0]) and model[2] == [] and model[3] == []
    assert "inline_js_libraries()" in bare[1] and bare[0] == [] and bare[3] == []
