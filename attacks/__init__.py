"""The attack zoo: registry and built-in plugins.

Every module of this package (except ``base`` and ``metrics``) registers its
attacks when imported; third parties add attacks through the
``splitaudit.attacks`` entry-point group.
"""
import sys

from attacks.base import Attack, AttackContext, AttackView, ReleaseChannel, Score
from audit.core.discovery import import_submodules
from audit.core.registry import Registry

ATTACKS: Registry[Attack] = Registry("attack", "splitaudit.attacks")
register_attack = ATTACKS.register
list_attacks = ATTACKS.list
create_attack = ATTACKS.create

import_submodules(sys.modules[__name__], skip=("base", "metrics"))

__all__ = ["ATTACKS", "Attack", "AttackContext", "AttackView", "ReleaseChannel", "Score", "create_attack", "list_attacks",
           "register_attack"]
