"""Records: what one measurement of an audit is, and the helpers every output reads it with.

A record (one per cell, target and metric; the items of report.json's ``results``) is a JSON
object; :class:`AuditRecord` states its schema and is checked where records are made and read.
The helpers below give its unit, the direction in which it means more leakage, its leakage as
an oriented (estimate, low, high) triple, short labels, what identifies it across reports, and
the one flat form shared by results.csv, ``Report.to_frame()`` and the W&B results table.
"""
from __future__ import annotations

import json
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Record = dict[str, Any]


class AuditRecord(BaseModel):
    """The schema of a record (DESIGN.md, "Reports"). Units of ``value`` by metric: probabilities,
    nats (MI), dB (PSNR); ``ci95`` is the 95% bootstrap interval of ``value`` over ``n_eval`` samples."""

    model_config = ConfigDict(extra="forbid")

    dataset: str
    model: str
    cut_point: str
    defense: str
    defense_params: dict[str, Any] = Field(default_factory=dict)
    utility: dict[str, Any] = Field(default_factory=dict)
    cost: dict[str, Any] = Field(default_factory=dict)
    attack: str
    attack_params: dict[str, Any] = Field(default_factory=dict)
    target: str | None = None
    metric: str | None = None
    value: float | None = None
    ci95: tuple[float | None, float | None] | None = None  # None ends where a CI could not be computed
    chance: float | None = None
    advantage: float | None = None
    seed: int
    n_eval: int | None = None
    status: Literal["ok", "failed"] = "ok"
    error: str | None = None
    extra: dict[str, Any] = Field(default_factory=dict)
    cell_id: str | None = None
    stage_seeds: dict[str, int] = Field(default_factory=dict)
    timings: dict[str, float] = Field(default_factory=dict)  # stage -> seconds, peak MB (audit.core.profile); not a value


UNITS = {"psnr": "dB"}


def unit_of(record: Record) -> str:
    """The unit of a record's value: ``extra.unit`` when the attack states it, dB for PSNR,
    nats for mutual-information metrics (names starting with ``mi`` or containing ``mutual``)."""
    unit = (record.get("extra") or {}).get("unit")
    if unit is not None:
        return str(unit)
    metric = str(record.get("metric") or "")
    if metric in UNITS:
        return UNITS[metric]
    if metric == "mi" or metric.startswith("mi_") or "mutual" in metric:
        return "nats"
    return ""


def orientation(record: Record) -> int:
    """+1 when a higher ``value`` means more leakage, -1 when lower does (the attack set
    ``advantage = chance - value``, or ``extra.direction`` starts with "lower")."""
    direction = str((record.get("extra") or {}).get("direction", "")).lower()
    if direction.startswith("lower"):
        return -1
    value, chance, adv = record.get("value"), record.get("chance"), record.get("advantage")
    if None not in (value, chance, adv) and abs(value - chance) > 1e-12:
        if math.isclose(adv, chance - value, rel_tol=1e-9, abs_tol=1e-12):
            return -1
    return 1


def oriented(value: float, ci: list | tuple | None, sign: int = 1) -> tuple[float, float, float]:
    """(estimate, low, high) times ``sign`` (bounds swapped when negative); a missing CI bound
    falls back to the estimate."""
    lo, hi = (ci or [None, None])[:2]
    lo = value if lo is None else lo
    hi = value if hi is None else hi
    return (-value, -hi, -lo) if sign < 0 else (value, lo, hi)


def leakage(record: Record) -> tuple[float, float, float] | None:
    """(estimate, low, high) of the record's leakage on a scale where higher is more leakage
    (``value`` or ``-value``, see :func:`orientation`). None for failed records or a missing value."""
    value = record.get("value")
    if record.get("status", "ok") != "ok" or value is None:
        return None
    return oriented(value, record.get("ci95"), orientation(record))


def params_text(params: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(params.items()))


