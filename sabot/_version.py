"""Sabot's version, written here and nowhere else.

pyproject.toml reads it (``[tool.setuptools.dynamic]``) without importing Sabot,
``sabot.__version__`` re-exports it and ``sabot --version`` prints it.
"""

__version__ = "0.1.0"
