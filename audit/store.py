"""The results store: one JSON file per finished cell, written atomically (temp file + rename).

Layout of an output folder::

    audit.json            manifest: config hash, config, shard
    .lock                 held (flock) by the run writing into the folder
    cells/<cell id>.json  {"cell_id", "records"}: one file per finished cell
    tasks/<task key>.json summary of a prepared (task, seed)

A cell file appears whole or not at all (written to a temporary file in the
same folder, fsynced, renamed over the final name, folder fsynced), so a run
killed at any point (SIGKILL included) leaves only whole cells, and a rerun
finishes with every cell exactly once. Only the driver process writes here,
and only one run at a time: a second run into the same folder is refused
while the first holds the lock (the lock dies with its process).

The manifest records the config hash: a folder holding another audit's
results is refused (the message names the keys that differ), never mixed.
"""
from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from audit.errors import AuditInputError

MANIFEST = "audit.json"
LOCK = ".lock"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_write(path: Path, fsync: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary path beside ``path``; when the block ends, rename it onto ``path``.

    Readers see the old file or the new one, never half of one. The temporary name is unique to
    this writer, so two processes filling the same cache file at once (two audits sharing a cache)
    cannot write into each other's file. On error the temporary file is removed and ``path`` is
    left as it was. ``fsync`` flushes the file and its folder to disk (results cells)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; reports and caches are ordinary files
        yield tmp
        if fsync:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
        if fsync:
            _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` via :func:`atomic_write` (fsynced)."""
    with atomic_write(path, fsync=True) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1, sort_keys=False, allow_nan=False)


def config_differences(old: Any, new: Any, prefix: str = "", limit: int = 6) -> list[str]:
    """Dotted keys where two JSON-like configs differ, with both values (at most ``limit``)."""
    out: list[str] = []

    def walk(a: Any, b: Any, where: str) -> None:
        if len(out) >= limit:
            return
        if isinstance(a, dict) and isinstance(b, dict):
            for k in list(a) + [k for k in b if k not in a]:
                walk(a.get(k, "<missing>"), b.get(k, "<missing>"), f"{where}.{k}" if where else str(k))
        elif (isinstance(a, list) and isinstance(b, list) and len(a) == len(b)
              and any(isinstance(v, (dict, list)) for v in a + b)):
            for i, (x, y) in enumerate(zip(a, b)):
                walk(x, y, f"{where}.{i}")
        elif a != b:
            out.append(f"{where or '(config)'}: {json.dumps(a)} there, {json.dumps(b)} here")

    walk(old, new, prefix)
    return out


def shard_label(shard: tuple[int, int] | None) -> str:
    return "the whole grid" if shard is None else f"shard {shard[0]}/{shard[1]}"


class ResultStore:
    """Cell results under ``out_dir/cells/<cell_id>.json``; task summaries under ``out_dir/tasks/``.

    ``resume``: None (default) resumes a folder of the same audit, starts a new
    one in an empty or missing folder, and refuses anything else; True requires
    a folder of the same audit to resume; False requires a fresh folder.
    ``shard``: (i, n) when this run computes only shard i of n.
    Use as a context manager (or call :meth:`close`) to release the folder's lock.
    """

    def __init__(
        self,
        out_dir: Path,
        config_hash: str,
        config: dict[str, Any],
        resume: bool | None = None,
        shard: tuple[int, int] | None = None,
    ):
        self.out_dir = Path(out_dir)
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise AuditInputError(f"--out {str(self.out_dir)!r} is a file, not a folder; pass another --out")
        manifest = self.out_dir / MANIFEST
        if manifest.exists():
            existing = self._read_manifest(manifest)
            if resume is False:
                raise AuditInputError(
                    f"{self.out_dir} already holds results of this or another audit; pass --resume to continue "
                    "it, or another --out"
                )
            if existing.get("config_hash") != config_hash:
                diff = config_differences(existing.get("config"), config)
                detail = ("; differs in " + "; ".join(diff)) if diff else ""
                raise AuditInputError(
                    f"{self.out_dir} holds results of another audit (config hash {existing.get('config_hash')}, "
                    f"this one {config_hash}{detail}); pass another --out, or remove the folder to start over"
                )
            old_shard = tuple(existing["shard"]) if existing.get("shard") else None
            if old_shard != shard:
                raise AuditInputError(
                    f"{self.out_dir} holds {shard_label(old_shard)} of this audit, this run computes "
                    f"{shard_label(shard)}; use one --out per shard and `splitaudit merge` to combine them"
                )
        elif resume is True:
            raise AuditInputError(f"--resume: {self.out_dir} holds no audit to resume (no {MANIFEST})")
        elif self.out_dir.exists() and any(p.name != LOCK for p in self.out_dir.iterdir()):
            raise AuditInputError(f"{self.out_dir} exists and is not a splitaudit output folder; pass another --out")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = self._lock()
        try:
            write_json_atomic(manifest, {"config_hash": config_hash, "config": config,
                                         "shard": list(shard) if shard else None})
            for sub in ("cells", "tasks"):
                (self.out_dir / sub).mkdir(exist_ok=True)
                for stale in (self.out_dir / sub).glob(".*.tmp"):  # left by a killed run; we hold the lock
                    stale.unlink(missing_ok=True)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _read_manifest(path: Path) -> dict[str, Any]:
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise AuditInputError(f"{path} is not valid JSON ({err}); remove the folder or pick another --out") from None
        if not isinstance(data, dict):
            raise AuditInputError(f"{path} is not a splitaudit manifest; remove the folder or pick another --out")
        return data

    def _lock(self) -> int:
        fd = os.open(self.out_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise AuditInputError(
                f"{self.out_dir} is in use by another splitaudit run (pid {holder}); wait for it or pass another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        return fd

    def close(self) -> None:
        if getattr(self, "_lock_fd", None) is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def __enter__(self) -> "ResultStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _cell_path(self, cell_id: str) -> Path:
        return self.out_dir / "cells" / f"{cell_id}.json"

    def load(self, cell_id: str) -> list[dict[str, Any]] | None:
        """The cell's records, or None when it has not finished (or its file is unreadable)."""
        path = self._cell_path(cell_id)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None  # not written by us (our writes are atomic): recompute the cell
        if not isinstance(data, dict) or data.get("cell_id") != cell_id or not isinstance(data.get("records"), list):
            return None
        return data["records"]

    def done(self, cell_id: str) -> bool:
        """True when the cell finished with every record ``ok`` (failed cells are retried)."""
        records = self.load(cell_id)
        return bool(records) and all(r.get("status") == "ok" for r in records)

    def commit(self, cell_id: str, records: list[dict[str, Any]]) -> None:
        write_json_atomic(self._cell_path(cell_id), {"cell_id": cell_id, "records": records})

    def cell_ids(self) -> list[str]:
        """Ids of every cell file in the folder."""
        return sorted(p.stem for p in (self.out_dir / "cells").glob("*.json"))

    def put_task(self, key: str, info: dict[str, Any]) -> None:
        write_json_atomic(self.out_dir / "tasks" / f"{key}.json", info)

    def task(self, key: str) -> dict[str, Any] | None:
        path = self.out_dir / "tasks" / f"{key}.json"
        return json.loads(path.read_text()) if path.exists() else None
