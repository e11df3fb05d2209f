"""False-alarm rate of the verdicts on the null control: the strength-0 synthetic task of
``audit/default.yaml`` (nothing planted: no attack can do better than chance) with the default
defenses and the task's attacks (attribute; mi with its decision member only, the classifier lower
bound: KSG, a point estimate, never decides), over many seeds. Each seed is one audit
(its own data draw, task model and attacks); the audit *alarms* when any of its verdicts is
``leaks``. With family-wise error control at alpha, the alarm fraction must be <= alpha.

    SPLITAUDIT_CACHE=/tmp/nullctl_cache nice -n 10 python benchmarks/null_control.py --seeds 20 --n 1000 \
        --n-boot 100 --budget small --workers 2
    python benchmarks/null_control.py --table          # markdown of the committed results

The audit runs once into --out (one config, seeds 0..N-1; a rerun resumes), then verdicts are
computed per seed from that seed's records (``audit.verdicts.verdicts``) and one JSON line per
seed is written to --results: seed, number of verdicts by kind, number of comparisons, the
smallest Holm-adjusted p-value, and the uncorrected "any 95% CI clears chance" alarm that the
summary table used before verdicts (for contrast).
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

RESULTS = ROOT / "benchmarks" / "null_control.jsonl"


def null_config(seeds: list[int], n: int, n_boot: int, budget: str, generator_seed: int | None = None) -> dict:
    """audit/default.yaml with only its null task (``synthetic_null``) at ``n`` samples, seeds 0..seeds-1,
    ``n_boot`` bootstrap resamples per CI. ``budget``: ``default`` keeps the default's training budgets;
    ``small`` trains the task model 2 epochs, the attribute heads 3, the MI classifier 100 steps (under
    the null every attack is at chance whatever its budget: a false alarm is a property of the test)."""
    raw = yaml.safe_load((ROOT / "audit" / "default.yaml").read_text(encoding="utf-8"))
    task = next(t for t in raw["tasks"] if t.get("label") == "synthetic_null")
    task["dataset"]["n"] = n
    if generator_seed is not None:  # a fresh draw of the data (default: the default's fixed draw, 0)
        task["dataset"]["generator_seed"] = generator_seed
    attacks = {name: dict(raw["attacks"][name]) for name in task["attacks"]}
    attacks["mi"]["methods"] = ["classifier"]  # the decision's MI member (a lower bound); KSG is a point estimate
    if budget == "small":
        task["training"] = {**task.get("training", {}), "epochs": 2}
        attacks["attribute"]["epochs"] = 3
        attacks["mi"]["steps"] = 100
    return {"name": "null_control", "seeds": seeds, "n_boot": n_boot, "tasks": [task],
            "defenses": raw["defenses"], "attacks": attacks}


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score 95% interval of a binomial proportion k/n."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def uncorrected_alarm(records: list[dict]) -> bool:
    """The pre-verdict summary's reading: any record whose 95% CI clears chance in the leaky direction."""
    from audit.html.tables import verdict

    return any(verdict(r) == "leak" for r in records if r.get("status") == "ok")


def analyse(report: dict, alpha: float, data: str, budget: str, n_boot: int) -> list[dict]:
    from audit.verdicts import VerdictSettings, comparisons, verdicts

    settings = VerdictSettings(alpha=alpha)
    rows = []
    for seed in sorted({r["seed"] for r in report["results"]}):
        records = [r for r in report["results"] if r["seed"] == seed]
        found = verdicts(records, settings)
        tests = comparisons(records, settings)
        kinds = {k: sum(v["verdict"] == k for v in found) for k in ("leaks", "no_evidence", "inconclusive")}
        rows.append({
            "data": data, "budget": budget, "n_boot": n_boot, "seed": seed, "alpha": alpha,
            "n_eval": sorted({r.get("n_eval") for r in records if r.get("n_eval")}),
            "verdicts": kinds, "comparisons": len(tests), "alarm": kinds["leaks"] > 0,
            "min_p_holm": min((t.p_holm for t in tests), default=None),
            "uncorrected_alarm": uncorrected_alarm(records),
            "leaks": [f"{v['cut_point']}/{v['defense_label']}/{v['family']}" for v in found if v["verdict"] == "leaks"],
        })
    return rows


