"""Where an audit's time and memory go: per-stage seconds and peak resident memory.

Stages and where they are measured:

- ``data``, ``task_model``, ``features`` (the driver, this run): loading and splitting the data,
  training or loading the task model, extracting edge features;
- ``defense_fit``, ``release``, ``utility_cost`` (per (cut point, defense) group) and each attack's
  ``fit`` / ``score`` (per cell): kept in every record's ``timings`` (``*_seconds``), so they travel
  with the record from a worker process, survive a resume and add up in a merged report.

Timings are not report values: two runs of one audit differ in them (``audit.merge.report_values``
leaves out every key ending in ``_seconds``).
"""
from __future__ import annotations

import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

GROUP_STAGES = ("defense_fit_seconds", "release_seconds", "utility_cost_seconds")


def add_seconds(into: dict[str, float], key: str, started: float) -> None:
    """Add the wall-clock seconds since ``started`` (``time.perf_counter()``) to ``into[key]``."""
    into[key] = into.get(key, 0.0) + time.perf_counter() - started


@contextmanager
def timed(into: dict[str, float], key: str) -> Iterator[None]:
    """Add the block's wall-clock seconds to ``into[key]``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        add_seconds(into, key, start)


def peak_rss_mb() -> dict[str, float]:
    """Peak resident memory (MB) of this process and of its finished child processes (workers)."""
    scale = 1 / 2**20 if sys.platform == "darwin" else 1 / 2**10  # ru_maxrss: bytes on macOS, KB on Linux
    return {
        "driver": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale, 1),
        "workers": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale, 1),
    }


def report_timings(records: list[dict[str, Any]], driver: dict[str, float] | None = None,
                   wall_seconds: float | None = None) -> dict[str, Any]:
    """The report's ``timings``: seconds per stage (groups counted once, attacks per name: fit,
    score, cells), the driver's own stages of this run, its wall time and peak memory.

    ``records``: the report's records (each with ``timings``); ``driver``: stage -> seconds of
    this run's driver (None for a merged report); ``wall_seconds``: this run's wall-clock time."""
    groups: dict[tuple, dict[str, float]] = {}
    attacks: dict[str, dict[str, float]] = {}
    cells: set = set()
    for r in records:
        t = r.get("timings") or {}
        key = (r.get("dataset"), r.get("model"), r.get("seed"), r.get("cut_point"), r.get("defense"),
               repr(sorted((r.get("defense_params") or {}).items())))
        groups.setdefault(key, {k: t[k] for k in GROUP_STAGES if k in t})
        if r.get("cell_id") in cells:
            continue  # one cell, several records: its attack timed once
        cells.add(r.get("cell_id"))
        mine = attacks.setdefault(str(r.get("attack")), {"fit_seconds": 0.0, "score_seconds": 0.0, "cells": 0})
        mine["fit_seconds"] += t.get("attack_fit_seconds", 0.0)
        mine["score_seconds"] += t.get("attack_score_seconds", 0.0)
        mine["cells"] += 1
    stages = {k: round(sum(g.get(k, 0.0) for g in groups.values()), 2) for k in GROUP_STAGES}
    out: dict[str, Any] = {
        "driver_seconds": {k: round(v, 2) for k, v in (driver or {}).items()},
        "group_seconds": stages,
        "attack_seconds": {name: {k: round(v, 2) if k != "cells" else int(v) for k, v in a.items()}
                           for name, a in sorted(attacks.items())},
        "peak_rss_mb": peak_rss_mb(),
    }
    if wall_seconds is not None:
        out["wall_seconds"] = round(wall_seconds, 2)
    return out
