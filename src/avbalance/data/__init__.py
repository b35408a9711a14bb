"""Datasets, the data contract and the dataset registry."""

from .base import DatasetInfo, DatasetSplits, TensorDictDataset
from .declaration import DatasetDeclaration
from .registry import DATASETS, build_dataset, dataset_names, get_dataset, prepared_datasets, register_dataset

__all__ = [
    "DATASETS",
    "DatasetDeclaration",
    "DatasetInfo",
    "DatasetSplits",
    "TensorDictDataset",
    "build_dataset",
    "dataset_names",
    "get_dataset",
    "prepared_datasets",
    "register_dataset",
]
