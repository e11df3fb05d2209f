"""Models with named cut points: registry and built-in families."""
from audit.models.base import ModelFactory, SplitModel, flops_per_sample
from audit.registry import Registry

MODELS: Registry[ModelFactory] = Registry("model", "splitaudit.models")
register_model = MODELS.register


def _load_builtins() -> None:
    from audit.models import cnn, torchvision_models  # noqa: F401


_load_builtins()

__all__ = ["MODELS", "ModelFactory", "SplitModel", "flops_per_sample", "register_model"]
