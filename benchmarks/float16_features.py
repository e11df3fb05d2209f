"""Would float16 feature storage change the figures? (issue 17 item 2)

Runs one audit twice in this process: as it is, and with every stored edge feature rounded to
float16 on its way into the feature store (``FeatureStore.extract`` wraps the edge in a rounding
step; compute stays float32). That is exactly what float16 storage with float32 compute would
give the attacks that read stored features; releases an attack queries through the channel
(re-identification's candidates, rMLE's and UnSplit's optimisation) stay float32 in both runs.
Then every record of the rounded run is compared with the same record of the float32 run: its
value inside the float32 record's 95% CI or not, and the difference.

    SPLITAUDIT_CACHE=/tmp/f16_cache python benchmarks/float16_features.py --out /tmp/f16
    python benchmarks/float16_features.py --out /tmp/f16 --config configs/utkface.yaml \
        --set 'cut_points=[pool3]'

Both runs resume from ``--out`` (``float32/`` and ``float16/``); ``--compare`` only compares.
The comparison goes to ``--out``/comparison.json and is printed as markdown.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import nn

from audit import Audit
from audit.config.loading import load_config
from audit.core import feature_store
from audit.progress import Progress


class RoundToHalf(nn.Module):
    """The input rounded to float16 and back (float32 out): what float16 storage keeps of a feature."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z.half().float()


def run(config_path: str | None, overrides: list[str], out: Path, rounded: bool) -> None:
    config = load_config(config_path, overrides=overrides)
    original = feature_store.FeatureStore.extract

    def extract_rounded(self, key, cut, part, edge, x, device=None, batch_size=256):
        return original(self, key, cut, part, nn.Sequential(edge, RoundToHalf()), x, device, batch_size)

    if rounded:
        feature_store.FeatureStore.extract = extract_rounded
    try:
        Audit(config).run(out, callbacks=[Progress(bar=False)])
    finally:
        feature_store.FeatureStore.extract = original


def record_key(r: dict) -> tuple:
    return (r["dataset"], r["seed"], r["cut_point"], r["defense"], json.dumps(r.get("defense_params"), sort_keys=True),
            r["attack"], r["target"], r["metric"])


def compare(out: Path) -> dict:
    """Each float16 record against its float32 twin: inside the float32 CI or not, and the difference."""
    runs = {name: {record_key(r): r for r in json.loads((out / name / "report.json").read_text())["results"]
                   if r.get("status") == "ok" and r.get("value") is not None}
            for name in ("float32", "float16")}
    rows = []
    for key, full in runs["float32"].items():
        half = runs["float16"].get(key)
        if half is None:
            continue
        lo, hi = full.get("ci95") or (None, None)
        inside = lo is None or hi is None or lo - 1e-9 <= half["value"] <= hi + 1e-9  # (a Wilson bound of 1 - 1e-16)
        rows.append({"task": key[0], "cut": key[2], "defense": key[3], "defense_params": json.loads(key[4]),
                     "attack": key[5], "target": key[6], "metric": key[7], "float32": full["value"],
                     "ci95": [lo, hi], "float16": half["value"], "difference": half["value"] - full["value"],
                     "inside_ci": inside})
    summary = {"records": len(rows), "outside_ci": sum(not r["inside_ci"] for r in rows),
               "identical": sum(r["difference"] == 0 for r in rows)}
    return {"summary": summary, "records": rows}


def markdown(result: dict) -> str:
    s = result["summary"]
    lines = [f"{s['records']} records compared: {s['identical']} identical, {s['outside_ci']} outside the float32 "
             "record's 95% CI", "", "| task | cut | defense | attack | target · metric | float32 [95% CI] | float16 | "
             "difference |", "|---|---|---|---|---|---|---|---|"]
    worst = sorted(result["records"], key=lambda r: (r["inside_ci"], -abs(r["difference"])))[:15]
    for r in worst:
        params = ",".join(f"{k}={v}" for k, v in r["defense_params"].items() if k == "scale")
        ci = "" if None in r["ci95"] else f" [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]"
        flag = "" if r["inside_ci"] else " **outside**"
        lines.append(f"| {r['task']} | {r['cut']} | {r['defense']}{' ' + params if params else ''} | {r['attack']} | "
                     f"{r['target']} · {r['metric']} | {r['float32']:.3f}{ci} | {r['float16']:.3f}{flag} | "
                     f"{r['difference']:+.4f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=None, help="audit config (default: the embedded default audit)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="KEY=VALUE override (repeatable)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--compare", action="store_true", help="only compare the two finished runs")
    args = parser.parse_args()
    if not args.compare:
        run(args.config, args.overrides, args.out / "float32", rounded=False)
        run(args.config, args.overrides, args.out / "float16", rounded=True)
    result = compare(args.out)
    (args.out / "comparison.json").write_text(json.dumps(result, indent=1) + "\n")
    print(markdown(result))


if __name__ == "__main__":
    main()
