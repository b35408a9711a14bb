"""Methods registered by name: ``get_method("ogm_ge", alpha=0.8)``.

Every module of this package is imported on the first look-up, so a new method is one file whose
:class:`~avbalance.methods.base.Method` subclass is decorated with :func:`register_method`.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from ..registry import Registry
from .base import Method

METHODS: Registry[type[Method]] = Registry("method", package="avbalance.methods", option_word="hyperparameter")


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: register a :class:`Method` subclass under ``cls.name`` (a taken name raises)."""
    METHODS.add(cls.name, cls)
    return cls


def method_names() -> list[str]:
    return METHODS.names()


def get_method(name: str, **hparams: Any) -> Method:
    """Build the method ``name`` with validated hyperparameters (one-line ConfigError otherwise)."""
    return METHODS.build(name, **hparams)


def check_param(condition: bool, method: str, message: str) -> None:
    """Refuse a bad hyperparameter value with a one-line :class:`ConfigError`."""
    if not condition:
        raise ConfigError(f"method {method!r}: {message}")
