"""``splitaudit list``: every registered dataset, model, defense and attack with its parameters."""
from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="list datasets, models, defenses and attacks with their parameters")
    p.add_argument("kind", nargs="?", choices=["datasets", "models", "defenses", "attacks"], help="only this kind")
    p.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    from attacks import ATTACKS
    from audit.data import DATASETS
    from audit.models import MODELS
    from audit.registry import REQUIRED
    from defenses import DEFENSES

    registries = {"datasets": DATASETS, "models": MODELS, "defenses": DEFENSES, "attacks": ATTACKS}
    for kind, registry in registries.items():
        if args.kind and kind != args.kind:
            continue
        print(f"{kind}:")
        for name, doc, fields in registry.describe():
            print(f"  {name:<18} {doc}")
            for fname, ftype, default in fields:
                shown = default if default is REQUIRED else f"= {default!r}"
                print(f"      {fname}: {ftype} {shown}")
        print()
    return 0
