"""Comparison: the same measurements in two reports, paired and classified (regressed, improved, ...)."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from statistics import NormalDist

from audit.core.records import Record, defense_key, fmt_ci, group_key, leakage, measurement_key, orientation, oriented, unit_of
from audit.gate.policy import Regression
from audit.verdicts import Z95, holm


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
    p_value: float | None = None  # two-sided, of a change beyond the tolerance (:func:`change_p_value`)
    p_adjusted: float | None = None  # the same after the family-wise correction (:func:`correct_family`)
    family: int | None = None  # how many changes the correction was over

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
        tested = ""
        if self.p_value is not None and self.family is not None and self.family > 1:
            tested = f" (p {self.p_value:.2g}; Holm over {self.family} changes {self.p_adjusted:.2g})"
        return (f"{values}: {verb}{direction}, change {self.rise:+.4g} vs combined CI + tolerance "
                f"{self.margin:.4g}{tested}{params}")


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


def change_p_value(rise: float, margin: float, tolerance: float) -> float:
    """Two-sided p-value of a change ``rise`` beyond ``tolerance``, from ``margin`` (:func:`classify`:
    the combined 95% CI half-width h plus the tolerance): z = 1.96 (|rise| - tolerance) / h, so that
    p < 0.05 exactly when :func:`classify` calls the change; 1 within the tolerance; 0 beyond it
    when both CIs have zero width."""
    h = margin - tolerance
    beyond = abs(rise) - tolerance
    if beyond <= 0:
        return 1.0
    if h <= 0:
        return 0.0
    return min(1.0, 2 * (1 - NormalDist().cdf(Z95 * beyond / h)))


def change_of(old: Record, new: Record, tolerance: float) -> Change:
    """Classify the leakage change of one measurement on its own (see :func:`classify`), with its
    p-value (:func:`change_p_value`)."""
    a, b = leakage(old), leakage(new)
    if a is None or b is None:
        return Change(old, new, "failed")
    return _with_p_value(Change(old, new, *classify(a, b, tolerance)), tolerance)


def _with_p_value(change: Change, tolerance: float) -> Change:
    if change.status != "non-finite":
        change.p_value = change_p_value(change.rise, change.margin, tolerance)
    return change


def correct_family(changes: list[Change], regression: Regression, gated: bool = True) -> list[Change]:
    """Call the changes of one comparison together: each tested change (a p-value, and with ``gated``
    its record selected by ``regression.select``) is ``regressed`` / ``improved`` when its p-value, adjusted
    by ``regression.correction`` over all of them (Holm: the chance that noise alone calls any
    of them is at most ``regression.alpha``), is below ``regression.alpha``; else ``unchanged``.
    With one change, or ``correction: none`` at alpha 0.05, the calls are :func:`classify`'s."""
    tested = [c for c in changes if c.p_value is not None and c.new is not None
              and (not gated or regression.select.matches(c.new))]
    p = [c.p_value for c in tested]
    adjusted = holm(p) if regression.correction == "holm" else p
    for c, q in zip(tested, adjusted):
        c.p_adjusted, c.family = q, len(tested)
        c.status = "unchanged" if q >= regression.alpha else "regressed" if c.rise > 0 else "improved"
    return changes


def _changes(old: list[Record], new: list[Record], make) -> list[Change]:
    """:func:`pair_records`, each pair classified by ``make(old, new)`` (or added / removed)."""
    return [make(a, b) if a is not None and b is not None else Change(a, b, "added" if a is None else "removed")
            for a, b in pair_records(old, new)]


def reseeded(changes: list[Change]) -> list[Change]:
    """The compared changes whose attack ran with another seed in the report than in the baseline
    (``stage_seeds.attack``; it derives from the task key, so a retrained or other model, other data or
    training settings change it). Their CIs cover the test samples, not that draw: a neural head's
    figure moves like a new training seed's (docs/ci-gate.md)."""
    def seed(record: Record | None) -> int | None:
        return ((record or {}).get("stage_seeds") or {}).get("attack")

    return [c for c in changes if c.kind == "leakage" and c.p_value is not None and None not in (seed(c.old), seed(c.new))
            and seed(c.old) != seed(c.new)]


RESEEDED_ADVICE = ("their CIs leave out the attack's own training draw (a neural head's balanced accuracy moves with "
                   "SD 0.02-0.034 by seed alone on the default's tasks): gate such a comparison with a tolerance "
                   "(~0.07 for balanced accuracy) or the linear probe, see docs/ci-gate.md")


def compare_records(old: list[Record], new: list[Record], regression: Regression | None = None) -> list[Change]:
    """Pair the measurements of two reports (:func:`pair_records`) and call each leakage change, the
    family of them corrected together (:func:`correct_family`)."""
    regression = regression or Regression()
    changes = _changes([r for r in old if r.get("target") is not None], [r for r in new if r.get("target") is not None],
                       lambda a, b: change_of(a, b, regression.tolerance_for(b.get("metric"))))
    return correct_family(changes, regression)


def _utility_record(record: Record) -> Record | None:
    utility = record.get("utility") or {}
    acc = utility.get("primary_accuracy")
    if record.get("status") != "ok" or acc is None:
        return None
    return {**record, "attack": "(utility)", "target": "primary", "metric": "primary_accuracy",
            "value": acc, "ci95": utility.get("primary_accuracy_ci95"), "chance": None, "advantage": None,
            "extra": {}}


def utility_changes(old: list[Record], new: list[Record], tolerance: float = 0.0,
                    regression: Regression | None = None) -> list[Change]:
    """Primary accuracy per (dataset, model, seed, cut point, defense) in two reports, paired like
    the measurements; a fall beyond the combined CI + tolerance is ``regressed``, the groups'
    changes corrected together as the measurements' are (:func:`correct_family`)."""
    def groups(records):
        return list({group_key(r): u for r in records if (u := _utility_record(r)) is not None}.values())

    def make(a: Record, b: Record) -> Change:  # worse = lower accuracy
        loss = [oriented(r["value"], r.get("ci95"), -1) for r in (a, b)]
        return _with_p_value(Change(a, b, *classify(*loss, tolerance), kind="utility"), tolerance)

    changes = _changes(groups(old), groups(new), make)
    for c in changes:
        c.kind = "utility"
    return correct_family(changes, regression or Regression(), gated=False)  # the selector names measurements


