"""Merging shard outputs into one report, and what "the same report" means.

``splitaudit run --shard i/n`` writes the cells of shard i into its own
output folder; :func:`merge_outputs` combines such folders (any number, from
any machines) into one folder whose report.json equals a single run's report
in every value that :func:`report_values` keeps. Merge trusts nothing it reads:
every cell file passes :func:`audit.core.store.read_cell`'s integrity check and all of
the input is read and checked before anything is written, so a refused merge
leaves no half-written output; a merge with ``--partial`` marks its report
(``environment.partial``).

Two reports of the same audit are *identical* when ``report_values`` of both
are equal: ``schema_version``, ``config``, ``tasks`` (but ``tasks[].task_model``, which says
whether this run trained the task model or loaded it from the cache), ``environment.seeds``,
``environment.packages`` and every record of ``results`` (same order, every
key), leaving out what measures wall-clock time or where the run happened:
``created``, the other ``environment`` keys (python, platform, device, cpu, training_precision,
executor, threads, shard, merged_from, partial, missing_cells, missing_shards; a merged report's cpu is the
merging machine's) and, at any depth of a record, keys
whose name ends in ``_ms``, ``_seconds`` or ``_peak_mb`` (``cost.edge_latency_ms``,
``cost.cloud_latency_ms`` and the stages' timings and peak memory today; plugins reporting wall times
must name them so).
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from audit.core.errors import AuditInputError
from audit.core.store import MANIFEST, CellIntegrityError, ResultStore, config_differences, read_cell, shard_label

log = logging.getLogger("splitaudit")

TIMING_SUFFIXES = ("_ms", "_seconds", "_peak_mb")
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


def _read_cells(folders: list[Path], planned_ids: set[str]) -> dict[str, tuple[Path, list[dict[str, Any]]]]:
    """The cells to merge, each from the first folder that has it finished ``ok`` (else the first
    that has it). Every cell file of every folder must pass :func:`read_cell`'s integrity check and
    belong to the audit; otherwise one error lists every refused file."""
    chosen: dict[str, tuple[Path, list[dict[str, Any]]]] = {}
    problems, damaged = [], False
    for folder in folders:
        for path in sorted((folder / "cells").glob("*.json")):
            try:
                records = read_cell(path)
            except CellIntegrityError as err:
                problems.append(str(err))
                damaged = True
                continue
            if path.stem not in planned_ids:
                problems.append(f"{path}: not a cell of this audit (remove it)")
            elif path.stem not in chosen or (not _ok(chosen[path.stem][1]) and _ok(records)):
                chosen[path.stem] = (folder, records)
    if problems:
        shown = "\n  ".join(problems[:10]) + (f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise AuditInputError(
            f"merge: {len(problems)} cell file(s) refused, nothing was written:\n  {shown}"
            + ("\nrerun the audit into the folder named (`splitaudit run CONFIG --out FOLDER`, with the folder's "
               "--shard) to recompute the refused cells, then merge again" if damaged else ""))
    return chosen


def _read_tasks(folders: list[Path]) -> dict[str, dict[str, Any]]:
    """Task summaries (``tasks/<key>.json``) of the folders, the first folder's copy of each."""
    tasks: dict[str, dict[str, Any]] = {}
    for folder in folders:
        for path in sorted((folder / "tasks").glob("*.json")):
            try:
                tasks.setdefault(path.stem, json.loads(path.read_text()))
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise AuditInputError(f"merge: {path} is not valid JSON ({err}); nothing was written") from None
    return tasks


def _torch_threads(folder: Path) -> int | None:
    """``environment.torch_threads`` of the folder's own report.json (None when it has none)."""
    try:
        return json.loads((folder / "report.json").read_text())["environment"]["torch_threads"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _missing_shards(shards: list[tuple[int, int] | None], planned: list, missing_ids: set[str]) -> list[str]:
    """Labels ``i/n`` of the shards holding missing cells, when every folder is a shard of one n."""
    from audit.plan import shard_cells

    counts = {s[1] for s in shards if s}
    if len(counts) != 1 or None in shards:
        return []
    n = counts.pop()
    return [f"{i}/{n}" for i in range(1, n + 1) if any(c.id in missing_ids for c in shard_cells(planned, i, n))]


def _ok(records: list[dict[str, Any]]) -> bool:
    return bool(records) and all(r.get("status") == "ok" for r in records)


def merge_outputs(folders: list[str | Path], out: str | Path, allow_partial: bool = False) -> dict[str, Any]:
    """Merge the output folders of shards (or of partial runs) of one audit into ``out``;
    returns the merged report (also written as ``out/report.json`` and ``results.csv``).

    Every folder must hold the same audit (config hash), and every cell file must pass the
    integrity check of :func:`audit.core.store.read_cell` (cells written by splitaudit versions
    without content hashes are refused too: rerun the folder to recompute them). A cell found
    in several folders is taken from the first that has it finished ``ok``. Missing cells are
    an error naming them and the shards that hold them, unless ``allow_partial``: then the
    report says ``environment.partial: true`` with ``missing_cells`` and ``missing_shards``.
    Everything is read and checked before ``out`` is written. ``environment.torch_threads`` is
    the shards' (from their report.json; None when unknown or when they differ).
    """
    from audit.config import build_config
    from audit.plan import plan_cells
    from audit.report import write_report
    from audit.runner import AuditRun

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
    chosen = _read_cells(folders, {c.id for c in planned})
    tasks = _read_tasks(folders)
    missing = [c for c in planned if c.id not in chosen]
    missing_shards = _missing_shards(shards, planned, {c.id for c in missing})
    if missing and not allow_partial:
        given = ", ".join(f"{s[0]}/{s[1]}" for s in sorted({s for s in shards if s}))
        hint = (f"; shards given: {given}" if given else "") + (
            f", missing: {', '.join(missing_shards)}" if missing_shards else "")
        run = AuditRun(config, out)
        names = "; ".join(run.cell_name(c) for c in missing[:3])
        raise AuditInputError(
            f"merge: {len(missing)} of {len(planned)} cells are in none of the folders (e.g. {names}){hint}; "
            "run the missing shards, or pass --partial"
        )
    threads = {f: _torch_threads(f) for f in folders}
    if len(set(threads.values())) > 1:
        log.warning("merge: the folders ran with different torch thread counts (%s); environment.torch_threads "
                    "is null", ", ".join(f"{f}: {t}" for f, t in threads.items()))

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
        for key, info in tasks.items():
            if store.task(key) is None:
                store.put_task(key, info)
        report = run.build_report([c for c in planned if c.id in chosen])
        env = report["environment"]
        env["torch_threads"] = next(iter(threads.values())) if len(set(threads.values())) == 1 else None
        env["merged_from"] = [{"folder": str(f), "shard": shard_label(s), "torch_threads": threads[f]}
                              for f, s in zip(folders, shards)]
        env["partial"] = bool(missing)
        if missing:
            env["missing_cells"] = [c.id for c in missing]
            env["missing_shards"] = missing_shards
        write_report(out, report)
    if missing:
        log.warning("merge: the report is PARTIAL: %d of %d cells missing%s (environment.partial: true)",
                    len(missing), len(planned), f" (shards {', '.join(missing_shards)})" if missing_shards else "")
    log.info("merged %d folders into %s: %d of %d cells", len(folders), out, len(chosen), len(planned))
    return report
