"""What the HTML report shows, as plain data (no HTML, no plotting): the records grouped
by task, aggregated over seeds, the worst leakage per defense, the cost table and
the reconstruction grids."""
from __future__ import annotations

import base64
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audit.core.records import Record, defense_key, defense_labels, fmt, fmt_ci, leakage, orientation, unit_of
from audit.verdicts import shown_value


@dataclass
class Point:
    """One measurement aggregated over seeds: ``value`` is the mean of the per-seed estimates,
    (``low``, ``high``) the envelope of their 95% CIs; ``records`` are the per-seed records."""

    value: float
    low: float
    high: float
    chance: float | None
    records: list[Record]

    @property
    def seeds(self) -> list[int]:
        return sorted({r["seed"] for r in self.records})

    @property
    def n_eval(self) -> list[int]:
        return sorted({r["n_eval"] for r in self.records if r.get("n_eval") is not None})


def aggregate(records: list[Record]) -> Point:
    values = [r["value"] for r in records]
    lows = [(r.get("ci95") or [None])[0] for r in records]
    highs = [(r.get("ci95") or [None, None])[1] for r in records]
    chances = [r["chance"] for r in records if r.get("chance") is not None]
    return Point(
        value=sum(values) / len(values),
        low=min(v if lo is None else lo for v, lo in zip(values, lows)),
        high=max(v if hi is None else hi for v, hi in zip(values, highs)),
        chance=sum(chances) / len(chances) if chances else None,
        records=records,
    )


@dataclass
class Task:
    """The ok records of one (dataset, model), in the order a reader expects."""

    dataset: str
    model: str
    records: list[Record]
    cut_points: list[str]
    defenses: list[tuple[str, str]]  # defense keys, in order of appearance
    measures: list[tuple[str, str, str]]  # (attack, target, metric)
    info: list[dict[str, Any]] = field(default_factory=list)  # report["tasks"] entries (one per seed)

    @property
    def title(self) -> str:
        return f"{self.dataset} / {self.model}"

    @property
    def seeds(self) -> list[int]:
        return sorted({r["seed"] for r in self.records})

    def targets(self) -> list[tuple[str, str]]:
        """(target, metric) pairs, in order of appearance."""
        return list(dict.fromkeys((t, m) for _, t, m in self.measures))

    def select(self, **fields: Any) -> list[Record]:
        out = self.records
        for key, value in fields.items():
            if key == "defense":
                out = [r for r in out if defense_key(r) == value]
            else:
                out = [r for r in out if r.get(key) == value]
        return out


def tasks_of(report: dict[str, Any]) -> list[Task]:
    ok = [r for r in report["results"] if r.get("status") == "ok" and r.get("value") is not None]
    infos = report.get("tasks") or []
    tasks: dict[tuple[str, str], Task] = {}
    for r in ok:
        key = (r["dataset"], r["model"])
        if key not in tasks:
            info = [t for t in infos if t.get("dataset") == key[0] and t.get("model") == key[1]]
            declared = next((t.get("cut_points") for t in info if t.get("cut_points")), [])
            tasks[key] = Task(key[0], key[1], [], list(declared), [], [], info)
        task = tasks[key]
        task.records.append(r)
        if r["cut_point"] not in task.cut_points:
            task.cut_points.append(r["cut_point"])
        if defense_key(r) not in task.defenses:
            task.defenses.append(defense_key(r))
        if (r["attack"], r["target"], r["metric"]) not in task.measures:
            task.measures.append((r["attack"], r["target"], r["metric"]))
    for task in tasks.values():  # keep only cut points that were measured, in the model's order
        task.cut_points = [c for c in task.cut_points if any(r["cut_point"] == c for r in task.records)]
    return list(tasks.values())


def worst(records: list[Record]) -> Record | None:
    """The record with the most leakage (oriented; see audit.core.records.orientation)."""
    scored = [(leakage(r), r) for r in records]
    scored = [(s, r) for s, r in scored if s is not None and math.isfinite(s[0])]
    return max(scored, key=lambda sr: sr[0][0])[1] if scored else None


def verdict(record: Record) -> str:
    """``leak`` when the 95% CI lies beyond chance (beyond 0 for a metric without a chance level)
    in the leaky direction, ``chance`` when it covers chance, ``""`` when it cannot be told."""
    ci = record.get("ci95") or [None, None]
    if None in ci[:2] or record.get("value") is None:
        return ""
    reference = record.get("chance")
    if reference is None:
        if unit_of(record) != "nats":
            return ""
        reference = 0.0
    lo, hi = ci[:2]
    beyond = lo > reference if orientation(record) > 0 else hi < reference
    return "leak" if beyond else "chance"


