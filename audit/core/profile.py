"""Where an audit's time and memory go: per-stage seconds and peak resident memory.

Stages and where they are measured:

- ``data``, ``task_model``, ``features`` (the driver, this run): loading and splitting the data,
  training or loading the task model, extracting edge features;
- ``defense_fit``, ``release``, ``utility_cost`` (per (cut point, defense) group) and each attack's
  ``fit`` / ``score`` (per cell): kept in every record's ``timings`` (``*_seconds``), so they travel
  with the record from a worker process, survive a resume and add up in a merged report.

Each stage timed with :func:`timed` also records its peak resident memory (``*_peak_mb``, MB: the
process's RSS, file-backed pages of memory-mapped features included, as GNU time counts it), sampled
every ``RSS_INTERVAL`` s by a daemon thread started with the first stage (Linux ``/proc/self/statm``;
elsewhere no peaks are recorded). A spike shorter than the interval can be missed; the process's exact
high-water mark is ``peak_rss_mb``.

Timings are not report values: two runs of one audit differ in them (``audit.merge.report_values``
leaves out every key ending in ``_seconds`` or ``_peak_mb``).
"""
from __future__ import annotations

import os
import resource
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

GROUP_STAGES = ("defense_fit_seconds", "release_seconds", "utility_cost_seconds")


def add_seconds(into: dict[str, float], key: str, started: float) -> None:
    """Add the wall-clock seconds since ``started`` (``time.perf_counter()``) to ``into[key]``."""
    into[key] = into.get(key, 0.0) + time.perf_counter() - started


RSS_INTERVAL = 0.05  # seconds between two samples of the resident memory


def resident_bytes() -> tuple[int, int] | None:
    """(resident, of which file-backed and shared) bytes of this process now, from ``/proc/self/statm``;
    None where it does not exist."""
    try:
        with open("/proc/self/statm") as fh:
            fields = fh.read().split()
        page = os.sysconf("SC_PAGE_SIZE")
        return int(fields[1]) * page, int(fields[2]) * page
    except (OSError, ValueError, IndexError):
        return None


def current_rss_mb() -> float | None:
    """This process's resident memory now (MB), or None where ``/proc/self/statm`` does not exist."""
    now = resident_bytes()
    return None if now is None else now[0] / 2**20


class _RssWatch:
    """A daemon thread that raises the peak of every open stage to the RSS it samples."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.open: list[list[float]] = []  # one [peak MB] per open stage
        self.pid: int | None = None  # the process whose thread runs (a forked worker starts its own)

    def begin(self) -> list[float] | None:
        now = current_rss_mb()
        if now is None:
            return None
        if self.pid != os.getpid():
            self.pid, self.open = os.getpid(), []
            threading.Thread(target=self._run, name="splitaudit-rss", daemon=True).start()
        entry = [now]
        with self.lock:
            self.open.append(entry)
        return entry

    def end(self, entry: list[float]) -> float:
        with self.lock:
            self.open = [e for e in self.open if e is not entry]
        return max(entry[0], current_rss_mb() or 0.0)

    def _run(self) -> None:
        pid = os.getpid()
        while self.pid == pid:
            now = current_rss_mb() or 0.0
            with self.lock:
                for entry in self.open:
                    entry[0] = max(entry[0], now)
            time.sleep(RSS_INTERVAL)


_WATCH = _RssWatch()


def peak_key(key: str) -> str:
    """The peak-memory key of a stage's seconds key: ``release_seconds`` -> ``release_peak_mb``."""
    return key.removesuffix("_seconds") + "_peak_mb"


@contextmanager
def timed(into: dict[str, float], key: str) -> Iterator[None]:
    """Add the block's wall-clock seconds to ``into[key]`` and raise ``into[peak_key(key)]`` to its
    peak resident memory (MB; not recorded where it cannot be sampled)."""
    start = time.perf_counter()
    entry = _WATCH.begin()
    try:
        yield
    finally:
        add_seconds(into, key, start)
        if entry is not None:
            peak = round(_WATCH.end(entry), 1)
            into[peak_key(key)] = max(into.get(peak_key(key), 0.0), peak)


