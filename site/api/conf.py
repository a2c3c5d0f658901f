"""Sphinx configuration of bloomlib's API reference (built by scripts/build_site.py, `make site`).

bloomlib's docstrings are plain text (shapes such as "(B, H, T, d_head)", ASCII formulas), not reStructuredText:
each one is shown as written, in a literal block, so nothing in it is parsed as markup (and mangled or warned
about). Every module documents what it defines; names it re-exports are documented where they are defined.
"""
project = "bloomlib"
author = "the course authors"
copyright = "the course authors (MIT)"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.viewcode"]
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_inherit_docstrings = False  # torch's own docstrings (autograd.Function.forward...) are not ours
autodoc_default_options = {"members": True, "show-inheritance": True, "ignore-module-all": True}
html_theme = "alabaster"
html_theme_options = {"description": "Companion library of the Transformer course", "show_powered_by": False,
                      "page_width": "1240px", "sidebar_width": "280px"}
html_static_path = ["_static"]
html_css_files = ["bloomlib.css"]
highlight_language = "none"  # docstrings are prose with shapes and formulas, not Python: no colouring
html_show_sourcelink = False
suppress_warnings = ["ref.python"]  # type hints naming torch / numpy classes that are not documented here


def _plain_text(app, what, name, obj, options, lines):
    """A docstring as written, in one literal block."""
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        return
    body = ["::", ""] + ["    " + line for line in lines]
    lines[:] = body


def setup(app):
    app.connect("autodoc-process-docstring", _plain_text)
