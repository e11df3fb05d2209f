"""The same audit under several settings, run one after the other on this machine: wall time, peak RSS,
CPU seconds and minor page faults (GNU time), each attack's fit and score seconds, and every record of
each run against the first run's 95% CI. How RESULTS.md's "C heap" and "channels_last" tables are made
(issue 17: a speed-up is a ratio of runs made back to back, with the figures unchanged).

    python benchmarks/ab_settings.py configs/utkface.yaml --set 'cut_points=[conv1]' --set 'defenses=[none]' \\
        --variant trainer.channels_last=false --variant trainer.channels_last=true --out /tmp/ab

A ``--variant`` is one or more ``--set`` expressions separated by ``;`` (``-`` for none); ``--set`` applies
to every run. Set ``SPLITAUDIT_CACHE`` to share a trained task model between the runs. Keep the machine
otherwise idle (pause long jobs with ``kill -STOP``). Writes OUT/v1, OUT/v2, ... and OUT/ab.json.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

TIME_FORMAT = "%e %M %U %S %R"  # wall s, max RSS KiB, user s, system s, minor faults


def run_variant(config: str | None, sets: list[str], variant: str, out: Path) -> dict:
    """One audit run under GNU time; returns its resource figures."""
    extra = [s for s in variant.split(";") if s.strip() and variant != "-"]
    cmd = [sys.executable, "-m", "audit.cli", "run", *([config] if config else []), "--out", str(out / "out"), "--quiet"]
    for expression in [*sets, *extra]:
        cmd += ["--set", expression]
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "log", "w") as log:
        done = subprocess.run(["/usr/bin/time", "-f", TIME_FORMAT, "-o", str(out / "time"), *cmd], stdout=log,
                              stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SystemExit(f"variant {variant!r} failed (exit {done.returncode}); see {out / 'log'}")
    return read_time(out / "time")


def read_time(path: Path) -> dict:
    wall, rss, user, system, faults = path.read_text().split()[-5:]
    return {"wall_s": float(wall), "max_rss_kib": int(rss), "user_s": float(user), "system_s": float(system),
            "minor_faults": int(faults)}


def record_key(r: dict) -> tuple:
    return (r["dataset"], r["seed"], r["cut_point"], r["defense"], json.dumps(r.get("defense_params"), sort_keys=True),
            r["attack"], r.get("target"), r["metric"])


def against_first(first: list[dict], other: list[dict]) -> dict:
    """How many of ``other``'s records are identical to / inside the 95% CI of the same record of ``first``;
    the records outside, by key."""
    base = {record_key(r): r for r in first}
    counts, outside = {"records": 0, "identical": 0, "inside_ci": 0}, []
    for r in other:
        a = base.get(record_key(r))
        if a is None or a.get("value") is None or r.get("value") is None:
            continue
        counts["records"] += 1
        low, high = a.get("ci95") or (a["value"], a["value"])
        counts["identical"] += r["value"] == a["value"]
        if low - 1e-9 <= r["value"] <= high + 1e-9:
            counts["inside_ci"] += 1
        else:
            params = r.get("defense_params") or ""
            where = (r["cut_point"], r["defense"], params and json.dumps(params), r["attack"], r.get("target"), r["metric"])
            outside.append(f"{' '.join(str(k) for k in where if k)}: {a['value']:.4g} -> {r['value']:.4g}")
    return {**counts, "outside": outside}


def summarise(variants: list[str], runs: list[Path]) -> dict:
    """The figures of each run folder (``time`` and ``out/report.json``) against the first."""
    reports = [json.loads((run / "out" / "report.json").read_text()) for run in runs]
    rows = []
    for variant, run, report in zip(variants, runs, reports):
        stages = {a: (v["fit_seconds"], v["score_seconds"]) for a, v in report["timings"]["attack_seconds"].items()}
        rows.append({"variant": variant, **read_time(run / "time"), "attacks": stages,
                     "records": against_first(reports[0]["results"], report["results"])})
    return {"rows": rows}


def markdown(summary: dict) -> str:
    rows = summary["rows"]
    attacks = list(dict.fromkeys(a for row in rows for a in row["attacks"]))
    head = ["variant", "wall", "vs first", "max RSS (KiB)", "user / system CPU", "minor faults", "records inside the "
            "first's CI (identical)", *[f"{a} fit + score" for a in attacks]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        rec = row["records"]
        cells = [row["variant"], f"{row['wall_s']:.0f} s", f"{rows[0]['wall_s'] / row['wall_s']:.2f}x",
                 f"{row['max_rss_kib']:,}", f"{row['user_s']:.0f} / {row['system_s']:.0f} s",
                 f"{row['minor_faults'] / 1e6:.1f} M", f"{rec['inside_ci']} of {rec['records']} ({rec['identical']})",
                 *[("{:.1f} + {:.1f} s".format(*row["attacks"][a]) if a in row["attacks"] else "") for a in attacks]]
        lines.append("| " + " | ".join(cells) + " |")
    for row in rows:
        lines += [f"- {row['variant']}: outside the first's CI: {item}" for item in row["records"]["outside"]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", nargs="?", help="audit config (default: the embedded default)")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="applied to every run")
    parser.add_argument("--variant", dest="variants", action="append", required=True,
                        help="--set expressions separated by ';' ('-' for none); the first is the reference")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    runs = [args.out / f"v{i}" for i in range(1, len(args.variants) + 1)]
    for variant, run in zip(args.variants, runs):
        figures = run_variant(args.config, args.sets, variant, run)
        print(f"{variant}: {figures}", flush=True)
    summary = summarise(args.variants, runs)
    (args.out / "ab.json").write_text(json.dumps(summary, indent=1))
    print(markdown(summary))


if __name__ == "__main__":
    main()
