"""Defenses: registry and built-in plugins.

Every module of this package (except ``base``) registers its defenses when
imported; third parties add defenses through the ``splitaudit.defenses``
entry-point group.
"""
import sys

from audit.core.discovery import import_submodules
from audit.core.registry import Registry
from defenses.base import Defense, FitContext, SplitPoint

DEFENSES: Registry[Defense] = Registry("defense", "splitaudit.defenses")
register_defense = DEFENSES.register
list_defenses = DEFENSES.list
create_defense = DEFENSES.create

import_submodules(sys.modules[__name__], skip=("base",))

__all__ = ["DEFENSES", "Defense", "FitContext", "SplitPoint", "create_defense", "list_defenses", "register_defense"]
