"""The CI gate and report comparison: the functional core behind ``splitaudit check`` and
``splitaudit compare``.

A *policy* (YAML) states bounds on the records of a report.json, each rule with
a selector over dataset / model / cut_point / defense / defense_params / attack
/ target / metric / seed::

    rules:
      - name: siamese-hides-race
        select: {defense: siamese, target: race, metric: balanced_accuracy}
        quantity: advantage          # value (default) | advantage | primary_accuracy | cost.<key>
        max: 0.05
      - {name: mi-bound, select: {metric: "mi_*"}, max: 0.1}          # nats
      - {name: psnr-bound, select: {metric: psnr}, max: 15}           # dB
    regression: {tolerance: 0.01, tolerances: {psnr: 0.5}}

Every (rule, selected record) pair is one test case. Against a baseline report,
a record *regresses* when its leakage rose by more than the combined 95%
confidence interval of the two estimates plus a tolerance (see :func:`change_of`),
so that bootstrap noise alone does not fail a build, and a baseline equal to
the report never does. Records are paired across reports by :func:`measurement_key`
(defense name, not parameters), so a retuned defense is still compared.

The gate cannot be fooled by what a report lacks: unless explicitly allowed, a
partial report, a NaN / inf number in a record, a baseline record missing from
the report, and a failed cell each fail the check (see :func:`evaluate`).

Leakage direction: a record's leakage grows with ``value``, except where the
attack reports ``advantage = chance - value`` (e.g. a normalised rank, where a
lower rank means more leakage); :func:`orientation` tells which.
"""
from __future__ import annotations

import difflib
import fnmatch
import json
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from audit.errors import AuditInputError
from audit.store import non_finite_paths

Record = dict[str, Any]

# ------------------------------------------------------------------ record semantics
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


def describe(record: Record, labels: dict[tuple[str, str], str] | None = None) -> str:
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


# --------------------------------------------------------------------------- policy
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


Patterns = str | int | float | list[str | int | float] | None


class Selector(_Strict):
    """Which records a rule covers. Each field is a value or a list of values (shell-style
    wildcards allowed, e.g. ``mi_*``); an omitted field matches everything. ``defense``
    matches the plugin name; ``defense_params`` the listed parameters (others are free)."""

    dataset: Patterns = None
    model: Patterns = None
    cut_point: Patterns = None
    defense: Patterns = None
    defense_params: dict[str, Any] | None = None
    attack: Patterns = None
    target: Patterns = None
    metric: Patterns = None
    seed: int | list[int] | None = None

    def matches(self, record: Record, measurement: bool = True) -> bool:
        """True when ``record`` is selected; ``measurement=False`` ignores target and metric."""
        for key in ("dataset", "model", "cut_point", "defense", "attack", "target", "metric"):
            pattern = getattr(self, key)
            if pattern is None or (not measurement and key in ("target", "metric")):
                continue
            patterns = pattern if isinstance(pattern, list) else [pattern]
            value = record.get(key)
            if value is None or not any(fnmatch.fnmatchcase(str(value), str(p)) for p in patterns):
                return False
        if self.seed is not None:
            seeds = self.seed if isinstance(self.seed, list) else [self.seed]
            if record.get("seed") not in seeds:
                return False
        if self.defense_params:
            params = record.get("defense_params") or {}
            if any(k not in params or params[k] != v for k, v in self.defense_params.items()):
                return False
        return True

    def text(self) -> str:
        parts = [f"{k}={v}" for k, v in self.model_dump(exclude_none=True).items()]
        return ", ".join(parts) or "every record"


Quantity = str  # value | advantage | primary_accuracy | cost.<key>


