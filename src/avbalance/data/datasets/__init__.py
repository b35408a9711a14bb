"""Prepared datasets. Importing this package registers every dataset (``build_dataset``) and its
``avbalance prepare`` command. Each module reads one raw layout; ``cached`` reads the caches."""

from . import (  # noqa: F401
    ave,
    avmnist,
    cremad,
    esc50,
    grid,
    kinetics_sounds,
    manifest,
    ssw60,
    ucf101,
    vggsound,
    voxceleb,
)