def peak_rss_mb() -> float:
    """Peak resident memory (MB) of this process (its exact high-water mark)."""
    scale = 1 / 2**20 if sys.platform == "darwin" else 1 / 2**10  # ru_maxrss: bytes on macOS, KB on Linux
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale, 1)


def report_timings(records: list[dict[str, Any]], driver: dict[str, float] | None = None,
                   wall_seconds: float | None = None) -> dict[str, Any]:
    """The report's ``timings``: seconds per stage (groups counted once, attacks per name: fit,
    score, cells), the driver's own stages of this run, its wall time and peak memory; where
    stages recorded their peak resident memory, the largest per stage (``*_peak_mb``, MB).

    ``records``: the report's records (each with ``timings``); ``driver``: stage -> seconds (and
    ``*_peak_mb``) of this run's driver (None for a merged report); ``wall_seconds``: this run's
    wall-clock time."""
    group_keys = GROUP_STAGES + tuple(peak_key(k) for k in GROUP_STAGES)
    groups: dict[tuple, dict[str, float]] = {}
    attacks: dict[str, dict[str, float]] = {}
    cells: set = set()
    for r in records:
        t = r.get("timings") or {}
        key = (r.get("dataset"), r.get("model"), r.get("seed"), r.get("cut_point"), r.get("defense"),
               repr(sorted((r.get("defense_params") or {}).items())))
        groups.setdefault(key, {k: t[k] for k in group_keys if k in t})
        if r.get("cell_id") in cells:
            continue  # one cell, several records: its attack timed once
        cells.add(r.get("cell_id"))
        mine = attacks.setdefault(str(r.get("attack")), {"fit_seconds": 0.0, "score_seconds": 0.0, "cells": 0})
        mine["fit_seconds"] += t.get("attack_fit_seconds", 0.0)
        mine["score_seconds"] += t.get("attack_score_seconds", 0.0)
        mine["cells"] += 1
        for stage in ("fit", "score"):
            if f"attack_{stage}_peak_mb" in t:
                mine[f"{stage}_peak_mb"] = max(mine.get(f"{stage}_peak_mb", 0.0), t[f"attack_{stage}_peak_mb"])
    stages = {k: round(sum(g.get(k, 0.0) for g in groups.values()), 2) for k in GROUP_STAGES}
    peaks = {peak_key(k): max(g[peak_key(k)] for g in groups.values() if peak_key(k) in g)
             for k in GROUP_STAGES if any(peak_key(k) in g for g in groups.values())}
    driver = driver or {}
    out: dict[str, Any] = {
        "driver_seconds": {k: round(v, 2) for k, v in driver.items() if k.endswith("_seconds")},
        "group_seconds": stages,
        "attack_seconds": {name: {k: int(v) if k == "cells" else round(v, 1 if k.endswith("_mb") else 2)
                                  for k, v in a.items()}
                           for name, a in sorted(attacks.items())},
        # the driver's high-water mark, and the largest peak of any group or attack stage in the process that
        # ran it (a worker, a Ray task, or the driver). Not the finished children's ru_maxrss: a worker server
        # forked from the driver reported the driver's figure, and Ray's tasks are not its children
        "peak_rss_mb": {"driver": peak_rss_mb()},
    }
    stage_peaks = [*peaks.values(), *(v for a in attacks.values() for k, v in a.items() if k.endswith("_peak_mb"))]
    if stage_peaks:
        out["peak_rss_mb"]["groups"] = round(max(stage_peaks), 1)
    if peaks:
        out["group_peak_mb"] = {k: round(v, 1) for k, v in peaks.items()}
    if any(k.endswith("_peak_mb") for k in driver):
        out["driver_peak_mb"] = {k: round(v, 1) for k, v in driver.items() if k.endswith("_peak_mb")}
    if wall_seconds is not None:
        out["wall_seconds"] = round(wall_seconds, 2)
    return out
