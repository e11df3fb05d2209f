"""``splitaudit list``: every registered dataset, model, defense and attack with its parameters.

Describing the plugins means importing them, and they import torch, torchvision and Lightning
(Lightning alone pulls in torchmetrics, scipy and torch._dynamo): about 5 s on a quiet machine,
much more on a busy one, for a few KB of text. So a fresh ``splitaudit list`` prints from a
description cache (``CACHE/list/<fingerprint>.json``) keyed by what the text depends on: the
Python environment, splitaudit's version, the size and modification time of every source file of
the built-in plugin packages and of the packages behind ``splitaudit.*`` entry points. Any change
makes a new key; a miss (or a process that has imported the plugins already, e.g. after
registering plugins at run time) describes the live registries.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
from importlib.metadata import entry_points
from importlib.util import find_spec
from pathlib import Path

KINDS = {"datasets": ("audit.core.data", "DATASETS"), "models": ("audit.core.models", "MODELS"),
         "defenses": ("defenses", "DEFENSES"), "attacks": ("attacks", "ATTACKS")}
CACHE_VERSION = 1
log = logging.getLogger("splitaudit")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="list datasets, models, defenses and attacks with their parameters")
    p.add_argument("kind", nargs="?", choices=list(KINDS), help="only this kind")
    p.set_defaults(handler=main)


def catalogue_text(kind: str) -> str:
    """The text ``list`` prints for one kind, from the live registry."""
    from importlib import import_module

    from audit.core.registry import REQUIRED

    module, attr = KINDS[kind]
    lines = [f"{kind}:"]
    for name, doc, fields in getattr(import_module(module), attr).catalogue():
        lines.append(f"  {name:<18} {doc}")
        for fname, ftype, default in fields:
            shown = default if default is REQUIRED else f"= {default!r}"
            lines.append(f"      {fname}: {ftype} {shown}")
    return "\n".join(lines) + "\n"


def _source_roots() -> list[str]:
    """Folders (or files) of the built-in plugin packages and of every ``splitaudit.*`` entry point's package."""
    eps = entry_points()
    tops = ["audit", "attacks", "defenses"]
    tops += [ep.value.split(":")[0].split(".")[0] for g in eps.groups if g.startswith("splitaudit.")
             for ep in eps.select(group=g)]
    roots = []
    for top in dict.fromkeys(tops):
        spec = find_spec(top)  # a top-level name: locates without importing
        if spec is not None:
            roots += list(spec.submodule_search_locations or [spec.origin or ""])
    return roots


def fingerprint() -> str:
    """A hash of everything the ``list`` text depends on (without importing any plugin)."""
    from audit.cli import version

    h = hashlib.sha256(json.dumps([CACHE_VERSION, sys.version, sys.prefix, version()]).encode())
    eps = entry_points()
    for group in sorted(g for g in eps.groups if g.startswith("splitaudit.")):
        for ep in sorted(eps.select(group=group), key=lambda e: e.name):
            h.update(f"{group}|{ep.name}|{ep.value}|{getattr(ep.dist, 'version', '')}\n".encode())
    for root in _source_roots():
        files = [Path(root)] if os.path.isfile(root) else sorted(Path(root).rglob("*.py"))
        for path in files:
            st = path.stat()
            h.update(f"{path}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def _cache_file() -> Path:
    cache = Path(os.environ.get("SPLITAUDIT_CACHE", Path.home() / ".cache" / "splitaudit")).expanduser()
    return cache / "list" / f"{fingerprint()}.json"


def descriptions() -> dict[str, str]:
    """kind -> text, from the cache when this process has not imported the plugins yet."""
    live = any(KINDS[k][0] in sys.modules for k in KINDS)
    path = None if live else _cache_file()
    if path is not None:
        try:
            cached = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(cached, dict) and set(cached) == set(KINDS):
                return cached
        except (OSError, ValueError):
            pass
    texts = {kind: catalogue_text(kind) for kind in KINDS}
    if path is not None:
        from audit.core.store import write_json_atomic

        try:
            for old in path.parent.glob("*.json"):  # descriptions of earlier sources
                old.unlink(missing_ok=True)
            write_json_atomic(path, texts)
        except OSError as err:  # a read-only cache: only the next `list` is slower
            log.debug("list: description cache not written (%s)", err)
    return texts


def main(args: argparse.Namespace) -> int:
    texts = descriptions()
    for kind in KINDS:
        if args.kind and kind != args.kind:
            continue
        print(texts[kind])
    return 0