CLOUD_FAILED = "⚠ below the majority-class rate: the cloud failed to train"
LABEL_PRIOR = "(the cloud answers the label prior: fine-tuning did not beat it on validation)"


def summary(task: Task, labels: dict, leaking: set[int] | None = None) -> dict[str, Any]:
    """Worst leakage per defense: one row per defense, one column per (target, metric), each
    cell the worst record over cut points, attacks and seeds. ``leaking``: ids of the records that
    leak after Holm's correction and the minimum advantage (:mod:`audit.verdicts`); a cell whose
    CI clears chance without that is ``uncorrected``."""
    columns = task.targets()
    rows = []
    for dkey in task.defenses:
        recs = task.select(defense=dkey)
        accs = sorted({r["utility"].get("primary_accuracy") for r in recs
                       if (r.get("utility") or {}).get("primary_accuracy") is not None})
        cells = []
        for target, metric in columns:
            w = worst([r for r in recs if r["target"] == target and r["metric"] == metric])
            if w is None:
                cells.append(None)
                continue
            value, ci = shown_value(w)  # MI lower bounds: max(0, .), the raw value in the note
            raw = f" (raw {fmt(w['value'])})" if value != w["value"] else ""
            cells.append({
                "value": fmt_ci(value, ci, unit_of(w)) + raw,
                "chance": fmt(w.get("chance")),
                "advantage": None if w.get("advantage") is None else f"{w['advantage'] + value - w['value']:+.3f}",
                "where": f"{w['cut_point']} · {w['attack']} · seed {w['seed']} · n={w.get('n_eval')}",
                "verdict": _colour(w, leaking),
            })
        acc = "n/a" if not accs else (f"{accs[0]:.3f}" if len(accs) == 1 else f"{accs[0]:.3f}–{accs[-1]:.3f}")
        if any((r.get("utility") or {}).get("cloud_failed_to_train") for r in recs):
            acc += f" {CLOUD_FAILED}"
        rows.append({"defense": labels[dkey], "accuracy": acc, "cells": cells})
    return {"columns": [{"target": t, "metric": m} for t, m in columns], "rows": rows}


def _colour(record: Record, leaking: set[int] | None) -> str:
    plain = verdict(record)
    if leaking is None or plain != "leak":
        return plain
    return "leak" if id(record) in leaking else "uncorrected"


VERDICT_TEXT = {"leaks": "leaks", "no_evidence": "no evidence", "inconclusive": "inconclusive", "": "–"}


def _family_cell(v: dict[str, Any] | None) -> dict[str, Any] | None:
    """A decision-table cell: the family's verdict, its deciding attack's advantage [CI] and the power."""
    if v is None:
        return None
    unit = f" {v['unit']}" if v.get("unit") else ""
    if v["verdict"] == "inconclusive":
        return {"verdict": v["verdict"], "text": VERDICT_TEXT[v["verdict"]], "figure": "", "detail": v["reason"]}
    signed = lambda x: f"{x:+.3f}" if abs(x) < 10 else f"{x:+.1f}"
    lo, hi = v["ci95"]
    figure = f"{signed(v['advantage'])} [{signed(lo)}, {signed(hi)}]{unit}"
    detail = f"{v['deciding_attack']} · {v['target']} · {v['metric']}"
    if v["verdict"] == "no_evidence":
        mda = v.get("min_detectable_advantage")
        detail += " · detectable ≥ " + ("n/a (no spread in the CI)" if mda is None else f"{mda:.3g}{unit}")
    return {"verdict": v["verdict"], "text": VERDICT_TEXT[v["verdict"]], "figure": figure, "detail": detail}


def decision_table(rows: list, decision=None) -> dict[str, Any]:
    """The decision table of one task: :func:`audit.decision.decision_rows`' rows (ordered by edge
    cost) as display strings, one column per attack family present; with ``decision`` (a
    :class:`audit.decision.Decision` with constraints) whether each row is admissible and why not."""
    from audit.decision import best
    from audit.verdicts import FAMILIES

    families = [f for f in FAMILIES if any(f in r.families for r in rows)]
    chosen = best(rows, decision) if decision is not None else None
    out = []
    for r in rows:
        out.append({
            "cut": r.cut_point, "defense": r.defense,
            "fraction": "n/a" if r.edge_flops_fraction is None else f"{100 * r.edge_flops_fraction:.1f}%",
            "bytes": human_count(r.bytes_sent, "B"),
            "accuracy": "n/a" if r.primary_accuracy is None else f"{r.primary_accuracy:.3f}",
            "change": r.change_text(),
            "cloud_failed": r.cloud_failure_text(),
            "cells": [_family_cell(r.families.get(f)) for f in families],
            "verdict": r.verdict, "verdict_text": VERDICT_TEXT[r.verdict],
            "failures": [f.split(" (")[0] for f in r.failures(decision)] if decision is not None else [],
            "best": r is chosen,
        })
    return {"families": families, "rows": out, "best": None if chosen is None else f"{chosen.cut_point} · {chosen.defense}"}


