"""Wall time and cells per minute by executor, and how time grows with cells, samples and cut points.

    python benchmarks/scaling.py [--quick] [--json out.json]

Every measurement runs in a fresh Python process (so worker start-up is paid
as a user pays it), on the synthetic planted-attribute task with the task
model already in a private cache (training is timed apart, once per sample
size). `wall_s` is the time of `Audit.run` (feature extraction, defense fits,
attacks, commits, report); for Ray, `ray.init` of a local instance is timed
apart as `startup_s` and the run uses the instance like an existing cluster.
Cells run with 1 torch thread per worker. Prints a Markdown table per series.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASE = {
    "name": "scaling",
    "seeds": [0],
    "n_boot": 200,
    "dataset": {"name": "synthetic", "n": 2000, "image_size": 16, "strength": 0.12},
    "model": {"name": "small_cnn", "widths": [16, 32], "fc": [64]},
    "cut_points": ["conv1", "pool1", "pool2", "fc1"],
    "training": {"epochs": 4},
    "defenses": ["none", {"name": "noise", "scale": 0.5}, {"name": "noise", "scale": 2.0}],
    "attacks": {"attribute": {"epochs": 10}},
}


def one(mode: str, workers: int, config: dict, cache: str) -> dict:
    """Runs in the child process: one audit, timed."""
    import torch

    from audit import Audit, build_config
    from audit.executors import ProcessExecutor, RayExecutor, SequentialExecutor

    startup = 0.0
    if mode == "ray":
        import ray

        t0 = time.perf_counter()
        ray.init(num_cpus=workers, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        startup = time.perf_counter() - t0
        executor = RayExecutor(threads=1)
    elif workers == 1:
        executor = SequentialExecutor(threads=1)
    else:
        executor = ProcessExecutor(workers, threads=1)
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        report = Audit(build_config(config), cache_dir=cache).run(Path(out) / "run", callbacks=[], executor=executor)
        wall = time.perf_counter() - t0
    cells = len({r["cell_id"] for r in report["results"]})
    failed = len({r["cell_id"] for r in report["results"] if r["status"] != "ok"})
    return {"wall_s": round(wall, 1), "startup_s": round(startup, 1), "cells": cells, "failed": failed,
            "cells_per_min": round(cells / wall * 60, 2), "torch_threads_driver": torch.get_num_threads()}


def measure(mode: str, workers: int, config: dict, cache: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    args = [sys.executable, __file__, "--one", mode, str(workers), json.dumps(config), cache]
    load = os.getloadavg()[0]
    done = subprocess.run(args, env=env, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"{mode} x{workers} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result.update(mode=mode, workers=workers, load_before=round(load, 1))
    return result


def warm(config: dict, cache: str) -> float:
    """Train (and cache) the task model of ``config``; returns the training wall time."""
    from audit import Audit, build_config

    cfg = copy.deepcopy(config)
    cfg.update(cut_points=cfg["cut_points"][-1:], defenses=["none"], attacks={"attribute_linear": {}})
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        Audit(build_config(cfg), cache_dir=cache).run(Path(out) / "w", callbacks=[])
        return round(time.perf_counter() - t0, 1)


def table(rows: list[dict], keys: list[str]) -> str:
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", nargs=4, metavar=("MODE", "WORKERS", "CONFIG", "CACHE"), help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="only the executor series")
    parser.add_argument("--json", help="also write every measurement here")
    args = parser.parse_args()
    if args.one:
        mode, workers, config, cache = args.one
        print(json.dumps(one(mode, int(workers), json.loads(config), cache)), flush=True)
        return
    cache = tempfile.mkdtemp(prefix="splitaudit-scaling-")
    results: dict[str, list[dict]] = {}
    print(f"task model training (n=2000, warm-up): {warm(BASE, cache)} s", flush=True)

    rows = []
    for mode, workers in [("local", 1), ("local", 2), ("ray", 1), ("ray", 2)]:
        rows.append(measure(mode, workers, BASE, cache))
        print(rows[-1], flush=True)
    results["executors"] = rows
    print("\n### Executors (12 cells: 4 cut points x 3 defenses x attribute; n=2000)\n")
    print(table(rows, ["mode", "workers", "cells", "wall_s", "cells_per_min", "startup_s", "load_before"]))

    if not args.quick:
        rows = []
        for cuts, defenses in [(1, 1), (2, 1), (2, 2), (4, 2), (4, 3)]:
            cfg = {**BASE, "cut_points": BASE["cut_points"][:cuts], "defenses": BASE["defenses"][:defenses]}
            r = measure("local", 1, cfg, cache)
            rows.append({**r, "cut_points": cuts, "defenses": defenses})
            print(rows[-1], flush=True)
        results["cells"] = rows
        print("\n### Cells (in-process, n=2000)\n")
        print(table(rows, ["cut_points", "defenses", "cells", "wall_s", "cells_per_min", "load_before"]))

        rows = []
        for n in (500, 1000, 2000, 4000):
            cfg = {**BASE, "dataset": {**BASE["dataset"], "n": n}, "cut_points": ["pool1", "fc1"],
                   "defenses": ["none", {"name": "noise", "scale": 0.5}]}
            train_s = warm(cfg, cache)
            r = measure("local", 1, cfg, cache)
            rows.append({**r, "n": n, "train_s": train_s})
            print(rows[-1], flush=True)
        results["samples"] = rows
        print("\n### Samples (4 cells: pool1, fc1 x none, noise 0.5; in-process)\n")
        print(table(rows, ["n", "train_s", "cells", "wall_s", "cells_per_min", "load_before"]))

    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
