"""Build the course for reading and presenting, from the committed notebooks (saved outputs, never re-run).

    python scripts/build_site.py slides [--out build/slides]   # reveal.js slides, one HTML per lesson
    python scripts/build_site.py site   [--out build/site]     # the lessons as a website + the API reference
    python scripts/build_site.py api    [--out build/site/api] # the API reference alone (Sphinx autodoc)

Both open from disk with no network request: nbconvert's templates load reveal.js, require.js, MathJax and the
Jupyter widgets manager from CDNs, so the templates in site/templates/ point them at copies in `_static/` next to
the HTML, taken from site/node_modules (`npm ci --prefix site`, run here when it is missing) and from
sphinxcontrib-jquery. Figures are embedded in the HTML, BertViz views carry their own JavaScript (see
bloomlib/course/viz.py), saved widget state is drawn by the widgets manager as a static snapshot.
"""
from __future__ import annotations

import argparse
import html
import importlib.resources
import pkgutil
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SITE_SRC = REPO / "site"
TEMPLATES = SITE_SRC / "templates"
NODE_MODULES = SITE_SRC / "node_modules"
LESSONS = REPO / "notebooks"
LEVELS = ["remember", "understand", "apply", "analyze", "evaluate", "create"]  # Bloom's order
STATIC = "_static"
# what the pages load, relative to _static/: (source under site/node_modules, or a Python package's file)
ASSETS = {
    "reveal.js/dist": "reveal.js/dist",
    "reveal.js/plugin/notes": "reveal.js/plugin/notes",
    "mathjax/tex-svg-full.js": "mathjax/es5/tex-svg-full.js",  # all of TeX in one file, SVG output: no fonts
    "require.js": "requirejs/require.js",
    "html-manager": "@jupyter-widgets/html-manager/dist",
}
MARKERS = {  # a file that must exist in site/node_modules for each package
    "reveal.js": "reveal.js/dist/reveal.js", "mathjax": "mathjax/es5/tex-svg-full.js",
    "requirejs": "requirejs/require.js", "html-manager": "@jupyter-widgets/html-manager/dist/embed-amd.js",
}


def ensure_node_modules() -> Path:
    """site/node_modules with the pinned packages of site/package-lock.json (`npm ci` on first use)."""
    if all((NODE_MODULES / m).exists() for m in MARKERS.values()):
        return NODE_MODULES
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("building slides or the site needs npm (Debian: sudo apt-get install npm) to install "
                         "reveal.js, MathJax and the widgets manager into site/node_modules")
    print("installing the pinned JavaScript packages: npm ci --prefix site", flush=True)
    subprocess.run([npm, "ci", "--prefix", str(SITE_SRC), "--no-audit", "--no-fund", "--ignore-scripts"],
                   check=True)
    missing = [m for m in MARKERS.values() if not (NODE_MODULES / m).exists()]
    if missing:
        raise SystemExit(f"npm ci did not install {missing}")
    return NODE_MODULES


def copy_static(out: Path) -> Path:
    """Copy the JavaScript/CSS the pages load into out/_static (source maps left out)."""
    node = ensure_node_modules()
    static = out / STATIC
    for dest, src in ASSETS.items():
        src, target = node / src, static / dest
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.map", "*.esm.js"))
        else:
            shutil.copy2(src, target)
    jquery = importlib.resources.files("sphinxcontrib.jquery").joinpath("jquery.js")
    (static / "jquery.js").write_bytes(jquery.read_bytes())
    shutil.copy2(SITE_SRC / "course.css", static / "course.css")
    return static


# ------------------------------------------------------------------------------------------------- lessons
def lessons() -> list[Path]:
    return sorted(LESSONS.glob("[0-9][0-9]_*.ipynb"))


