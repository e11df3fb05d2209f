"""splitaudit: adversarial privacy auditing for split (edge/cloud) deep inference.

The engine: config, data, models and cut points, runner, results store, report, CLI.
``from audit import Audit, load_config`` imports lazily, so ``import audit.<module>``
stays cheap and free of import cycles with the plugin packages.
"""
from importlib import import_module
from typing import Any

_EXPORTS = {
    "Audit": "audit.api",
    "Report": "audit.api",
    "TorchData": "audit.core.data.lightning_data",
    "save_feature_dump": "audit.core.data.feature_dump",
    "AuditConfig": "audit.config",
    "build_config": "audit.config",
    "load_config": "audit.config",
    "AuditInputError": "audit.core.errors",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'audit' has no attribute {name!r}")
