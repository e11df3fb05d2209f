"""``splitaudit merge DIR... --out DIR [--partial]``: combine shard outputs into one report.

Exit 0 merged; 1 merged, but some cells had failed in the shards; 2 refused (another audit, a
cell file failing the integrity check, missing cells without --partial), with nothing written.
With --partial the report is marked ``environment.partial: true`` (``splitaudit check`` fails it
unless --allow-partial)."""
from __future__ import annotations

import argparse
import logging

log = logging.getLogger("splitaudit")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "merge", help="merge the output folders of `run --shard i/n` into one report",
        description="Merge output folders of one audit (e.g. `splitaudit run --shard 1/2 --out a` and "
        "`--shard 2/2 --out b`) into one folder whose report.json equals a single run's report "
        "(every value but the creation time and timing fields). Every cell file is checked (content hash, "
        "labels, duplicates, NaN/inf) before anything is written.",
    )
    p.add_argument("folders", nargs="+", metavar="DIR", help="output folders of the shards")
    p.add_argument("--out", required=True, help="folder for the merged report (new, or a previous merge of the same audit)")
    p.add_argument("--partial", action="store_true",
                   help="write a report even when some cells are missing; it is marked environment.partial: true "
                   "(with missing_cells and missing_shards)")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    p.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    from audit.cli import EXIT_FAILED, EXIT_OK
    from audit.merge import merge_outputs

    report = merge_outputs(args.folders, args.out, allow_partial=args.partial)
    failed = {r["cell_id"] for r in report["results"] if r["status"] != "ok"}
    log.info("wrote %s/report.json and results.csv (%d records)", args.out, len(report["results"]))
    if failed:
        log.warning("%d cell(s) failed in the shards; see 'error' in report.json", len(failed))
        return EXIT_FAILED
    return EXIT_OK
