"""Weights & Biases tracking: one W&B run per audit.

Config (excluded from the config hash: it does not change results)::

    tracking:
      wandb: {project: splitaudit, entity: my-team, mode: offline, tags: [ci], group: nightly}

``splitaudit run --wandb`` turns tracking on (with these settings, or the defaults),
``--no-wandb`` off. The environment variable ``WANDB_MODE`` (online / offline /
disabled), when set, overrides ``mode`` unless the config says ``disabled``; offline
runs need no server and no API key and are written under ``OUT/wandb/``
(``wandb sync OUT/wandb/offline-run-*`` uploads them later).

What a run holds: the audit config (plus its hash and cell count); one history row
per cell (``cell/*`` fields, ``<target>/<metric>`` value and CI, utility and cost);
the ``results`` table (every record of report.json, flattened like results.csv);
the report's figures (``figures/<name>``); summary figures (worst leakage per
target and metric, utility); and report.json / report.html / results.csv as an
artifact of type ``audit-report``. Run names say dataset/model/defense.
"""
from __future__ import annotations

import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from audit.config import TrackingConfig, WandbSettings  # noqa: F401 - re-exported
from audit.core.records import flat_columns, flat_row
from audit.runner import RunCallback

if TYPE_CHECKING:  # pragma: no cover
    from audit.config import AuditConfig
    from audit.plan import Cell
    from audit.runner import AuditRun

log = logging.getLogger("splitaudit")

ENV_MODES = {"online": "online", "run": "online", "offline": "offline", "dryrun": "offline", "disabled": "disabled"}


def effective_mode(settings: WandbSettings) -> str:
    """``settings.mode``, overridden by ``WANDB_MODE`` from the environment unless the config says disabled."""
    if settings.mode == "disabled":
        return "disabled"
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    return ENV_MODES.get(env, settings.mode)


def run_name(config: "AuditConfig") -> str:
    """``dataset/model/defense`` (several joined with ``+``), at most 128 characters."""
    join = lambda items: "+".join(dict.fromkeys(items))
    name = "/".join([
        join(t.display_name for t in config.tasks), join(t.model.name for t in config.tasks),
        join(d.title() for d in config.defenses),
    ])
    return name if len(name) <= 128 else name[:125] + "..."


def cell_row(records: list[dict[str, Any]], index: int, seconds: float | None, defense_label: str) -> dict[str, Any]:
    """The history row of one cell: ``cell/*`` identity, ``<target>/<metric>`` (+ ``_ci95_low``,
    ``_ci95_high``, ``_advantage``) per record, ``utility/*`` and ``cost/*``."""
    first = records[0]
    row: dict[str, Any] = {
        "cell/index": index, "cell/id": first["cell_id"], "cell/dataset": first["dataset"],
        "cell/model": first["model"], "cell/seed": first["seed"], "cell/cut_point": first["cut_point"],
        "cell/defense": defense_label, "cell/attack": first["attack"], "cell/status": first["status"],
        "cell/failed": int(any(r["status"] != "ok" for r in records)),
    }
    if seconds is not None:
        row["cell/seconds"] = seconds
    for r in records:
        if r["status"] != "ok" or r.get("value") is None:
            continue
        key = f"{r['target']}/{r['metric']}"
        row[key] = r["value"]
        ci = r.get("ci95") or [None, None]
        if ci[0] is not None:
            row[f"{key}_ci95_low"], row[f"{key}_ci95_high"] = ci[0], ci[1]
        if r.get("advantage") is not None:
            row[f"{key}_advantage"] = r["advantage"]
    for group in ("utility", "cost"):
        for k, v in (first.get(group) or {}).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                row[f"{group}/{k}"] = v
    return row


