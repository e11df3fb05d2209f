"""``splitaudit run [CONFIG] [--out DIR] [--set key=value ...]``."""
from __future__ import annotations

import argparse
import logging

log = logging.getLogger("splitaudit")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run an audit (the embedded default when no CONFIG is given)",
                       description="Run an audit and write report.json, results.csv and report.html into --out.")
    p.add_argument("config", nargs="?", help="YAML config (default: the embedded default audit)")
    p.add_argument("--out", default="audit_out", help="output folder (default: %(default)s); a rerun resumes it")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set dataset.root=/data/utkface (repeatable)")
    p.add_argument("--cache-dir", help="task-model and data cache (default: $SPLITAUDIT_CACHE or ~/.cache/splitaudit)")
    wandb = p.add_mutually_exclusive_group()
    wandb.add_argument("--wandb", dest="wandb", action="store_true", default=None,
                       help="record the audit as a W&B run (tracking.wandb settings, or project 'splitaudit'; "
                            "WANDB_MODE=offline needs no server or API key)")
    wandb.add_argument("--no-wandb", dest="wandb", action="store_false", help="no W&B run, whatever the config says")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors (no progress output)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug output (tracebacks of failed cells)")
    p.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    from audit.api import Audit
    from audit.cli import EXIT_FAILED, EXIT_OK
    from audit.config import load_config

    config = load_config(args.config, args.overrides)
    if args.wandb is not None:
        from audit.config import TrackingConfig, WandbSettings

        wandb = (config.tracking.wandb or WandbSettings()) if args.wandb else None
        if wandb is not None and wandb.mode == "disabled":  # --wandb overrides a disabled config
            wandb = wandb.model_copy(update={"mode": "online"})
        config = config.model_copy(update={"tracking": TrackingConfig(wandb=wandb)})
    report = Audit(config, cache_dir=args.cache_dir).run(args.out)
    failed = [r for r in report["results"] if r["status"] != "ok"]
    log.info("wrote %s/report.json, results.csv and report.html (%d records)", args.out, len(report["results"]))
    if failed:
        cells = {r["cell_id"] for r in failed}
        log.warning("%d cell(s) failed; see 'error' in report.json (rerun to retry them)", len(cells))
        return EXIT_FAILED
    return EXIT_OK
