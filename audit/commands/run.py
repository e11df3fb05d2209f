"""``splitaudit run [CONFIG] [--out DIR] [--set key=value ...] [--executor local|ray] [--workers N] [--shard I/N]``."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger("splitaudit")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run an audit (the embedded default when no CONFIG is given)",
                       description="Run an audit and write report.json, results.csv and report.html into --out.")
    p.add_argument("config", nargs="?", help="YAML config (default: the embedded default audit)")
    p.add_argument("--out", default="audit_out",
                   help="output folder (default: %(default)s); a folder of the same audit is resumed")
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
    add_execution_arguments(p)
    p.set_defaults(handler=main)


def add_execution_arguments(p: argparse.ArgumentParser) -> None:
    """Where cells run, which slice of the grid, and whether --out is resumed."""
    g = p.add_argument_group("execution")
    g.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="local: this machine (default); ray: Ray tasks on a cluster (see --address)")
    g.add_argument("--workers", type=workers_arg, default=1,
                   help="local worker processes (default 1: cells run in this process; auto: one per usable "
                   "CPU core, each with one torch thread)")
    g.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, a running local cluster, "
                   "or a new local instance)")
    g.add_argument("--cpus-per-task", type=float, default=1, help="CPUs per Ray task (default %(default)s)")
    g.add_argument("--threads", type=int, default=None,
                   help="torch threads per worker (default: cores / workers; in-process: torch's default). "
                   "Results are bit-identical only between runs with the same thread count")
    g.add_argument("--cells-per-job", type=int, default=None, metavar="C",
                   help="hand each (cut point, defense) group to the workers as jobs of C attack cells (each fits "
                   "the defense again, same figures): for audits with fewer groups than workers (default: whole groups)")
    g.add_argument("--shard", metavar="I/N", help="run only shard I of N of the grid (merge with `splitaudit merge`)")
    resume = g.add_mutually_exclusive_group()
    resume.add_argument("--resume", dest="resume", action="store_true", default=None,
                        help="require --out to hold this audit and continue it")
    resume.add_argument("--no-resume", dest="resume", action="store_false",
                        help="require a new or empty --out (never continue earlier results)")


def workers_arg(text: str) -> int:
    """``--workers``: a positive count, or ``auto`` (the usable CPU cores)."""
    from audit.executors.base import default_workers

    if text == "auto":
        return default_workers()
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {text!r}") from None


def executor_from_args(args: argparse.Namespace):
    from audit.core.errors import AuditInputError
    from audit.executors import make_executor

    if args.workers < 1:
        raise AuditInputError(f"--workers must be at least 1, got {args.workers}")
    if args.threads is not None and args.threads < 1:
        raise AuditInputError(f"--threads must be at least 1, got {args.threads}")
    if args.executor != "ray" and args.address:
        raise AuditInputError("--address is for --executor ray")
    return make_executor(args.executor, workers=args.workers, address=args.address, threads=args.threads,
                         cpus_per_task=args.cpus_per_task, cells_per_job=args.cells_per_job)


def stop_message(err: BaseException, out: str) -> str:
    """What the CLI says when a run stops on an I/O error or a signal: the cause, and what is kept."""
    from audit.core.errors import describe_os_error
    from audit.core.store import MANIFEST

    cause = getattr(err, "splitaudit_detail", None) or (describe_os_error(err) if isinstance(err, OSError) else "")
    if not Path(out, MANIFEST).is_file():  # stopped before the run claimed OUT
        return cause or f"nothing was written to {out}"
    kept = len(list(Path(out, "cells").glob("*.json")))
    return f"{cause + '; ' if cause else ''}{kept} finished cell(s) kept in {out}; rerun the same command to resume"


def huge_pages_pay_off_for(config) -> bool:
    """Whether the audit's inputs are large enough for huge pages to speed it up (the dataset plugins'
    ``input_numel``, :func:`audit.core.heap.huge_pages_pay_off`)."""
    from audit.core.data import DATASETS
    from audit.core.heap import huge_pages_pay_off

    return huge_pages_pay_off([DATASETS.get(task.dataset.name).input_numel(config.plugin_params("tasks", i, "dataset"))
                               for i, task in enumerate(config.tasks)])


def main(args: argparse.Namespace) -> int:
    from audit.api import Audit
    from audit.cli import EXIT_FAILED, EXIT_OK
    from audit.config import load_config
    from audit.core.errors import AuditInterrupted, with_detail
    from audit.plan import parse_shard

    config = load_config(args.config, args.overrides)
    if getattr(args, "as_program", False) and huge_pages_pay_off_for(config):
        from audit.cli import restart_with_huge_pages

        restart_with_huge_pages()  # only returns when there is nothing to do (or it failed)
    shard = parse_shard(args.shard) if args.shard else None
    executor = executor_from_args(args)
    if args.wandb is not None:
        from audit.config import TrackingConfig, WandbSettings

        wandb = (config.tracking.wandb or WandbSettings()) if args.wandb else None
        if wandb is not None and wandb.mode == "disabled":  # --wandb overrides a disabled config
            wandb = wandb.model_copy(update={"mode": "online"})
        config = config.model_copy(update={"tracking": TrackingConfig(wandb=wandb)})
    try:
        report = Audit(config, cache_dir=args.cache_dir).run(args.out, executor=executor, shard=shard,
                                                             resume=args.resume)
    except (OSError, AuditInterrupted, KeyboardInterrupt) as err:
        raise with_detail(err, stop_message(err, args.out)) from None
    failed = [r for r in report["results"] if r["status"] != "ok"]
    log.info("wrote %s/report.json, results.csv and report.html (%d records)", args.out, len(report["results"]))
    if failed:
        cells = {r["cell_id"] for r in failed}
        log.warning("%d cell(s) failed; see 'error' in report.json (rerun to retry them)", len(cells))
        return EXIT_FAILED
    return EXIT_OK
