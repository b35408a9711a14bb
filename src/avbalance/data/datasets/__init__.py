"""Prepared datasets. Importing this package registers every dataset (``build_dataset``) and its
``avbalance prepare`` command."""

from . import cremad  # noqa: F401
