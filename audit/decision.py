"""PrivyNet's question: which (cut point, defense) can ship under edge-cost, utility and privacy
constraints? The functional core behind report.html's decision table, ``splitaudit recommend``
and ``splitaudit check --decision``: a report in, one :class:`Row` per (dataset, model, cut
point, defense) out (seeds averaged), each with its verdict per attack family
(:mod:`audit.verdicts`), and the constraints of a config's ``decision:`` block checked on them.

    decision:
      max_edge_flops: 0.2            # edge FLOPs as a fraction of the whole model's
      max_accuracy_drop: 0.02        # primary accuracy below the undefended model's (absolute)
      max_bytes_sent: null           # bytes per sample sent to the cloud
      require_no_evidence: [attribute, reconstruction]
      alpha: 0.05                    # verdict settings (audit.verdicts.VerdictSettings)
      min_advantage: {balanced_accuracy: 0.02}

The best admissible pair: the highest primary accuracy, then the least edge FLOPs, then the
fewest bytes. A row whose defended accuracy lies below the test split's majority-class rate (any
seed) is flagged ``cloud_failed``: the figure says the cloud was not trained well enough on the
release, not what the defense costs (``audit.pipeline.utility_flags``); one whose cloud answers the
label prior (``defenses.noise.LabelPrior``: the fine-tuned cloud did not beat it on validation) says so.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from audit.core.records import defense_key, defense_labels
from audit.verdicts import FAMILIES, VerdictSettings, verdicts


class Decision(BaseModel):
    """A config's ``decision:`` block: verdict settings and the constraints a shippable pair meets."""

    model_config = ConfigDict(extra="forbid")

    alpha: float = Field(0.05, gt=0, lt=1, description="family-wise error rate of the verdicts")
    power: float = Field(0.8, gt=0, lt=1, description="power of the minimum detectable advantage")
    min_advantage: dict[str, float] = Field(
        default_factory=dict, description="minimum advantage of practical interest per metric (README defaults)")
    min_n_eval: int = Field(10, ge=2, description="fewer evaluation samples make a record inconclusive")
    max_edge_flops: float | None = Field(None, ge=0, description="edge FLOPs fraction of the whole model, at most")
    max_accuracy_drop: float | None = Field(None, ge=0, description="primary accuracy below the undefended model's")
    max_bytes_sent: float | None = Field(None, ge=0, description="bytes sent per sample, at most")
    require_no_evidence: list[str] = Field(
        default_factory=list, description=f"families whose verdict must be no_evidence ({', '.join(FAMILIES)})")

    def settings(self) -> VerdictSettings:
        """The verdict settings of this block."""
        return VerdictSettings(alpha=self.alpha, power=self.power, min_advantage=dict(self.min_advantage),
                               min_n_eval=self.min_n_eval)

    def text(self) -> str:
        """The constraints in words, e.g. "edge FLOPs <= 20%; accuracy drop <= 0.02; ..."."""
        parts = []
        if self.max_edge_flops is not None:
            parts.append(f"edge FLOPs <= {100 * self.max_edge_flops:g}%")
        if self.max_accuracy_drop is not None:
            parts.append(f"accuracy drop <= {self.max_accuracy_drop:g}")
        if self.max_bytes_sent is not None:
            parts.append(f"bytes sent <= {self.max_bytes_sent:,.0f}")
        if self.require_no_evidence:
            parts.append(f"no evidence of a leak: {', '.join(self.require_no_evidence)} (alpha {self.alpha:g})")
        return "; ".join(parts) or "no constraint"

    @field_validator("require_no_evidence")
    @classmethod
    def _families(cls, value: list[str]) -> list[str]:
        unknown = [f for f in value if f not in FAMILIES]
        if unknown:
            raise ValueError(f"unknown attack family {', '.join(map(repr, unknown))}; known: {', '.join(FAMILIES)}")
        return value

    @field_validator("min_advantage")
    @classmethod
    def _metrics(cls, value: dict[str, float]) -> dict[str, float]:
        VerdictSettings(min_advantage=value)  # raises naming a metric that does not decide
        return value


def latency_text(cost: dict[str, Any], prefix: str, reference: dict[str, Any] | None = None,
                 reference_name: str = "none") -> str:
    """A latency for display: "2.29 [2.10–2.41]" (ms per sample, median [quartiles]); with the
    undefended ``reference`` cost at the same cut, "≈ none (…)" when the two lie within each other's
    spread, so timing noise is not shown as a difference; "n/a" without a figure."""
    median = cost.get(f"{prefix}_latency_ms")
    if median is None:
        return "n/a"
    q1, q3 = cost.get(f"{prefix}_latency_q1_ms"), cost.get(f"{prefix}_latency_q3_ms")
    text = f"{median:.4g}" + ("" if q1 is None or q3 is None else f" [{q1:.3g}–{q3:.3g}]")
    if reference is not None and reference is not cost and latencies_differ(cost, reference, prefix) is False:
        return f"≈ {reference_name} ({text})"
    return text


