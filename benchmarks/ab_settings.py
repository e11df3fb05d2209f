"""The same audit under several settings, run one after the other on this machine: wall time, peak RSS,
CPU seconds and minor page faults (GNU time), each attack's fit and score seconds, and every record of
each run against the first run's 95% CI. How RESULTS.md's "C heap" and "channels_last" tables are made
(issue 17: a speed-up is a ratio of runs made back to back, with the figures unchanged).

    python benchmarks/ab_settings.py configs/utkface.yaml --set 'cut_points=[conv1]' --set 'defenses=[none]' \\
        --variant trainer.channels_last=false --variant trainer.channels_last=true --out /tmp/ab

A ``--variant`` is one or more ``--set`` expressions separated by ``;`` (``-`` for none), optionally after
``REV@``: that commit's code and its own copy of the config, checked out into a temporary git worktree and
run with this checkout's Python (how RESULTS.md's "Side by side with 7e802f8" tables are made):

    python benchmarks/ab_settings.py configs/utkface.yaml --set 'cut_points=[conv1]' \\
        --variant ee39af3@- --variant - --variant 'memory.heap_reuse_mb=1024' --variant 7e802f8@- --out /tmp/sbs

``--set`` applies to every run. Set ``SPLITAUDIT_CACHE`` to share a trained task model between the runs. (Since
4f59976 a UTKFace task key holds the images' digest, not the folder's path, so commits before it look for the
model under another key: copy ``task_models/KEY.pt`` and ``KEY.json`` to the other key to compare on one model;
the key is in each report's ``tasks[].task_key``.) Keep
the machine otherwise idle (pause long jobs with ``kill -STOP``). The runs' order matters: on this VM a run
right after one that held ~20 GB (7e802f8 on configs/utkface.yaml) ran slower (a 20 GiB process before the
conv1 group: 138-159 s -> 188 s; RESULTS.md, stop 43), so for a ratio run the variants again in the reverse
order: list them as A B B A (``--variant X --variant Y --variant Y --variant X``; the table then gives each
variant's mean wall time too), and ``--touch-gib 20`` has a child process touch 20 GiB and exit before every run,
so every run starts from the same memory state (RESULTS.md, stop 44). Writes OUT/v1, OUT/v2, ... and OUT/ab.json;
``--tabulate`` only reads those folders again. A record is matched to the first run's by its cell (a
defense whose parameters differ between the runs, e.g. a changed default, by its name when that is unique).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

TIME_FORMAT = "%e %M %U %S %R"  # wall s, max RSS KiB, user s, system s, minor faults


ROOT = Path(__file__).resolve().parents[1]


def split_variant(variant: str) -> tuple[str | None, list[str]]:
    """``[REV@]set;set`` -> (REV or None, the ``--set`` expressions)."""
    rev, _, sets = variant.rpartition("@") if "@" in variant.split(";")[0] else ("", "", variant)
    return rev or None, [s for s in sets.split(";") if s.strip() and sets != "-"]


def run_variant(config: str | None, sets: list[str], variant: str, out: Path) -> dict:
    """One audit run under GNU time (at commit REV in a temporary worktree for ``REV@...``); returns its
    resource figures."""
    rev, extra = split_variant(variant)
    out = out.resolve()
    cmd = [sys.executable, "-m", "audit.cli", "run", *([config] if config else []), "--out", str(out / "out"), "--quiet"]
    for expression in [*sets, *extra]:
        cmd += ["--set", expression]
    out.mkdir(parents=True, exist_ok=True)
    tree = out / "tree" if rev else None
    if tree is not None:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(tree), rev], check=True)
    try:
        env = {**os.environ, "PYTHONPATH": str(tree)} if tree else None
        with open(out / "log", "w") as log:
            done = subprocess.run(["/usr/bin/time", "-f", TIME_FORMAT, "-o", str(out / "time"), *cmd], stdout=log,
                                  stderr=subprocess.STDOUT, cwd=tree or None, env=env)
    finally:
        if tree is not None:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
    if done.returncode != 0:
        raise SystemExit(f"variant {variant!r} failed (exit {done.returncode}); see {out / 'log'}")
    return read_time(out / "time")


def touch_memory(gib: float, settle_s: float = 20.0) -> None:
    """Have a child process write ``gib`` GiB and exit, then wait ``settle_s``: the state a run finds after
    a large-memory run, given to every run alike."""
    code = f"import torch; t = torch.empty(int({gib} * 2**28)); t.fill_(1.0)"
    subprocess.run([sys.executable, "-c", code], check=True)
    time.sleep(settle_s)


def read_time(path: Path) -> dict:
    wall, rss, user, system, faults = path.read_text().split()[-5:]
    return {"wall_s": float(wall), "max_rss_kib": int(rss), "user_s": float(user), "system_s": float(system),
            "minor_faults": int(faults)}


def record_key(r: dict, params: bool = True) -> tuple:
    return (r["dataset"], r["seed"], r["cut_point"], r["defense"],
            json.dumps(r.get("defense_params"), sort_keys=True) if params else None, r["attack"], r.get("target"),
            r["metric"])


def against_first(first: list[dict], other: list[dict]) -> dict:
    """How many of ``other``'s records are identical to / inside the 95% CI of the same record of ``first``;
    the records outside, by key. A record with no match of the same defense parameters is matched by the
    defense's name when each run has one record of that name at that place."""
    base = {record_key(r): r for r in first}
    by_name = Counter(record_key(r, params=False) for r in first)
    by_name_other = Counter(record_key(r, params=False) for r in other)
    loose = {record_key(r, params=False): r for r in first}
    counts, outside = {"records": 0, "identical": 0, "inside_ci": 0}, []
    for r in other:
        a = base.get(record_key(r))
        key = record_key(r, params=False)
        if a is None and by_name[key] == 1 and by_name_other[key] == 1:
            a = loose[key]
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
        stages = {a: (v["fit_seconds"], v["score_seconds"])  # none in reports of before 2026-12-02
                  for a, v in report.get("timings", {}).get("attack_seconds", {}).items()}
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
    walls: dict[str, list[float]] = {}
    for row in rows:
        walls.setdefault(row["variant"], []).append(row["wall_s"])
    if len(walls) < len(rows):  # a variant ran more than once (A B B A): the means
        first = sum(next(iter(walls.values()))) / len(next(iter(walls.values())))
        lines += [f"- {variant}: mean wall {sum(w) / len(w):.0f} s over {len(w)} runs "
                  f"({', '.join(f'{x:.0f}' for x in w)}), {first / (sum(w) / len(w)):.2f}x vs the first variant"
                  for variant, w in walls.items()]
    for row in rows:
        lines += [f"- {row['variant']}: outside the first's CI: {item}" for item in row["records"]["outside"]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", nargs="?", help="audit config (default: the embedded default)")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="applied to every run")
    parser.add_argument("--variant", dest="variants", action="append", required=True,
                        help="[REV@]--set expressions separated by ';' ('-' for none; REV: a commit run in a temporary "
                             "worktree); the first is the reference")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tabulate", action="store_true", help="no runs: the table of the folders already in OUT")
    parser.add_argument("--touch-gib", type=float, default=0.0,
                        help="before every run, a child process touches this many GiB and exits (then 20 s pause)")
    args = parser.parse_args()
    runs = [args.out / f"v{i}" for i in range(1, len(args.variants) + 1)]
    for variant, run in zip(args.variants, [] if args.tabulate else runs):
        if args.touch_gib > 0:
            touch_memory(args.touch_gib)
        figures = run_variant(args.config, args.sets, variant, run)
        print(f"{variant}: {figures}", flush=True)
    summary = summarise(args.variants, runs)
    (args.out / "ab.json").write_text(json.dumps(summary, indent=1))
    print(markdown(summary))


if __name__ == "__main__":
    main()
