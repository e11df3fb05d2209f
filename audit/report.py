"""report.json (versioned schema) and results.csv."""
from __future__ import annotations

import csv
import json
import logging
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from audit.errors import AuditInputError
from audit.store import atomic_write, write_json_atomic

log = logging.getLogger("splitaudit")

SCHEMA_VERSION = 1
PACKAGES = ("splitaudit", "torch", "torchvision", "lightning", "torchmetrics", "scikit-learn", "numpy", "wandb", "pydantic",
            "scipy", "pillow", "pyyaml", "tenseal", "ray")
CSV_HEAD = [
    "dataset", "model", "cut_point", "defense", "defense_params", "attack", "attack_params", "target",
    "metric", "value", "ci95_low", "ci95_high", "chance", "advantage", "seed", "n_eval", "status", "error",
]


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

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": package_versions(),
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "seeds": list(seeds),
    }


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


def _flat(record: dict[str, Any], utility_keys: list[str], cost_keys: list[str]) -> list[Any]:
    ci = record.get("ci95") or [None, None]
    row = {
        **record,
        "defense_params": json.dumps(record.get("defense_params", {}), sort_keys=True),
        "attack_params": json.dumps(record.get("attack_params", {}), sort_keys=True),
        "ci95_low": ci[0], "ci95_high": ci[1],
    }
    values = [row.get(k) for k in CSV_HEAD]
    values += [(record.get("utility") or {}).get(k) for k in utility_keys]
    values += [(record.get("cost") or {}).get(k) for k in cost_keys]
    return ["" if v is None else v for v in values]


def write_results_csv(path: Path, records: list[dict[str, Any]]) -> None:
    utility_keys = sorted({k for r in records for k, v in (r.get("utility") or {}).items() if not isinstance(v, (list, dict))})
    cost_keys = sorted({k for r in records for k, v in (r.get("cost") or {}).items() if not isinstance(v, (list, dict))})
    with atomic_write(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_HEAD + [f"utility.{k}" for k in utility_keys] + [f"cost.{k}" for k in cost_keys])
        for record in records:
            writer.writerow(_flat(record, utility_keys, cost_keys))


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
    return report