def lesson_info(path: Path, nb: dict) -> dict:
    """Title, Bloom level and study minutes: from metadata `bloomlib.level` / `bloomlib.study_minutes` where
    declared, else from the intro ("Study time: about 90 minutes" / "about 2.5 hours") and the file name."""
    meta = nb.get("metadata", {}).get("bloomlib", {})
    intro = "".join(nb["cells"][0]["source"]) if nb["cells"] else ""
    title = next((line[2:].strip() for line in intro.splitlines() if line.startswith("# ")), path.stem)
    level = meta.get("level") or path.stem.split("_", 1)[-1]
    minutes = meta.get("study_minutes")
    if minutes is None:
        m = re.search(r"study time:?\**\s*about\s*([\d.]+)\s*(minutes|hours?)", intro, re.I)
        if m:
            minutes = round(float(m.group(1)) * (60 if m.group(2).startswith("hour") else 1))
    return {"path": path, "stem": path.stem, "title": title, "level": level, "minutes": minutes,
            "number": path.stem.split("_", 1)[0]}


def read(path: Path):
    import nbformat

    return nbformat.read(str(path), as_version=4)


def _exporter(kind: str):
    """nbconvert's HTML or slides exporter on our template, every script pointed at _static/."""
    from nbconvert import HTMLExporter, SlidesExporter

    common = dict(extra_template_basedirs=[str(TEMPLATES)], extra_template_paths=[str(TEMPLATES)],
                  require_js_url=f"{STATIC}/require.js", widget_renderer_url=f"{STATIC}/html-manager/embed-amd.js",
                  mathjax_url=f"{STATIC}/mathjax/tex-svg-full.js", jquery_url=f"{STATIC}/jquery.js",
                  mermaid_js_url="", mermaid_layout_elk_js_url="", jupyter_widgets_base_url=f"{STATIC}/")
    if kind == "slides":
        return SlidesExporter(template_name="bloomlib_reveal", reveal_url_prefix=f"{STATIC}/reveal.js",
                              reveal_theme="white", reveal_scroll=True, **common)
    return HTMLExporter(template_name="bloomlib_lab", **common)


def minutes_text(minutes) -> str:
    if minutes is None:
        return "study time not stated"
    hours, rest = divmod(int(minutes), 60)
    return "about " + " ".join(([f"{hours} h"] if hours else []) + ([f"{rest} min"] if rest or not hours else []))


def build_slides(out: Path) -> list[Path]:
    """One reveal.js HTML per lesson in `out` (NN_level.slides.html), reveal.js etc. in out/_static."""
    out.mkdir(parents=True, exist_ok=True)
    copy_static(out)
    exporter, written = _exporter("slides"), []
    for path in lessons():
        body, _ = exporter.from_notebook_node(read(path), resources={"metadata": {"name": path.stem}})
        target = out / f"{path.stem}.slides.html"
        target.write_text(body, encoding="utf-8")
        written.append(target)
    return written


def _nav(infos: list[dict], i: int) -> str:
    """Previous lesson | all lessons | API reference | next lesson (short names, the full title on hover)."""
    def link(j: int, rel: str) -> str:
        if not 0 <= j < len(infos):
            return "<span></span>"
        info = infos[j]
        short = html.escape(info["title"].split(":")[0])
        text = f"&larr; {short}" if rel == "prev" else f"{short} &rarr;"
        return f'<a rel="{rel}" href="{info["stem"]}.html" title="{html.escape(info["title"])}">{text}</a>'

    return (f'<nav class="bloomlib-nav" aria-label="lessons">{link(i - 1, "prev")}'
            f'<span><a href="index.html">All lessons</a> &middot; <a href="api/index.html">API reference</a></span>'
            f'{link(i + 1, "next")}</nav>')


def _index(infos: list[dict]) -> str:
    rows = []
    for level in LEVELS + sorted({i["level"] for i in infos} - set(LEVELS)):
        for info in (i for i in infos if i["level"] == level):
            rows.append(f'<tr><td>{html.escape(level.capitalize())}</td>'
                        f'<td><a href="{info["stem"]}.html">{html.escape(info["title"])}</a></td>'
                        f'<td>{minutes_text(info["minutes"])}</td></tr>')
    total = sum(i["minutes"] or 0 for i in infos)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>The Transformer, one Bloom level at a time</title><link rel="stylesheet" href="{STATIC}/course.css"></head>
