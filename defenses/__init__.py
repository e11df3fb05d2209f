"""Defenses: registry and built-in plugins.

Third parties add defenses through the ``splitaudit.defenses`` entry-point group.
"""
from audit.registry import Registry
from defenses.base import Defense, FitContext, SplitPoint

DEFENSES: Registry[Defense] = Registry("defense", "splitaudit.defenses")
register_defense = DEFENSES.register
list_defenses = DEFENSES.list
create_defense = DEFENSES.create


def _load_builtins() -> None:
    from defenses import identity, noise  # noqa: F401


_load_builtins()

__all__ = ["DEFENSES", "Defense", "FitContext", "SplitPoint", "create_defense", "list_defenses", "register_defense"]
