"""One audit under several settings and several attack seeds, the task model fixed: how a change to an
attack moves its figures beyond the spread of the attack's own randomness (RESULTS.md "A pooled cnn head").

    SPLITAUDIT_CACHE=/tmp/utkcache python benchmarks/attack_seeds.py /tmp/cfg.yaml --offsets 0 1 2 \\
        --variant 'attacks.attribute.cnn_max_side=null' --variant - --out /tmp/seeds

Each (variant, offset) is one ``splitaudit run`` in its own process (GNU time). Offset 0 is the audit as
it is; offset k > 0 shifts every cell's stage seeds (the defense's fit and draws, the attacker's
validation split, initial weights and batch order) by 7919 k, while the task model and the data splits
keep the audit seed (so a cached task model is reused). A ``--variant`` is ``--set`` expressions separated
by ``;`` (``-`` for none). Prints, per record with a balanced accuracy, its value at each offset, the mean
(``-`` where a variant has no such record), each attack's fit seconds and each run's wall time and max RSS;
``--tabulate`` only reads OUT again.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

SHIFT = 7919


def child(offset: int, argv: list[str]) -> int:
    """The audit in this process with every cell's stage seeds shifted by ``offset``."""
    import audit.pipeline as pipeline
    from audit.cli import main

    base = pipeline.cell_seeds
    if offset:
        pipeline.cell_seeds = lambda *a: {k: (v + SHIFT * offset) % (2**31 - 1) for k, v in base(*a).items()}
    return main(argv)


def run(config: str, sets: list[str], offset: int, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, __file__, "--child", str(offset), "run", config, "--out", str(out / "out"), "--quiet",
           "--no-wandb", *[a for s in sets for a in ("--set", s)]]
    with open(out / "log", "w") as log:
        done = subprocess.run(["/usr/bin/time", "-f", "%e %M", "-o", str(out / "time"), *cmd], stdout=log,
                              stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SystemExit(f"{out} failed (exit {done.returncode}); see {out / 'log'}")


def table(variants: list[str], offsets: list[int], root: Path) -> str:
    rows: dict[tuple, dict[str, list]] = {}
    fits: dict[str, list[float]] = {}
    runs: dict[str, list[str]] = {}  # wall seconds and max RSS (KiB) of each run, from GNU time
    for i, variant in enumerate(variants, 1):
        for offset in offsets:
            folder = root / f"v{i}" / f"seed{offset}"
            if (folder / "time").exists():
                wall, rss = (folder / "time").read_text().split()[-2:]
                runs.setdefault(variant, []).append(f"{float(wall):.0f} s / {int(rss):,} KiB")
            report = json.loads((folder / "out" / "report.json").read_text())
            for attack, t in report.get("timings", {}).get("attack_seconds", {}).items():
                fits.setdefault(f"{variant} {attack}", []).append(t["fit_seconds"])
            for r in report["results"]:
                if r["metric"] == "balanced_accuracy" and r["value"] is not None:
                    key = (r["cut_point"], r["defense"], r["attack"], r["target"])
                    rows.setdefault(key, {}).setdefault(variant, []).append(r["value"])
    lines = ["| cut | defense | attack | target | " + " | ".join(variants) + " |", "|" + "---|" * (4 + len(variants))]
    for key, by_variant in rows.items():
        cells = [" / ".join(f"{v:.3f}" for v in values) + f" (mean {statistics.mean(values):.3f})" if values else "-"
                 for values in (by_variant.get(v, []) for v in variants)]
        lines.append("| " + " | ".join([*key, *cells]) + " |")
    lines += [f"- fit seconds, {name}: " + " / ".join(f"{s:.0f}" for s in values) for name, values in fits.items()]
    lines += [f"- run (wall / max RSS), {name}: " + "; ".join(values) for name, values in runs.items()]
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        sys.exit(child(int(sys.argv[2]), sys.argv[3:]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("--offsets", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variant", dest="variants", action="append", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tabulate", action="store_true")
    args = parser.parse_args()
    if not args.tabulate:
        for offset in args.offsets:  # the variants alternate, so a drift of the machine spreads over all of them
            for i, variant in enumerate(args.variants, 1):
                sets = [s for s in variant.split(";") if s.strip() and variant != "-"]
                run(args.config, sets, offset, args.out / f"v{i}" / f"seed{offset}")
                print(f"{variant} seed offset {offset}: done", flush=True)
    print(table(args.variants, args.offsets, args.out))


if __name__ == "__main__":
    main()