def latencies_differ(a: dict[str, Any], b: dict[str, Any], prefix: str) -> bool | None:
    """Whether two costs' ``prefix`` latencies differ beyond their spread: their interquartile ranges
    do not overlap. None when either has no spread recorded (a single timing, an older report)."""
    keys = (f"{prefix}_latency_q1_ms", f"{prefix}_latency_q3_ms")
    if any(c.get(k) is None for c in (a, b) for k in keys):
        return None
    return a[keys[1]] < b[keys[0]] or b[keys[1]] < a[keys[0]]


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


@dataclass
class Row:
    """One (dataset, model, cut point, defense), averaged over its seeds."""

    dataset: str
    model: str
    cut_point: str
    defense: str  # label, e.g. noise(scale=10.0)
    edge_flops_fraction: float | None
    bytes_sent: float | None
    primary_accuracy: float | None
    task_accuracy: float | None  # the undefended model's
    seeds: list[int]
    families: dict[str, dict[str, Any]] = field(default_factory=dict)  # family -> verdict entry
    majority_accuracy: float | None = None  # the test split's majority-class rate
    cloud_failed: bool = False  # some seed's defended accuracy lies below the majority-class rate
    cloud_prior: bool = False  # some seed's cloud answers the label prior (defenses.noise.LabelPrior)

    def cloud_failure_text(self) -> str:
        """'cloud failed to train (accuracy < majority-class rate 0.764)' for a flagged row, 'cloud answers
        the label prior (...)' for a row whose fine-tuned cloud lost to it on validation, else ''."""
        if self.cloud_failed:
            rate = "" if self.majority_accuracy is None else f" {self.majority_accuracy:.3f}"
            return f"cloud failed to train (accuracy < majority-class rate{rate})"
        if self.cloud_prior:
            return "cloud answers the label prior (the fine-tuned cloud did not beat it on validation)"
        return ""

    @property
    def task(self) -> str:
        return f"{self.dataset}/{self.model}"

    @property
    def accuracy_drop(self) -> float | None:
        if self.primary_accuracy is None or self.task_accuracy is None:
            return None
        return self.task_accuracy - self.primary_accuracy

    def change_text(self) -> str:
        """The accuracy change from the undefended model, e.g. "-0.144" ("±0.000" within 0.0005; "" unknown)."""
        drop = self.accuracy_drop
        if drop is None:
            return ""
        return "±0.000" if abs(drop) < 5e-4 else f"{-drop:+.3f}"

    @property
    def verdict(self) -> str:
        """leaks if a family leaks; else inconclusive if one is; else no_evidence ('' without verdicts)."""
        kinds = {v["verdict"] for v in self.families.values()}
        for kind in ("leaks", "inconclusive", "no_evidence"):
            if kind in kinds:
                return kind
        return ""

    def failures(self, decision: Decision) -> list[str]:
        """Why this pair is not admissible under ``decision`` (empty: admissible)."""
        why = []
        if decision.max_edge_flops is not None:
            if self.edge_flops_fraction is None:
                why.append("edge FLOPs fraction unknown")
            elif self.edge_flops_fraction > decision.max_edge_flops:
                why.append(f"edge FLOPs {100 * self.edge_flops_fraction:.1f}% > {100 * decision.max_edge_flops:.1f}%")
        if decision.max_accuracy_drop is not None:
            drop = self.accuracy_drop
            if drop is None:
                why.append("accuracy drop unknown")
            elif drop > decision.max_accuracy_drop:
                why.append(f"accuracy drop {drop:.3f} ({self.task_accuracy:.3f} -> {self.primary_accuracy:.3f}) "
                           f"> {decision.max_accuracy_drop:g}" + (f"; {note}" if (note := self.cloud_failure_text()) else ""))
        if decision.max_bytes_sent is not None:
            if self.bytes_sent is None:
                why.append("bytes sent unknown")
            elif self.bytes_sent > decision.max_bytes_sent:
                why.append(f"bytes sent {self.bytes_sent:,.0f} > {decision.max_bytes_sent:,.0f}")
        for family in decision.require_no_evidence:
            v = self.families.get(family)
            if v is None:
                why.append(f"{family}: no attack of this family ran")
            elif v["verdict"] == "leaks":
                why.append(f"{family} leaks ({v['deciding_attack']} {v['target']}·{v['metric']} "
                           f"advantage {v['advantage']:+.3g}{' ' + v['unit'] if v.get('unit') else ''})")
            elif v["verdict"] == "inconclusive":
                why.append(f"{family} inconclusive ({v['reason']})")
        return why


