"""Sphinx configuration of the API reference (``make docs``): built from the docstrings, offline, warnings as errors."""

import os
import sys

sys.path.insert(0, os.path.abspath("../.."))

project = "pyro_meta"
author = "the pyro_meta developers"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.autosummary"]
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": True}
autodoc_typehints = "none"  # the docstrings state the types and shapes
autodoc_mock_imports = []
napoleon_numpy_docstring = True
napoleon_google_docstring = False
napoleon_use_rtype = False
autosummary_generate = False
html_theme = "alabaster"
exclude_patterns = ["_build"]
nitpicky = False
suppress_warnings = ["autodoc.import_object"]
napoleon_use_ivar = True