class Rule(_Strict):
    """A bound: ``min <= quantity <= max`` on every selected record."""

    name: str | None = Field(None, description="shown in failure lines and as the JUnit suite name")
    description: str | None = None
    select: Selector = Field(default_factory=Selector)
    quantity: Quantity = Field("value", description="value | advantage | primary_accuracy | cost.<key>")
    use: Literal["estimate", "ci_high", "ci_low"] = Field(
        "estimate", description="compare the point estimate, or the upper / lower end of its 95% CI")
    max: float | None = None
    min: float | None = None

    @field_validator("quantity")
    @classmethod
    def _known_quantity(cls, value: str) -> str:
        if value in ("value", "advantage", "primary_accuracy") or (value.startswith("cost.") and len(value) > 5):
            return value
        raise ValueError(f"unknown quantity {value!r}; use value, advantage, primary_accuracy or cost.<key>")

    @model_validator(mode="after")
    def _has_bound(self) -> "Rule":
        if self.max is None and self.min is None:
            raise ValueError("a rule needs max or min")
        if self.quantity.startswith("cost.") and self.use != "estimate":
            raise ValueError("cost quantities have no confidence interval; use: estimate")
        return self

    @property
    def per_group(self) -> bool:
        """Utility and cost belong to a (cut point, defense) group, not to one attack record."""
        return self.quantity == "primary_accuracy" or self.quantity.startswith("cost.")


class Regression(_Strict):
    """What counts as a regression against a baseline report."""

    select: Selector = Field(default_factory=Selector)
    tolerance: float = Field(0.0, ge=0, description="added to the combined CI, in the metric's units")
    tolerances: dict[str, float] = Field(default_factory=dict, description="per metric, overrides tolerance")

    def tolerance_for(self, metric: str | None) -> float:
        return self.tolerances.get(str(metric), self.tolerance)


class Policy(_Strict):
    version: Literal[1] = 1
    rules: list[Rule] = Field(default_factory=list)
    regression: Regression = Field(default_factory=Regression)
    allow_failed_cells: bool = Field(False, description="failed cells in the report do not fail the check")

    @model_validator(mode="after")
    def _names(self) -> "Policy":
        seen = set()
        for i, rule in enumerate(self.rules):
            if rule.name is None:
                rule.name = f"rule{i + 1}"
            if rule.name in seen:
                raise ValueError(f"rule name {rule.name!r} is used twice")
            seen.add(rule.name)
        return self


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy YAML (``yaml.safe_load``; unknown keys are errors naming the key)."""
    path = Path(path)
    if not path.is_file():
        raise AuditInputError(f"policy {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise AuditInputError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise AuditInputError(f"{path}: a policy must be a YAML mapping with 'rules'")
    try:
        return Policy.model_validate(raw)
    except ValidationError as err:
        lines = []
        for e in err.errors():
            loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
            if e["type"] == "extra_forbidden":
                msg = "unknown key" + _did_you_mean(str(e["loc"][-1]), _keys_at(e["loc"][:-1]))
            else:
                msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"{path}: {loc}: {msg}")
        raise AuditInputError("\n".join(lines)) from None


def _keys_at(loc: tuple) -> list[str]:
    """The keys the policy model allows at ``loc`` (e.g. ``("rules", 0, "select")``: a Selector's)."""
    model: type[BaseModel] = Policy
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        inner = _model_in(field.annotation) if field else None
        if inner is None:
            return []
        model = inner
    return list(model.model_fields)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside a field annotation (``list[Rule]`` -> Rule), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        if (found := _model_in(arg)) is not None:
            return found
    return None


def _did_you_mean(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else (f" (known: {', '.join(known)})" if known else "")


# ----------------------------------------------------------------------- evaluation
@dataclass
class Outcome:
    """One test case: a rule (or ``regression`` / ``failed-cells``) applied to one record."""

    suite: str
    case: str  # the cell: describe(record)
    passed: bool
    message: str
    record: Record | None = None


@dataclass
class CheckResult:
    outcomes: list[Outcome] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)  # suites whose selector matched nothing

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.passed]

    @property
    def passed(self) -> bool:
        return not self.failures


def measured(rule: Rule, record: Record) -> tuple[float | None, list | None, str]:
    """(estimate, [low, high] or None, unit) of the rule's quantity on ``record``."""
    q = rule.quantity
    if q == "value":
        return record.get("value"), record.get("ci95"), unit_of(record)
    if q == "advantage":
        adv, value = record.get("advantage"), record.get("value")
        ci = record.get("ci95")
        if adv is None or value is None or not ci or None in ci:
            return adv, None, unit_of(record)
        if orientation(record) < 0:  # advantage = chance - value
            return adv, [adv - (ci[1] - value), adv + (value - ci[0])], unit_of(record)
        return adv, [ci[0] + adv - value, ci[1] + adv - value], unit_of(record)
    utility = record.get("utility") or {}
    if q == "primary_accuracy":
        return utility.get("primary_accuracy"), utility.get("primary_accuracy_ci95"), ""
    return (record.get("cost") or {}).get(q.removeprefix("cost.")), None, ""


