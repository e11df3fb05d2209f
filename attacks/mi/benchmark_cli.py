"""The command line shared by the MI benchmark scripts (benchmarks/mi_accuracy.py, mi_coverage.py): a run that appends
JSON lines to ``--out``, or ``--table`` to print the markdown tables from that file."""
from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path
from typing import Callable

import torch

from attacks.mi import list_methods


def main(doc: str, default_out: Path, add_arguments: Callable[[argparse.ArgumentParser], None],
         run: Callable[[argparse.Namespace], None], table: Callable[[Path], str], argv=None) -> int:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=[m.name for m in list_methods()])
    add_arguments(p)
    p.add_argument("--n-boot", type=int, default=200)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--out", type=Path, default=default_out)
    p.add_argument("--table", action="store_true", help="print the markdown tables from --out and exit")
    args = p.parse_args(argv)
    if args.table:
        print(table(args.out))
        return 0
    run(args)
    return 0


def start(args: argparse.Namespace, key: Callable[[dict], tuple]) -> set[tuple]:
    """Set torch's threads, silence warnings; the keys of the runs already in ``args.out`` (a rerun skips them)."""
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    if not args.out.exists():
        return set()
    return {key(json.loads(line)) for line in args.out.read_text().splitlines() if line.strip()}
