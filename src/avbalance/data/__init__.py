"""Datasets, the data contract and the dataset registry."""

from .base import DatasetInfo, DatasetSplits, TensorDictDataset
from .registry import build_dataset, dataset_names, register_dataset

__all__ = ["DatasetInfo", "DatasetSplits", "TensorDictDataset", "build_dataset", "dataset_names", "register_dataset"]