def _apply(rule: Rule, record: Record, labels) -> Outcome:
    estimate, ci, unit = measured(rule, record)
    case = describe({**record, "target": None, "attack": None} if rule.per_group else record, labels)
    shown = f"{rule.quantity} {fmt_ci(estimate, ci, unit)}"
    if estimate is None:
        return Outcome(rule.name, case, False, f"{case}: {rule.quantity} not measured (missing or not finite)", record)
    compared = {"estimate": estimate, "ci_high": (ci or [None, None])[1], "ci_low": (ci or [None, None])[0]}[rule.use]
    if compared is None:
        return Outcome(rule.name, case, False, f"{case}: {shown} has no confidence interval for use: {rule.use}", record)
    if not (math.isfinite(estimate) and math.isfinite(compared)):
        return Outcome(rule.name, case, False, f"{case}: {shown} is not finite (NaN/inf)", record)
    which = "" if rule.use == "estimate" else f" ({rule.use.replace('_', ' ')} {compared:.4g})"
    if rule.max is not None and compared > rule.max:
        return Outcome(rule.name, case, False, f"{case}: {shown}{which} > max {rule.max:g}", record)
    if rule.min is not None and compared < rule.min:
        return Outcome(rule.name, case, False, f"{case}: {shown}{which} < min {rule.min:g}", record)
    bound = " and ".join(b for b in (
        f">= {rule.min:g}" if rule.min is not None else "", f"<= {rule.max:g}" if rule.max is not None else "") if b)
    return Outcome(rule.name, case, True, f"{case}: {shown}{which} {bound}", record)


def _group_key(record: Record) -> tuple:
    return (record["dataset"], record["model"], record["seed"], record["cut_point"], *defense_key(record))


def partial_report(report: dict[str, Any]) -> str | None:
    """Why ``report`` covers only part of its audit's grid (a ``merge --partial`` report, or one
    shard's report), or None when it covers all of it."""
    env = report.get("environment") or {}
    if env.get("partial"):
        missing = env.get("missing_cells") or []
        shards = env.get("missing_shards") or []
        return (f"the report is partial (merged with --partial): {len(missing)} cell(s) missing"
                + (f", in shard(s) {', '.join(shards)}" if shards else "")
                + (f" (e.g. {', '.join(missing[:3])})" if missing else ""))
    if env.get("shard"):
        i, n = env["shard"]
        return f"the report covers shard {i}/{n} of the grid only; merge the shards with `splitaudit merge`"
    return None


def evaluate(report: dict[str, Any], policy: Policy, baseline: dict[str, Any] | None = None, *,
             allow_removed: bool = False, allow_partial: bool = False, allow_non_finite: bool = False) -> CheckResult:
    """Apply ``policy`` to ``report`` (and the regression rule against ``baseline`` when given).

    Besides the rules, these fail the check unless allowed: a partial report (``partial-report``,
    ``allow_partial``); a record holding a NaN / inf number (``non-finite``, ``allow_non_finite``:
    such records are then left out of the rules and the baseline comparison); a baseline record
    the report no longer has (``removed-records``, ``allow_removed``; a record whose cell failed
    in the report is left to ``failed-cells``); failed cells (``failed-cells``, the policy's
    ``allow_failed_cells``)."""
    result = CheckResult()
    records = report["results"]
    labels = defense_labels(records + (baseline["results"] if baseline else []))
    partial = partial_report(report)
    if partial and allow_partial:
        result.warnings.append(f"{partial} (allowed: --allow-partial)")
    elif partial:
        result.outcomes.append(Outcome("partial-report", "report", False,
                                       f"{partial}; pass --allow-partial to accept a partial report"))
    if baseline is not None and (partial_baseline := partial_report(baseline)):
        result.warnings.append(f"baseline: {partial_baseline}; its missing records are not compared")

    non_finite = {id(r): paths for r in records if r.get("status") == "ok" and (paths := non_finite_paths(r))}
    for r in records:
        if id(r) in non_finite:
            case = describe(r, labels)
            message = f"{case}: not finite (NaN/inf) at {', '.join(non_finite[id(r)][:4])}"
            if allow_non_finite:
                result.warnings.append(f"{message} (left out: --allow-non-finite)")
            else:
                result.outcomes.append(Outcome("non-finite", case, False, message, r))
    checked = [r for r in records if id(r) not in non_finite] if allow_non_finite else records
    ok = [r for r in checked if r.get("status") == "ok"]
    for rule in policy.rules:
        selected = [r for r in ok if rule.select.matches(r, measurement=not rule.per_group)]
        if rule.per_group:
            selected = list({_group_key(r): r for r in selected}.values())
        if not selected:
            result.unmatched.append(rule.name)
            result.warnings.append(f"rule {rule.name!r}: no record matches its selector ({rule.select.text()})")
            continue
        result.outcomes += [_apply(rule, r, labels) for r in selected]
    failed = [r for r in checked if r.get("status") != "ok"]
    if failed and not policy.allow_failed_cells:
        for r in failed:
            case = describe(r, labels)
            first = (r.get("error") or "no error message").splitlines()[0]
            result.outcomes.append(Outcome("failed-cells", case, False, f"{case}: cell failed: {first}", r))
    elif failed:
        result.warnings.append(f"{len(failed)} failed record(s) ignored (allow_failed_cells: true)")
    if baseline is not None:
        _regressions(result, baseline["results"], records, policy.regression, labels,
                     allow_removed=allow_removed, allow_non_finite=allow_non_finite)
    return result