def decision_rows(report: dict[str, Any], decision: Decision | None = None) -> list[Row]:
    """One row per (dataset, model, cut point, defense) of the report's ok records, with its
    verdicts, computed from the records under ``decision``'s settings (default: the report's
    config ``decision:`` block), so a report made before verdicts existed works too; per task
    ordered by edge cost (edge FLOPs fraction, then bytes sent)."""

    ok = [r for r in report["results"] if r.get("status") == "ok"]
    labels = defense_labels(ok) if ok else {}
    groups: dict[tuple, list[dict]] = {}
    for r in ok:
        groups.setdefault((r["dataset"], r["model"], r["cut_point"], defense_key(r)), []).append(r)
    rows = {}
    for (dataset, model, cut, dkey), recs in groups.items():
        by_seed = {r["seed"]: r for r in recs}.values()  # utility and cost are per (cell group, seed)
        utility = [r.get("utility") or {} for r in by_seed]
        cost = [r.get("cost") or {} for r in by_seed]
        rows[(dataset, model, cut, labels.get(dkey, dkey[0]))] = Row(
            dataset, model, cut, labels.get(dkey, dkey[0]),
            _mean([c.get("edge_flops_fraction") for c in cost]), _mean([c.get("bytes_sent") for c in cost]),
            _mean([u.get("primary_accuracy") for u in utility]), _mean([u.get("task_accuracy") for u in utility]),
            sorted({r["seed"] for r in recs}), majority_accuracy=_mean([u.get("majority_accuracy") for u in utility]),
            cloud_failed=any(u.get("cloud_failed_to_train") for u in utility),
            cloud_prior=any(u.get("cloud_label_prior") for u in utility))
    for v in verdicts(ok, (decision or decision_of(report)).settings()):
        row = rows.get((v["dataset"], v["model"], v["cut_point"], v["defense_label"]))
        if row is not None:
            row.families[v["family"]] = v
    order = {key[:2]: i for i, key in reversed(list(enumerate(rows)))}
    inf = float("inf")
    return sorted(rows.values(), key=lambda r: (order[(r.dataset, r.model)], r.edge_flops_fraction
                                                if r.edge_flops_fraction is not None else inf,
                                                r.bytes_sent if r.bytes_sent is not None else inf))


def best(rows: list[Row], decision: Decision) -> Row | None:
    """The admissible row with the highest primary accuracy (then least edge FLOPs, then fewest bytes)."""
    inf = float("inf")
    ok = [r for r in rows if not r.failures(decision)]
    return min(ok, key=lambda r: (-(r.primary_accuracy if r.primary_accuracy is not None else -inf),
                                  r.edge_flops_fraction if r.edge_flops_fraction is not None else inf,
                                  r.bytes_sent if r.bytes_sent is not None else inf), default=None)


@dataclass
class Recommendation:
    task: str
    rows: list[Row]
    decision: Decision

    @property
    def best(self) -> Row | None:
        return best(self.rows, self.decision)

    @property
    def admissible(self) -> list[Row]:
        return [r for r in self.rows if not r.failures(self.decision)]


def recommend(report: dict[str, Any], decision: Decision, tasks: list[str] | None = None) -> list[Recommendation]:
    """Per task (``dataset/model``; ``tasks`` selects by that or by dataset label), its rows and best pair."""
    by_task: dict[str, list[Row]] = {}
    for row in decision_rows(report, decision):
        by_task.setdefault(row.task, []).append(row)
    if tasks:
        unknown = [t for t in tasks if not any(t in (name, name.split("/")[0]) for name in by_task)]
        if unknown:
            raise ValueError(f"no task {', '.join(map(repr, unknown))} in the report (tasks: {', '.join(by_task)})")
        by_task = {k: v for k, v in by_task.items() if k in tasks or k.split("/")[0] in tasks}
    return [Recommendation(task, rows, decision) for task, rows in by_task.items()]


def decision_of(report: dict[str, Any]) -> Decision:
    """The report's config ``decision:`` block (all defaults without one)."""
    return Decision.model_validate((report.get("config") or {}).get("decision") or {})


def settings_of(report: dict[str, Any]) -> VerdictSettings:
    """The verdict settings of a report's config (its ``decision:`` block), defaults without one."""
    return decision_of(report).settings()


def fresh_verdicts(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Verdicts of ``report``'s records under its config's ``decision:`` settings (report.json's
    ``verdicts``; readers recompute them this way for a report made before verdicts existed)."""
    return verdicts(report["results"], settings_of(report))