def human_count(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def cost_rows(task: Task, labels: dict) -> list[dict[str, Any]]:
    """One row per (cut point, defense, seed): utility and the defense's cost per sample; a latency
    within the spread of the undefended (``none``) one at the same cut and seed reads "≈ none"."""
    from audit.decision import latency_text

    rows = []
    undefended = [k for k in task.defenses if k[0] == "none"][:1]
    for cut in task.cut_points:
        for dkey in task.defenses:
            for seed in task.seeds:
                recs = task.select(cut_point=cut, defense=dkey, seed=seed)
                if not recs:
                    continue
                cost, utility = recs[0].get("cost") or {}, recs[0].get("utility") or {}
                ref = [r for k in undefended for r in task.select(cut_point=cut, defense=k, seed=seed)][:1]
                reference = (ref[0].get("cost") or {}) if ref else None
                frac = cost.get("edge_flops_fraction")
                rows.append({
                    "cut": cut, "defense": labels[dkey], "seed": seed,
                    "accuracy": fmt_ci(utility.get("primary_accuracy"), utility.get("primary_accuracy_ci95"))
                    + (f" {CLOUD_FAILED}" if utility.get("cloud_failed_to_train") else "")
                    + (f" {LABEL_PRIOR}" if utility.get("cloud_label_prior") else ""),
                    "edge_flops": human_count(cost.get("edge_flops"), "FLOP"),
                    "fraction": "n/a" if frac is None else f"{100 * frac:.1f}%",
                    "bytes": human_count(cost.get("bytes_sent"), "B"),
                    "edge_ms": latency_text(cost, "edge", reference),
                    "cloud_ms": latency_text(cost, "cloud", reference),
                    "rounds": cost.get("rounds", "n/a"),
                    "n_eval": utility.get("n_eval"),
                })
    return rows


def _inline_png(out_dir: Path, relative: str) -> str | None:
    """``data:`` URI of a PNG under ``out_dir`` (None when missing or outside the folder)."""
    root = out_dir.resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root) or path.suffix.lower() != ".png" or not path.is_file():
        return None
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def grids(task: Task, labels: dict, out_dir: Path) -> list[dict[str, Any]]:
    """Reconstruction grids (``extra.grid``, a PNG path relative to the output folder), one per
    cell, with that cell's figures (e.g. PSNR and SSIM) as the caption."""
    by_cell: dict[tuple[str, str], list[Record]] = {}
    for r in task.records:
        grid = (r.get("extra") or {}).get("grid")
        if isinstance(grid, str) and grid:
            by_cell.setdefault((r["cell_id"], grid), []).append(r)
    out = []
    for (cell_id, grid), recs in by_cell.items():
        r = recs[0]
        scores = "; ".join(f"{x['metric']} {fmt_ci(x['value'], x.get('ci95'), unit_of(x))}"
                           + (f" (chance {fmt(x['chance'])})" if x.get("chance") is not None else "") for x in recs)
        out.append({
            "title": f"{r['cut_point']} · {labels[defense_key(r)]} · {r['attack']}",
            "caption": f"{scores}. Top row: inputs; bottom row: reconstructions. Seed {r['seed']}, n_eval={r.get('n_eval')}.",
            "src": _inline_png(out_dir, grid), "path": grid,
            "attack": r["attack"], "cut": r["cut_point"], "defense": labels[defense_key(r)],
        })
    return out


def failed_rows(report: dict[str, Any], labels: dict) -> list[dict[str, str]]:
    seen, rows = set(), []
    for r in report["results"]:
        if r.get("status") == "ok" or r.get("cell_id") in seen:
            continue
        seen.add(r.get("cell_id"))
        rows.append({"cell": f"{r['dataset']}/{r['model']} seed={r['seed']} cut={r['cut_point']} "
                             f"defense={labels.get(defense_key(r), r['defense'])} attack={r['attack']}",
                     "error": r.get("error") or ""})
    return rows


def all_labels(report: dict[str, Any]) -> dict:
    return defense_labels(report["results"])