def defense_labels(records: list[Record]) -> dict[tuple[str, str], str]:
    """A short label per (defense, params as JSON): the name, plus the parameters that
    differ between the report's configurations of that defense, e.g. ``noise(scale=2.0)``."""
    by_name: dict[str, dict[str, dict[str, Any]]] = {}
    for r in records:
        params = r.get("defense_params") or {}
        by_name.setdefault(r["defense"], {})[json.dumps(params, sort_keys=True)] = params
    labels = {}
    for name, variants in by_name.items():
        keys = sorted({k for p in variants.values() for k in p})
        varying = [k for k in keys if len({json.dumps(p.get(k), sort_keys=True) for p in variants.values()}) > 1]
        for key, params in variants.items():
            shown = {k: params.get(k) for k in varying}
            labels[(name, key)] = f"{name}({params_text(shown)})" if shown else name
    return labels


def defense_key(record: Record) -> tuple[str, str]:
    return record["defense"], json.dumps(record.get("defense_params") or {}, sort_keys=True)


def case_name(record: Record, labels: dict[tuple[str, str], str] | None = None) -> str:
    """``dataset/model seed=S cut=C defense=D attack=A target=T metric=M`` (what names a cell's record;
    without attack / target and metric where they are None, e.g. for a (cut point, defense) group)."""
    defense = (labels or {}).get(defense_key(record)) or record["defense"]
    text = f"{record['dataset']}/{record['model']} seed={record['seed']} cut={record['cut_point']} defense={defense}"
    if record.get("attack") is not None:
        text += f" attack={record['attack']}"
    if record.get("target") is not None:
        text += f" target={record['target']} metric={record['metric']}"
    return text


def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "n/a"
    text = f"{value:.4g}"
    return f"{text} {unit}" if unit else text


def fmt_ci(value: float | None, ci: list | tuple | None, unit: str = "") -> str:
    lo, hi = (ci or [None, None])[:2]
    text = fmt(value)
    if lo is not None and hi is not None:
        text += f" [{lo:.4g}, {hi:.4g}]"
    return f"{text} {unit}" if unit else text


def group_key(record: Record) -> tuple:
    """What identifies a (cut point, defense) group: dataset, model, seed, cut point, defense and its parameters."""
    return (record["dataset"], record["model"], record["seed"], record["cut_point"], *defense_key(record))



def measurement_key(record: Record) -> tuple:
    """What identifies a measurement across two reports: dataset, model, seed, cut point,
    defense *name*, attack, target and metric. Defense parameters are left out so that a
    retuned defense (noise scale 10 -> 3) is compared with what it was (see :func:`pair_records`);
    attack parameters may differ too."""
    return (record["dataset"], record["model"], record["seed"], record["cut_point"], record["defense"],
            record["attack"], record.get("target"), record.get("metric"))



# ------------------------------------------------------------------------ flat form
FLAT_COLUMNS = [
    "cell_id", "dataset", "model", "seed", "cut_point", "defense", "defense_params", "attack", "attack_params",
    "target", "metric", "value", "ci95_low", "ci95_high", "chance", "advantage", "n_eval", "status", "error", "extra",
]


def _scalar(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list, tuple)) else value


def flat_columns(records: list[Record]) -> list[str]:
    """The columns of the flat form of ``records``: :data:`FLAT_COLUMNS`, then ``utility.<key>`` and
    ``cost.<key>`` for every key any record has (sorted)."""
    utility = sorted({k for r in records for k in (r.get("utility") or {})})
    cost = sorted({k for r in records for k in (r.get("cost") or {})})
    return FLAT_COLUMNS + [f"utility.{k}" for k in utility] + [f"cost.{k}" for k in cost]


def flat_row(record: Record, columns: list[str]) -> list[Any]:
    """One record as a row of ``columns``: ci95 split in low/high, utility.* and cost.* flattened,
    dicts and lists as JSON text, missing values None."""
    ci = record.get("ci95") or [None, None]
    row = []
    for col in columns:
        if col == "ci95_low":
            row.append(ci[0])
        elif col == "ci95_high":
            row.append(ci[1])
        elif col.startswith(("utility.", "cost.")):
            group, key = col.split(".", 1)
            row.append(_scalar((record.get(group) or {}).get(key)))
        else:
            row.append(_scalar(record.get(col)))
    return row
