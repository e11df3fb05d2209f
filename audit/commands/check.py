"""``splitaudit check REPORT [--policy POLICY.yaml] [--decision] [--baseline OLD] [--junit OUT.xml] [--strict]
[--allow-removed] [--allow-partial] [--allow-non-finite]``: the CI gate (REPORT and OLD: a
report.json or an output folder holding one).

``--decision`` enforces the report's config ``decision:`` block (:mod:`audit.decision`): a task
with no admissible (cut point, defense) pair fails.

Exit 0 when every bound holds (and nothing regressed against the baseline), 1 on a violation
(a bound, a regression, a failed cell, and unless allowed: a baseline record missing from the
report, a partial report, a NaN / inf number), 2 on bad input (missing file, other schema
version, invalid policy; with --strict also a rule whose selector matches nothing)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check", help="CI gate: check a report against a leakage policy (and a baseline report)",
        description="Check REPORT.json against the bounds of a policy YAML; with --baseline also flag leakage "
                    "that rose beyond the combined confidence intervals plus the policy's tolerance (Holm-corrected "
                    "over the compared records: noise alone fails at most regression.alpha, 5%, of builds), and baseline "
                    "records the report lost. A partial report or a NaN/inf number fails too unless allowed. "
                    "Exit 0 pass, 1 violation, 2 bad input.")
    p.add_argument("report", help="report.json of an audit (or its output folder)")
    p.add_argument("--policy", help="policy YAML (see configs/policy.example.yaml); required unless --decision")
    p.add_argument("--decision", action="store_true",
                   help="also enforce the report's config 'decision:' block: fail a task with no admissible "
                        "(cut point, defense) pair (see splitaudit recommend)")
    p.add_argument("--baseline", help="an earlier report.json (or output folder) to check for regressions against")
    p.add_argument("--allow-removed", action="store_true",
                   help="records of the baseline that the report no longer has are warnings, not failures")
    p.add_argument("--allow-partial", action="store_true",
                   help="accept a partial report (merge --partial, or one shard's report) with a warning")
    p.add_argument("--allow-non-finite", action="store_true",
                   help="records holding NaN/inf are warnings and are left out of the check")
    p.add_argument("--junit", metavar="OUT.xml", help="also write JUnit XML (one test case per rule x cell)")
    p.add_argument("--strict", action="store_true", help="a rule whose selector matches nothing is an error (exit 2)")
    p.add_argument("-q", "--quiet", action="store_true", help="print failures only")
    p.set_defaults(handler=main)


def decision_outcomes(report: dict) -> list:
    """One ``decision`` test case per task: passed when the config's ``decision:`` block admits a
    (cut point, defense) pair; the failure names each pair and why it fails."""
    from audit.decision import decision_of, recommend
    from audit.gate import Outcome

    decision = decision_of(report)
    outcomes = []
    for rec in recommend(report, decision):
        chosen = rec.best
        if chosen is not None:
            message = (f"{rec.task}: {len(rec.admissible)} of {len(rec.rows)} pairs meet '{decision.text()}'; "
                       f"best cut={chosen.cut_point} defense={chosen.defense}")
        else:
            why = "; ".join(f"cut={r.cut_point} defense={r.defense}: {', '.join(r.failures(decision))}" for r in rec.rows)
            message = f"{rec.task}: no (cut point, defense) meets '{decision.text()}' ({why})"
        outcomes.append(Outcome("decision", rec.task, chosen is not None, message))
    return outcomes


def main(args: argparse.Namespace) -> int:
    from audit.cli import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK
    from audit.core.errors import AuditInputError
    from audit.gate import Policy, evaluate, junit_xml, load_policy, report_path
    from audit.report import read_report

    if args.policy is None and not args.decision:
        raise AuditInputError("check: give --policy POLICY.yaml, --decision, or both")
    policy = load_policy(args.policy) if args.policy else Policy()
    report = read_report(report_path(args.report))
    baseline = read_report(report_path(args.baseline)) if args.baseline else None
    result = evaluate(report, policy, baseline, allow_removed=args.allow_removed, allow_partial=args.allow_partial,
                      allow_non_finite=args.allow_non_finite)
    if args.decision:
        result.outcomes += decision_outcomes(report)
    for warning in result.warnings:
        print(f"splitaudit check: warning: {warning}", file=sys.stderr)
    if args.junit:
        path = Path(args.junit)
        if path.parent and not path.parent.is_dir():
            raise AuditInputError(f"--junit {args.junit!r}: folder {str(path.parent)!r} does not exist")
        path.write_text(junit_xml(result), encoding="utf-8")
    for o in result.outcomes:
        if not o.passed:
            print(f"FAIL [{o.suite}] {o.message}")
        elif not args.quiet:
            print(f"ok   [{o.suite}] {o.message}")
    n_fail = len(result.failures)
    print(f"splitaudit check: {len(result.outcomes)} checks, {n_fail} failed"
          + (f", {len(result.unmatched)} rule(s) matched nothing" if result.unmatched else "")
          + f" ({args.report} against {' and '.join(x for x in (args.policy, args.decision and 'its decision block') if x)}"
          + f"{' and baseline ' + args.baseline if args.baseline else ''})")
    if args.strict and result.unmatched:
        print(f"splitaudit: error: --strict: nothing matched by {', '.join(result.unmatched)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_FAILED if n_fail else EXIT_OK
