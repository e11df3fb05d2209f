"""The results store: one JSON file per finished cell, written atomically (temp file + rename).

Layout of an output folder::

    audit.json            manifest: config hash, config, shard
    .lock                 held (flock) by the run writing into the folder
    cells/<cell id>.json  {"cell_id", "records", "sha256"}: one file per finished cell
    tasks/<task key>.json summary of a prepared (task, seed)

A cell file appears whole or not at all (written to a temporary file in the
same folder, fsynced, renamed over the final name, folder fsynced), so a run
killed at any point (SIGKILL included) leaves only whole cells, and a rerun
finishes with every cell exactly once. Only the driver process writes here,
and only one run at a time: a second run into the same folder is refused
while the first holds the lock (the lock dies with its process).

The manifest records the config hash: a folder holding another audit's
results is refused (the message names the keys that differ), never mixed.

Cell integrity: a cell file records ``sha256``, the hash of the canonical JSON of its
records (:func:`records_sha256`). :func:`read_cell` refuses, with a
:class:`CellIntegrityError` naming the file and the reason, a cell whose hash is missing
(written by splitaudit before hashes, or edited) or wrong, whose records carry another
``cell_id`` than the file (relabelled by hand), that holds one measurement twice, or
that holds a non-finite number. :meth:`ResultStore.load` treats such a cell as not
finished: a resumed run recomputes it and logs a warning; ``splitaudit merge`` refuses it.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from audit.core.errors import AuditInputError

MANIFEST = "audit.json"
LOCK = ".lock"

log = logging.getLogger("splitaudit")


class CellIntegrityError(AuditInputError):
    """A cell file that cannot be trusted (see :func:`read_cell`); the message names the file."""


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


def records_sha256(records: list[dict[str, Any]]) -> str:
    """sha256 (hex) of the canonical JSON of a cell's records (sorted keys, no spaces, no NaN)."""
    text = json.dumps(records, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def non_finite_paths(value: Any, where: str = "") -> list[str]:
    """Dotted paths (``records.0.ci95.1``) of the NaN / inf numbers inside a JSON-like value."""
    if isinstance(value, float):
        return [] if math.isfinite(value) else [where or "(value)"]
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return []
    return [p for k, v in items for p in non_finite_paths(v, f"{where}.{k}" if where else str(k))]


def read_cell(path: Path) -> list[dict[str, Any]]:
    """The records of the cell file ``path`` after checking its integrity (cell id = file name,
    content hash, record labels, no measurement twice, finite numbers); raises
    :class:`CellIntegrityError` naming the file and what is wrong, :class:`FileNotFoundError`
    when it does not exist."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CellIntegrityError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("records"), list):
        raise CellIntegrityError(f"{path}: not a splitaudit cell file (no 'records' list)")
    if data.get("cell_id") != path.stem:
        raise CellIntegrityError(f"{path}: holds cell {data.get('cell_id')!r}, not the cell its name says")
    records = data["records"]
    if not all(isinstance(r, dict) for r in records):
        raise CellIntegrityError(f"{path}: a record is not a JSON object")
    bad = non_finite_paths(records, "records")
    if bad:
        raise CellIntegrityError(f"{path}: holds non-finite numbers (NaN/inf) at {', '.join(bad[:3])}")
    relabelled = sorted({str(r["cell_id"]) for r in records if "cell_id" in r and r["cell_id"] != path.stem})
    if relabelled:
        raise CellIntegrityError(f"{path}: holds records of cell {', '.join(relabelled)} (relabelled)")
    seen: set[tuple] = set()
    for r in records:
        key = (r.get("attack"), r.get("target"), r.get("metric"))
        if key in seen:
            raise CellIntegrityError(f"{path}: holds the record attack={key[0]} target={key[1]} metric={key[2]} "
                                     "more than once")
        seen.add(key)
    if "sha256" not in data:
        raise CellIntegrityError(f"{path}: has no content hash (written by an older splitaudit, or edited)")
    if data["sha256"] != records_sha256(records):
        raise CellIntegrityError(f"{path}: its records do not match its content hash (edited after it was written)")
    return records


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
        self._refused: set[str] = set()  # cells refused by the integrity check (warned once)
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
        """The cell's records, or None when it has not finished or fails :func:`read_cell`'s
        integrity check (logged once as a warning: the cell will be recomputed)."""
        try:
            return read_cell(self._cell_path(cell_id))
        except FileNotFoundError:
            return None
        except CellIntegrityError as err:
            if cell_id not in self._refused:
                self._refused.add(cell_id)
                log.warning("%s; recomputing the cell", err)
            return None

    def done(self, cell_id: str) -> bool:
        """True when the cell finished with every record ``ok`` (failed cells are retried)."""
        records = self.load(cell_id)
        return bool(records) and all(r.get("status") == "ok" for r in records)

    def commit(self, cell_id: str, records: list[dict[str, Any]]) -> None:
        """Write the cell file atomically, with the content hash of its records as they will be read back
        (hashed after a JSON round trip: tuples become lists, integer dict keys strings)."""
        stored = json.loads(json.dumps(records, allow_nan=False))
        write_json_atomic(self._cell_path(cell_id),
                          {"cell_id": cell_id, "records": stored, "sha256": records_sha256(stored)})
        self._refused.discard(cell_id)

    def cell_ids(self) -> list[str]:
        """Ids of every cell file in the folder."""
        return sorted(p.stem for p in (self.out_dir / "cells").glob("*.json"))

    def put_task(self, key: str, info: dict[str, Any]) -> None:
        """Record a prepared task's summary. A resumed run whose data changed under the same parameters (the
        summaries' ``data_fingerprint`` differ) is refused: its committed cells saw the old data."""
        before = (self.task(key) or {}).get("data_fingerprint")
        if before is not None and info.get("data_fingerprint") not in (None, before):
            raise AuditInputError(
                f"{self.out_dir} holds cells of {info.get('dataset')}/{info.get('model')} (seed {info.get('seed')}) "
                f"computed on other data than it loads now (data fingerprint {before}, now "
                f"{info['data_fingerprint']}): the data changed under the same parameters; pass another --out "
                "to audit the new data, or restore the old data to finish this audit")
        write_json_atomic(self.out_dir / "tasks" / f"{key}.json", info)

    def task(self, key: str) -> dict[str, Any] | None:
        path = self.out_dir / "tasks" / f"{key}.json"
        return json.loads(path.read_text()) if path.exists() else None
