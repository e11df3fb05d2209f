"""Accuracy and cost of every MI estimator on distributions with known MI.

Tasks (attacks/mi/synthetic.py):
- ``gauss``: correlated Gaussian pairs z, s in R^d, I = -d/2 log(1 - rho^2), over
  d in {1, 5, 20} and I in {0.1, 1, 3, 5} nats (CLUB, an upper bound, converges to
  d (exp(2I/d) - 1) there, not to I: a second table compares it with that value);
- ``mixture``: 4 equiprobable labels, unit Gaussians 1.5 apart on one axis, rotated
  into d in {1, 5, 20} dimensions; I = 0.644 nats by quadrature (``classifier``
  only runs here: it needs labels).
Each at n in {1000, 10000} samples and seeds 0..4 (the seed draws the data and the
estimator's split / initialisation). ``estimate_mi`` defaults throughout: neural
estimators train on 70% of the samples (20% of that for model selection) with their
default budget and are evaluated on the held-out 30%; KSG uses all n.

Every run appends one JSON line to ``--out`` (a rerun skips the runs already
there), with the estimate, its CI, wall and CPU seconds. ``--table`` prints the
markdown tables of benchmarks/RESULTS.md from that file.

    nice -n 10 python benchmarks/mi_accuracy.py --seeds 0            # one seed of the grid
    nice -n 10 python benchmarks/mi_accuracy.py --seeds 0 1 2 3 4    # the full grid
    python benchmarks/mi_accuracy.py --table

torch runs on one thread here (``--threads``): the networks are small, and on a
shared 2-core machine a second thread mostly spins; CPU seconds are reported next
to wall seconds because wall time depends on the machine's load.
"""
from __future__ import annotations

import json
import math
import statistics
import time
from collections import defaultdict
from pathlib import Path

from attacks.mi import benchmark_cli as mi_cli
from attacks.mi import estimate_mi, list_methods
from attacks.mi.synthetic import (
    correlated_gaussian,
    gaussian_club,
    gaussian_mixture,
    mixture_club,
    mixture_mi,
)

DEFAULT_OUT = Path(__file__).with_name("mi_accuracy.jsonl")
SEP, K = 1.5, 4


def cases(dims, mis, ns, seeds, tasks):
    for n in ns:
        for dim in dims:
            if "gauss" in tasks:
                for mi in mis:
                    for seed in seeds:
                        yield {"task": "gauss", "dim": dim, "truth": mi, "n": n, "seed": seed}
            if "mixture" in tasks:
                for seed in seeds:
                    yield {"task": "mixture", "dim": dim, "truth": round(mixture_mi(K, SEP), 4), "n": n, "seed": seed}


def data(case):
    if case["task"] == "gauss":
        return correlated_gaussian(case["n"], case["dim"], case["truth"], seed=case["seed"])
    return gaussian_mixture(case["n"], K, case["dim"], SEP, seed=case["seed"])


def key(rec):
    return (rec["task"], rec["dim"], rec["truth"], rec["n"], rec["seed"], rec["method"])


def run(args) -> None:
    done = mi_cli.start(args, key)
    accepts = {m.name: m.accepts for m in list_methods()}
    for case in cases(args.dims, args.mis, args.ns, args.seeds, args.tasks):
        z, s = data(case)
        for method in args.methods:
            s_kind = "discrete" if s.ndim == 1 else "continuous"
            rec = {**case, "method": method}
            if s_kind not in accepts[method] or key(rec) in done:
                continue
            wall, cpu = time.perf_counter(), time.process_time()
            try:
                r = estimate_mi(z, s, method, seed=case["seed"], n_boot=args.n_boot)
                rec.update(value=r.nats, ci95=list(r.ci95), kind=r.kind, n_eval=r.n, error=None,
                           details={k: v for k, v in r.details.items() if isinstance(v, (int, float, str))})
            except Exception as err:  # noqa: BLE001 - a failure is a result too
                rec.update(value=None, ci95=None, kind=None, n_eval=None, error=f"{type(err).__name__}: {err}")
            rec.update(wall_s=round(time.perf_counter() - wall, 2), cpu_s=round(time.process_time() - cpu, 2))
            with args.out.open("a") as f:
                f.write(json.dumps(rec) + "\n")
            print(f"{case['task']} d={case['dim']} I={case['truth']} n={case['n']} seed={case['seed']} "
                  f"{method}: {rec['value'] if rec['value'] is None else round(rec['value'], 3)} "
                  f"({rec['wall_s']} s wall, {rec['cpu_s']} s cpu){' ' + rec['error'] if rec['error'] else ''}",
                  flush=True)


