"""Datasets registered by name; ``avbalance train --dataset NAME`` looks them up here."""

from __future__ import annotations

import inspect
from typing import Callable

from ..errors import ConfigError
from .base import DatasetSplits

DatasetBuilder = Callable[..., DatasetSplits]
_DATASETS: dict[str, DatasetBuilder] = {}


def register_dataset(name: str) -> Callable[[DatasetBuilder], DatasetBuilder]:
    """Register ``builder(root, **options) -> DatasetSplits`` under ``name``."""

    def decorator(builder: DatasetBuilder) -> DatasetBuilder:
        _DATASETS[name] = builder
        return builder

    return decorator


def dataset_names() -> list[str]:
    _import_builtin_datasets()
    return sorted(_DATASETS)


def build_dataset(name: str, root: str | None = None, **options) -> DatasetSplits:
    """Build the splits of dataset ``name`` from the prepared data at ``root``."""
    _import_builtin_datasets()
    if name not in _DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; choose one of: {', '.join(sorted(_DATASETS))}")
    builder = _DATASETS[name]
    accepted = inspect.signature(builder).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            valid = sorted(k for k in accepted if k != "root")
            raise ConfigError(
                f"dataset {name!r} has no option {unknown[0]!r}; its options are: {', '.join(valid) or 'none'}"
            )
    return builder(root=root, **options)


def _import_builtin_datasets() -> None:
    # Importing the modules runs their @register_dataset decorators.
    from . import synthetic  # noqa: F401

    import importlib
    import importlib.util

    if importlib.util.find_spec(f"{__package__}.datasets") is not None:
        importlib.import_module(f"{__package__}.datasets")  # the prepared real datasets