def summary_figures(records: list[dict[str, Any]]) -> dict[str, Any]:
    """``worst/<target>/<metric>`` (the most leaking record's value, over every cell),
    ``utility/primary_accuracy_min`` and ``_mean``, ``cells/total`` and ``cells/failed``."""
    from audit.core.records import leakage

    out: dict[str, Any] = {}
    best: dict[str, tuple[float, float]] = {}
    for r in records:
        lk = leakage(r)
        if lk is None:
            continue
        key = f"worst/{r['target']}/{r['metric']}"
        if key not in best or lk[0] > best[key][0]:
            best[key] = (lk[0], r["value"])
    out.update({k: v for k, (_, v) in best.items()})
    accs = [r["utility"]["primary_accuracy"] for r in records
            if r.get("status") == "ok" and (r.get("utility") or {}).get("primary_accuracy") is not None]
    if accs:
        out["utility/primary_accuracy_min"] = min(accs)
        out["utility/primary_accuracy_mean"] = sum(accs) / len(accs)
    cells = {r.get("cell_id") for r in records}
    out["cells/total"] = len(cells)
    out["cells/failed"] = len({r.get("cell_id") for r in records if r.get("status") != "ok"})
    return out


def artifact_name(config_name: str, config_hash: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"audit-{config_name}-{config_hash}")[:128]


# ----------------------------------------------------------------------- tracker
class WandbTracker(RunCallback):
    """A :class:`RunCallback` that records the audit as one W&B run (see the module doc).

    If the run cannot start (e.g. online mode without an API key), the error is logged
    and the audit goes on untracked: its results are on disk either way."""

    def __init__(self, settings: WandbSettings):
        self.settings = settings
        self.run = None
        self.logged: set[str] = set()
        self.index = 0

    def on_plan(self, run: "AuditRun", cells: list["Cell"], pending: list["Cell"]) -> None:
        mode = effective_mode(self.settings)
        if mode == "disabled":
            return
        import wandb

        config = run.config
        s = self.settings
        run.out_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.run = wandb.init(
                project=s.project, entity=s.entity, mode=mode, tags=s.tags or None, group=s.group,
                name=s.name or run_name(config), dir=str(run.out_dir), job_type="audit", reinit="create_new",
                config={**config.model_dump(mode="json", exclude={"tracking"}),
                        "config_hash": config.config_hash(), "cells": len(cells)},
                settings=wandb.Settings(init_timeout=90, silent=True, console="off"),
            )
        except Exception as err:  # noqa: BLE001 - tracking is optional; the audit goes on
            log.error("W&B: could not start a run (%s: %s); the audit goes on without tracking",
                      type(err).__name__, err)
            self.run = None
            return
        self.run.define_metric("cell/index")
        self.run.define_metric("*", step_metric="cell/index")
        where = f" in {Path(self.run.dir).parent}" if mode == "offline" else f": {self.run.url}"
        log.info("W&B run %r (%s)%s", self.run.name, mode, where)

    def _labels(self, run: "AuditRun", cell: "Cell") -> str:
        return run.config.defenses[cell.defense].title()

    def on_cell_end(self, run: "AuditRun", cell: "Cell", records: list[dict[str, Any]], seconds: float) -> None:
        if self.run is None:
            return
        self.index += 1
        self.run.log(cell_row(records, self.index, seconds, self._labels(run, cell)))
        self.logged.add(cell.id)

    def on_finish(self, run: "AuditRun", report: dict[str, Any]) -> None:
        if self.run is None:
            return
        import wandb

        from audit.core.records import defense_key, defense_labels

        try:
            records = report["results"]
            labels = defense_labels(records)
            by_cell: dict[str, list[dict[str, Any]]] = {}
            for r in records:
                by_cell.setdefault(r["cell_id"], []).append(r)
            for cell_id, recs in by_cell.items():  # cells finished by an earlier (resumed) run
                if cell_id not in self.logged:
                    self.index += 1
                    self.run.log(cell_row(recs, self.index, None, labels.get(defense_key(recs[0]), recs[0]["defense"])))
            columns = flat_columns(records)
            table = wandb.Table(columns=columns, data=[flat_row(r, columns) for r in records], allow_mixed_types=True)
            final: dict[str, Any] = {"results": table}
            figures_dir = run.out_dir / "figures"
            index = figures_dir / "figures.json"
            if index.is_file():
                for f in json.loads(index.read_text(encoding="utf-8")):
                    final[f"figures/{Path(f['file']).stem}"] = wandb.Image(str(figures_dir / f["file"]), caption=f["caption"])
            self.run.log(final)
            self.run.summary.update(summary_figures(records))
            artifact = wandb.Artifact(artifact_name(run.config.name, run.config.config_hash()), type="audit-report",
                                      description=f"splitaudit report of {run_name(run.config)}",
                                      metadata={"schema_version": report.get("schema_version"), "records": len(records)})
            for name in ("report.json", "report.html", "results.csv"):
                if (run.out_dir / name).is_file():
                    artifact.add_file(str(run.out_dir / name), name=name)
            self.run.log_artifact(artifact)
        finally:
            self._finish()

    def _finish(self, exit_code: int | None = None) -> None:
        """Finish the run; when no other W&B run is active in this process, also shut down W&B's
        service, which flushes the run's files (an offline run's .wandb log is complete when
        the audit returns)."""
        import wandb

        self.run.finish(exit_code=exit_code)
        self.run = None
        if wandb.run is None:
            wandb.teardown()

    def close(self) -> None:
        """Finish a run left open by an audit that stopped early (marked failed in W&B)."""
        if self.run is not None:
            self._finish(exit_code=1)