def _regressions(result: CheckResult, old: list[Record], new: list[Record], regression: Regression, labels, *,
                 allow_removed: bool, allow_non_finite: bool) -> None:
    """The baseline part of :func:`evaluate`: one ``regression`` case per record of the report
    with a counterpart (or none: added), one ``removed-records`` case per baseline record it lost."""
    failed_cells = {measurement_key(r)[:6] for r in new if r.get("status") != "ok"}
    compared = removed = 0
    changes = compare_records(old, new, regression)
    for c in changes:
        if c.new is None:
            if not regression.select.matches(c.old) or measurement_key(c.old)[:6] in failed_cells:
                continue  # not gated, or its cell failed in the report (the failed-cells case)
            removed += 1
            case = describe(c.old, labels)
            message = f"{case}: in the baseline, missing from the report (removed)"
            if allow_removed:
                result.warnings.append(f"{message} (allowed: --allow-removed)")
            else:
                result.outcomes.append(Outcome(
                    "removed-records", case, False, f"{message}; pass --allow-removed if that is intended", c.old))
            continue
        if not regression.select.matches(c.new):
            continue
        compared += c.old is not None
        case = describe(c.new, labels)
        if c.status == "non-finite" and allow_non_finite:
            result.warnings.append(f"regression: {case}: {c.explain()} (left out: --allow-non-finite)")
            continue
        passed = c.status not in ("regressed", "non-finite")
        result.outcomes.append(Outcome("regression", case, passed, f"{case}: {c.explain()}", c.new))
    retuned = [c for c in changes if c.new is not None and c.params_change]
    if retuned:
        result.warnings.append(f"regression: {len(retuned)} record(s) compared with a baseline whose defense "
                               f"parameters differ (e.g. {retuned[0].new['defense']} {retuned[0].params_change})")
    if not compared and not removed:
        result.unmatched.append("regression")
        result.warnings.append("regression: no record of the report has a counterpart in the baseline")


def report_path(path: str | Path) -> Path:
    """``path``, or ``path/report.json`` when ``path`` is an audit's output folder."""
    path = Path(path)
    if path.is_dir():
        if not (path / "report.json").is_file():
            raise AuditInputError(f"{str(path)!r} is a folder without a report.json (is the audit finished?)")
        return path / "report.json"
    return path


# ------------------------------------------------------------------------ comparison
def measurement_key(record: Record) -> tuple:
    """What identifies a measurement across two reports: dataset, model, seed, cut point,
    defense *name*, attack, target and metric. Defense parameters are left out so that a
    retuned defense (noise scale 10 -> 3) is compared with what it was (see :func:`pair_records`);
    attack parameters may differ too."""
    return (record["dataset"], record["model"], record["seed"], record["cut_point"], record["defense"],
            record["attack"], record.get("target"), record.get("metric"))


