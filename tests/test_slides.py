"""Slides (#17): every lesson converts to reveal.js HTML (`make slides`, scripts/build_site.py) that opens from disk
in headless Chromium with the network blocked, initializes reveal.js and shows more than one slide; and every
lesson's cells carry slide metadata that makes sense as slides (sections are slides, the setup is skipped); and
jupyterlab-rise presents a lesson in JupyterLab offline."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from offline_pages import REPO, Visit, build, lab, missing_browser, offline_page, problems

LESSONS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
SLIDE_TYPES = {"slide", "subslide", "fragment", "-", "skip", "notes"}


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem)
def test_every_cell_has_slide_metadata(path):
    """A slide type on every cell; the title and every `## ` section start a slide; at least one cell (setup) is
    skipped; no slide type outside reveal.js's."""
    cells = json.loads(path.read_text())["cells"]
    types = [c["metadata"].get("slideshow", {}).get("slide_type") for c in cells]
    missing = [i for i, t in enumerate(types) if t is None]
    assert not missing, f"{path.name}: cells {missing} have no metadata.slideshow.slide_type"
    assert set(types) <= SLIDE_TYPES, f"{path.name}: unknown slide types {set(types) - SLIDE_TYPES}"
    assert types[0] == "slide", f"{path.name}: the title cell should start a slide"
    sections = [i for i, c in enumerate(cells) if c["cell_type"] == "markdown"
                and re.match(r"##\s", "".join(c["source"]))]
    not_slides = [i for i in sections if types[i] != "slide"]
    assert not not_slides, f"{path.name}: section headings in cells {not_slides} do not start a slide"
    assert "skip" in types, f"{path.name}: no cell is skipped (the setup cell should be)"
    assert types.count("slide") > 1


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("slides")
    build("slides", out)
    return out


@pytest.mark.slow
@pytest.mark.browser
def test_slides_open_offline_with_more_than_one_slide(slides, tmp_path):
    missing_browser()
    pages = sorted(slides.glob("*.slides.html"))
    assert [p.name.split(".")[0] for p in pages] == [p.stem for p in LESSONS]
    assert not any("unpkg.com" in p.read_text() or "cdnjs" in p.read_text() for p in pages)
    failures, counts = [], {}
    with lab.chromium(tmp_path) as browser:
        for page_path in pages:
            visit = Visit(page_path.as_uri())
            with offline_page(browser, visit.url, visit) as page:
                page.wait_for_function("window.Reveal && window.Reveal.isReady && window.Reveal.isReady()",
                                       timeout=60000)
                counts[page_path.name] = page.evaluate("window.Reveal.getTotalSlides()")
                page.evaluate("window.Reveal.next()")
                shown = page.evaluate("window.Reveal.getIndices()")
            found = problems(visit)
            if counts[page_path.name] <= 1:
                found.append(f"{counts[page_path.name]} slide(s)")
            if shown == {"h": 0, "v": 0, "f": None} or shown.get("h", 0) + shown.get("v", 0) < 1:
                found.append(f"Reveal.next() did not move on: {shown}")
            failures += [f"{page_path.name}: {f}" for f in found]
    print("slides per lesson:", counts)
    assert not failures, "\n".join(failures)


RISE_LESSONS = [p for p in LESSONS if json.loads(p.read_text())["metadata"].get("rise")]


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(not RISE_LESSONS, reason="no lesson declares RISE settings (metadata.rise)")
def test_rise_presents_a_lesson_in_jupyterlab_offline(tmp_path):
    """jupyterlab-rise (the `lab` extra) shows the first lesson that declares metadata.rise as a slideshow in
    JupyterLab with more than one slide, and nothing leaves the machine (RISE's default theme, "simple", would ask
    Google Fonts for its fonts: the lessons choose reveal.js's "white", whose fonts ship with RISE)."""
    missing_browser()
    lesson = RISE_LESSONS[0]
    root = tmp_path / "root"
    (root / "notebooks").mkdir(parents=True)
    shutil.copy(lesson, root / "notebooks" / lesson.name)
    with lab.LabServer(root, tmp_path / "work") as server, lab.chromium(tmp_path) as browser:
        url = f"{server.base}/rise/notebooks/{lesson.name}?token={server.token}"
        visit = Visit(url)
        try:
            with offline_page(browser, url, visit) as page:
                page.wait_for_function("document.querySelectorAll('.reveal .slides > section').length > 1",
                                       timeout=120000)
                n = page.evaluate("document.querySelectorAll('.reveal .slides > section').length")
        finally:
            server.shutdown_kernels()
    outside = [p for p in problems(visit) if p.startswith("request left")]
    assert not outside, "\n".join(outside)
    print(f"RISE: {lesson.name} shows {n} slides")