DATA = {"fresh": "a fresh draw per audit (generator_seed = 1000 + seed)",
        "fixed": "one draw for every audit (generator_seed 0, as audit/default.yaml)"}


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def run_kind(row: dict) -> tuple[str, str]:
    """(data mode, budget) of a result row; rows written before these were recorded: fixed data, small budget."""
    return row.get("data", "fixed"), row.get("budget", "small")


def table(path: Path) -> str:
    """One markdown row per data mode in ``path``."""
    rows = read_rows(path)
    lines = ["| data | budget, test samples, resamples | audits (seeds) | comparisons per audit | alpha "
             "| audits with a `leaks` verdict | fraction [95% Wilson CI] "
             "| uncorrected: audits where any CI clears chance | verdicts: leaks / no_evidence / inconclusive |",
             "|---|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:  # rows written before resamples were recorded ran 100
        key = (*run_kind(r), tuple(r["n_eval"]), r.get("n_boot", 100))
        groups.setdefault(key, []).append(r)
    order = sorted(groups.items(), key=lambda kv: (list(DATA).index(kv[0][0]), kv[0][1:]))
    for (mode, budget, n_eval, n_boot), mine in order:
        n, k, u = len(mine), sum(r["alarm"] for r in mine), sum(r["uncorrected_alarm"] for r in mine)
        (lo, hi), (ulo, uhi) = wilson(k, n), wilson(u, n)
        per = sorted({r["comparisons"] for r in mine})
        kinds = {key: sum(r["verdicts"][key] for r in mine) for key in ("leaks", "no_evidence", "inconclusive")}
        tests = "/".join(str(t) for t in n_eval)
        lines.append(f"| {DATA[mode]} | {budget}, {tests}, {n_boot} | {n} | {per[0]}-{per[-1]} | {mine[0]['alpha']} | {k} "
                     f"| {k / n:.3f} [{lo:.3f}, {hi:.3f}] | {u}: {u / n:.3f} [{ulo:.3f}, {uhi:.3f}] "
                     f"| {kinds['leaks']} / {kinds['no_evidence']} / {kinds['inconclusive']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--n", type=int, default=2000, help="samples of the synthetic task (a quarter is the test split)")
    ap.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples per CI (the audit default: 500)")
    ap.add_argument("--budget", choices=["default", "small"], default="small", help="training budgets (see null_config)")
    ap.add_argument("--workers", type=int, default=1, help="local worker processes")
    ap.add_argument("--data", choices=list(DATA), default="fresh",
                    help="fresh: a new draw of the synthetic data per audit; fixed: the default's one draw for all")
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--out", default="/tmp/splitaudit_null_control", help="the audit's output folder (resumable)")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--table", action="store_true", help="print the markdown table of --results and exit")
    ap.add_argument("--analyse-only", action="store_true", help="recompute the verdicts of the audits in --out")
    args = ap.parse_args()
    if args.table:
        print(table(args.results))
        return
    from audit.api import Audit
    from audit.executors import make_executor

    seeds = list(range(args.seeds))
    rows = []

    def run(config: dict, out: Path) -> dict:
        if args.analyse_only:  # verdicts of the finished audits, recomputed with this code
            return json.loads((out / "report.json").read_text(encoding="utf-8"))
        return Audit(config).run(out, callbacks=[], executor=make_executor("local", args.workers))

    if args.data == "fixed":  # one audit over every seed: the seeds share the data draw
        report = run(null_config(seeds, args.n, args.n_boot, args.budget), Path(args.out))
        rows = analyse(report, args.alpha, "fixed", args.budget, args.n_boot)
    else:  # one audit per seed, each on its own draw of the data
        for seed in seeds:
            config = null_config([seed], args.n, args.n_boot, args.budget, generator_seed=1000 + seed)
            rows += analyse(run(config, Path(args.out) / f"seed{seed}"), args.alpha, "fresh", args.budget, args.n_boot)
            print(f"seed {seed}: {rows[-1]['verdicts']}, smallest Holm p {rows[-1]['min_p_holm']}", flush=True)
    kept = [r for r in read_rows(args.results) if run_kind(r) != (args.data, args.budget)] if args.results.is_file() else []
    args.results.write_text("\n".join(json.dumps(row) for row in kept + rows) + "\n", encoding="utf-8")
    print(table(args.results))


if __name__ == "__main__":
    main()