def pair_records(old: list[Record], new: list[Record]) -> list[tuple[Record | None, Record | None]]:
    """(old, new) pairs of the same measurement (:func:`measurement_key`), None on the side that
    lacks it. Under one key, records with equal defense parameters pair first; then one record
    left on each side pairs too (the defense's parameters changed); when more are left (a report
    with several configurations of a defense) which is which is ambiguous: they stay unpaired."""
    groups: dict[tuple, tuple[list[Record], list[Record]]] = {}
    for side, records in enumerate((old, new)):
        for r in records:
            groups.setdefault(measurement_key(r), ([], []))[side].append(r)
    pairs: list[tuple[Record | None, Record | None]] = []
    for olds, news in groups.values():
        by_params = {defense_key(n): n for n in news}
        left_old = []
        for o in olds:
            same = by_params.pop(defense_key(o), None)
            if same is None:
                left_old.append(o)
            else:
                pairs.append((o, same))
        left_new = list(by_params.values())
        if len(left_old) == 1 and len(left_new) == 1:
            pairs.append((left_old[0], left_new[0]))
        else:
            pairs += [(o, None) for o in left_old] + [(None, n) for n in left_new]
    return pairs


def params_change(old: Record, new: Record) -> str:
    """The defense parameters that differ, e.g. ``scale 10.0 -> 3.0`` ('' when none does)."""
    a, b = old.get("defense_params") or {}, new.get("defense_params") or {}
    shown = lambda params, k: json.dumps(params[k]) if k in params else "(unset)"
    return ", ".join(f"{k} {shown(a, k)} -> {shown(b, k)}" for k in sorted(set(a) | set(b)) if a.get(k, ...) != b.get(k, ...))


@dataclass
class Change:
    """One measurement in two reports. ``status``: regressed (leakage rose, or utility fell,
    beyond the noise), improved, unchanged, non-finite (a NaN/inf value or CI: nothing can be
    said), added, removed or failed (no value on a side)."""

    old: Record | None
    new: Record | None
    status: str
    rise: float | None = None  # oriented change (positive = worse: more leakage / less utility)
    margin: float | None = None  # combined CI half-width + tolerance
    kind: str = "leakage"  # or "utility"

    @property
    def params_change(self) -> str:
        """The defense parameters that changed between the two sides ('' when none or one-sided)."""
        return params_change(self.old, self.new) if self.old is not None and self.new is not None else ""

    def explain(self) -> str:
        rec = self.new or self.old
        if self.status in ("added", "removed", "failed"):
            return self.status
        params = f"; defense parameters changed: {self.params_change}" if self.params_change else ""
        unit = unit_of(rec)
        old = fmt_ci(self.old["value"], self.old.get("ci95"))
        new = fmt_ci(self.new["value"], self.new.get("ci95"))
        values = f"{rec['metric']} {old} -> {new}{' ' + unit if unit else ''}"
        if self.status == "non-finite":
            side = "the report's" if not _finite_record(self.new) else "the baseline's"
            return f"{values}: {side} value or CI is not finite (NaN/inf), nothing can be compared{params}"
        if self.kind == "utility":
            verb = {"regressed": "accuracy fell", "improved": "accuracy rose"}.get(self.status, "within noise")
            direction = ""
        else:
            verb = {"regressed": "leakage rose", "improved": "leakage fell"}.get(self.status, "within noise")
            direction = "" if orientation(rec) > 0 else " (lower value = more leakage)"
        return (f"{values}: {verb}{direction}, change {self.rise:+.4g} vs combined CI + tolerance "
                f"{self.margin:.4g}{params}")


def _finite_record(record: Record) -> bool:
    return all(v is None or math.isfinite(v) for v in [record.get("value"), *(record.get("ci95") or [])])


def classify(old: tuple[float, float, float], new: tuple[float, float, float],
             tolerance: float) -> tuple[str, float | None, float | None]:
    """(status, rise, margin) for two oriented (estimate, low, high) triples (higher = worse).

    Worse (``regressed``) when ``new - old > sqrt(h_new^2 + h_old^2) + tolerance``, with h the
    facing half-widths of the two 95% CIs (new's lower, old's upper): the half-width of the
    CI of a difference of independent estimates. Better (``improved``) symmetrically.
    ``non-finite`` (rise and margin None) when a number of either triple is NaN or infinite."""
    if not all(math.isfinite(x) for x in (*old, *new)):
        return "non-finite", None, None
    rise = new[0] - old[0]
    if rise >= 0:
        h = math.hypot(new[0] - new[1], old[2] - old[0])
    else:
        h = math.hypot(new[2] - new[0], old[0] - old[1])
    margin = h + tolerance
    status = "regressed" if rise > margin else "improved" if -rise > margin else "unchanged"
    return status, rise, margin