def _fmt(values, truth):
    if not values:
        return "-"
    bias = statistics.fmean(v - truth for v in values)
    spread = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{bias:+.2f} ± {spread:.2f}" if len(values) > 1 else f"{bias:+.2f}"


def table(path: Path) -> str:
    recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    methods = [m.name for m in list_methods() if any(r["method"] == m.name for r in recs)]
    kinds = {m.name: m.kind for m in list_methods()}
    groups: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for r in recs:
        groups[(r["task"], r["dim"], r["truth"], r["n"])][r["method"]].append(r)
    lines = ["| task | d | true I | n | seeds | " + " | ".join(f"{m} ({kinds[m]})" for m in methods) + " |",
             "|---|---|---|---|---|" + "---|" * len(methods)]
    for (task, dim, truth, n) in sorted(groups, key=lambda g: (g[0] != "gauss", g[3], g[1], g[2])):
        row = groups[(task, dim, truth, n)]
        cells = []
        for m in methods:
            ok = [r["value"] for r in row.get(m, []) if r["value"] is not None and math.isfinite(r["value"])]
            failed = len(row.get(m, [])) - len(ok)
            cells.append(_fmt(ok, truth) + (f" ({failed} failed)" if failed else ""))
        seeds = len({r["seed"] for runs in row.values() for r in runs})
        lines.append(f"| {task} | {dim} | {truth:g} | {n} | {seeds} | " + " | ".join(cells) + " |")
    # CLUB is an upper bound that is loose by construction: compare it with the value it converges to
    club_rows = sorted((g, [r["value"] for r in row["club"] if r["value"] is not None])
                       for g, row in groups.items() if row.get("club"))
    if club_rows:
        lines += ["", "| task | d | true I | n | CLUB's own target (exact conditional) | CLUB mean | mean / target |",
                  "|---|---|---|---|---|---|---|"]
        for (task, dim, truth, n), values in club_rows:
            target = gaussian_club(truth, dim) if task == "gauss" else mixture_club(K, SEP)
            mean = statistics.fmean(values) if values else float("nan")
            lines.append(f"| {task} | {dim} | {truth:g} | {n} | {target:.4g} | {mean:.4g} | {mean / target:.2f} |")
    # honesty and cost per estimator
    lines += ["", "| estimator | kind | runs | truth inside CI | lower bound above truth beyond its CI "
              "| mean CI width | mean wall s (n=1000 / 10000) | mean CPU s (n=1000 / 10000) |",
              "|---|---|---|---|---|---|---|---|"]
    for m in methods:
        rs = [r for r in recs if r["method"] == m and r["value"] is not None]
        inside = sum(r["ci95"][0] <= r["truth"] <= r["ci95"][1] for r in rs)
        above = sum(r["ci95"][0] > r["truth"] for r in rs) if kinds[m] == "lower" else None
        width = statistics.fmean(r["ci95"][1] - r["ci95"][0] for r in rs) if rs else float("nan")

        def mean_of(field, n):
            xs = [r[field] for r in rs if r["n"] == n]
            return f"{statistics.fmean(xs):.1f}" if xs else "-"

        lines.append(f"| {m} | {kinds[m]} | {len(rs)} | {inside}/{len(rs)} | {'-' if above is None else above} | "
                     f"{width:.3f} | {mean_of('wall_s', 1000)} / {mean_of('wall_s', 10000)} | "
                     f"{mean_of('cpu_s', 1000)} / {mean_of('cpu_s', 10000)} |")
    return "\n".join(lines)


def arguments(p) -> None:
    p.add_argument("--dims", nargs="+", type=int, default=[1, 5, 20])
    p.add_argument("--mis", nargs="+", type=float, default=[0.1, 1.0, 3.0, 5.0])
    p.add_argument("--ns", nargs="+", type=int, default=[1000, 10000])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--tasks", nargs="+", default=["gauss", "mixture"], choices=["gauss", "mixture"])


def main(argv=None) -> int:
    return mi_cli.main(__doc__, DEFAULT_OUT, arguments, run, table, argv)


if __name__ == "__main__":
    raise SystemExit(main())
