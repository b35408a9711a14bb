"""One way to make a thing available by name: methods, datasets, fusion heads, encoders, optimizers.

A :class:`Registry` maps names to builders (classes or functions). Registering a second builder
under a taken name is an error; :meth:`Registry.build` checks the options against the builder's
signature (names and types, through pydantic) and turns every mistake into a one-line
:class:`~avbalance.errors.ConfigError`. Built-in entries are discovered by importing every module
of a package, so adding one is adding one file::

    METHODS = Registry("method", package="avbalance.methods", option_word="hyperparameter")

    @METHODS.register("my_method")
    class MyMethod(Method): ...

    METHODS.build("my_method", alpha=0.5)
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import typing
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import pydantic

from .errors import ConfigError

T = TypeVar("T", bound=Callable[..., Any])


class RegistryError(Exception):
    """A programming mistake in registering (a name taken twice): not a user's input error."""


class Registry(Generic[T]):
    """Names -> builders of one kind of thing.

    ``kind`` names the thing in messages ("method", "dataset", ...). ``package``: the dotted name of
    the package whose modules are imported, once, before the first look-up, so that their
    ``@register`` decorators run (modules whose names start with ``_`` are skipped).
    ``option_word`` names a builder's keyword arguments in messages ("option", "hyperparameter").
    ``sorted_names``: list names alphabetically (default) or in the order they were registered.
    ``builder_attribute``: entries are declarations that hold more than a builder (a dataset also
    says how it is prepared); :meth:`build` calls this attribute of the entry.
    """

    def __init__(
        self,
        kind: str,
        package: str | None = None,
        option_word: str = "option",
        sorted_names: bool = True,
        builder_attribute: str | None = None,
    ):
        self.kind, self.package, self.option_word = kind, package, option_word
        self.sorted_names = sorted_names
        self.builder_attribute = builder_attribute
        self._entries: dict[str, T] = {}
        self._discovered = package is None
        self._resolver: Callable[[str], T | None] | None = None
        self._resolver_hint = ""

    # -- registering -------------------------------------------------------------------------------
    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: register ``builder`` under ``name``; a taken name raises :class:`RegistryError`."""

        def decorator(builder: T) -> T:
            self.add(name, builder)
            return builder

        return decorator

    def add(self, name: str, builder: T) -> None:
        existing = self._entries.get(name)
        if existing is not None and not _same_definition(existing, builder):
            raise RegistryError(
                f"{self.kind} name {name!r} is taken by {_qualified(existing)}; "
                f"{_qualified(builder)} needs another name"
            )
        self._entries[name] = builder

    def set_resolver(self, resolver: Callable[[str], T | None], hint: str = "") -> None:
        """Names not registered are passed to ``resolver``, which returns a builder for the names it
        knows (e.g. ``timm:resnet18``) and None for the others; ``hint`` ends the unknown-name message."""
        self._resolver, self._resolver_hint = resolver, hint

    def remove(self, name: str) -> None:
        """Forget ``name`` (for tests and plug-ins that register temporarily)."""
        self._entries.pop(name, None)

    # -- looking up --------------------------------------------------------------------------------
    def names(self) -> list[str]:
        self._discover()
        return sorted(self._entries) if self.sorted_names else list(self._entries)

    def __contains__(self, name: object) -> bool:
        self._discover()
        return name in self._entries

    def get(self, name: str) -> T:
        """The builder registered under ``name``; an unknown name is a one-line ConfigError."""
        self._discover()
        if name in self._entries:
            return self._entries[name]
        resolved = self._resolver(name) if self._resolver is not None else None
        if resolved is None:
            hint = f" {self._resolver_hint}" if self._resolver_hint else ""
            raise ConfigError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}{hint}")
        return resolved

    def builder(self, name: str) -> Callable[..., Any]:
        """What :meth:`build` calls for ``name``: the entry, or its ``builder_attribute``."""
        entry = self.get(name)
        return getattr(entry, self.builder_attribute) if self.builder_attribute else entry

    def defaults(self, name: str, skip: int = 0) -> dict[str, Any]:
        """The keyword options of ``name`` with their defaults (the first ``skip`` parameters are
        positional inputs, not options)."""
        return {key: parameter.default for key, parameter in _options(self.builder(name), skip)}

    def validate(self, name: str, options: dict[str, Any], skip: int = 0) -> dict[str, Any]:
        """Check names and types of ``options`` against the builder's signature; return them with
        the defaults filled in and values converted (e.g. ``"0.5"`` -> ``0.5`` for a float)."""
        builder = self.builder(name)
        parameters = _options(builder, skip)
        if any(p.kind is p.VAR_KEYWORD for p in inspect.signature(builder).parameters.values()):
            return dict(options)  # a builder taking **options checks them itself
        hints = _type_hints(builder)
        fields = {key: (hints.get(key, Any), parameter.default) for key, parameter in parameters}
        settings = pydantic.ConfigDict(extra="forbid", arbitrary_types_allowed=True, allow_inf_nan=False)
        model = pydantic.create_model(f"{name}_options", __config__=settings, **fields)
        try:
            return model(**options).model_dump()
        except pydantic.ValidationError as error:
            problem = error.errors()[0]
            key = ".".join(str(part) for part in problem["loc"])
            if problem["type"] == "extra_forbidden":
                known = ", ".join(fields)
                valid = f"its {self.option_word}s are: {known}" if known else f"it takes no {self.option_word}s"
                raise ConfigError(f"{self.kind} {name!r} has no {self.option_word} {key!r}; {valid}") from None
            raise ConfigError(f"{self.kind} {name!r}: {key}: {problem['msg']} (got {problem.get('input')!r})") from None

    def build(self, name: str, *inputs: Any, **options: Any) -> Any:
        """``builder(*inputs, **validated options)``. Positional ``inputs`` (a dataset's root, a
        head's feature sizes) are passed as they are; a ``ValueError`` the builder raises for a
        value it rejects becomes a one-line ConfigError."""
        builder = self.builder(name)
        values = self.validate(name, options, skip=len(inputs))
        try:
            return builder(*inputs, **values)
        except ValueError as error:
            subject = f"{self.kind} {name!r}"  # not repeated when the builder's message names it already
            message = str(error) if str(error).startswith(subject) else f"{subject}: {error}"
            raise ConfigError(message) from None

    # -- discovery ---------------------------------------------------------------------------------
    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True  # set first: a module being imported may look names up
        package = importlib.import_module(self.package)
        for module in pkgutil.iter_modules(package.__path__):
            if not module.name.startswith("_"):
                importlib.import_module(f"{self.package}.{module.name}")


def _options(builder: Callable[..., Any], skip: int) -> list[tuple[str, inspect.Parameter]]:
    """The keyword parameters of ``builder`` (a class: its ``__init__``) after the first ``skip``."""
    parameters = list(inspect.signature(builder).parameters.items())[skip:]
    variadic = (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
    return [(key, parameter) for key, parameter in parameters if parameter.kind not in variadic]


def _type_hints(builder: Callable[..., Any]) -> dict[str, Any]:
    target = builder.__init__ if inspect.isclass(builder) else builder
    try:
        return typing.get_type_hints(target)
    except (NameError, TypeError):  # an annotation that cannot be resolved: check names only
        return {}


def _qualified(builder: Any) -> str:
    return f"{getattr(builder, '__module__', '?')}.{getattr(builder, '__qualname__', repr(builder))}"


def _same_definition(a: Any, b: Any) -> bool:
    """The same builder, or the same definition imported again (a module reloaded)."""
    return a is b or _qualified(a) == _qualified(b)