def change_of(old: Record, new: Record, tolerance: float) -> Change:
    """Classify the leakage change of one measurement (see :func:`classify`)."""
    a, b = leakage(old), leakage(new)
    if a is None or b is None:
        return Change(old, new, "failed")
    return Change(old, new, *classify(a, b, tolerance))


def _changes(old: list[Record], new: list[Record], make) -> list[Change]:
    """:func:`pair_records`, each pair classified by ``make(old, new)`` (or added / removed)."""
    return [make(a, b) if a is not None and b is not None else Change(a, b, "added" if a is None else "removed")
            for a, b in pair_records(old, new)]


def compare_records(old: list[Record], new: list[Record], regression: Regression | None = None) -> list[Change]:
    """Pair the measurements of two reports (:func:`pair_records`) and classify each leakage change."""
    regression = regression or Regression()
    return _changes([r for r in old if r.get("target") is not None], [r for r in new if r.get("target") is not None],
                    lambda a, b: change_of(a, b, regression.tolerance_for(b.get("metric"))))


def _utility_record(record: Record) -> Record | None:
    utility = record.get("utility") or {}
    acc = utility.get("primary_accuracy")
    if record.get("status") != "ok" or acc is None:
        return None
    return {**record, "attack": "(utility)", "target": "primary", "metric": "primary_accuracy",
            "value": acc, "ci95": utility.get("primary_accuracy_ci95"), "chance": None, "advantage": None,
            "extra": {}}


def utility_changes(old: list[Record], new: list[Record], tolerance: float = 0.0) -> list[Change]:
    """Primary accuracy per (dataset, model, seed, cut point, defense) in two reports, paired like
    the measurements; a fall beyond the combined CI + tolerance is ``regressed``."""
    def groups(records):
        return list({_group_key(r): u for r in records if (u := _utility_record(r)) is not None}.values())

    def make(a: Record, b: Record) -> Change:  # worse = lower accuracy
        loss = [oriented(r["value"], r.get("ci95"), -1) for r in (a, b)]
        return Change(a, b, *classify(*loss, tolerance), kind="utility")

    changes = _changes(groups(old), groups(new), make)
    for c in changes:
        c.kind = "utility"
    return changes


# ---------------------------------------------------------------------------- JUnit
FAILURE_TYPES = {"regression": "LeakageRegression", "removed-records": "RemovedRecord", "non-finite": "NonFiniteValue",
                 "partial-report": "PartialReport", "failed-cells": "FailedCell"}


def junit_xml(result: CheckResult, name: str = "splitaudit check") -> str:
    """JUnit XML: one ``testsuite`` per rule (plus ``regression``, ``removed-records``, ``non-finite``,
    ``partial-report`` and ``failed-cells``), one
    ``testcase`` per (rule, record); a selector that matched nothing is a skipped case."""
    suites: dict[str, list[Outcome]] = {}
    for o in result.outcomes:
        suites.setdefault(o.suite, []).append(o)
    root = ET.Element("testsuites", name=name, tests=str(len(result.outcomes) + len(result.unmatched)),
                      failures=str(len(result.failures)), errors="0", skipped=str(len(result.unmatched)))
    for suite, outcomes in suites.items():
        el = ET.SubElement(root, "testsuite", name=suite, tests=str(len(outcomes)),
                           failures=str(sum(not o.passed for o in outcomes)), errors="0", skipped="0")
        for o in outcomes:
            case = ET.SubElement(el, "testcase", classname=f"splitaudit.{suite}", name=o.case, time="0")
            if o.passed:
                ET.SubElement(case, "system-out").text = o.message
            else:
                ET.SubElement(case, "failure", message=o.message,
                              type=FAILURE_TYPES.get(suite, "LeakageBound")).text = o.message
    for suite in result.unmatched:
        el = ET.SubElement(root, "testsuite", name=suite, tests="1", failures="0", errors="0", skipped="1")
        case = ET.SubElement(el, "testcase", classname=f"splitaudit.{suite}", name="(no record matched)", time="0")
        ET.SubElement(case, "skipped", message=f"{suite}: the selector matched no record")
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"
