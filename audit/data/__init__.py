"""Datasets: registry and built-in loaders.

Every dataset yields inputs x, a primary label (the cloud's task) and one or
more private labels, split by seed into disjoint train / aux / test parts.
"""
from audit.data.base import AuditData, Dataset, LoadedData, Part, split_indices
from audit.registry import Registry

DATASETS: Registry[Dataset] = Registry("dataset", "splitaudit.datasets")
register_dataset = DATASETS.register


def _load_builtins() -> None:
    from audit.data import csv_table, digits, synthetic, torchvision_sets, utkface  # noqa: F401


_load_builtins()

__all__ = ["AuditData", "DATASETS", "Dataset", "LoadedData", "Part", "register_dataset", "split_indices"]
