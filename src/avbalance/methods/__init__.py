"""Balancing methods, one file each, registered by name (see :func:`get_method`)."""

from .base import Method
from .registry import METHODS, get_method, method_names, register_method

__all__ = ["METHODS", "Method", "get_method", "method_names", "register_method"]
