"""Models with named cut points: registry and built-in families."""
import sys

from audit.core.discovery import import_submodules
from audit.core.models.base import ModelFactory, SplitModel, flops_per_sample
from audit.core.registry import Registry

MODELS: Registry[ModelFactory] = Registry("model", "splitaudit.models")
register_model = MODELS.register


import_submodules(sys.modules[__name__], skip=("base",))

__all__ = ["MODELS", "ModelFactory", "SplitModel", "flops_per_sample", "register_model"]
