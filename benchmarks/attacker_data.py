"""How much does the attacker's data move a leakage figure? The same task model, the same
attribute attacks, trained on the aux split (the audit's default, a quarter of the data), on
the train split, or on both (``attacker_data: train+aux``), and scored on the same test split.

    SPLITAUDIT_CACHE=/work/cache nice -n 10 python benchmarks/attacker_data.py \
        --config configs/utkface.yaml --cut-points pool3
    python benchmarks/attacker_data.py --table          # markdown table of the committed results

REFERENCE.md's peers probe race at UTKFace pool3 with attackers trained on the whole
development split; this measures whether the gap between their figures and the audit's
default is the attacker's method or its data. Defense: ``none``. Attack seed: the audit seed
(0). Appends one JSON line per (cut, attack, attacker data) to --results.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from attacks import AttackView
from audit.config import load_config
from audit.core.training import predict
from audit.pipeline import AttackInputs, fit_defense, run_attack
from audit.runner import AuditRun
from defenses import SplitPoint

ROOT = Path(__file__).resolve().parents[1]

ATTACKER_DATA = {"aux": ("aux",), "train": ("train",), "train+aux": ("train", "aux")}
RESULTS = ROOT / "benchmarks" / "attacker_data.jsonl"


def measure(args: argparse.Namespace) -> None:
    config = load_config(args.config)
    run = AuditRun(config, args.scratch)
    state = run.prepare_task(0, args.seed)
    data = state.data
    num_classes = {n: data.num_classes(n) for n in [data.primary, *data.private]}
    test = data.part("test")
    for cut in args.cut_points:
        edge, cloud = state.model.split(cut)
        z = {p: predict(edge, data.part(p).x) for p in ("train", "aux", "test")}
        split = SplitPoint(cut, state.model, edge, cloud, compute_features=lambda p: z[p])
        defense = fit_defense("none", {}, split, data.part("train"), data.num_classes(data.primary), config.trainer,
                              args.seed, audit_seed=args.seed)
        test_view = AttackView(z["test"], test.x, test.y, test.private)
        for attack_name in args.attacks:
            for name in args.attacker_data:
                parts = ATTACKER_DATA[name]
                rows = data.part(*parts)
                aux = AttackView(torch.cat([z[p] for p in parts]), rows.x, rows.y, rows.private)
                inputs = AttackInputs(aux, test_view, num_classes, data.primary, split, config.trainer)
                start = time.perf_counter()
                scores = run_attack(attack_name, {"targets": [args.target]}, inputs, defense, args.seed)
                (score,) = [s for s in scores if s.metric == "balanced_accuracy"]
                row = {
                    "cut": cut, "attack": attack_name, "attacker_data": name, "n_attacker": len(aux),
                    "target": args.target, "metric": score.metric, "value": round(score.value, 4),
                    "ci95": [round(c, 4) for c in score.ci95], "n_eval": score.n_eval, "seed": args.seed,
                    "seconds": round(time.perf_counter() - start, 1),
                }
                print(json.dumps(row), flush=True)
                with open(args.results, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(row) + "\n")


def table(path: Path) -> str:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    out = ["| cut | attack | attacker trains on | n | race bal. acc [95% CI] | fit s |", "|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['cut']} | {r['attack']} | {r['attacker_data']} | {r['n_attacker']:,} | "
                   f"{r['value']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}] | {r['seconds']:.0f} |")
    seeds = sorted({r["seed"] for r in rows})
    out.append(f"\nSeed(s) {seeds}; {rows[0]['n_eval']:,} test samples per figure; bootstrap 95% CIs.")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "utkface.yaml"))
    parser.add_argument("--cut-points", nargs="+", default=["pool3"])
    parser.add_argument("--attacks", nargs="+", default=["attribute_linear", "attribute"])
    parser.add_argument("--attacker-data", nargs="+", choices=list(ATTACKER_DATA), default=list(ATTACKER_DATA))
    parser.add_argument("--target", default="race")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/splitaudit-attacker-data"),
                        help="the run folder the task model is prepared in (nothing is written there)")
    parser.add_argument("--table", action="store_true", help="print the table of --results and exit")
    args = parser.parse_args()
    if args.table:
        print(table(args.results))
        return
    measure(args)


if __name__ == "__main__":
    main()
