"""The verdicts of a report as a markdown table (recomputed from its records, so a report made
before verdicts existed works too): one row per (task, cut point, defense, family).

    python benchmarks/verdicts_table.py audit_out/report.json [--task synthetic]
"""
from __future__ import annotations

import argparse


def table(report: dict, tasks: list[str] | None = None) -> str:
    from audit.decision import fresh_verdicts

    lines = ["| task | cut | defense | family | verdict | deciding attack · metric | advantage [95% CI] "
             "| min. detectable | p (Holm) | note |", "|---|---|---|---|---|---|---|---|---|---|"]
    from audit.verdicts import FAMILIES

    frac = {(r["dataset"], r["cut_point"]): (r.get("cost") or {}).get("edge_flops_fraction") or 0.0
            for r in report["results"] if r.get("status") == "ok"}
    order = lambda v: (v["dataset"], frac.get((v["dataset"], v["cut_point"]), 0.0), v["cut_point"], v["defense_label"],
                       FAMILIES.index(v["family"]))
    for v in sorted(fresh_verdicts(report), key=order):
        if tasks and v["dataset"] not in tasks:
            continue
        unit = f" {v['unit']}" if v.get("unit") else ""
        if v["verdict"] == "inconclusive":
            figure, mda, p, note = "–", "–", "–", v["reason"]
        else:
            lo, hi = v["ci95"]
            figure = f"{v['advantage']:+.3f} [{lo:+.3f}, {hi:+.3f}]{unit}"
            mda = "n/a" if v["min_detectable_advantage"] is None else f"{v['min_detectable_advantage']:.3f}{unit}"
            p = f"{v['p_holm']:.2g} (m={v['comparisons']})"
            note = v.get("note") or ""
        lines.append(f"| {v['dataset']} | {v['cut_point']} | {v['defense_label']} | {v['family']} | {v['verdict']} "
                     f"| {v['deciding_attack'] or '–'} · {v['metric'] or '–'} | {figure} | {mda} | {p} | {note} |")
    return "\n".join(lines)


def main() -> None:
    from audit.gate import report_path
    from audit.report import read_report

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("report")
    ap.add_argument("--task", action="append", help="dataset label(s) to show")
    args = ap.parse_args()
    print(table(read_report(report_path(args.report)), args.task))


if __name__ == "__main__":
    main()
