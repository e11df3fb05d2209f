"""Merging shard outputs into one report, and what "the same report" means.

``splitaudit run --shard i/n`` writes the cells of shard i into its own
output folder; :func:`merge_outputs` combines such folders (any number, from
any machines) into one folder whose report.json equals a single run's report
in every value that :func:`report_values` keeps.

Two reports of the same audit are *identical* when ``report_values`` of both
are equal: ``schema_version``, ``config``, ``tasks`` (but ``tasks[].task_model``, which says
whether this run trained the task model or loaded it from the cache), ``environment.seeds``,
``environment.packages`` and every record of ``results`` (same order, every
key), leaving out what measures wall-clock time or where the run happened:
``created``, the other ``environment`` keys (python, platform, device,
executor, threads, shard, merged_from) and, at any depth of a record, keys
whose name ends in ``_ms`` or ``_seconds`` (``cost.edge_latency_ms`` and
``cost.cloud_latency_ms`` today; plugins reporting wall times must name them so).
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from audit.errors import AuditInputError
from audit.store import MANIFEST, ResultStore, config_differences, shard_label

log = logging.getLogger("splitaudit")

TIMING_SUFFIXES = ("_ms", "_seconds")
ENVIRONMENT_VALUES = ("seeds", "packages")
TASK_PROVENANCE = ("task_model",)  # trained here or loaded from the cache, when, by which torch


def strip_timing(value: Any) -> Any:
    """``value`` without dict keys ending in a timing suffix (recursively)."""
    if isinstance(value, dict):
        return {k: strip_timing(v) for k, v in value.items() if not str(k).endswith(TIMING_SUFFIXES)}
    if isinstance(value, list):
        return [strip_timing(v) for v in value]
    return value


def report_values(report: dict[str, Any]) -> dict[str, Any]:
    """The part of a report that two runs of the same audit (same config, seeds and thread count)
    reproduce exactly, however they were executed, sharded or resumed."""
    env = report.get("environment") or {}
    return {
        "schema_version": report.get("schema_version"),
        "config": report.get("config"),
        "environment": {k: env.get(k) for k in ENVIRONMENT_VALUES},
        "tasks": [{k: v for k, v in t.items() if k not in TASK_PROVENANCE} for t in report.get("tasks") or []],
        "results": strip_timing(report.get("results")),
    }


def _manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not folder.is_dir():
        raise AuditInputError(f"{folder} is not a folder")
    if not path.is_file():
        raise AuditInputError(f"{folder} is not a splitaudit output folder (no {MANIFEST})")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise AuditInputError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(data, dict) or "config_hash" not in data or "config" not in data:
        raise AuditInputError(f"{path} is not a splitaudit manifest")
    return data


def _cells(folder: Path) -> dict[str, list[dict[str, Any]]]:
    out = {}
    for path in sorted((folder / "cells").glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise AuditInputError(f"{path} is not valid JSON ({err})") from None
        if not isinstance(data, dict) or data.get("cell_id") != path.stem or not isinstance(data.get("records"), list):
            raise AuditInputError(f"{path} is not a splitaudit cell file")
        out[path.stem] = data["records"]
    return out


def _ok(records: list[dict[str, Any]]) -> bool:
    return bool(records) and all(r.get("status") == "ok" for r in records)


def merge_outputs(folders: list[str | Path], out: str | Path, allow_partial: bool = False) -> dict[str, Any]:
    """Merge the output folders of shards (or of partial runs) of one audit into ``out``;
    returns the merged report (also written as ``out/report.json`` and ``results.csv``).

    Every folder must hold the same audit (config hash). A cell found in several
    folders is taken from the first that has it finished ``ok``. Missing cells are
    an error naming them, unless ``allow_partial``.
    """
    from audit.config import build_config
    from audit.report import write_report
    from audit.runner import AuditRun, plan_cells

    folders = [Path(f) for f in folders]
    out = Path(out)
    if not folders:
        raise AuditInputError("merge: give at least one output folder")
    if any(out.resolve() == f.resolve() for f in folders):
        raise AuditInputError(f"merge: --out {out} is one of the inputs; write the merged report to a new folder")
    manifests = [_manifest(f) for f in folders]
    first = manifests[0]
    for folder, m in zip(folders[1:], manifests[1:]):
        if m["config_hash"] != first["config_hash"]:
            diff = "; ".join(config_differences(first["config"], m["config"])) or "config hash differs"
            raise AuditInputError(f"merge: {folder} holds another audit than {folders[0]} ({diff})")
    config = build_config(first["config"], f"{folders[0] / MANIFEST}")
    if config.config_hash() != first["config_hash"]:
        raise AuditInputError(f"merge: {folders[0] / MANIFEST} does not match its own config hash")
    shards = [tuple(m["shard"]) if m.get("shard") else None for m in manifests]

    planned = plan_cells(config)
    planned_ids = {c.id for c in planned}
    chosen: dict[str, tuple[Path, list[dict[str, Any]]]] = {}
    for folder in folders:
        for cell_id, records in _cells(folder).items():
            if cell_id not in planned_ids:
                raise AuditInputError(f"merge: {folder}/cells/{cell_id}.json is not a cell of this audit")
            if cell_id not in chosen or (not _ok(chosen[cell_id][1]) and _ok(records)):
                chosen[cell_id] = (folder, records)
    missing = [c for c in planned if c.id not in chosen]
    if missing and not allow_partial:
        counts = {n for s in shards if s for n in [s[1]]}
        have = sorted({s[0] for s in shards if s})
        hint = ""
        if len(counts) == 1:
            n = counts.pop()
            absent = [i for i in range(1, n + 1) if i not in have]
            hint = f"; shards given: {', '.join(f'{i}/{n}' for i in have)}" + (
                f", missing: {', '.join(f'{i}/{n}' for i in absent)}" if absent else "")
        run = AuditRun(config, out)
        names = "; ".join(run.describe(c) for c in missing[:3])
        raise AuditInputError(
            f"merge: {len(missing)} of {len(planned)} cells are in none of the folders (e.g. {names}){hint}; "
            "run the missing shards, or pass --partial"
        )

    run = AuditRun(config, out)
    with ResultStore(out, first["config_hash"], first["config"]) as store:
        run.store = store
        for cell in planned:
            if cell.id not in chosen:
                continue
            folder, records = chosen[cell.id]
            store.commit(cell.id, records)
            src = folder / "artifacts" / cell.id
            if src.is_dir():
                dst = out / "artifacts" / cell.id
                shutil.rmtree(dst, ignore_errors=True)
                shutil.copytree(src, dst)
        for folder in folders:
            for path in sorted((folder / "tasks").glob("*.json")):
                if store.task(path.stem) is None:
                    store.put_task(path.stem, json.loads(path.read_text()))
        report = run.build_report([c for c in planned if c.id in chosen])
        report["environment"]["merged_from"] = [
            {"folder": str(f), "shard": shard_label(s)} for f, s in zip(folders, shards)
        ]
        write_report(out, report)
    log.info("merged %d folders into %s: %d of %d cells", len(folders), out, len(chosen), len(planned))
    return report
