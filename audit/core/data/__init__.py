"""Datasets: registry and built-in loaders.

Every dataset yields inputs x, a primary label (the cloud's task) and one or
more private labels, split by seed into disjoint train / aux / test parts.
"""
import sys

from audit.core.data.base import AuditData, Dataset, LoadedData, Part, audit_data, split_indices
from audit.core.discovery import import_submodules
from audit.core.registry import Registry

DATASETS: Registry[Dataset] = Registry("dataset", "splitaudit.datasets")
register_dataset = DATASETS.register


import_submodules(sys.modules[__name__], skip=("base", "digit_labels", "adult_like"))  # adult_like: a generator

__all__ = [
    "AuditData", "DATASETS", "Dataset", "LoadedData", "Part", "audit_data", "register_dataset", "split_indices",
]
