"""Coverage of the MI estimators' 95% intervals, and their permutation p-values, against known truths.

Cases (attacks/mi/synthetic.py), each at seeds ``--seeds`` (the seed draws the data and the
estimator's split / initialisation / bootstrap / permutations):
- ``indep``: truth 0. z standard normal in d in {1, 10} dimensions, s independent of it:
  a fair binary label (``indep-label``) or a 1-D standard normal (``indep-cont``); n in {1000, 3000}.
- ``gauss``: correlated Gaussian pairs, d in {1, 5, 20}, I in {0.1, 1} nats, n = 1000.
- ``mixture``: 4 labels, unit Gaussians 1.5 apart, rotated into d in {1, 5, 20}; I = 0.644; n = 1000.

Budget: the audit's (the ``mi`` plugin's defaults: 200 Adam steps at batch 128), not
``estimate_mi``'s 1500 steps, so the grid runs in minutes on 2 shared cores; no PCA
(the truths are those of the full z). ``--folds 1``: one seeded 70/30 split (as the
plugin's aux/test); ``--folds K``: K-fold cross-fitting. Every run has a permutation
null of ``--n-perm`` shuffles (estimator held fixed).

Coverage per estimator kind (``attacks.mi.intervals.covers``): a point estimate's CI
contains the truth; a lower bound's CI meets [0, truth]; an upper bound's CI meets
[truth, its own limit] (CLUB's limit with a perfect fit: ``gaussian_club`` /
``mixture_club``; 0 at independence). Reported intervals are mapped into [0, inf)
(``intervals.nonnegative``); the raw ones are stored and their coverage at I = 0 shown too.

    nice -n 10 python benchmarks/mi_coverage.py --seeds 0 1 2 3 4
    nice -n 10 python benchmarks/mi_coverage.py --seeds 0 1 --folds 5 --methods classifier infonce \
        --tasks indep-label mixture
    python benchmarks/mi_coverage.py --table
"""
from __future__ import annotations

import json
import statistics
import time
from collections import defaultdict
from pathlib import Path

import torch

from attacks.mi import benchmark_cli as mi_cli
from attacks.mi import estimate_mi, list_methods, synthetic
from attacks.mi.intervals import covers

DEFAULT_OUT = Path(__file__).with_name("mi_coverage.jsonl")
AUDIT_BUDGET = {"steps": 200, "batch_size": 128}
SEP, K = 1.5, 4


TASKS = ["indep-label", "indep-cont", "gauss", "mixture"]


def cases(seeds, tasks=tuple(TASKS), dims=None):
    for case in _all_cases(seeds):
        if case["task"] in tasks and (dims is None or case["dim"] in dims):
            yield case


def _all_cases(seeds):
    for seed in seeds:
        for n in (1000, 3000):
            for dim in (1, 10):
                yield {"task": "indep-label", "dim": dim, "truth": 0.0, "n": n, "seed": seed}
                yield {"task": "indep-cont", "dim": dim, "truth": 0.0, "n": n, "seed": seed}
        for dim in (1, 5, 20):
            for mi in (0.1, 1.0):
                yield {"task": "gauss", "dim": dim, "truth": mi, "n": 1000, "seed": seed}
            yield {"task": "mixture", "dim": dim, "truth": round(synthetic.mixture_mi(K, SEP), 4), "n": 1000, "seed": seed}


def data(case):
    n, dim, seed = case["n"], case["dim"], case["seed"]
    if case["task"] == "gauss":
        return synthetic.correlated_gaussian(n, dim, case["truth"], seed=seed)
    if case["task"] == "mixture":
        return synthetic.gaussian_mixture(n, K, dim, SEP, seed=seed)
    gen = torch.Generator().manual_seed(10_000 + seed)
    z = torch.randn(n, dim, generator=gen)
    s = torch.randint(0, 2, (n,), generator=gen) if case["task"] == "indep-label" else torch.randn(n, 1, generator=gen)
    return z, s


def upper_limit(case) -> float:
    """What CLUB converges to with a perfect fit (0 at independence)."""
    if case["task"] == "gauss":
        return synthetic.gaussian_club(case["truth"], case["dim"])
    return synthetic.mixture_club(K, SEP) if case["task"] == "mixture" else 0.0


def key(rec):
    return (rec["task"], rec["dim"], rec["truth"], rec["n"], rec["seed"], rec["method"], rec["folds"])


