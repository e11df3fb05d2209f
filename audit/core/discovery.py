"""Find and import the public modules of a package (plugin modules, CLI subcommands)."""
from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType


def submodule_names(package: ModuleType, skip: tuple[str, ...] = ()) -> list[str]:
    """Sorted names of ``package``'s modules and subpackages not starting with ``_`` nor in ``skip``."""
    return sorted(
        info.name for info in pkgutil.iter_modules(package.__path__)
        if not info.name.startswith("_") and info.name not in skip
    )


def import_submodules(package: ModuleType, skip: tuple[str, ...] = ()) -> list[str]:
    """Import those modules (so the plugins defined in them register themselves); returns their names."""
    names = submodule_names(package, skip)
    for name in names:
        importlib.import_module(f"{package.__name__}.{name}")
    return names
