"""The datasets by name: ``avbalance train --dataset NAME`` and ``avbalance prepare NAME`` look
them up here. Every module of ``avbalance.data.datasets`` is imported on the first look-up, so a
new dataset is one new file there with a :func:`register_dataset` class."""

from __future__ import annotations

from typing import TypeVar

from ..registry import Registry
from .base import DatasetSplits
from .declaration import DatasetDeclaration

DATASETS: Registry = Registry("dataset", package="avbalance.data.datasets", builder_attribute="load")
Declaration = TypeVar("Declaration", bound=type[DatasetDeclaration])


def register_dataset(declaration: Declaration) -> Declaration:
    """Class decorator: register ``declaration`` under its ``name``; a taken name raises."""
    DATASETS.add(declaration.name, declaration)
    return declaration


def dataset_names() -> list[str]:
    return DATASETS.names()


def get_dataset(name: str) -> type[DatasetDeclaration]:
    """The declaration of ``name``; an unknown name is a one-line ConfigError."""
    return DATASETS.get(name)


def prepared_datasets() -> dict[str, type[DatasetDeclaration]]:
    """The datasets ``avbalance prepare`` makes caches of, by name."""
    return {name: DATASETS.get(name) for name in DATASETS.names() if DATASETS.get(name).Options is not None}


def build_dataset(name: str, root: str | None = None, **options) -> DatasetSplits:
    """The splits of dataset ``name`` from the prepared data at ``root``; ``options`` are checked
    against the dataset's ``load`` (one-line ConfigError for an unknown name or a bad value)."""
    return DATASETS.build(name, root, **options)
