"""The course as an offline website and bloomlib's API reference (#18), built by `make site`
(scripts/build_site.py site) from the committed notebooks' saved outputs.

Every page is opened from disk in headless Chromium with the network blocked: no request may leave the machine,
every figure must show, every BertViz view must draw its SVG, every saved widget must render as a static snapshot
and every formula be typeset by the local MathJax. The index lists the lessons by Bloom level with study times; each
lesson page links to the previous and next lesson, the index and the API reference. The API reference builds with
no module failing to import and shows the docstrings' shape text.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from offline_pages import REPO, Visit, build, lab, missing_browser, offline_page, problems

sys.path.insert(0, str(REPO / "scripts"))
import build_site  # noqa: E402

LESSONS = build_site.lessons()
ARTIFACTS = REPO / "artifacts" / "site"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
# what the page shows, counted in the browser once the widgets manager and MathJax had their turn
JS_COUNTS = """() => ({
  images: Array.from(document.querySelectorAll('.jp-OutputArea-output img')).map(i => i.complete && i.naturalWidth > 0),
  bertviz: Array.from(document.querySelectorAll('[id^="bertviz-"]')).map(v => v.querySelectorAll('svg *').length),
  // a saved widget view is drawn when the widgets manager put its snapshot next to the view's script tag
  widgets: Array.from(document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]'))
    .filter(s => s.parentElement.querySelector('.widget-subarea .jupyter-widgets')).length,
  widgetErrors: Array.from(document.querySelectorAll('.jupyter-widgets')).filter(
      w => /Error displaying widget|Failed to load model/.test(w.innerText)).length,
  math: document.querySelectorAll('mjx-container').length,
  mathErrors: document.querySelectorAll('mjx-merror, [data-mjx-error]').length,
  nav: Array.from(document.querySelectorAll('nav.bloomlib-nav a')).map(a => a.getAttribute('href')),
})"""
JS_SETTLED = """([views, widgets]) => {
  const drawn = Array.from(document.querySelectorAll('[id^="bertviz-"]')).filter(v => v.querySelector('svg *'));
  const shown = Array.from(document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]'))
    .filter(s => s.parentElement.querySelector('.widget-subarea .jupyter-widgets')).length;
  const mathDone = !document.getElementById('MathJax-script') || window.bloomlibMathTypeset === true;
  return drawn.length >= views && shown >= widgets && mathDone;
}"""


def _figures(output: dict) -> int:
    """Figures one output shows: the <img> tags of its HTML (a figure with its alt text), else 1 for an image."""
    data = output.get("data", {})
    if "text/html" in data:  # the richest representation is the one displayed
        return len(re.findall(r"<img\s", "".join(data["text/html"])))
    return int("image/png" in data or "image/svg+xml" in data)


def expected(path: Path) -> dict:
    """What the committed notebook's saved outputs promise the page will show."""
    nb = json.loads(path.read_text())
    outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
    html = ["".join(o["data"]["text/html"]) for o in outputs if "text/html" in o.get("data", {})]
    state = nb["metadata"].get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    markdown = "".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    return {
        "images": sum(_figures(o) for o in outputs),
        "bertviz": sum(len(re.findall(r'id="bertviz-[0-9a-f]+"', h)) for h in html),
        "widgets": sum(o["data"][WIDGET_VIEW]["model_id"] in state
                       for o in outputs if WIDGET_VIEW in o.get("data", {})),
        "math": len(re.findall(r"\$[^$\n]+\$", markdown)),
    }


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    build("site", out)
    return out


# ------------------------------------------------------------------------------------------- pages, offline
def test_lesson_info_reads_metadata_then_the_intro(tmp_path):
    """Level and study minutes from `bloomlib` metadata where declared, else from the intro and the file name."""
    intro = {"cell_type": "markdown", "metadata": {},
             "source": "# Lesson 9 · Create: x\n\n**Study time:** about 2.5 hours"}
    bare = {"metadata": {}, "cells": [intro]}
    info = build_site.lesson_info(tmp_path / "09_create.ipynb", bare)
    assert (info["level"], info["minutes"], info["title"]) == ("create", 150, "Lesson 9 · Create: x")
    declared = {"metadata": {"bloomlib": {"level": "apply", "study_minutes": 75}}, "cells": [intro]}
    assert build_site.lesson_info(tmp_path / "09_create.ipynb", declared)["minutes"] == 75
    assert build_site.lesson_info(tmp_path / "09_create.ipynb", declared)["level"] == "apply"
    assert [build_site.minutes_text(m) for m in (150, 60, 100, 45, None)] == [
        "about 2 h 30 min", "about 1 h", "about 1 h 40 min", "about 45 min", "study time not stated"]


@pytest.mark.slow
def test_index_lists_lessons_by_level_with_study_times(site):
    page = (site / "index.html").read_text()
    rows = re.findall(r"<tr><td>(\w+)</td><td><a href=\"([\w.]+)\">.*?</a></td><td>([^<]+)</td></tr>", page)
    assert [href for _, href, _ in rows] == [f"{p.stem}.html" for p in LESSONS], rows
    levels = [level.lower() for level, _, _ in rows]
    assert levels == sorted(levels, key=build_site.LEVELS.index), f"not in Bloom's order: {levels}"
    for (level, href, minutes), path in zip(rows, LESSONS):
        info = build_site.lesson_info(path, json.loads(path.read_text()))
        assert minutes == build_site.minutes_text(info["minutes"]) and info["minutes"], (href, minutes)
        assert (site / href).exists()
    assert 'href="api/index.html"' in page


