"""Balancing methods, one file each, registered by name (see :func:`get_method`)."""

from .base import Method
from .registry import get_method, method_class, method_hparams, method_names, register_method

__all__ = ["Method", "get_method", "method_class", "method_hparams", "method_names", "register_method"]
