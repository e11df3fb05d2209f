"""The ``splitaudit`` command line. Each subcommand lives in :mod:`audit.commands`.

Exit codes: 0 success; 1 the audit ran but some cells failed (or a check
found a violation); 2 bad input (config, file, report), with a message naming it.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from audit.errors import AuditInputError
from audit.registry import PluginParamsError, UnknownPluginError


EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="splitaudit", description="Adversarial privacy auditing for split (edge/cloud) deep inference."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    import audit.commands
    from audit.discovery import submodule_names

    for name in COMMAND_ORDER + [n for n in submodule_names(audit.commands) if n not in COMMAND_ORDER]:
        importlib.import_module(f"audit.commands.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(getattr(args, "quiet", False), getattr(args, "verbose", False))
    try:
        return int(args.handler(args) or 0)
    except (AuditInputError, UnknownPluginError, PluginParamsError) as err:
        print(f"splitaudit: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:  # e.g. `splitaudit list | head`
        sys.stderr.close()
        return EXIT_OK
    except KeyboardInterrupt:
        print("splitaudit: interrupted; finished cells are kept, rerun to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
