"""Names from configs and data files turned into file names that stay where they are put.

Cut-point names, task keys, figure titles and the like come from user configs, feature dumps and
third-party models; joined into a path as they are, a name such as ``/some/dir``, ``../../x`` or
``features//etc`` would send writes (and the clean-up that removes a cut point's folder) outside
the run's folder. Every name that becomes a path goes through :func:`path_component`, and every
folder the engine removes is checked with :func:`inside`.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_UNSAFE_RUN = re.compile(r"[^A-Za-z0-9._-]+")
MARK = "~"  # never in a name kept as it is: an escaped name cannot equal a kept one


def path_component(name: str) -> str:
    """``name`` as one file-name component: kept as it is when it is a plain name (letters, digits,
    ``._-``, not starting with a dot or dash, at most 64 characters); otherwise its plain characters
    (at most 40) + ``~`` + 12 hex digits of its SHA-256, e.g. ``'../x'`` -> ``'x~8b1a...'``.

    Collision-free: a kept name has no ``~``, an escaped one always has, and two escaped names share
    a file name only if their hashes' first 48 bits collide."""
    name = str(name)
    if _SAFE.fullmatch(name):
        return name
    plain = _UNSAFE_RUN.sub("_", name).strip("._-")[:40]
    return f"{plain}{MARK}{hashlib.sha256(name.encode('utf-8', 'surrogatepass')).hexdigest()[:12]}"


def inside(root: Path, *names: str) -> Path:
    """``root / path_component(n1) / path_component(n2) / ...``, checked to resolve inside ``root``
    (a symlink planted in the tree cannot redirect it). Raises ValueError otherwise."""
    root = Path(root)
    path = root.joinpath(*(path_component(n) for n in names))
    resolved_root = root.resolve()
    if resolved_root != path.resolve() and resolved_root not in path.resolve().parents:
        raise ValueError(f"{path} resolves outside {root}; refusing to use it")
    return path
