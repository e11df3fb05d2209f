"""How an audit would scale to N workers (Ray nodes), projected from the stage timings of one run.

    python benchmarks/ray_projection.py REPORT.json [--workers 1 2 4 8 16] [--startup 5.5] [--json OUT]

REPORT.json is the report of a run with the thread count each worker would have (a Ray node with
this machine's cores: the default threads; a worker per core: ``--threads 1``). A run with one
worker (``--workers 1``) gives uncontended group seconds; a run with several (``--workers 2``, one
thread each) gives each group's seconds beside the others on a shared machine (memory bandwidth and
caches shared), so its projection for separate nodes is pessimistic, and its wall time holds nothing
to add beyond the driver and the groups. The unit the executors hand out is a group of cells (one task, seed, cut point and
defense: the defense's fit and release, then its attacks), so the projection is the runner's own
schedule replayed: the driver prepares each task and extracts each cut point's features in plan
order (``driver_seconds``, spread evenly over the cut points) and submits that cut's groups; a
group starts on the first free worker once submitted, and lasts what it lasted in the measured run
(``defense_fit`` + ``release`` + ``utility_cost`` seconds + its cells' attack fit and score seconds).
What the report's wall time holds beyond the driver and the groups (imports, report writing,
memory bookkeeping) is added unchanged, and so is ``--startup`` per run (Ray: ~5-6 s to start a
local instance, benchmarks/RESULTS.md "Scaling"). Assumed: no contention between workers (separate
nodes), features reach a worker at no cost (a shared file system), and groups take as long on every
node. The lower bound beside it: max(longest group, group seconds / N) + the driver's serial part.
Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import heapq
import json
from pathlib import Path

GROUP_STAGES = ("defense_fit_seconds", "release_seconds", "utility_cost_seconds")
CELL_STAGES = ("attack_fit_seconds", "attack_score_seconds")


def groups_of(report: dict, cells_per_job: int | None = None) -> list[tuple[str, str, float]]:
    """[(task and seed, cut point, job seconds)] in the order the run committed the groups (a job: a whole
    group, or with ``cells_per_job`` that many of its cells after a fit and release of their own)."""
    groups: dict[tuple, dict] = {}
    for r in report["results"]:
        t = r.get("timings") or {}
        key = (r["dataset"], r.get("model"), r["seed"], r["cut_point"], r["defense"],
               json.dumps(r.get("defense_params"), sort_keys=True))
        g = groups.setdefault(key, {"stages": sum(t.get(s, 0.0) for s in GROUP_STAGES), "cells": {}})
        g["cells"][r["cell_id"]] = sum(t.get(s, 0.0) for s in CELL_STAGES)
    out = []
    for k, g in groups.items():
        cells = list(g["cells"].values())
        n = cells_per_job or len(cells)
        out += [(f"{k[0]}/{k[1]} seed={k[2]}", k[3], g["stages"] + sum(cells[i:i + n])) for i in range(0, len(cells), n)]
    return out


def replay(groups: list[tuple[str, str, float]], driver_per_cut: float, workers: int) -> float:
    """Makespan of the runner's schedule: the driver readies one cut point after another (driver_per_cut
    seconds each) and submits its groups; each group runs on the first free worker. With one worker the
    groups run in the driver's process, between its feature extractions."""
    if workers == 1:
        return driver_per_cut * len({(task, cut) for task, cut, _ in groups}) + sum(s for *_, s in groups)
    free = [0.0] * workers  # when each worker is next free (a heap)
    clock, last_cut, end = 0.0, None, 0.0
    for task, cut, seconds in groups:
        if (task, cut) != last_cut:
            clock += driver_per_cut  # features of this cut point ready
            last_cut = (task, cut)
        start = max(clock, heapq.heappop(free))
        heapq.heappush(free, start + seconds)
        end = max(end, start + seconds)
    return max(end, clock)


def workers_of(report: dict) -> int:
    """How many workers ran the report's groups (a Ray run: the tasks its cluster could run at once;
    Ray reports written before that was recorded count as one)."""
    return int((report.get("environment", {}).get("executor") or {}).get("workers", 1))


def project(report: dict, workers: list[int], startup: float, cells_per_job: int | None = None) -> list[dict]:
    """Projected wall time per worker count (rows for the table); jobs of ``cells_per_job`` cells if given."""
    timings = report["timings"]
    measured = groups_of(report)  # whole groups, as the one-worker run ran them
    groups = groups_of(report, cells_per_job) if cells_per_job else measured
    driver = sum(timings["driver_seconds"].values())
    group_total = sum(s for *_, s in groups)
    # a resumed run's wall time covers its last session only, and one with several workers ran its groups
    # side by side: then nothing is added for "other"
    other = max(0.0, timings["wall_seconds"] - driver - sum(s for *_, s in measured)) if workers_of(report) == 1 else 0.0
    driver_per_cut = driver / max(1, len({(task, cut) for task, cut, _ in measured}))
    measured_threads = (report["environment"].get("executor") or {}).get("threads") or report["environment"].get("torch_threads")
    serial = replay(measured, driver_per_cut, 1) + other
    rows = []
    for n in workers:
        wall = replay(groups, driver_per_cut, n) + other + (startup if n > 1 else 0.0)
        bound = serial if n == 1 else max(max(s for *_, s in groups), group_total / n) + driver_per_cut + other
        rows.append({"workers": n, "cells_per_job": cells_per_job, "projected_wall_s": round(wall, 1),
                     "lower_bound_s": round(bound, 1),
                     "speedup": round(serial / wall, 2), "efficiency": round(serial / wall / n, 2),
                     "groups": len(groups), "longest_group_s": round(max(s for *_, s in groups), 1),
                     "group_s": round(group_total, 1), "driver_s": round(driver, 1), "other_s": round(other, 1),
                     "measured_wall_s": timings["wall_seconds"], "threads_per_worker": measured_threads})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", type=Path)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    ap.add_argument("--startup", type=float, default=5.5, help="seconds to start the workers (Ray), once")
    ap.add_argument("--cells-per-job", type=int, help="project `--cells-per-job C` (groups split into jobs)")
    ap.add_argument("--json", type=Path, help="also write the rows here (JSON lines)")
    args = ap.parse_args()
    report = json.loads(args.report.read_text())
    rows = project(report, args.workers, args.startup, args.cells_per_job)
    print(f"{args.report}: {rows[0]['groups']} jobs, {rows[0]['group_s']} s of groups (longest "
          f"{rows[0]['longest_group_s']} s), driver {rows[0]['driver_s']} s, other {rows[0]['other_s']} s, "
          f"measured wall {rows[0]['measured_wall_s']} s on {workers_of(report)} worker(s) with "
          f"{rows[0]['threads_per_worker']} torch thread(s) each")
    print("| workers | projected wall s | lower bound s | speed-up (vs 1 worker) | efficiency |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['workers']} | {r['projected_wall_s']} | {r['lower_bound_s']} | {r['speedup']}x | {r['efficiency']} |")
    if args.json:
        args.json.write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