def run(args) -> None:
    done = mi_cli.start(args, key)
    methods = {m.name: m for m in list_methods()}
    for case in cases(args.seeds, args.tasks, args.dims):
        z, s = data(case)
        for name in args.methods:
            m = methods[name]
            rec = {**case, "method": name, "folds": args.folds if m.trains else 1}
            if ("discrete" if s.ndim == 1 else "continuous") not in m.accepts or key(rec) in done:
                continue
            wall, cpu = time.perf_counter(), time.process_time()
            r = estimate_mi(z, s, name, seed=case["seed"], n_boot=args.n_boot, n_perm=args.n_perm, folds=rec["folds"],
                            **(AUDIT_BUDGET if m.trains else {}))
            limit = upper_limit(case) if r.kind == "upper" else None
            raw = r.details.get("raw", {"nats": r.nats, "ci95": r.ci95})
            rec.update(kind=r.kind, value=r.nats, ci95=list(r.ci95), n_eval=r.n, p_value=r.p_value,
                       null_mean=r.details["null"]["mean"], covered=covers(r.kind, r.ci95, case["truth"], limit),
                       raw_value=raw["nats"], raw_ci95=list(raw["ci95"]),
                       covered_raw=covers(r.kind, tuple(raw["ci95"]), case["truth"], limit),
                       truth_inside=r.ci95[0] <= case["truth"] <= r.ci95[1], upper_limit=limit,
                       wall_s=round(time.perf_counter() - wall, 2), cpu_s=round(time.process_time() - cpu, 2))
            done.add(key(rec))
            with args.out.open("a") as f:
                f.write(json.dumps(rec) + "\n")
            print(f"{case['task']} d={case['dim']} I={case['truth']} n={case['n']} seed={case['seed']} {name} "
                  f"K={rec['folds']}: {r.nats:.4f} [{r.ci95[0]:.4f}, {r.ci95[1]:.4f}] p={r.p_value:.3f} "
                  f"covered={rec['covered']} ({rec['wall_s']} s)", flush=True)


def table(path: Path) -> str:
    recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    kinds = {m.name: m.kind for m in list_methods()}
    out = []
    for folds in sorted({r["folds"] for r in recs if r["folds"] > 1} | {1}):
        rows = [r for r in recs if r["folds"] == folds]
        by: dict[tuple[str, str], list] = defaultdict(list)
        for r in rows:
            by[(r["method"], "indep" if r["task"].startswith("indep") else "leak")].append(r)
        seeds = sorted({r["seed"] for r in rows})
        title = "one 70/30 split" if folds == 1 else f"{folds}-fold cross-fitting"
        out += [f"{title}; seeds {', '.join(map(str, seeds))}:", "",
                "| estimator | kind | runs | covered (all) | covered, I = 0 | covered, I > 0 | raw CI covered, I = 0 "
                "| truth inside CI | p < 0.05 at I = 0 | p < 0.05 at I > 0 | mean CI width | mean CPU s |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for m in sorted({r["method"] for r in rows}):
            a, i0, i1 = by[(m, "indep")] + by[(m, "leak")], by[(m, "indep")], by[(m, "leak")]

            def frac(rs, test):
                return f"{sum(map(test, rs))}/{len(rs)} ({sum(map(test, rs)) / len(rs):.2f})" if rs else "-"

            out.append(
                f"| {m} | {kinds[m]} | {len(a)} | {frac(a, lambda r: r['covered'])} | {frac(i0, lambda r: r['covered'])} "
                f"| {frac(i1, lambda r: r['covered'])} | {frac(i0, lambda r: r['covered_raw'])} "
                f"| {frac(a, lambda r: r['truth_inside'])} "
                f"| {frac(i0, lambda r: r['p_value'] < 0.05)} | {frac(i1, lambda r: r['p_value'] < 0.05)} "
                f"| {statistics.fmean(r['ci95'][1] - r['ci95'][0] for r in a):.3f} "
                f"| {statistics.fmean(r['cpu_s'] for r in a):.2f} |")
        if folds > 1:  # cost against the same runs with one split
            one = {key({**r, "folds": 1}): r for r in recs if r["folds"] == 1}
            pairs = [(r["cpu_s"], one[key({**r, "folds": 1})]["cpu_s"]) for r in rows if key({**r, "folds": 1}) in one]
            if pairs:
                out += ["", f"CPU s of these {len(pairs)} runs: {statistics.fmean(a for a, _ in pairs):.2f} with {folds} "
                        f"folds vs {statistics.fmean(b for _, b in pairs):.2f} with one split of the same cases "
                        f"({sum(a for a, _ in pairs) / sum(b for _, b in pairs):.1f}x)."]
        out.append("")
    # where coverage fails: the cells
    miss = defaultdict(int)
    for r in recs:
        if not r["covered"]:
            miss[(r["method"], r["folds"], r["task"], r["dim"], r["truth"], r["n"])] += 1
    if miss:
        out += ["Cells with a miss (estimator, folds, task, d, I, n: misses):", ""]
        out += [f"- {m} K={f} {t} d={d} I={i:g} n={n}: {c}" for (m, f, t, d, i, n), c in sorted(miss.items())]
    return "\n".join(out)


def arguments(p) -> None:
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--folds", type=int, default=1)
    p.add_argument("--tasks", nargs="+", default=TASKS, choices=TASKS)
    p.add_argument("--n-perm", type=int, default=100)
    p.add_argument("--dims", nargs="+", type=int, default=None, help="only the cases of these feature dimensions")


def main(argv=None) -> int:
    return mi_cli.main(__doc__, DEFAULT_OUT, arguments, run, table, argv)


if __name__ == "__main__":
    raise SystemExit(main())
