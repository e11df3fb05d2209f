"""Evaluation: a policy applied to a report (and its baseline) gives test cases, passed or failed."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audit.core.errors import AuditInputError
from audit.core.records import Record, case_name, defense_labels, fmt_ci, group_key, measurement_key, orientation, unit_of
from audit.core.store import non_finite_paths
from audit.gate.comparison import RESEEDED_ADVICE, compare_records, reseeded
from audit.gate.policy import Policy, Regression, Rule


@dataclass
class Outcome:
    """One test case: a rule (or ``regression`` / ``failed-cells``) applied to one record."""

    suite: str
    case: str  # the cell: case_name(record)
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
    case = case_name({**record, "target": None, "attack": None} if rule.per_group else record, labels)
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
            case = case_name(r, labels)
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
            selected = list({group_key(r): r for r in selected}.values())
        if not selected:
            result.unmatched.append(rule.name)
            result.warnings.append(f"rule {rule.name!r}: no record matches its selector ({rule.select.text()})")
            continue
        result.outcomes += [_apply(rule, r, labels) for r in selected]
    failed = [r for r in checked if r.get("status") != "ok"]
    if failed and not policy.allow_failed_cells:
        for r in failed:
            case = case_name(r, labels)
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
            case = case_name(c.old, labels)
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
        case = case_name(c.new, labels)
        if c.status == "non-finite" and allow_non_finite:
            result.warnings.append(f"regression: {case}: {c.explain()} (left out: --allow-non-finite)")
            continue
        passed = c.status not in ("regressed", "non-finite")
        result.outcomes.append(Outcome("regression", case, passed, f"{case}: {c.explain()}", c.new))
    drawn = [c for c in reseeded(changes) if regression.select.matches(c.new)]
    if drawn:
        result.warnings.append(f"regression: {len(drawn)} compared record(s) ran their attack with other seeds than "
                               f"the baseline's (another task model, data or training); {RESEEDED_ADVICE}")
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


