"""Sphinx configuration of the rendered book (`make book`): myst-nb renders the notebooks executed by
`alignbook book` (never re-executes them), sphinx-book-theme gives the sidebar, prev/next and search,
and MathJax is served from a local copy so that math renders without internet."""

import shutil
from pathlib import Path

project = "alignbook"
author = "alignbook contributors"
copyright = "2026 onwards, alignbook contributors"
html_title = "alignbook"

extensions = ["myst_nb", "sphinx.ext.mathjax"]
nb_execution_mode = "off"  # `alignbook book` executed the notebooks already, one kernel each
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_update_mathjax = False
myst_heading_anchors = 3
exclude_patterns = ["**.ipynb_checkpoints", "README.md"]  # README.md is included by index.md
suppress_warnings = [
    "myst.header",
    "myst.xref_missing",
    "mystnb.unknown_mime_type",
    "misc.highlighting_failure",
]

html_theme = "sphinx_book_theme"
html_theme_options = {
    "home_page_in_toc": True,
    "show_navbar_depth": 1,
    "use_download_button": True,
    "use_fullscreen_button": False,
    "show_toc_level": 2,
}
html_static_path = [str(Path(__file__).parent / "_static")]
html_css_files = ["alignbook.css"]
html_favicon = "_static/favicon.svg"
html_last_updated_fmt = None

# MathJax 3 from the `sphinx-mathjax-offline` package, copied next to the pages: no CDN, works offline.
# Its SVG output draws glyphs from data in the script: no web font to fetch (fonts fail over file://).
mathjax_path = "mathjax/tex-svg.js"
mathjax3_config = {
    "tex": {"inlineMath": [["\\(", "\\)"]], "displayMath": [["\\[", "\\]"]], "processEscapes": True},
    "options": {"ignoreHtmlClass": "tex2jax_ignore|mathjax_ignore", "processHtmlClass": "math|output_area"},
    "svg": {"fontCache": "global"},
}
html_context = {"default_mode": "light"}


def _copy_mathjax(app, exception):
    if exception is None and app.builder.format == "html":
        from importlib.metadata import distribution

        dist = distribution("sphinx-mathjax-offline")
        src = Path(dist.locate_file("sphinx-mathjax-offline/static/mathjax"))
        shutil.copytree(src, Path(app.outdir) / "_static" / "mathjax", dirs_exist_ok=True)


def setup(app):
    app.connect("build-finished", _copy_mathjax)
