"""``splitaudit recommend REPORT [--max-edge-flops F] [--max-accuracy-drop D] [--max-bytes B]
[--require no-evidence:FAMILY[,FAMILY...]] [--alpha A] [--task NAME]``: which (cut point, defense)
pairs meet the constraints, and the best of them (REPORT: a report.json or an output folder).

The constraints default to the report's config ``decision:`` block; options override it. Verdicts
are recomputed from the records when the report has none or was made with another alpha.
Exit 0 when every selected task has an admissible pair, 1 when one has none, 2 on bad input."""
from __future__ import annotations

import argparse

REQUIRE_KINDS = ("no-evidence",)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "recommend", help="which (cut point, defense) pairs meet edge-cost, utility and privacy constraints",
        description="List every (cut point, defense) of REPORT ordered by edge cost, whether it meets the "
                    "constraints (and why not), and the best admissible pair (highest primary accuracy, then "
                    "least edge FLOPs). Constraints default to the report's config 'decision:' block. "
                    "Exit 0 found, 1 none admissible, 2 bad input.")
    p.add_argument("report", help="report.json of an audit (or its output folder)")
    p.add_argument("--max-edge-flops", type=float, metavar="FRACTION",
                   help="edge FLOPs as a fraction of the whole model's, at most (e.g. 0.2)")
    p.add_argument("--max-accuracy-drop", type=float, metavar="D",
                   help="primary accuracy below the undefended model's, at most (absolute, e.g. 0.02)")
    p.add_argument("--max-bytes", type=float, metavar="B", help="bytes sent per sample, at most")
    p.add_argument("--require", action="append", default=[], metavar="no-evidence:FAMILIES",
                   help="e.g. no-evidence:attribute,reconstruction (families: attribute, reconstruction, identity)")
    p.add_argument("--alpha", type=float, help="family-wise error rate of the verdicts (default: the config's, 0.05)")
    p.add_argument("--task", action="append", metavar="NAME", help="only this task (dataset label or dataset/model)")
    p.set_defaults(handler=main)


def parse_require(values: list[str]) -> list[str]:
    """``["no-evidence:attribute,reconstruction"]`` -> ``["attribute", "reconstruction"]``."""
    from audit.core.errors import AuditInputError

    families = []
    for value in values:
        kind, sep, names = value.partition(":")
        if not sep or kind not in REQUIRE_KINDS or not names:
            raise AuditInputError(f"--require {value!r}: expected no-evidence:FAMILY[,FAMILY...]")
        families += [n.strip() for n in names.split(",") if n.strip()]
    return families


def constraints(args: argparse.Namespace, report: dict):
    """The report's decision block with the command line's options applied."""
    from pydantic import ValidationError

    from audit.core.errors import AuditInputError
    from audit.decision import Decision

    base = dict((report.get("config") or {}).get("decision") or {})
    given = {"max_edge_flops": args.max_edge_flops, "max_accuracy_drop": args.max_accuracy_drop,
             "max_bytes_sent": args.max_bytes, "alpha": args.alpha}
    base.update({k: v for k, v in given.items() if v is not None})
    if args.require:
        base["require_no_evidence"] = parse_require(args.require)
    try:
        return Decision.model_validate(base)
    except ValidationError as err:
        raise AuditInputError("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')}"
                                        for e in err.errors())) from None


def row_text(row) -> str:
    frac = "n/a" if row.edge_flops_fraction is None else f"{100 * row.edge_flops_fraction:.1f}%"
    acc = "n/a" if row.primary_accuracy is None else f"{row.primary_accuracy:.3f}"
    drop = f" ({row.change_text()})" if row.change_text() else ""
    sent = "n/a" if row.bytes_sent is None else f"{row.bytes_sent:,.0f} B"
    fams = ", ".join(f"{f} {v['verdict']}" for f, v in row.families.items())
    flag = f" [{row.cloud_failure_text()}]" if row.cloud_failure_text() else ""
    return f"cut={row.cut_point} defense={row.defense}: edge FLOPs {frac}, {sent}, accuracy {acc}{drop}{flag}; {fams}"


def main(args: argparse.Namespace) -> int:
    from audit.cli import EXIT_FAILED, EXIT_OK
    from audit.core.errors import AuditInputError
    from audit.decision import recommend
    from audit.gate import report_path
    from audit.report import read_report

    report = read_report(report_path(args.report))
    decision = constraints(args, report)
    try:
        found = recommend(report, decision, args.task)
    except ValueError as err:
        raise AuditInputError(str(err)) from None
    if not found:
        raise AuditInputError(f"{args.report}: no ok record to decide on")
    print(f"constraints: {decision.text()}")
    missing = []
    for rec in found:
        chosen = rec.best
        print(f"\n{rec.task}: {len(rec.admissible)} of {len(rec.rows)} (cut point, defense) pairs admissible")
        for row in rec.rows:
            why = row.failures(decision)
            mark = "BEST" if row is chosen else ("ok  " if not why else "no  ")
            print(f"  {mark} {row_text(row)}" + (f"\n         fails: {'; '.join(why)}" if why else ""))
        if chosen is None:
            missing.append(rec.task)
            print(f"  -> no admissible pair for {rec.task}")
        else:
            print(f"  -> recommended: cut={chosen.cut_point} defense={chosen.defense}")
    return EXIT_FAILED if missing else EXIT_OK