def tracker_for(config: "AuditConfig") -> WandbTracker | None:
    """The W&B tracker the config asks for, or None."""
    settings = config.tracking.wandb
    if settings is None or effective_mode(settings) == "disabled":
        return None
    return WandbTracker(settings)


# ------------------------------------------------------------------- W&B sweeps
def sweep_cli_args(argv: list[str], run_id: str | None = None, out_root: str = "sweep_out") -> list[str]:
    """``CONFIG --key=value ...`` (or ``--key value``), as a W&B sweep agent passes its parameters,
    -> ``splitaudit run`` arguments: ``run CONFIG --wandb --out OUT_ROOT/RUN_ID --set key=value ...``."""
    from audit.core.errors import AuditInputError

    if not argv or argv[0].startswith("--"):
        raise AuditInputError("usage: python -m audit.tracking CONFIG [--key=value ...] (a W&B sweep command)")
    config, rest, overrides = argv[0], list(argv[1:]), []
    while rest:
        arg = rest.pop(0)
        if not arg.startswith("--") or len(arg) < 3:
            raise AuditInputError(f"sweep argument {arg!r}: expected --key=value")
        key, sep, value = arg[2:].partition("=")
        if not sep:
            if not rest:
                raise AuditInputError(f"sweep argument {arg!r} has no value")
            value = rest.pop(0)
        overrides += ["--set", f"{key}={value}"]
    run_id = run_id or os.environ.get("WANDB_RUN_ID") or "local"
    return ["run", config, "--wandb", "--out", str(Path(out_root) / run_id), *overrides]


def sweep_main(argv: list[str]) -> int:
    """Entry of a W&B sweep's command (see configs/sweep.example.yaml): one audit per agent run,
    into ``sweep_out/<run id>``, recorded as that sweep run."""
    from audit.cli import EXIT_BAD_INPUT, main
    from audit.core.errors import AuditInputError

    try:
        args = sweep_cli_args(argv, out_root=os.environ.get("SPLITAUDIT_SWEEP_OUT", "sweep_out"))
    except AuditInputError as err:
        print(f"splitaudit: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return main(args)


if __name__ == "__main__":  # pragma: no cover - `python -m audit.tracking CONFIG --key=value ...`
    sys.exit(sweep_main(sys.argv[1:]))
