"""A dataset declared in one class: its name, how ``avbalance prepare`` reads its raw layout, and
how training loads what was prepared.

::

    @register_dataset                             # in avbalance/data/datasets/birds.py
    class Birds(PreparedDataset):
        "Bird songs with videos: clips/*.mp4 + labels.csv"  # the docstring's first line: the summary

        Options = BirdOptions                     # the dataset's own prepare options (a model)
        prepare_defaults = {"seconds": 5.0}      # its defaults for the shared options

        @staticmethod
        def list_clips(root: Path, options: BirdOptions) -> Listing: ...

``avbalance prepare birds --help`` is generated from ``Options``; ``build_dataset("birds", CACHE,
frames=2)`` calls :meth:`load` (a :class:`PreparedDataset` loads the frames and audio of its cache).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from .base import DatasetSplits
from .prepare.options import PrepareOptions, make_options, settings_from_options
from .prepare.plan import Listing, PrepareSettings


class DatasetDeclaration:
    """Everything about one dataset. Subclasses set the class attributes and implement
    :meth:`load`; those that are prepared from raw files also set ``Options`` and implement
    :meth:`list_clips`."""

    name: ClassVar[str]  # by default the module's name: datasets/cremad.py declares "cremad"
    summary: ClassVar[str] = ""  # by default the docstring's first line: the dataset and its raw layout
    examples: ClassVar[str] = ""  # example prepare commands, one per line
    # The prepare options: a PrepareOptions subclass; None for a dataset that is not prepared.
    Options: ClassVar[type[PrepareOptions] | None] = None
    video: ClassVar[bool] = True  # the dataset has frames: the frame options apply
    audio: ClassVar[str | None] = "ogm"  # its default audio recipe; None when it has no audio
    prepare_defaults: ClassVar[dict[str, Any]] = {}  # its defaults for the shared options (fps, size, ...)

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = cls.__module__.rsplit(".", 1)[-1]
        if "summary" not in cls.__dict__ and cls.__doc__:
            cls.summary = cls.__doc__.strip().splitlines()[0]

    @classmethod
    def option_defaults(cls) -> dict[str, Any]:
        """The dataset's defaults of the prepare options that differ from the models' own."""
        return {**({"audio": cls.audio} if cls.audio else {}), **cls.prepare_defaults}

    @classmethod
    def options(cls, **values: Any) -> PrepareOptions:
        """The prepare options from ``values`` and the dataset's defaults; a bad value is a
        one-line ConfigError naming the flag."""
        if cls.Options is None:
            raise TypeError(f"dataset {cls.name!r} is not prepared from raw files")
        return make_options(cls.Options, cls.option_defaults(), values)

    @staticmethod
    def list_clips(root: Path, options: Any) -> Listing:
        """The clips of the raw dataset at ``root``, with labels, splits and source files."""
        raise NotImplementedError

    @classmethod
    def settings(cls, options: Any) -> PrepareSettings:
        """How clips become arrays (saved with the cache; a rerun must give the same)."""
        return settings_from_options(options, has_audio=cls.audio is not None)

    @classmethod
    def load(cls, root: str | None = None, **options: Any) -> DatasetSplits:
        """The train / val / test splits; ``build_dataset`` checks ``options`` against this signature."""
        raise NotImplementedError
