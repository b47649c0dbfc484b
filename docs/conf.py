"""Sphinx configuration of the fffsklearn documentation (build: make -C docs html)."""

import fffsklearn

project = "fffsklearn"
release = version = fffsklearn.__version__
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
]
autosummary_generate = True
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
intersphinx_mapping = {}  # the build machines reach no documentation hosts
html_theme = "pydata_sphinx_theme"
html_theme_options = {"navigation_with_keys": False}
exclude_patterns = ["_build", "generated/*.examples"]
sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"\.py$",  # run every example, not only plot_*
    "download_all_examples": False,
    "doc_module": ("fffsklearn",),
    "backreferences_dir": None,
}
