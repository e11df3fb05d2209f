"""Files in a task's identity by their contents: a data file or a weights file enters the task key (and so
the cached task model, the committed cells and every stage seed) as the SHA-256 of its bytes, not its path.
An edited file never gets a model or cells cached for its old contents; a moved or renamed copy keeps its
key and seeds. A folder of data files (UTKFace) enters it by its files' names and contents
(:func:`contents_digest`), so the same images in another checkout or folder give the same key."""
from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

from audit.core.feature_store import file_digest

_DIGESTS: dict[tuple[str, int, int], str] = {}


def cached_file_digest(path: Path) -> str | None:
    """:func:`audit.core.feature_store.file_digest` of a file, or None when it cannot be read; remembered
    per (resolved path, size, modification time), so a file is read once per change."""
    try:
        path = path.expanduser().resolve()
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        if key not in _DIGESTS:
            _DIGESTS[key] = file_digest(path)
        return _DIGESTS[key]
    except OSError:
        return None


def contents_digest(paths: Iterable[Path]) -> str | None:
    """Hex SHA-256 over the names and contents of ``paths``, in the given order (a folder's data files by
    their names and bytes, not where the folder is); None when a file cannot be read."""
    h = hashlib.sha256()
    for path in paths:
        digest = cached_file_digest(path)
        if digest is None:
            return None
        h.update(f"{Path(path).name}\0{digest}\n".encode())
    return h.hexdigest()


def keyed_by_contents(params: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """``params`` (a plugin's parameters as JSON) with each file parameter in ``names`` replaced by
    ``{"sha256": digest}``; an unset or unreadable file keeps its value (loading it will say why)."""
    out = dict(params)
    for name in names:
        digest = cached_file_digest(Path(out[name])) if out.get(name) else None
        if digest is not None:
            out[name] = {"sha256": digest}
    return out


class KeyedByFiles:
    """Base of the dataset and model plugin classes: ``key_files`` names the parameters holding a file whose
    contents, not its path, identify the data or the weights in the task key."""

    key_files: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def key_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        """The parameters (JSON) as they enter the task key: ``key_files`` by their contents
        (:func:`keyed_by_contents`)."""
        return keyed_by_contents(params, cls.key_files)