@pytest.mark.slow
def test_api_reference_builds_every_module_with_shapes(site):
    api = site / "api"
    warnings = (api / "warnings.txt").read_text()
    imports = [w for w in warnings.splitlines() if re.search(r"import|No module named|autodoc", w)]
    assert not imports, "\n".join(imports)
    missing = [m for m in build_site.modules() if not (api / f"{m}.html").exists()]
    assert not missing, f"no reference page for {missing}"
    from bs4 import BeautifulSoup

    soup = BeautifulSoup((api / "bloomlib.attention.html").read_text(), "html.parser")
    entry = soup.find(id="bloomlib.attention.scaled_dot_product_attention").find_parent("dl").get_text()
    assert "Returns (output (..., n_q, d_v), weights (..., n_q, n_k))" in entry, entry[:600]
    index = (api / "index.html").read_text()
    assert 'href="bloomlib.attention.html"' in index and 'href="../index.html"' in index


@pytest.mark.slow
@pytest.mark.browser
def test_every_page_opens_offline_and_renders(site, tmp_path):
    """Index, lessons and API pages in Chromium with the network blocked: nothing leaves the machine, and each
    lesson shows all its figures, BertViz views, widget snapshots and formulas."""
    missing_browser()
    pages = [site / "index.html"] + [site / f"{p.stem}.html" for p in LESSONS] + [
        site / "api" / "index.html", site / "api" / "bloomlib.attention.html"]
    failures, seen = [], {}
    with lab.chromium(tmp_path) as browser:
        for page_path in pages:
            visit = Visit(page_path.as_uri())
            lesson = next((p for p in LESSONS if p.stem == page_path.stem), None)
            want = expected(lesson) if lesson else None
            with offline_page(browser, visit.url, visit) as page:
                if want:
                    try:
                        page.wait_for_function(JS_SETTLED, arg=[want["bertviz"], want["widgets"]], timeout=120000)
                    except Exception as e:  # reported below through the counts
                        failures.append(f"{page_path.name}: did not settle: {str(e)[:200]}")
                    page.wait_for_timeout(500)
                counts = page.evaluate(JS_COUNTS)
                if page_path.parent == site:  # what a reader sees first: artifacts/site/*.png
                    ARTIFACTS.mkdir(parents=True, exist_ok=True)
                    page.screenshot(path=str(ARTIFACTS / f"{page_path.stem}.png"))
            found = problems(visit)
            if want:
                seen[page_path.stem] = {k: (len(v) if isinstance(v, list) else v) for k, v in counts.items()
                                        if k in ("images", "bertviz", "widgets", "math")}
                if len(counts["images"]) < want["images"] or not all(counts["images"]):
                    found.append(f"{counts['images'].count(True)} of {want['images']} figures shown")
                if len(counts["bertviz"]) != want["bertviz"] or not all(counts["bertviz"]):
                    found.append(f"BertViz views drawn: {counts['bertviz']} (SVG elements each), expected "
                                 f"{want['bertviz']} views")
                if counts["widgets"] != want["widgets"] or counts["widgetErrors"]:
                    found.append(f"{counts['widgets']} of {want['widgets']} saved widget views drawn "
                                 f"({counts['widgetErrors']} errors)")
                if want["math"] and (counts["math"] < want["math"] or counts["mathErrors"]):
                    found.append(f"{counts['math']} formulas typeset for {want['math']} in the markdown "
                                 f"({counts['mathErrors']} errors)")
                i = LESSONS.index(lesson)
                nav = set(counts["nav"])
                wanted = {"index.html", "api/index.html"}
                wanted |= {f"{LESSONS[i - 1].stem}.html"} if i else set()
                wanted |= {f"{LESSONS[i + 1].stem}.html"} if i + 1 < len(LESSONS) else set()
                if not wanted <= nav:
                    found.append(f"navigation lacks {sorted(wanted - nav)}")
            failures += [f"{page_path.name}: {f}" for f in found]
    print("shown per lesson:", seen)
    assert not failures, "\n".join(failures)


@pytest.mark.browser
def test_the_guard_catches_a_page_that_reaches_out(tmp_path):
    """The offline check itself: a page asking a CDN for a script and an image is reported, a local one is not."""
    missing_browser()
    (tmp_path / "local.js").write_text("window.localLoaded = true;")
    page_path = tmp_path / "out.html"
    page_path.write_text('<html><body><script src="local.js"></script><script src="https://cdn.example.org/x.js">'
                         '</script><img src="http://203.0.113.9/y.png"></body></html>')
    visit = Visit(page_path.as_uri())
    with lab.chromium(tmp_path) as browser, offline_page(browser, visit.url, visit) as page:
        assert page.evaluate("window.localLoaded") is True
    found = problems(visit)
    assert any("cdn.example.org/x.js" in f for f in found) and any("203.0.113.9/y.png" in f for f in found), found
    assert not any("local.js" in f for f in found), found
