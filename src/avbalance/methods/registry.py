"""Methods registered by name: ``get_method("ogm_ge", alpha=0.8)``."""

from __future__ import annotations

import inspect
import typing
from typing import Any, Callable

import pydantic

from ..errors import ConfigError
from .base import Method

_METHODS: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: register a :class:`Method` subclass under ``cls.name``."""
    _METHODS[cls.name] = cls
    return cls


def method_names() -> list[str]:
    _import_builtin_methods()
    return sorted(_METHODS)


def method_class(name: str) -> type[Method]:
    _import_builtin_methods()
    if name not in _METHODS:
        raise ConfigError(f"unknown method {name!r}; choose one of: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def method_hparams(name: str) -> dict[str, Any]:
    """The hyperparameters of method ``name`` with their defaults."""
    signature = inspect.signature(method_class(name).__init__)
    return {k: p.default for k, p in signature.parameters.items() if k != "self"}


def validate_hparams(name: str, hparams: dict[str, Any]) -> dict[str, Any]:
    """Check names and types of ``hparams`` against the method's constructor; one-line errors."""
    cls = method_class(name)
    fields: dict[str, Any] = {}
    hints = typing.get_type_hints(cls.__init__)
    for key, parameter in inspect.signature(cls.__init__).parameters.items():
        if key == "self" or parameter.kind in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL):
            continue
        annotation = hints.get(key, Any)
        fields[key] = (annotation, parameter.default)
    model = pydantic.create_model(f"{cls.__name__}Params", __config__=pydantic.ConfigDict(extra="forbid"),
                                  **fields)
    try:
        return model(**hparams).model_dump()
    except pydantic.ValidationError as error:
        problem = error.errors()[0]
        key = ".".join(str(p) for p in problem["loc"])
        if problem["type"] == "extra_forbidden":
            raise ConfigError(
                f"method {name!r} has no hyperparameter {key!r}; its hyperparameters are: {', '.join(fields)}"
            ) from None
        raise ConfigError(f"method {name!r}: {key}: {problem['msg']} (got {problem.get('input')!r})") from None


def get_method(name: str, **hparams: Any) -> Method:
    """Build the method ``name`` with validated hyperparameters."""
    cls = method_class(name)
    try:
        return cls(**validate_hparams(name, hparams))
    except ValueError as error:  # a value the constructor rejects (e.g. a negative scale)
        raise ConfigError(f"method {name!r}: {error}") from None


def _import_builtin_methods() -> None:
    import importlib
    import pkgutil

    from .. import methods as package

    for module in pkgutil.iter_modules(package.__path__):
        if module.name not in {"base", "registry"}:
            importlib.import_module(f"{package.__name__}.{module.name}")


MethodFactory = Callable[..., Method]