<body class="bloomlib-index"><main>
<h1>The Transformer, one Bloom level at a time</h1>
<p>Six lessons, one per level of Bloom's taxonomy, each a JupyterLab notebook shown here with its saved outputs
(figures, attention views, widget snapshots). To run them and answer the predictions and exercises, install the
course and open it with <code>make lab</code>.</p>
<table class="bloomlib-levels"><caption>Lessons by level (about {total / 60:.1f} hours of study in all)</caption>
<thead><tr><th scope="col">Level</th><th scope="col">Lesson</th><th scope="col">Study time</th></tr></thead>
<tbody>{''.join(rows)}</tbody></table>
<p><a href="api/index.html">API reference of bloomlib</a>, the course's companion library (from its docstrings).</p>
</main></body></html>
"""


def build_site(out: Path, *, api: bool = True) -> list[Path]:
    """index.html (lessons by level, study times), one page per lesson with navigation, and api/ (Sphinx)."""
    out.mkdir(parents=True, exist_ok=True)
    copy_static(out)
    exporter = _exporter("html")
    nbs = {p: read(p) for p in lessons()}
    infos = [lesson_info(p, nb) for p, nb in nbs.items()]
    written = []
    for i, info in enumerate(infos):
        resources = {"metadata": {"name": info["title"]}, "bloomlib_nav": _nav(infos, i)}
        body, _ = exporter.from_notebook_node(nbs[info["path"]], resources=resources)
        target = out / f"{info['stem']}.html"
        target.write_text(body, encoding="utf-8")
        written.append(target)
    (out / "index.html").write_text(_index(infos), encoding="utf-8")
    written.insert(0, out / "index.html")
    if api:
        build_api(out / "api")
    return written


# --------------------------------------------------------------------------------------------- API reference
def modules() -> list[str]:
    """Every public module of bloomlib (names without a leading underscore), sorted."""
    import bloomlib

    names = ["bloomlib"] + [m.name for m in pkgutil.walk_packages(bloomlib.__path__, "bloomlib.")]
    return sorted(n for n in names if not any(part.startswith("_") for part in n.split(".")))


def build_api(out: Path) -> Path:
    """Sphinx autodoc of every bloomlib module into `out` (HTML); the sources are generated in out/../.api-src.
    Warnings go to out/warnings.txt (the tests read it: no module may fail to import)."""
    src = out.parent / ".api-src"
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    shutil.copytree(SITE_SRC / "api", src, dirs_exist_ok=True)  # conf.py and _static/
    names = modules()
    for name in names:
        title = f"``{name}``"
        (src / f"{name}.rst").write_text(f"{title}\n{'=' * len(title)}\n\n.. automodule:: {name}\n   :members:\n"
                                         "   :show-inheritance:\n", encoding="utf-8")
    toc = "\n".join(f"   {n}" for n in names)
    (src / "index.rst").write_text(
        "bloomlib API reference\n======================\n\n"
        "The course's companion library, from its docstrings (tensor shapes included). "
        "`Back to the lessons <../index.html>`_.\n\n"
        f".. toctree::\n   :maxdepth: 1\n   :caption: Modules\n\n{toc}\n", encoding="utf-8")
    out.mkdir(parents=True, exist_ok=True)
    warnings = out / "warnings.txt"
    cmd = [sys.executable, "-m", "sphinx", "-b", "html", "-q", "-E", "-j", "1", "-w", str(warnings),
           str(src), str(out)]
    subprocess.run(cmd, check=True, cwd=REPO)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["slides", "site", "api"])
    parser.add_argument("--out", type=Path, help="output folder (default build/slides, build/site, build/site/api)")
    args = parser.parse_args(argv)
    start = time.monotonic()
    out = (args.out or REPO / "build" / {"slides": "slides", "site": "site", "api": "site/api"}[args.what]).resolve()
    if args.what == "slides":
        written = build_slides(out)
    elif args.what == "site":
        written = build_site(out)
    else:
        written = [build_api(out) / "index.html"]
    for path in written:
        print(path.relative_to(REPO) if path.is_relative_to(REPO) else path)
    first = written[0]
    print(f"{args.what}: {len(written)} page(s) in {out} ({time.monotonic() - start:.0f} s); open "
          f"{first.as_uri()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
