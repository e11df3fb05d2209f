"""``splitaudit compare A B``: what changed from report A to report B (report.json files or output
folders), with the gate's CI-aware rule (a change counts only beyond the combined 95% CIs plus a
tolerance, the measurements' changes Holm-corrected together: :func:`audit.gate.correct_family`).
Measurements pair by defense name (:func:`audit.gate.pair_records`); a pair whose defense parameters
changed says which. ``--fail-on-regression``: exit 1 when something regressed
or a value is NaN/inf."""
from __future__ import annotations

import argparse
import csv
import sys

ORDER = {"regressed": 0, "non-finite": 1, "improved": 2, "failed": 3, "added": 4, "removed": 5, "unchanged": 6}
FAILING = ("regressed", "non-finite")
HEAD = ["status", "dataset", "model", "seed", "cut", "defense", "attack", "target", "metric", "A", "B", "change", "margin",
        "p_adjusted", "defense_params"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare", help="table of what changed between two reports (CI-aware)",
        description="Pair the measurements of two reports (by dataset, model, seed, cut point, defense name, "
                    "attack, target, metric; a changed defense parameter is shown, not a new measurement) and "
                    "show which rose or fell beyond the combined 95% CIs plus a tolerance (Holm-corrected over the "
                    "measurements); also the primary accuracy per cut point and defense.")
    p.add_argument("a", metavar="A", help="the earlier report.json (or its output folder)")
    p.add_argument("b", metavar="B", help="the later report.json (or its output folder)")
    p.add_argument("--tolerance", type=float, default=None, help="added to the combined CI (default: the policy's, else 0)")
    p.add_argument("--policy", help="take tolerances (regression section) from this policy YAML")
    p.add_argument("--all", action="store_true", help="also list unchanged measurements")
    p.add_argument("--format", choices=["text", "markdown", "csv"], default="text")
    p.add_argument("--fail-on-regression", action="store_true",
                   help="exit 1 when some leakage rose, accuracy fell, or a compared value is NaN/inf")
    p.set_defaults(handler=main)


def rows(changes, labels) -> list[list[str]]:
    from audit.core.records import defense_key, fmt_ci, unit_of

    out = []
    for c in sorted(changes, key=lambda c: ORDER[c.status]):
        rec = c.new or c.old
        unit = unit_of(rec)
        side = lambda r: fmt_ci(r["value"], r.get("ci95"), unit) if r is not None and r.get("value") is not None else "-"
        out.append([
            c.status if c.kind == "leakage" else f"{c.status} (utility)",
            rec["dataset"], rec["model"], str(rec["seed"]), rec["cut_point"], labels.get(defense_key(rec), rec["defense"]),
            rec["attack"], str(rec.get("target")), str(rec.get("metric")), side(c.old), side(c.new),
            "" if c.rise is None else f"{c.rise:+.4g}", "" if c.margin is None else f"{c.margin:.4g}",
            "" if c.p_adjusted is None else f"{c.p_adjusted:.3g}", c.params_change,
        ])
    return out


def render(table: list[list[str]], fmt: str) -> str:
    if fmt == "markdown":
        lines = ["| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in table]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(HEAD)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([line(HEAD), line(["-" * w for w in widths])] + [line(r) for r in table])


def main(args: argparse.Namespace) -> int:
    from audit.cli import EXIT_FAILED, EXIT_OK
    from audit.gate import (
        Regression,
        compare_records,
        defense_labels,
        load_policy,
        report_path,
        reseeded,
        utility_changes,
    )
    from audit.gate.comparison import RESEEDED_ADVICE
    from audit.report import read_report

    a, b = read_report(report_path(args.a)), read_report(report_path(args.b))
    regression = load_policy(args.policy).regression if args.policy else Regression()
    if args.tolerance is not None:
        regression = regression.model_copy(update={"tolerance": args.tolerance, "tolerances": {}})
    changes = compare_records(a["results"], b["results"], regression)
    changes += utility_changes(a["results"], b["results"], regression.tolerance_for("primary_accuracy"), regression)
    counts = {s: sum(c.status == s for c in changes) for s in ORDER}
    shown = [c for c in changes if args.all or c.status != "unchanged"]
    labels = defense_labels(a["results"] + b["results"])
    table = rows(shown, labels)
    if args.format == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(HEAD)
        writer.writerows(table)
    else:
        if table:
            print(render(table, args.format))
        summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        retuned = sum(bool(c.params_change) for c in changes)
        if drawn := reseeded(changes):
            print(f"\nnote: {len(drawn)} measurement(s) ran their attack with other seeds in B than in A; "
                  f"{RESEEDED_ADVICE}")
        print(f"\n{args.a} -> {args.b}: {summary or 'nothing to compare'}"
              + (f"; {retuned} compared across changed defense parameters" if retuned else "")
              + ("" if args.all or not counts["unchanged"] else " (--all lists the unchanged ones)"))
    return EXIT_FAILED if args.fail_on_regression and any(counts[s] for s in FAILING) else EXIT_OK
