"""report.json (versioned schema) and results.csv."""
from __future__ import annotations

import csv
import json
import logging
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from audit.core.errors import AuditInputError
from audit.core.records import AuditRecord, flat_columns, flat_row
from audit.core.store import atomic_write, write_json_atomic

log = logging.getLogger("splitaudit")

SCHEMA_VERSION = 1
PACKAGES = ("splitaudit", "torch", "torchvision", "lightning", "torchmetrics", "scikit-learn", "numpy", "wandb", "pydantic",
            "scipy", "pillow", "pyyaml", "tenseal", "ray")
def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def environment(seeds: list[int], device: str) -> dict[str, Any]:
    import torch

    from audit.core.cpu import cpu_summary
    from audit.core.heap import huge_pages_in_use

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": package_versions(),
        "device": device,
        "cpu": cpu_summary(),  # bit-identical figures need the same signature (and packages, threads)
        "torch_threads": torch.get_num_threads(),
        "huge_pages": huge_pages_in_use(),  # large C-heap blocks in transparent huge pages (audit.core.heap)
        "seeds": list(seeds),
    }


def splits_used(config: dict[str, Any], tasks: list[dict[str, Any]]) -> dict[str, Any]:
    """``config`` (a config as JSON) with ``splits: given`` on each task whose data brought its own
    split (a datamodule's train/val/test, a CSV's split column, a feature dump's rows), as its task
    summaries in ``tasks`` say; the fractions stay where they were drawn (the summaries hold the seed)."""
    given = {(t.get("dataset"), t.get("model")) for t in tasks if t.get("splits") == "given"}
    for task in config.get("tasks") or []:
        model = task.get("model_label") or (task.get("model") or {}).get("name", "none")
        if (task.get("label") or task["dataset"]["name"], model) in given:
            task["splits"] = "given"
    return config


def write_report(out_dir: Path, report: dict[str, Any]) -> None:
    """Write report.json, results.csv and report.html (with figures/) into ``out_dir``.

    report.json and results.csv come first: a failure while rendering the page is logged
    and loses nothing computed."""
    write_json_atomic(Path(out_dir) / "report.json", report)
    write_results_csv(Path(out_dir) / "results.csv", report["results"])
    from audit.html import write_html_report

    try:
        write_html_report(out_dir, report)
    except Exception as err:  # noqa: BLE001 - the results are on disk; say what went wrong
        log.error("could not write %s/report.html: %s: %s (report.json and results.csv are written)",
                  out_dir, type(err).__name__, err)
        log.debug("report.html", exc_info=True)


def write_results_csv(path: Path, records: list[dict[str, Any]]) -> None:
    """The records flat (:func:`audit.core.records.flat_columns`): one row each, empty cells for None."""
    columns = flat_columns(records)
    with atomic_write(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for record in records:
            writer.writerow(flat_row(record, columns))


def read_report(path: str | Path) -> dict[str, Any]:
    """Load a report.json, checking it exists, parses and has this schema version."""
    path = Path(path)
    if not path.is_file():
        raise AuditInputError(f"report {str(path)!r} does not exist")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise AuditInputError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(report, dict) or "results" not in report:
        raise AuditInputError(f"{path} is not a splitaudit report (no 'results')")
    if report.get("schema_version") != SCHEMA_VERSION:
        raise AuditInputError(
            f"{path} has schema_version {report.get('schema_version')!r}; this splitaudit reads version {SCHEMA_VERSION}"
        )
    check_records(report["results"], str(path))
    return report


def check_records(records: Any, where: str) -> None:
    """Raise AuditInputError naming the first record (and field) of ``records`` that does not follow
    the record schema (:class:`audit.core.records.AuditRecord`)."""
    if not isinstance(records, list):
        raise AuditInputError(f"{where}: 'results' is a {type(records).__name__}, not a list of records")
    for i, record in enumerate(records):
        try:
            AuditRecord.model_validate(record)
        except ValidationError as err:
            e = err.errors()[0]
            loc = ".".join(str(p) for p in e["loc"]) or "(record)"
            raise AuditInputError(f"{where}: results[{i}].{loc}: {e['msg']}") from None
