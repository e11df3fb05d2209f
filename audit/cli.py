"""The ``splitaudit`` command line. Each subcommand lives in :mod:`audit.commands`.

Exit codes (:mod:`audit.core.errors`): 0 success; 1 the audit ran but some cells failed (or a check
found a violation); 2 bad input (config, file, report), with a message naming it; 3 an I/O error
(full disk, read-only folder); 130 interrupted (SIGINT); 143 terminated (SIGTERM). Every error
ends with one line ``splitaudit: ...`` on stderr, never a traceback (``-v`` shows it).
"""
from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys

from audit.core.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_IO, EXIT_OK, AuditInputError, AuditInterrupted, describe_os_error
from audit.core.registry import PluginParamsError, UnknownPluginError

__all__ = ["EXIT_BAD_INPUT", "EXIT_FAILED", "EXIT_IO", "EXIT_OK", "build_parser", "main"]

# Every module under audit.commands is a subcommand with add_parser(sub) and main(args);
# these come first in --help, the rest follow alphabetically.
COMMAND_ORDER = ["run", "list"]



class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (it may be replaced, e.g. by test capture)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def setup_logging(quiet: bool = False, verbose: bool = False) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    logger = logging.getLogger("splitaudit")
    logger.handlers.clear()
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


def version() -> str:
    """The installed distribution's version (the source tree's pyproject.toml when not installed)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("splitaudit")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="splitaudit", description="Adversarial privacy auditing for split (edge/cloud) deep inference."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    import audit.commands
    from audit.core.discovery import submodule_names

    for name in COMMAND_ORDER + [n for n in submodule_names(audit.commands) if n not in COMMAND_ORDER]:
        importlib.import_module(f"audit.commands.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser().parse_args(argv))


def run_command(args: argparse.Namespace) -> int:
    """Run the parsed command; errors become one ``splitaudit: ...`` line and an exit code (see the module)."""
    setup_logging(getattr(args, "quiet", False), getattr(args, "verbose", False))
    try:
        return int(args.handler(args) or 0)
    except (AuditInputError, UnknownPluginError, PluginParamsError) as err:
        print(f"splitaudit: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:  # e.g. `splitaudit list | head`
        sys.stderr.close()
        return EXIT_OK
    except OSError as err:  # a full disk, a read-only or vanished folder (run adds what was kept)
        logging.getLogger("splitaudit").debug("I/O error", exc_info=True)
        print(f"splitaudit: I/O error: {getattr(err, 'splitaudit_detail', None) or describe_os_error(err)}",
              file=sys.stderr)
        return EXIT_IO
    except (AuditInterrupted, KeyboardInterrupt) as err:
        signum = err.signum if isinstance(err, AuditInterrupted) else signal.SIGINT
        what = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
        print(f"splitaudit: {what}; {getattr(err, 'splitaudit_detail', None) or 'finished cells are kept'}",
              file=sys.stderr)
        return 128 + signum


def restart_with_huge_pages() -> None:
    """Restart this program once, the same command line, with glibc backing large heap blocks by transparent
    huge pages (:func:`audit.core.heap.huge_page_environment`; ``SPLITAUDIT_HUGE_PAGES=0`` opts out): glibc
    reads its tunables only at start-up. Returns (no restart) when there is nothing to do or the restart fails.
    Called by ``run`` once its config is read, where the audit's inputs are large enough to gain
    (:func:`audit.core.heap.huge_pages_pay_off`), and only in a process started as the program (``as_program``)."""
    import os

    from audit.core.heap import huge_page_environment

    env = huge_page_environment(os.environ)
    if env is None or not sys.executable or not getattr(sys, "orig_argv", None):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, sys.orig_argv, env)
    except OSError:  # pragma: no cover - e.g. the interpreter vanished; run as we are
        return


def entry() -> None:
    """The ``splitaudit`` program (console script and ``python -m audit``); ``as_program`` lets ``run`` restart
    it (:func:`restart_with_huge_pages`). Call :func:`main` to run a command inside a Python process."""
    args = build_parser().parse_args()
    args.as_program = True
    sys.exit(run_command(args))


if __name__ == "__main__":  # pragma: no cover
    entry()
