"""The independence case of issue 22 and the cost of one ``mi`` plugin call.

- ``--case independence``: z 10-D standard normal, s a fair binary label (independent of z),
  n = 3,000, every estimator with ``estimate_mi`` defaults (seeds from ``--seeds``). Truth: 0 nats.
- ``--case plugin``: one ``mi`` attack call (fit on aux + score on test) with the plugin's
  defaults, n = 1,700 aux and 1,700 test samples of a 256-D feature with a weakly planted
  binary attribute; wall and CPU seconds.

Each run appends one JSON line to ``--out``.

    nice -n 10 python benchmarks/mi_independence.py --case independence --seeds 0 1 2
    nice -n 10 python benchmarks/mi_independence.py --case plugin
    python benchmarks/mi_independence.py --table
"""
from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import torch

from attacks.mi import estimate_mi, list_methods
from audit.core.training import TrainerSettings

DEFAULT_OUT = Path(__file__).with_name("mi_independence.jsonl")


def independence(seed: int, n: int = 3000, dim: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=gen), torch.randint(0, 2, (n,), generator=gen)


def plugin_context(n: int = 1700, dim: int = 256, seed: int = 0):
    from attacks import AttackContext, AttackView

    gen = torch.Generator().manual_seed(seed)
    direction = torch.randn(dim, generator=gen) / dim ** 0.5

    def view():
        s = torch.randint(0, 2, (n,), generator=gen)
        z = torch.randn(n, dim, generator=gen) + 0.5 * (2 * s[:, None] - 1) * direction * dim ** 0.5 / 4
        return AttackView(z, z, s, {"secret": s})

    return AttackContext(aux=view(), test=view(), num_classes={"y": 2, "secret": 2}, primary="y", defense=None,
                         split=None, settings=TrainerSettings(), seed=seed, n_boot=500)


def table(path: Path) -> str:
    import statistics

    recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    out = ["| code | estimator | kind | value (nats) | 95% CI | CI contains 0 | permutation p | seed |",
           "|---|---|---|---|---|---|---|---|"]
    for r in sorted((r for r in recs if r["case"] == "independence"), key=lambda r: (r["method"], r["label"])):
        p = "-" if r["p_value"] is None else f"{r['p_value']:.2f}"
        out.append(f"| {r['label']} | {r['method']} | {r['kind']} | {r['value']:.4f} | [{r['ci95'][0]:.4f}, "
                   f"{r['ci95'][1]:.4f}] | {'yes' if r['contains_0'] else 'no'} | {p} | {r['seed']} |")
    out += ["", "| code | runs (seeds) | mean CPU s | CPU s per run | mean wall s |", "|---|---|---|---|---|"]
    labels = sorted({r["label"] for r in recs if r["case"] == "plugin"})
    for label in labels:
        rs = [r for r in recs if r["case"] == "plugin" and r["label"] == label]
        out.append(f"| {label} | {len(rs)} ({', '.join(str(r['seed']) for r in rs)}) | "
                   f"{statistics.fmean(r['cpu_s'] for r in rs):.2f} | {', '.join(str(r['cpu_s']) for r in rs)} | "
                   f"{statistics.fmean(r['wall_s'] for r in rs):.1f} |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", choices=["independence", "plugin"])
    p.add_argument("--table", action="store_true", help="print the markdown tables from --out and exit")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--methods", nargs="+", default=[m.name for m in list_methods()])
    p.add_argument("--label", default="", help="free text stored with each record (e.g. the code version)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    if args.table:
        print(table(args.out))
        return 0
    if args.case is None:
        p.error("--case is required (or --table)")
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    for seed in args.seeds:
        if args.case == "plugin":
            from attacks import ATTACKS

            ctx = plugin_context(seed=seed)
            wall, cpu = time.perf_counter(), time.process_time()
            attack = ATTACKS.create("mi")
            attack.fit(ctx)
            scores = attack.score(ctx)
            rec = {"case": "plugin", "seed": seed, "label": args.label, "n": 1700, "dim": 256,
                   "wall_s": round(time.perf_counter() - wall, 2), "cpu_s": round(time.process_time() - cpu, 2),
                   "scores": {s.metric: {"value": s.value, "ci95": list(s.ci95),
                                         "p_value": s.extra.get("p_value_permutation")} for s in scores}}
            print(json.dumps(rec), flush=True)
            with args.out.open("a") as f:
                f.write(json.dumps(rec) + "\n")
            continue
        z, s = independence(seed)
        for method in args.methods:
            wall, cpu = time.perf_counter(), time.process_time()
            r = estimate_mi(z, s, method, seed=seed)
            rec = {"case": "independence", "seed": seed, "label": args.label, "n": 3000, "dim": 10,
                   "method": method, "kind": r.kind, "value": r.nats, "ci95": list(r.ci95),
                   "contains_0": r.ci95[0] <= 0.0 <= r.ci95[1],
                   "p_value": r.details.get("p_value_permutation"),
                   "wall_s": round(time.perf_counter() - wall, 2), "cpu_s": round(time.process_time() - cpu, 2)}
            print(json.dumps(rec), flush=True)
            with args.out.open("a") as f:
                f.write(json.dumps(rec) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
