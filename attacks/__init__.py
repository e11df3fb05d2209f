"""The attack zoo: registry and built-in plugins.

Third parties add attacks through the ``splitaudit.attacks`` entry-point group.
"""
from attacks.base import Attack, AttackContext, AttackView, Score
from audit.registry import Registry

ATTACKS: Registry[Attack] = Registry("attack", "splitaudit.attacks")
register_attack = ATTACKS.register
list_attacks = ATTACKS.list
create_attack = ATTACKS.create


def _load_builtins() -> None:
    from attacks import attribute  # noqa: F401


_load_builtins()

__all__ = ["ATTACKS", "Attack", "AttackContext", "AttackView", "Score", "create_attack", "list_attacks", "register_attack"]
