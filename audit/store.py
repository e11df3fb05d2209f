"""The results store: one JSON file per finished cell, written atomically (temp file + rename).

A run killed at any point leaves only whole cell files; a rerun of the same
config skips them. The folder's manifest (audit.json) records the config hash,
so a folder holding another audit's results is refused rather than mixed.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from audit.errors import AuditInputError

MANIFEST = "audit.json"


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` via a temporary file and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1, sort_keys=False, allow_nan=False)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ResultStore:
    """Cell results under ``out_dir/cells/<cell_id>.json``; task summaries under ``out_dir/tasks/``."""

    def __init__(self, out_dir: Path, config_hash: str, config: dict[str, Any]):
        self.out_dir = Path(out_dir)
        manifest = self.out_dir / MANIFEST
        if manifest.exists():
            try:
                existing = json.loads(manifest.read_text())
            except json.JSONDecodeError as err:
                raise AuditInputError(f"{manifest} is not valid JSON ({err}); remove the folder or pick another --out") from None
            if existing.get("config_hash") != config_hash:
                raise AuditInputError(
                    f"{self.out_dir} holds results of another audit (config hash {existing.get('config_hash')}, "
                    f"this one {config_hash}); pass another --out, or remove the folder to start over"
                )
        elif self.out_dir.exists() and any(self.out_dir.iterdir()):
            raise AuditInputError(f"{self.out_dir} exists and is not a splitaudit output folder; pass another --out")
        write_json_atomic(manifest, {"config_hash": config_hash, "config": config})
        (self.out_dir / "cells").mkdir(exist_ok=True)
        (self.out_dir / "tasks").mkdir(exist_ok=True)

    def _cell_path(self, cell_id: str) -> Path:
        return self.out_dir / "cells" / f"{cell_id}.json"

    def load(self, cell_id: str) -> list[dict[str, Any]] | None:
        path = self._cell_path(cell_id)
        if not path.exists():
            return None
        return json.loads(path.read_text())["records"]

    def done(self, cell_id: str) -> bool:
        """True when the cell finished with every record ``ok`` (failed cells are retried)."""
        records = self.load(cell_id)
        return records is not None and all(r["status"] == "ok" for r in records)

    def commit(self, cell_id: str, records: list[dict[str, Any]]) -> None:
        write_json_atomic(self._cell_path(cell_id), {"cell_id": cell_id, "records": records})

    def put_task(self, key: str, info: dict[str, Any]) -> None:
        write_json_atomic(self.out_dir / "tasks" / f"{key}.json", info)

    def task(self, key: str) -> dict[str, Any] | None:
        path = self.out_dir / "tasks" / f"{key}.json"
        return json.loads(path.read_text()) if path.exists() else None
