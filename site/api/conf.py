"""Sphinx configuration of bloomlib's API reference (built by scripts/build_site.py, `make site`)."""
project = "bloomlib"
author = "the course authors"
copyright = "the course authors (MIT)"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.viewcode"]
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True, "show-inheritance": True}
html_theme = "alabaster"
html_theme_options = {"description": "Companion library of the Transformer course", "show_powered_by": False}
html_static_path: list[str] = []
html_show_sourcelink = False
nitpicky = False
